"""What the operator sees while recording: a rich live panel, or plain progress lines without a terminal.

The panel is redrawn by rich's own refresh thread about 4 times a second from `Recorder.status()`, so the
control loop never waits for the screen: episode and elapsed time, the measured rate of every stream
against its nominal rate, a level meter per microphone with a clipping warning, dropped frames and the
other faults, the teleop state (clutch, gripper, age of the last reading), loop period and overruns, and
disk use.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from htouch.collector.streams import AudioLevels
from htouch.dataset.schema import EPISODE_PREFIX

if TYPE_CHECKING:
    from htouch.collector.loop import Recorder

REFRESH_HZ = 4
METER_FLOOR_DB = -60.0
METER_WIDTH = 24
CLIP_HOLD_S = 1.0  # a channel shows CLIP this long after its last clipped sample
RATE_TOLERANCE = 0.05  # a stream slower or faster than this share of nominal is shown in yellow
STATUS_EVERY_S = 10.0  # plain mode: one status line this often while recording

PHASE_STYLE = {"recording": "bold white on red", "ready": "bold black on green", "homing": "bold black on yellow",
               "saving": "bold black on cyan"}


@dataclass
class LiveStatus:
    """A snapshot for the live panel (read from another thread; values are for display only)."""

    phase: str
    message: str
    episode_index: int | None
    attempt: int
    committed: int
    target: int
    elapsed_s: float
    rates: dict[str, tuple[float, float]]  # stream -> (measured, nominal)
    audio: AudioLevels
    audio_channel_names: list[str]
    frames_dropped: int
    camera_stalls: int
    audio_overflows: int
    teleop_losses: int
    robot_errors: int
    writer_dropped: dict[str, int]
    clutch: bool
    gripper: float
    teleop_age_ms: float | None
    teleop_lost: bool
    loop_p50_ms: float  # wall-clock tick period while recording
    loop_p99_ms: float
    work_p99_ms: float
    overruns: int
    nominal_period_ms: float
    recent_events: list[tuple[float, str]]
    dataset_root: str
    now_ns: int  # loop clock when the snapshot was taken


def _size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


class DiskMeter:
    """Free space on the dataset's file system and the dataset's size: walked once in the background,
    then each newly committed episode is added (walking a whole large dataset on every refresh would
    cost the recorder CPU)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.dataset_bytes: int | None = None
        self._counted: set[str] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._walk_all, daemon=True, name="disk-meter").start()

    def _walk_all(self) -> None:
        names = set()
        if self.root.is_dir():
            names = {p.name for p in self.root.iterdir() if p.name.startswith(EPISODE_PREFIX)}
        total = sum(_size(self.root / n) for n in names)
        with self._lock:
            self._counted |= names
            self.dataset_bytes = (self.dataset_bytes or 0) + total

    def update(self) -> None:
        with self._lock:
            if self.dataset_bytes is None or not self.root.is_dir():
                return
            new = {p.name for p in self.root.iterdir() if p.name.startswith(EPISODE_PREFIX)} - self._counted
            for name in new:
                self.dataset_bytes += _size(self.root / name)
                self._counted.add(name)

    def free_bytes(self) -> int:
        try:
            return shutil.disk_usage(self.root).free
        except OSError:
            return 0


def _gb(n: int | None) -> str:
    return "..." if n is None else f"{n / 1e9:.2f} GB"


def _rate_cell(measured: float, nominal: float) -> Text:
    if measured <= 0:
        return Text("-", style="dim")
    unit = "Hz"
    text = f"{measured:,.0f}" if nominal >= 1000 else f"{measured:.1f}"
    off = nominal > 0 and abs(measured / nominal - 1) > RATE_TOLERANCE
    return Text(f"{text} {unit}", style="yellow" if off else "green")


def meter(rms_db: float, peak_db: float, clipping: bool) -> Text:
    """A text level meter: the bar is the RMS level, the tick the peak, from METER_FLOOR_DB to 0 dBFS."""
    def cells(db: float) -> int:
        return int(round(max(0.0, min(1.0, 1 - db / METER_FLOOR_DB)) * METER_WIDTH))

    n, peak = cells(rms_db), min(cells(peak_db), METER_WIDTH - 1)
    bar = Text()
    for i in range(METER_WIDTH):
        style = "green" if i < 0.7 * METER_WIDTH else ("yellow" if i < 0.9 * METER_WIDTH else "red")
        bar.append("█" if i < n else ("|" if i == peak else "·"), style=style if i < n or i == peak else "dim")
    bar.append(f" {rms_db:6.1f} dBFS rms  {peak_db:6.1f} peak")
    if clipping:
        bar.append("  CLIP", style="bold white on red")
    return bar


def render_status(s: LiveStatus, disk: DiskMeter | None = None, title: str = "", help_text: str = "") -> Panel:
    """The live panel for one status snapshot (a rich Panel; drawn by rich's refresh thread)."""
    head = Text()
    head.append(f" {s.phase.upper()} ", style=PHASE_STYLE.get(s.phase, "bold"))
    if s.episode_index is not None:
        m, sec = divmod(s.elapsed_s, 60)
        head.append(f"  episode {s.episode_index}  {int(m):02d}:{sec:04.1f}", style="bold")
    head.append(f"   attempt {s.attempt}   committed {s.committed}/{s.target}")

    streams = Table.grid(padding=(0, 2))
    for _ in range(4):
        streams.add_column()
    streams.add_row(Text("stream", style="bold"), Text("measured", style="bold"), Text("nominal", style="bold"),
                    Text(""))
    faults = {"camera": (f"dropped {s.frames_dropped}  stalls {s.camera_stalls}", s.frames_dropped + s.camera_stalls),
              "audio": (f"overflows {s.audio_overflows}", s.audio_overflows),
              "teleop": (f"losses {s.teleop_losses}", s.teleop_losses),
              "action": (f"robot errors {s.robot_errors}", s.robot_errors)}
    for name, (measured, nominal) in s.rates.items():
        note, bad = faults.get(name, ("", 0))
        nominal_text = f"{nominal:,.0f} Hz" if nominal >= 1000 else f"{nominal:g} Hz"
        streams.add_row(name, _rate_cell(measured, nominal), nominal_text, Text(note, style="red" if bad else "dim"))

    audio = Table.grid(padding=(0, 1))
    audio.add_column()
    audio.add_column()
    levels = s.audio
    for i, name in enumerate(s.audio_channel_names):
        if i < len(levels.rms_dbfs):
            clipped_at = levels.clipped_at_ns[i] if i < len(levels.clipped_at_ns) else None
            recent_clip = clipped_at is not None and s.now_ns - clipped_at < CLIP_HOLD_S * 1e9
            audio.add_row(name, meter(levels.rms_dbfs[i], levels.peak_dbfs[i], recent_clip))
        else:
            audio.add_row(name, Text("no audio yet", style="dim"))

    teleop = Text()
    teleop.append("clutch ")
    teleop.append("ON " if s.clutch else "off", style="bold green" if s.clutch else "dim")
    teleop.append(f"   gripper {s.gripper * 100:3.0f} % open   last reading ")
    if s.teleop_age_ms is None:
        teleop.append("none yet", style="yellow")
    else:
        teleop.append(f"{s.teleop_age_ms:5.0f} ms ago", style="bold red" if s.teleop_lost else "green")
        if s.teleop_lost:
            teleop.append("  TELEOP LOST: robot holding", style="bold white on red")

    loop = Text(f"loop period (wall) p50 {s.loop_p50_ms:5.1f} ms  p99 {s.loop_p99_ms:5.1f} ms "
                f"(nominal {s.nominal_period_ms:.1f})   work p99 {s.work_p99_ms:5.1f} ms   overruns ")
    loop.append(str(s.overruns), style="red" if s.overruns else "green")
    if s.writer_dropped:
        loop.append(f"   writer dropped {sum(s.writer_dropped.values())} rows", style="bold red")

    parts = [head, Text(""), streams, Text(""), audio, Text(""), teleop, loop]
    if disk is not None:
        disk.update()
        parts.append(Text(f"disk: {_gb(disk.free_bytes())} free   dataset {_gb(disk.dataset_bytes)}   "
                          f"{s.dataset_root}", style="dim"))
    if s.recent_events:
        parts.append(Text("events: " + "  ".join(f"{t:5.1f}s {k}" for t, k in s.recent_events[-5:]),
                          style="yellow"))
    if s.message:
        parts.append(Text(s.message, style="italic"))
    if help_text:
        parts.append(Text(help_text, style="dim"))
    return Panel(Group(*parts), title=title, title_align="left")


class LivePanel:
    """The rich live panel (a context manager around Recorder.run)."""

    def __init__(self, recorder: Recorder, console: Console, title: str = "", help_text: str = ""):
        self.recorder = recorder
        self.console = console
        self.title = title
        self.help_text = help_text
        self.disk = DiskMeter(recorder.dataset.root)
        self._live = Live(get_renderable=self._render, console=console, refresh_per_second=REFRESH_HZ,
                          transient=False, redirect_stdout=False, redirect_stderr=False)

    def _render(self) -> Panel:
        return render_status(self.recorder.status(), self.disk, self.title, self.help_text)

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def __enter__(self) -> LivePanel:
        self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        self._live.stop()


class PlainProgress:
    """Without a terminal (or with --no-panel): each lifecycle message as a line, and a status line every
    STATUS_EVERY_S seconds while recording."""

    def __init__(self, recorder: Recorder, console: Console):
        self.recorder = recorder
        self.console = console
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="progress")

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _run(self) -> None:
        while not self._quit.wait(STATUS_EVERY_S):
            s = self.recorder.status()
            if s.phase != "recording":
                continue
            cam, aud = s.rates["camera"][0], s.rates["audio"][0]
            self.message(f"  episode {s.episode_index}: {s.elapsed_s:.0f} s, camera {cam:.1f} Hz, audio {aud:,.0f} Hz, "
                         f"dropped {s.frames_dropped}, overruns {s.overruns}, loop p99 {s.loop_p99_ms:.1f} ms")

    def __enter__(self) -> PlainProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._quit.set()
        self._thread.join(timeout=1.0)
