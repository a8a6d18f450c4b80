"""`htouch train`, `eval`, `rollout`, `experiment` and `pretrain`: policies that hear touch."""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from htouch.cli import app
from htouch.cli.common import DatasetArgument, console, err_console, fmt_path, local_path, print_rows, progress_bar
from htouch.dataset.store import find_dataset
from htouch.errors import HtouchError
from htouch.training.methods import DEFAULT_METHOD, METHOD_SPECS, PRESETS

METHODS_TEXT = "; ".join(f"[bold]{m}[/]: {spec.help}" for m, spec in METHOD_SPECS.items())
PRESETS_TEXT = ", ".join(PRESETS)
DeviceOption = typer.Option("auto", "--device", help="auto (CUDA, else MPS, else CPU), cuda, mps or cpu.")
# shared by the pretraining commands
PretrainSeedOption = typer.Option(0, "--seed", help="Seed of initialisation, order and augmentation.")
PretrainThreadsOption = typer.Option(None, "--threads", help="CPU threads for the network (default: one per core).",
                                     show_default=False)


class RichReporter:
    """Shows a training run: notes, setup progress bars, a live epoch bar with loss and samples/s, one line
    per finished epoch (the bars are hidden when stderr is not a terminal; the lines always print)."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task = None
        self.loss_sum = 0.0
        self.batches = 0
        self.samples = 0
        self.started = 0.0
        self.epochs = 0

    def note(self, text: str) -> None:
        console.print(f"[dim]{text}[/]", highlight=False)

    def phase(self, description: str, total: int):
        return progress_bar(description, total)

    def start(self, session) -> None:
        from htouch.training.model import describe

        c = session.config
        console.print(describe(session.model))
        mode = "frozen encoders (head only, embeddings cached)" if c.frozen_encoders else "end to end"
        console.print(f"training {mode} on {session.device}" +
                      (f" x {session.env.world_size} processes" if session.env.distributed else "") +
                      f", batch {c.batch_size}, lr {c.lr:g}, up to {c.epochs} epochs (patience {c.patience}) "
                      f"-> {fmt_path(c.run_dir)}")
        random = session.random_encoders()
        if random:
            err_console.print(f"[yellow]note:[/] random initial weights for {' and '.join(random)} "
                              "(--allow-random-init); recorded in the run")

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        import time

        self._close()
        self.loss_sum, self.batches, self.samples, self.started, self.epochs = 0.0, 0, 0, time.perf_counter(), epochs
        columns = (TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                   MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                   TextColumn("{task.fields[rate]} samples/s"), TimeElapsedColumn(), TextColumn("eta"),
                   TimeRemainingColumn())
        self.progress = Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal)
        self.progress.start()
        self.task = self.progress.add_task("", total=batches, epoch=epoch, epochs=epochs, loss="-", rate="-")

    def batch(self, loss: float, samples: int) -> None:
        import time

        self.loss_sum += loss
        self.batches += 1
        self.samples += samples
        rate = self.samples / max(time.perf_counter() - self.started, 1e-9)
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=f"{self.loss_sum / self.batches:.4g}", rate=f"{rate:.1f}")

    def epoch_end(self, m) -> None:
        self._close()
        best = "  [green]best[/]" if m.best else ""
        console.print(f"epoch {m.epoch:>3}/{self.epochs}  train {m.train_loss:.4g}  val {m.val_loss:.4g}  "
                      f"lr {m.lr:.3g}  {m.samples_per_s:.1f} samples/s  {m.train_seconds + m.val_seconds:.1f} s{best}",
                      highlight=False)

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@app.command()
def train(
    dataset: str = DatasetArgument,
    run: str = typer.Option(None, "--run", "--run-dir", "-r", help="Run directory to create (or continue with "
                            "--resume); under torchrun write --run-dir (torchrun takes --run for its --run-path). "
                            "Default: runs/DATASET-METHOD in the current directory (-2, -3, ... if taken; with "
                            "--resume the newest of them).", show_default=False),
    method: str = typer.Option(DEFAULT_METHOD, "--method", "-m", help=f"What to train: {METHODS_TEXT}."),
    preset: str = typer.Option("paper", "--preset", help=f"Network size: {PRESETS_TEXT} (tiny: small images and "
                               "narrow networks, for CPU tests and the quick start)."),
    epochs: int = typer.Option(100, "--epochs", help="Maximum number of epochs."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Samples per step, over all processes."),
    lr: float = typer.Option(1e-3, "--lr", help="Initial learning rate (Adam, cosine annealing to 0)."),
    patience: int = typer.Option(15, "--patience",
                                 help="Stop after this many epochs without a better validation loss."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, data order and augmentation."),
    frozen_encoders: bool = typer.Option(False, "--frozen-encoders", help="Encode frames and audio once with frozen "
                                         "encoders and train only the head (minutes on a CPU; no image augmentation)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --run from its last finished epoch."),
    r3m: Path = typer.Option(None, "--r3m", help="R3M ResNet18 checkpoint file (image encoder), or the r3m.pt of "
                             "`htouch pretrain av`.", show_default=False),
    avid: Path = typer.Option(None, "--avid", help="AVID-CMA AudioSet checkpoint file (audio encoder), or the avid.pt "
                              "of `htouch pretrain av`.", show_default=False),
    byol_a: Path = typer.Option(None, "--byol-a", help="BYOL-A encoder from `htouch pretrain byol-a` (method byol-a).",
                                show_default=False),
    allow_random_init: bool = typer.Option(False, "--allow-random-init", help="Start encoders whose checkpoint file "
                                           "is not given from random weights (recorded in the run)."),
    device: str = DeviceOption,
    workers: int = typer.Option(None, "--workers", help="Data loader processes (default: 0 on the CPU, a few "
                                "per GPU).", show_default=False),
    horizon: int = typer.Option(None, "--horizon", help="Actions predicted per step (default: the preset's).",
                                show_default=False),
    dropout: float = typer.Option(None, "--dropout", help="Dropout in the head and fusion block (default: the "
                                  "preset's; the paper's 0.5).", show_default=False),
    stride: int = typer.Option(1, "--stride", help="Use every n-th camera frame as a sample."),
    episodes: int = typer.Option(None, "--episodes", help="Train on only the first N train episodes of the split "
                                 "(the demonstration-count ablation; validation stays the whole split's).",
                                 show_default=False),
    preload_mb: float = typer.Option(4096, "--preload-mb", help="Memory for decoded frames and spectrograms; "
                                     "beyond it samples are read from disk each time."),
    threads: int = typer.Option(None, "--threads", help="CPU threads for the network (default: one per core; "
                                "on a busy shared machine 1 can be several times faster).", show_default=False),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Leave out episodes that fail the structural "
                                      "checks (named, one line each) instead of stopping at the first."),
) -> None:
    """Train an audio-visual policy by behaviour cloning (the paper's recipe) into a run directory.

    Needs `htouch split` (the validation set decides early stopping); computes `htouch stats` if missing.
    Uses the `htouch spectrogram` cache when its parameters match. Writes model.safetensors + config.json
    (the best validation model), metrics.csv, TensorBoard events, loss_curves.png and last.pt for --resume.

    A damaged episode (see `htouch validate`) stops training with a line naming it; --skip-invalid leaves
    such episodes out and names them.

    Pretrained encoders are files you supply (--r3m, --avid, --byol-a; `htouch pretrain av` and
    `htouch pretrain byol-a` make in-domain ones), or that lie in the weights directory (`htouch weights`
    says where and what is there); nothing is downloaded. The run records each file's SHA-256.
    Several GPUs or machines: start it with torchrun (torchrun --nproc_per_node 2 -m htouch train DATA --run-dir R).

    Without --run it trains into runs/DATASET-METHOD (said at the start); without a split it makes one as
    `htouch split` does by default and says so.

    Example: [bold]htouch train demo_data --method ours --preset tiny --run runs/tiny --allow-random-init[/]
    """
    from htouch.dataset.split import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, SPLIT_KEY, split_dataset
    from htouch.training.ddp import DistEnv
    from htouch.training.train import TrainConfig
    from htouch.training.train import train as run_training
    from htouch.training.weights import find_weights

    run = local_path(run, "htouch train --run (the run directory)")
    ds = find_dataset(dataset)
    given = {"r3m": r3m, "avid": avid, "byol-a": byol_a}
    wanted = METHOD_SPECS[method].pretrained if method in METHOD_SPECS else ()  # (an unknown one is refused below)
    for kind, path in find_weights().items():  # pretrained files kept in the weights directory
        if given[kind] is None and path is not None and kind in wanted:
            given[kind] = path
            console.print(f"{kind}: {fmt_path(path)} (from the weights directory)", highlight=False)
    r3m, avid, byol_a = given["r3m"], given["avid"], given["byol-a"]
    if run is None:
        run = default_run_dir(ds.root, method, resume)
        console.print(f"run directory: {fmt_path(run)}", highlight=False)
    main_rank = DistEnv.from_environ().is_main
    if not isinstance(ds.metadata.get(SPLIT_KEY), dict) and not ds.remote and main_rank:
        made = split_dataset(ds, DEFAULT_VAL_FRACTION, DEFAULT_SPLIT_SEED)
        console.print(f"no train/validation split: made one as `htouch split` does by default (val "
                      f"{DEFAULT_VAL_FRACTION:g}, seed {DEFAULT_SPLIT_SEED}): {len(made.train)} train, "
                      f"{len(made.val)} validation episodes", highlight=False)
    config = TrainConfig(dataset=ds.root if not ds.remote else str(ds.root), run_dir=run, method=method,
                         preset=preset, epochs=epochs,
                         batch_size=batch_size, lr=lr, patience=patience, seed=seed, device=device,
                         frozen_encoders=frozen_encoders, num_workers=workers, resume=resume, r3m=r3m, avid=avid,
                         byol_a=byol_a, allow_random_init=allow_random_init, horizon=horizon, dropout=dropout,
                         stride=stride,
                         episodes=episodes, preload_mb=preload_mb, threads=threads, skip_invalid=skip_invalid)
    reporter = RichReporter()
    try:
        result = run_training(config, reporter)
    except KeyboardInterrupt:
        reporter._close()
        if main_rank:
            err_console.print(f"[yellow]interrupted[/]; the last finished epoch is saved: continue with "
                              f"[bold]htouch train {fmt_path(ds.root)} --run {fmt_path(run)} --resume ...[/]")
        sys.exit(130)
    if main_rank:
        if result.history:
            last = result.history[-1]
            console.print(f"[green]done[/] ({result.stopped}): best validation loss {result.best_val_loss:.4g} at "
                          f"epoch {result.best_epoch} of {len(result.history)}; last epoch "
                          f"{last.samples_per_s:.1f} samples/s; run in {fmt_path(result.run_dir)}")


@app.command()
def weights() -> None:
    """List the pretrained encoder files `htouch train` finds without flags: where it looks ($HTOUCH_WEIGHTS,
    else ~/.cache/htouch/weights), which files are there, their SHA-256, and the methods that start from each.

    Example: [bold]HTOUCH_WEIGHTS=~/weights htouch weights[/]
    """
    from htouch.training.weights import WEIGHT_FILES, WEIGHTS_ENV, file_sha256, find_weights, weights_dir

    root = weights_dir()
    console.print(f"weights directory: {fmt_path(root)} (${WEIGHTS_ENV} or ~/.cache/htouch/weights)"
                  + ("" if root.is_dir() else " [yellow]- does not exist[/]"), highlight=False)
    rows = []
    for kind, path in find_weights().items():
        users = ", ".join(m for m, spec in METHOD_SPECS.items() if kind in spec.pretrained)
        rows.append([kind, WEIGHT_FILES[kind], "found" if path else "missing",
                     file_sha256(path) if path else "", users])
    print_rows("pretrained files", [("kind", "left"), ("file", "left"), ("status", "left"), ("sha256", "left"),
                                    ("methods", "left")], rows, as_json=False)


def default_run_dir(dataset: Path, method: str, resume: bool) -> Path:
    """runs/DATASET-METHOD in the current directory: the first free one of it, -2, -3, ...; with `resume`,
    the newest existing one (HtouchError if there is none)."""
    base = Path("runs") / f"{Path(dataset).name}-{method}"
    numbered = itertools.chain([base], (base.with_name(f"{base.name}-{n}") for n in itertools.count(2)))
    existing = list(itertools.takewhile(Path.exists, numbered))
    if resume:
        if not existing:
            raise HtouchError(f"--resume: no run to continue in {base} (name one with --run)")
        return existing[-1]
    return base if not existing else base.with_name(f"{base.name}-{len(existing) + 1}")


# ------------------------------------------------------------------------------------------ pretrain

pretrain_app = typer.Typer(
    help="Pretrain encoders in-domain on a dataset's own data.\n\n"
         "Example: [bold]htouch pretrain av play_data --out pretrained/ --preset tiny[/]",
    no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(pretrain_app, name="pretrain")


@pretrain_app.command("byol-a")
def pretrain_byol_a(
    dataset: Path = DatasetArgument,
    out: Path = typer.Option(..., "--out", "-o", help="Encoder file to write (.safetensors, BYOL-A's key layout)."),
    preset: str = typer.Option("paper", "--preset",
                               help=f"Encoder size of the policy preset it is for: {PRESETS_TEXT}."),
    epochs: int = typer.Option(100, "--epochs", help="Passes over the training spectrograms (the paper: 100)."),
    batch_size: int = typer.Option(1024, "--batch-size", "-b", help="Spectrograms per step (the paper: 1024)."),
    lr: float = typer.Option(3e-4, "--lr", help="Adam learning rate (the paper: 3e-4)."),
    seed: int = PretrainSeedOption,
    device: str = DeviceOption,
    stride: int = typer.Option(1, "--stride", help="Use the window at every n-th camera frame (neighbours overlap "
                               "by all but 1/30 s)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
    threads: int = PretrainThreadsOption,
) -> None:
    """Pretrain BYOL-A's audio encoder on the dataset's own byol-a log-mel spectrograms (the BYOL-A baseline).

    Two augmented views of each window (mixup with past inputs, random resize crop), BYOL with an EMA
    target (0.99), projector 256 / hidden 4096. Uses the training episodes of `htouch split` (all if none).
    The file it writes is what `htouch train --method byol-a --byol-a FILE` loads.

    Example: [bold]htouch pretrain byol-a demo_data --out byol_a.safetensors --preset tiny --epochs 5[/]
    """
    from htouch.training.byol_a import ByolaConfig
    from htouch.training.byol_a import pretrain_byol_a as run_pretrain

    ds = find_dataset(dataset)
    ds.require_audio("htouch pretrain byol-a")
    config = ByolaConfig(dataset=ds.root, out=out, preset=preset, epochs=epochs, batch_size=batch_size, lr=lr,
                         seed=seed, device=device, force=force, threads=threads, stride=stride)
    with _epoch_bar(epochs) as on_epoch:
        result = run_pretrain(config, progress_bar=progress_bar, on_epoch=on_epoch)
    console.print(f"[green]wrote[/] {fmt_path(result.out)}: AudioNTT2020 encoder ({result.n_parameters / 1e6:.2f}M "
                  f"parameters) after {len(result.losses)} epochs on {result.n_windows} windows; BYOL loss "
                  f"{result.losses[0]:.4g} -> {result.losses[-1]:.4g}")


@pretrain_app.command("av")
def pretrain_av(
    dataset: Path = DatasetArgument,
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write r3m.pt, avid.pt and pretrain-av.json into."),
    preset: str = typer.Option("paper", "--preset", help="Encoder sizes of the policy preset they are for: "
                               f"{PRESETS_TEXT}."),
    epochs: int = typer.Option(20, "--epochs", help="Passes over the recorded moments."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Moments per step; each is told apart from the "
                                   "other B - 1 (chance: loss log B, retrieval 1/B)."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    temperature: float = typer.Option(0.07, "--temperature", help="InfoNCE temperature (AVID's 0.07)."),
    seed: int = PretrainSeedOption,
    device: str = DeviceOption,
    stride: int = typer.Option(1, "--stride", help="Use the moment at every n-th camera frame (neighbours nearly "
                               "coincide)."),
    force: bool = typer.Option(False, "--force", help="Replace the files of an earlier run in --out."),
    threads: int = PretrainThreadsOption,
) -> None:
    """Pretrain the policy's image and audio encoders on unlabelled recordings (AVID-style, in-domain).

    Cross-modal instance discrimination: the ResNet18 embeds the frames of a moment, AVID's audio network the
    2 s clip ending there (the policy's own inputs); a symmetric InfoNCE loss makes each clip find its frames
    among the batch's and each frame stack its clip. Success labels are ignored (play data). Uses the training
    episodes of `htouch split` (all if none) and checks retrieval on its validation episodes.

    Writes R3M and AVID files in their released layouts: `htouch train --r3m OUT/r3m.pt --avid OUT/avid.pt`
    then starts from them as from the real files, and the run records that they came from this command.

    Example: [bold]htouch pretrain av play_data --out pretrained/ --preset tiny --epochs 10 --batch-size 32[/]
    """
    from htouch.training.av_pretrain import AvConfig
    from htouch.training.av_pretrain import pretrain_av as run_pretrain

    ds = find_dataset(dataset)
    ds.require_audio("htouch pretrain av")
    config = AvConfig(dataset=ds.root, out=out, preset=preset, epochs=epochs, batch_size=batch_size, lr=lr,
                      temperature=temperature, seed=seed, device=device, stride=stride, force=force, threads=threads)

    def epoch_line(epoch: int, loss: float, top1: float) -> None:
        console.print(f"epoch {epoch:>3}/{epochs}  InfoNCE {loss:.4g}  audio->frames top-1 {top1:.0%} (training "
                      "batches)", highlight=False)

    try:
        with _epoch_bar(None, "AV pretraining steps") as update:
            result = run_pretrain(config, progress_bar=progress_bar, on_step=update, on_epoch=epoch_line)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/]; nothing was written to {fmt_path(out)} (the files appear only "
                          "when the pretraining has finished)")
        sys.exit(130)
    r = result.record
    for note in r["notes"]:
        console.print(f"[dim]{note}[/]", highlight=False)
    ret = r["retrieval"]
    console.print(f"[green]wrote[/] {fmt_path(result.r3m)}, {fmt_path(result.avid)} and "
                  f"{fmt_path(result.record_path)}: {r['moments']} moments of {len(r['episodes'])} episode(s), "
                  f"InfoNCE {result.losses[0]:.4g} -> {result.losses[-1]:.4g} (chance {r['chance_loss']:.3g})")
    if ret["after"]:
        b, a = ret["before"], ret["after"]
        console.print(f"audio->frames top-1 in batches of {a['batch']} on the {ret['on']}: "
                      f"{b['audio_to_video_top1']:.0%} before, {a['audio_to_video_top1']:.0%} after "
                      f"(chance {a['chance_top1']:.0%})", highlight=False)


@contextlib.contextmanager
def _epoch_bar(total: int | None, label: str = "BYOL-A") -> Iterator[Callable[..., None]]:
    """A bar of epochs (or steps) with the loss; yields update(done, loss) or update(done, total, loss)."""
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=not err_console.is_terminal) as p:
        task = p.add_task("", total=total, loss="-")

        def update(done: int, *rest: float) -> None:
            *of, loss = rest
            p.update(task, completed=done, loss=f"{loss:.4g}", **({"total": of[0]} if of else {}))

        yield update
