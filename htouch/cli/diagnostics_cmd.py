"""`htouch probe`: does the audio reach the policy? Contact probes on its embeddings and the t-SNE picture."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from htouch.cli import app
from htouch.cli.common import console, err_console, fmt_path
from htouch.training.constants import BOOTSTRAP, CONTACT_EVENT, CONTACT_WINDOW_S, PROBE_FOLDS, PROBE_STRIDE


@app.command()
def probe(
    run: Path = typer.Argument(..., help="Run directory of a trained policy (`htouch train --run`)."),
    dataset: Path = typer.Argument(None, help="Dataset whose samples to probe (default: the run's training "
                                   "dataset); it needs contact events.", show_default=False),
    event: str = typer.Option(CONTACT_EVENT, "--event", help="Event kind that marks contact (real data: the "
                              "events you labelled)."),
    window: float = typer.Option(CONTACT_WINDOW_S, "--window", help="A sample is in contact when such an event "
                                 "overlaps the last WINDOW seconds before it."),
    stride: int = typer.Option(PROBE_STRIDE, "--stride", help="A sample at every n-th camera frame."),
    folds: int = typer.Option(PROBE_FOLDS, "--folds", help="Cross-validation folds (whole episodes held out)."),
    bootstrap: int = typer.Option(BOOTSTRAP, "--bootstrap", help="Bootstrap resamples of episodes for the "
                                  "interval."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap, the label permutation and the t-SNE."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    out: Path = typer.Option(None, "--out", "-o", help="Report file (default: RUN/probe-DATASET.json).",
                             show_default=False),
    plot: Path = typer.Option(None, "--plot", help="Also draw a t-SNE of the fused embeddings, coloured by "
                              "contact and task phase, into this image file (.png).", show_default=False),
) -> None:
    """Probe a policy's audio, image and fused embeddings for the contact state of each sample.

    A logistic-regression probe per embedding, trained on some episodes and tested on the others; the AUC
    with a 95 % bootstrap interval over episodes. The same probe on permuted labels shows chance. An audio
    probe near chance while the image probe is not says the audio barely reaches the policy.

    Example: [bold]htouch probe runs/zip-ours zip-demos --plot runs/zip-ours/tsne.png[/]
    """
    from htouch.errors import HtouchError
    from htouch.training.diagnostics import check_plot_path, contact_probe, embedding_plot, policy_embeddings
    from htouch.training.run_dir import RunDir

    if folds < 2:
        raise HtouchError(f"--folds must be at least 2, got {folds}")
    if bootstrap < 1:
        raise HtouchError(f"--bootstrap must be at least 1, got {bootstrap}")
    if plot is not None:
        check_plot_path(plot)
    embeddings = policy_embeddings(run, dataset, event=event, window_s=window, stride=stride)
    report = contact_probe(embeddings, folds=folds, bootstrap=bootstrap, seed=seed)
    path = out or RunDir(run).probe(embeddings.dataset)
    report.write(path)
    say = err_console if as_json else console  # with --json, stdout holds only the JSON
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        e = embeddings
        table = Table(title=f"contact probe: {e.method} policy on {fmt_path(Path(e.dataset))}, {len(e)} samples of "
                      f"{report.probes[0].episodes} episodes, {int(e.contact.sum())} in contact ('{e.event}' within "
                      f"{e.window_s:g} s)", title_justify="left")
        for col in ("embedding", "dims", "AUC", "95% CI", "folds"):
            table.add_column(col, justify="left" if col == "embedding" else "right")
        for p in report.probes:
            table.add_row(p.features, str(p.dims), f"{p.auc:.3f}", f"{p.ci_low:.3f}-{p.ci_high:.3f}", str(p.folds))
        console.print(table)
        for note in report.notes:
            console.print(f"[dim]{note}[/]", highlight=False)
    say.print(f"[green]wrote[/] {fmt_path(path)}", highlight=False)
    if plot is not None:
        written = embedding_plot(embeddings, plot, seed=seed)
        say.print(f"[green]wrote plot[/] {fmt_path(written)}", highlight=False)
