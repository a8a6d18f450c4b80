"""`htouch inspect`: one episode's summary (rates, drops, audio levels, events), as tables, JSON or a figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from htouch.cli import app
from htouch.cli.common import DatasetOption, console, err_console, fmt_path, progress_bar
from htouch.dataset.location import is_url
from htouch.dataset.store import resolve_episode

if TYPE_CHECKING:
    from htouch.dataset.summary import EpisodeSummary


def _num(x: float | None, fmt: str, none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _warn(text: str, bad: bool) -> str:
    return f"[yellow]{text}[/]" if bad else text


def _render(s: EpisodeSummary) -> None:
    from htouch.dataset.validate import DEFAULT_LIMITS

    label = {"success": "[green]success[/]", "failure": "[red]failure[/]"}.get(s.label, "[yellow]unlabelled[/]")
    console.print(f"[bold]{s.episode}[/]  {s.path if is_url(s.path) else fmt_path(Path(s.path))}")
    console.print(f"label {label} · variation {s.variation} · duration {s.duration_s:.2f} s"
                  + (f" · task {s.task}" if s.task else ""), highlight=False)

    streams = Table(title="streams (rate in Hz; audio: rows are blocks, rate is samples/s)", title_justify="left")
    for col in ("stream", "rows", "rate", "nominal", "dev %", "first s", "last s", "max gap s"):
        streams.add_column(col, justify="left" if col == "stream" else "right")
    for st in s.streams:
        off = st.deviation_pct is None or abs(st.deviation_pct) > 100 * DEFAULT_LIMITS.rate_tolerance
        digits = 1 if st.rate_of == "samples" else 2
        streams.add_row(st.stream, str(st.rows), f"{st.rate_hz:.{digits}f}", f"{st.nominal_hz:g}",
                        _warn(_num(st.deviation_pct, "+.3f"), off), _num(st.first_s, ".3f"),
                        _num(st.last_s, ".3f"), _num(st.max_gap_s, ".3f"))
    console.print(streams)

    cam = s.camera
    console.print(f"[bold]camera[/] {cam.width}x{cam.height}: {cam.frames} frames, "
                  + _warn(f"{cam.dropped} dropped", cam.dropped > 0)
                  + f" (frame_number jumps), largest gap {_num(cam.largest_gap_s, '.3f')} s", highlight=False)

    aud = s.audio
    if not aud.channels:
        console.print("[bold]audio[/]: none (the rig has no microphones)", highlight=False)
    else:
        _print_audio(aud)

    events = Table(title=f"events ({len(s.events)})", title_justify="left")
    for col, justify in (("t s", "right"), ("kind", "left"), ("detail", "left")):
        events.add_column(col, justify=justify)
    for e in s.events:
        detail = ", ".join(f"{k}={v}" for k, v in e.detail.items())
        events.add_row(f"{e.t_s:.3f}", e.kind, detail)
    console.print(events)


def _print_audio(aud) -> None:
    console.print(f"[bold]audio[/]: {aud.seconds:.2f} s in {aud.blocks} blocks, "
                  + _warn(f"{aud.overflow_blocks} overflow flags", aud.overflow_blocks > 0), highlight=False)
    chans = Table(title="audio channels (dBFS relative to the rig's full scale)", title_justify="left")
    for col in ("channel", "RMS dBFS", "peak dBFS", "clipped", f"DC offset ({aud.unit})"):
        chans.add_column(col, justify="left" if col == "channel" else "right")
    for c in aud.channels:
        chans.add_row(c.name, _num(c.rms_dbfs, ".1f", "silent"), _num(c.peak_dbfs, ".1f", "silent"),
                      _warn(str(c.clipped), c.clipped > 0), f"{c.dc_offset:+.1f}")
    console.print(chans)


@app.command("inspect")
def inspect_episode(
    episode: str = typer.Argument(..., help="Episode name (episode_12, 12), or path or URL of an episode directory."),
    dataset: str = DatasetOption,
    plot: Path = typer.Option(None, "--plot", help="Also draw the episode into this image file (.png).",
                              show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
) -> None:
    """Summarise one episode: measured rates, dropped frames, audio levels and clipping, events.

    Times are seconds since the episode start. --plot draws frames, waveforms, the log-mel spectrogram,
    actions and state on one time axis, with the events marked.

    Example: [bold]htouch inspect episode_3 --plot ep3.png[/]
    """
    from htouch.dataset.summary import summarize  # zarr: not needed to start the CLI

    ep = resolve_episode(episode, dataset)
    summary = summarize(ep)
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        _render(summary)
    if plot is not None:
        from htouch.dataset.plot import PLOT_STAGES, plot_episode  # matplotlib only when plotting

        with progress_bar(f"plotting {ep.name}", PLOT_STAGES) as advance:
            written = plot_episode(ep, plot, summary=summary, progress=advance)
        # with --json, stdout holds only the JSON
        (err_console if as_json else console).print(f"[green]wrote plot[/] {fmt_path(written.resolve())}",
                                                    highlight=False)
