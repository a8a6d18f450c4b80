"""Commands for data derived from the episodes and kept beside them: split, stats, spectrogram, frames."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from htouch.cli import app
from htouch.cli.common import (
    DatasetArgument,
    LocalDatasetArgument,
    console,
    err_console,
    fmt_path,
    local_path,
    progress_bar,
)
from htouch.dataset.audio import DEFAULT_CLIP, DEFAULT_MAX_WINDOWS, SPECTROGRAM_KINDS, params_key, spectrogram_params
from htouch.dataset.files import read_json
from htouch.dataset.schema import METADATA_FILE
from htouch.dataset.split import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_VAL_FRACTION,
    SPLIT_KEY,
    check_split_args,
    split_dataset,
    success_label,
)
from htouch.dataset.store import find_dataset
from htouch.errors import DatasetError, HtouchError
from htouch.training.methods import DEFAULT_METHOD, METHOD_SPECS

KINDS = ", ".join(SPECTROGRAM_KINDS)


def _num(v: float) -> str:
    return f"{v:.4g}"


@app.command()
def split(
    dataset: str = LocalDatasetArgument,
    val: float = typer.Option(DEFAULT_VAL_FRACTION, "--val",
                              help="Fraction of each stratum for validation, in (0, 1)."),
    seed: int = typer.Option(DEFAULT_SPLIT_SEED, "--seed",
                             help="Seed of the shuffle; the same seed gives the same split."),
    as_json: bool = typer.Option(False, "--json", help="Print the stored split (as in htouch.json) as JSON."),
) -> None:
    """Split the episodes into train and validation, stratified by success label and variation.

    Only indices are stored, in htouch.json under "split"; no data is copied.

    A stratum of n episodes sends round(val * n) (half up, at most n - 1) to validation: one episode alone trains.

    Example: [bold]htouch split demo_data --val 0.2 --seed 0[/]
    """
    check_split_args(val, seed)
    ds = find_dataset(local_path(dataset, "htouch split"))
    result = split_dataset(ds, val, seed)
    if as_json:
        print(json.dumps(read_json(ds.root / METADATA_FILE, "dataset metadata")[SPLIT_KEY], indent=2))
        if not result.val:
            err_console.print(f"warning: no validation episode at --val {val:g}", highlight=False)
        return
    table = Table(title=f"split of {fmt_path(ds.root)}  (val {val:g}, seed {seed})", title_justify="left")
    for col, justify in [("success", "left"), ("variation", "left"), ("episodes", "right"), ("train", "right"),
                         ("val", "right"), ("val episodes", "left")]:
        table.add_column(col, justify=justify)
    for s in result.strata:
        table.add_row(success_label(s.success), s.variation, str(len(s.train) + len(s.val)), str(len(s.train)),
                      str(len(s.val)), " ".join(map(str, s.val)))
    table.add_section()
    table.add_row("[bold]all[/]", "", str(len(result.train) + len(result.val)), str(len(result.train)),
                  str(len(result.val)), "")
    console.print(table)
    if not result.val:
        err_console.print(f"[yellow]warning:[/] no stratum is large enough to give a validation episode at "
                          f"--val {val:g}; the validation set is empty")


@app.command()
def spectrogram(
    dataset: str = LocalDatasetArgument,
    kind: str = typer.Option(METHOD_SPECS[DEFAULT_METHOD].audio_kind, "--kind", "-k",
                             help=f"Spectrogram front end: {KINDS} (default: the one the default method, "
                             f"{DEFAULT_METHOD}, reads)."),
    force: bool = typer.Option(False, "--force", help="Recompute caches that are already up to date."),
) -> None:
    """Cache the spectrogram of the audio window ending at every camera frame, beside the episodes.

    Stored in DATASET/derived/spectrograms/<parameters key>/; the episodes themselves are never modified.

    Training reads a cache only if its parameters and time stamps match, else computes the same values.

    Re-running skips the caches that are up to date.

    Example: [bold]htouch spectrogram demo_data --kind avid[/]
    """
    from htouch.dataset import rowcache, spectrograms

    params = spectrogram_params(kind)
    ds = find_dataset(local_path(dataset, "htouch spectrogram (caching spectrograms)"))
    ds.require_audio("htouch spectrogram")
    jobs = spectrograms.plan(ds, params, DEFAULT_CLIP, force)
    if not jobs:
        raise DatasetError(f"dataset {ds.root} has no episodes")
    todo = [j for j in jobs if j.needed]
    key_dir = spectrograms.key_dir(ds.root, params, DEFAULT_CLIP)
    if todo:
        with progress_bar(f"{params.kind} spectrograms of {len(todo)} episode(s)", sum(j.frames for j in todo)) as adv:
            for job in todo:
                spectrograms.build(job.episode, params, DEFAULT_CLIP, progress=adv)
    stale = sum(j.status.startswith("stale") for j in todo)
    shape = spectrograms.spectrogram_shape(params, DEFAULT_CLIP)
    console.print(f"[green]{params.kind}[/] {params_key(DEFAULT_CLIP, params)}: {len(todo)} episode(s) computed"
                  f"{f' ({stale} stale)' if stale else ''}, {len(jobs) - len(todo)} up to date; "
                  f"{sum(j.frames for j in jobs)} frames of shape {shape} in {fmt_path(key_dir)} "
                  f"({rowcache.dir_size(key_dir) / 1e6:.1f} MB)")


@app.command()
def frames(
    dataset: str = LocalDatasetArgument,
    preset: str = typer.Option("paper", "--preset",
                               help="Cache the sizes this model preset reads: its image size and, for augmented "
                               "samples, 8/7 of it (paper: 224 and 256 px; tiny: 64 and 73 px)."),
    size: list[int] = typer.Option(None, "--size", "-s", show_default=False,
                                   help="Cache these sizes instead (pixels, square; repeatable)."),
    verify: bool = typer.Option(False, "--verify", help="Hash every cached frame and rebuild damaged caches."),
    force: bool = typer.Option(False, "--force", help="Rebuild caches that are already up to date."),
) -> None:
    """Cache every camera frame resized to the sizes training reads, beside the episodes.

    Training then reads frames from the cache (the same bytes, without decoding JPEGs or resizing).

    Stored uncompressed in DATASET/derived/frames/<size>px/: about 150 kB a frame at 224 px, 197 kB at 256 px.

    The episodes themselves are never modified. Re-running skips the caches that are up to date.

    Example: [bold]htouch frames demo_data --preset paper[/]
    """
    from htouch.dataset import frames as frame_cache
    from htouch.dataset import rowcache
    from htouch.training.data import DataSpec
    from htouch.training.methods import policy_config

    if size:
        bad = [s for s in size if s < 8]
        if bad:
            raise HtouchError(f"--size must be at least 8 pixels, got {bad[0]}")
        sizes = sorted(set(size))
    else:
        spec = DataSpec.from_policy(policy_config(preset, "vision-only"))
        sizes = [spec.image_size, spec.load_size]
    ds = find_dataset(local_path(dataset, "htouch frames (caching frames)"))
    for s in sizes:
        jobs = frame_cache.plan(ds, s, force=force, check=verify)
        if not jobs:
            raise DatasetError(f"dataset {ds.root} has no episodes")
        todo = [j for j in jobs if j.needed]
        if todo:
            with progress_bar(f"{s} px frames of {len(todo)} episode(s)", sum(j.frames for j in todo)) as adv:
                for job in todo:
                    frame_cache.build(job.episode, s, progress=adv)
        stale = sum(j.status.startswith("stale") for j in todo)
        damaged = sum(j.status.startswith("damaged") for j in todo)
        notes = ", ".join(f"{n} {what}" for n, what in ((stale, "stale"), (damaged, "damaged")) if n)
        key_dir = frame_cache.key_dir(ds.root, s)
        console.print(f"[green]{s} px[/]: {len(todo)} episode(s) built{f' ({notes})' if notes else ''}, "
                      f"{len(jobs) - len(todo)} up to date; {sum(j.frames for j in jobs)} frames in "
                      f"{fmt_path(key_dir)} ({rowcache.dir_size(key_dir) / 1e6:.1f} MB)")


@app.command()
def stats(
    dataset: str = DatasetArgument,
    kind: list[str] = typer.Option(None, "--kind", "-k", show_default=False,
                                   help=f"Spectrogram kinds to describe (repeatable; default all: {KINDS})."),
    windows: int = typer.Option(DEFAULT_MAX_WINDOWS, "--windows",
                                help="Spectrogram windows in the deterministic subsample."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics (as stored in htouch.json) as JSON."),
) -> None:
    """Compute normalisation statistics of state, actions and spectrograms, stored in the dataset metadata.

    Per dimension (per frequency bin for spectrograms): mean, std, min, max, 1/5/50/95/99 % quantiles.

    Computed over the train split if there is one, else over all episodes.

    Spectrograms are read from the cache when every episode has one, else a fixed subsample is computed.

    A dataset at a URL is only read: the statistics are printed, not stored.

    Example: [bold]htouch stats demo_data --kind logmel[/]
    """
    from htouch.dataset.stats import QUANTILE_KEYS, STATS_KEY, compute_stats, store_stats  # numpy: not at start

    kinds = [spectrogram_params(k).kind for k in (kind or list(SPECTROGRAM_KINDS))]
    if windows < 1:
        raise HtouchError(f"--windows must be at least 1, got {windows}")
    ds = find_dataset(dataset)
    if not kind and not ds.streams.has_audio:
        kinds = []  # no microphones: state and actions only
    result, notes = compute_stats(ds, kinds, DEFAULT_CLIP, windows, progress_bar=progress_bar)
    if not ds.remote:
        store_stats(ds, result)
    if as_json:  # stdout holds only the JSON
        print(json.dumps(result, indent=2))
        for note in notes:
            err_console.print(f"note: {note}", highlight=False, markup=False)
        return

    table = Table(title=f"state and action statistics of {fmt_path(ds.root)}", title_justify="left")
    for col in ("array", "dim", "mean", "std", "min", *QUANTILE_KEYS, "max"):
        table.add_column(col, justify="left" if col == "array" else "right", no_wrap=col == "array")
    for stream in ("state", "action"):
        for name, d in result[stream].items():
            for i in range(len(d["mean"])):
                table.add_row(f"{stream}/{name}" if i == 0 else "", str(i),
                              *(_num(d[k][i]) for k in ("mean", "std", "min", *QUANTILE_KEYS, "max")))
        table.add_section()
    console.print(table)

    if result["spectrogram"]:
        table = Table(title="spectrograms, per frequency bin (ranges over bins)", title_justify="left")
        for col in ("kind", "source", "windows", "bins", "mean", "std", "min", "q50", "max"):
            table.add_column(col, justify="left" if col in ("kind", "source") else "right")
        for k, d in result["spectrogram"].items():
            windows_text = (f"{d['windows']} (quantiles {d['quantile_windows']})" if d["source"] == "cache"
                            else f"{d['windows']} of {d['windows_total']}")
            table.add_row(k, d["source"], windows_text, str(d["bins"]),
                          *(f"{_num(min(d[s]))} .. {_num(max(d[s]))}" for s in ("mean", "std")),
                          _num(min(d["min"])), f"{_num(min(d['q50']))} .. {_num(max(d['q50']))}", _num(max(d["max"])))
        console.print(table)
    where = ("not stored: the dataset is at a URL, which htouch only reads (run `htouch stats` on a local copy "
             "to store them)") if ds.remote else f"stored in htouch.json under {STATS_KEY!r}"
    console.print(f"computed on the {result['episode_set']} ({len(result['episodes'])} episodes); {where}")
    for note in notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}")
