#!/usr/bin/env python
"""Packed episodes: files per episode, bytes, and random training-sample reads, packed against unpacked.

One run records episodes of two lengths (the data of tools/bench_store.py: 640x480 photo-video frames with sensor
noise, JPEG q90, 4 channels of contact-like audio at 32 kHz, state, actions, teleop) and stores each four ways,
side by side:

- unpacked: the directory `EpisodeWriter` commits (Zarr format 2, one file per chunk);
- zip, htouch: the file `htouch pack` writes, read by htouch's reader (packed.py: members read with os.pread);
- zip, zarr ZipStore: the same file read through `zarr.storage.ZipStore` (what plain zarr uses);
- v3 sharded: the same arrays copied into a Zarr format-3 group, each array one shard of its original chunks
  (same codecs: JPEG for frames, Blosc zstd for the rest), i.e. the fewest files sharding can give.

For each it counts files and bytes (and the disk blocks they take), times opening the episode, and times random
training samples (`Episode.sample`: 4 frames, a 2 s audio clip, state and actions) taking turns between the four
stores, from a warm page cache. The machine is shared with a running experiment, so the report gives ratios to
the unpacked store measured in the same run. Pinned to one core. All data goes into a temporary directory that
is removed at the end.

    .venv/bin/python tools/bench_pack.py                 # 14 s and 60 s episodes, writes docs/bench-pack.md
    .venv/bin/python tools/bench_pack.py --quick --frame-size 64x48 --out /tmp/b.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_store import (  # noqa: E402
    PhotoVideo,
    Recording,
    audio_pool,
    machine_info,
    parse_size,
    pin_to_cpu,
    write_episode,
)

STORES = ("unpacked", "zip, htouch", "zip, zarr ZipStore", "v3 sharded")
ROUNDS = 5  # the samples are read in rounds; the report gives the spread of the speed ratio over the rounds


def files_and_bytes(path: Path) -> tuple[int, int, int]:
    """(files, bytes, bytes of the disk blocks they take) below `path`, or of the file itself."""
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    sts = [p.stat() for p in paths]
    return len(sts), sum(s.st_size for s in sts), sum(s.st_blocks * 512 for s in sts)


def v3_codecs() -> Any:
    """A zarr format-3 codec for the frames' JPEG (imagecodecs' numcodecs codec behind zarr's wrapper)."""
    from zarr.codecs.numcodecs._codecs import _NumcodecsArrayBytesCodec
    from zarr.registry import register_codec

    class Jpeg(_NumcodecsArrayBytesCodec, codec_name="imagecodecs_jpeg"):
        pass

    register_codec(Jpeg.codec_name, Jpeg)
    return Jpeg


def write_sharded(src: Any, out: Path, quality: int) -> None:
    """A copy of the episode group `src` as a Zarr format-3 group: every array one shard holding its chunks."""
    import zarr
    from zarr.codecs import BloscCodec

    jpeg = v3_codecs()
    root = zarr.open_group(str(out), mode="w", zarr_format=3)
    root.attrs.update(src.attrs.asdict())

    def copy(group: Any, prefix: str) -> None:
        for name, item in group.members():
            path = f"{prefix}{name}"
            if isinstance(item, zarr.Group):
                root.require_group(path)
                copy(item, path + "/")
                continue
            n, c = item.shape[0], item.chunks[0]
            shard = (max(-(-n // c), 1) * c, *item.chunks[1:])
            kw: dict[str, Any] = ({"serializer": jpeg(level=quality), "compressors": None} if item.ndim == 4
                                  else {"compressors": BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")})
            arr = root.create_array(path, shape=item.shape, dtype=item.dtype, chunks=item.chunks, shards=shard,
                                    fill_value=item.fill_value, **kw)
            arr[...] = item[...]

    copy(src, "")


def open_store(kind: str, path: Path, zip_path: Path, v3_path: Path, ds: Any) -> Any:
    """The episode as Episode.sample reads it, from one of the four stores."""
    import zarr

    from htouch.dataset.episode import Episode

    if kind == "unpacked":
        return ds.episode(int(path.name.split("_")[1]))
    if kind == "zip, htouch":
        from htouch.dataset.packed import open_packed
        from htouch.dataset.structure import open_episode

        return open_episode(open_packed(zip_path), dataset=ds)
    ep = Episode.__new__(Episode)  # the same reader over another zarr store (what Episode.__init__ sets)
    ep.path, ep.dataset = path, ds
    ep._arrays, ep._decoded = {}, {}
    if kind == "zip, zarr ZipStore":
        ep.group = zarr.open_group(zarr.storage.ZipStore(zip_path, mode="r"), mode="r", zarr_format=2)
    else:
        ep.group = zarr.open_group(str(v3_path), mode="r", zarr_format=3)
    ep.attrs = ep.group.attrs.asdict()["htouch_episode"]
    from htouch.dataset.schema import StreamSpecs

    ep.streams = StreamSpecs.from_dict(ep.attrs["rig"])
    return ep


def raw_reads(path: Path, zip_path: Path, rng: np.random.Generator, n: int) -> dict[str, float]:
    """Microseconds to read one stored chunk's bytes (no decoding), random chunks, the stores taking turns: the
    storage's own cost, which sample reads hide under JPEG decoding. The sharded store has no per-chunk file."""
    import zipfile

    from htouch.dataset.packed import open_packed

    names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    archive = open_packed(zip_path).archive
    zf = zipfile.ZipFile(zip_path)
    read = {"unpacked": lambda m: (path / m).read_bytes(), "zip, htouch": archive.read, "zip, zarr ZipStore": zf.read}
    spent: dict[str, list[float]] = {k: [] for k in read}
    for j, m in enumerate(rng.choice(names, n)):
        kinds = list(read)
        for kind in kinds[j % 3:] + kinds[:j % 3]:
            t0 = time.perf_counter()
            read[kind](str(m))
            spent[kind].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e6 for k, v in spent.items()}


def run(lengths: list[float], samples: int, opens: int, width: int, height: int, tmp: Path, log: Any) -> dict:
    from htouch.dataset.episode import SampleParams
    from htouch.dataset.packed import pack_episode
    from htouch.dataset.schema import CameraSpec, StreamSpecs
    from htouch.dataset.store import Dataset

    streams = StreamSpecs(name="bench", camera=CameraSpec(width=width, height=height))
    log(f"generating {min(300, int(max(lengths) * 30))} photo-video frames at {width}x{height}")
    frames = PhotoVideo(width, height).pool(min(300, int(max(lengths) * streams.camera.rate_hz)))
    audio = audio_pool(streams.audio.rate_hz, streams.audio.channels, 10.0)
    plain = Dataset.create(tmp / "plain", "bench", streams)
    packed = Dataset.create(tmp / "packed", "bench", streams)
    out: dict[str, Any] = {"lengths": lengths, "episodes": []}
    params = SampleParams()
    for k, seconds in enumerate(lengths):
        log(f"recording a {seconds:g} s episode")
        path, _ = write_episode(plain, Recording(streams, seconds, frames, audio, seed=k))
        copy = packed.root / path.name
        import shutil

        shutil.copytree(path, copy)
        t0 = time.perf_counter()
        pack_episode(packed, int(path.name.split("_")[1]))
        pack_s = time.perf_counter() - t0
        zip_path = packed.root / f"{path.name}.zip"
        v3_path = tmp / "v3" / path.name
        log(f"{seconds:g} s: packed in {pack_s:.2f} s; writing the v3 sharded copy")
        write_sharded(plain.episode(int(path.name.split("_")[1])).group, v3_path, streams.camera.quality)
        sizes = {"unpacked": files_and_bytes(path), "zip, htouch": files_and_bytes(zip_path),
                 "zip, zarr ZipStore": files_and_bytes(zip_path), "v3 sharded": files_and_bytes(v3_path)}
        # opening: a fresh Dataset each time, so the structural checks run (htouch's stores) every time
        open_s: dict[str, list[float]] = {s: [] for s in STORES}
        for _ in range(opens):
            for kind in STORES:
                ds = Dataset(plain.root)
                t0 = time.perf_counter()
                open_store(kind, path, zip_path, v3_path, ds)
                open_s[kind].append(time.perf_counter() - t0)
        readers = {kind: open_store(kind, path, zip_path, v3_path, plain) for kind in STORES}
        times = readers["unpacked"].sample_times(params)
        rng = np.random.default_rng(k)
        picks = [int(t) for t in rng.choice(times, samples)]
        ref = readers["unpacked"].sample(picks[0], params)
        for kind, ep in readers.items():  # the same answer from every store, or the comparison means nothing
            got = ep.sample(picks[0], params)
            # the sharded copy's frames were decoded and encoded again (same JPEG quality): close, not equal
            close = float(np.abs(got.frames.astype(float) - ref.frames).mean()) < 3 if kind == "v3 sharded" else \
                np.array_equal(got.frames, ref.frames)
            if not (close and np.array_equal(got.audio, ref.audio) and np.array_equal(got.actions, ref.actions)):
                raise RuntimeError(f"{kind} returns another sample than the unpacked episode")
        log(f"{seconds:g} s: {samples} random samples from each store, taking turns")
        # Medians, not means: on the loaded machine a sample now and then waits for the CPU for a second.
        spent: dict[str, list[float]] = {s: [] for s in STORES}
        rounds: list[dict[str, list[float]]] = []  # the sample times of each of ROUNDS rounds
        for j, t in enumerate(picks):
            if j % -(-samples // ROUNDS) == 0:
                rounds.append({s: [] for s in STORES})
            order = STORES[j % 4:] + STORES[:j % 4]  # rotate so that none always goes first
            for kind in order:
                t0 = time.perf_counter()
                readers[kind].sample(t, params)
                dt_s = time.perf_counter() - t0
                spent[kind].append(dt_s)
                rounds[-1][kind].append(dt_s)
        med = statistics.median
        ratios = {s: sorted(med(r["unpacked"]) / med(r[s]) for r in rounds) for s in STORES}
        chunk_us = raw_reads(path, zip_path, rng, 20 * samples)
        out["episodes"].append({"seconds": seconds, "sizes": sizes, "pack_s": pack_s,
                                "open_ms": {s: statistics.median(v) * 1e3 for s, v in open_s.items()},
                                "rate": {s: 1 / med(spent[s]) for s in STORES}, "ratios": ratios,
                                "chunk_us": chunk_us})
    out["samples"], out["opens"], out["width"], out["height"] = samples, opens, width, height
    return out


def _us(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def build_report(res: dict[str, Any]) -> str:
    lines = [
        "# Packed episodes",
        "",
        f"Measured {res['date']} by `{res['command']}` ({res['elapsed_s']:.0f} s; load average {res['load_start']} "
        f"at the start, {res['load_end']} at the end: the machine is shared with a running experiment, so compare "
        "the ratios, measured in the same run, rather than the absolute figures).",
        "",
        f"Episodes recorded through `EpisodeWriter` at {res['width']}x{res['height']} (photo-video frames with "
        "sensor noise, JPEG q90; 4 channels at 32 kHz; state, actions, teleop), then stored four ways: **unpacked** "
        "(the committed directory), the zip `htouch pack` writes read by **htouch** (members read at their offset) "
        "and by **zarr's ZipStore**, and a **Zarr format-3 copy with sharding** (each array one shard of its "
        "original chunks, same codecs, the frames encoded again at the same quality: the fewest files sharding "
        "gives). Samples are `Episode.sample` (4 frames "
        f"over 2 s, a 2 s clip, state, 8 actions) at {res['samples']} random frame times, the four stores taking "
        "turns, from a warm page cache; samples/s is one over the median time of a sample (the shared machine "
        f"now and then stalls one for a second), in {ROUNDS} rounds (the range of the speed ratio over the "
        "rounds shows how much the shared machine moves it); the last column is the storage alone: the median "
        f"time to read the bytes of one chunk ({20 * res['samples']} random chunks, not decoded: opening and "
        "reading a chunk file, or one member of the zip), the stores taking turns; opening is the median of "
        f"{res['opens']} (htouch's stores include the structural checks every reader runs).",
        "",
        "| episode | store | files | MB | MB on disk | open ms | samples/s | read speed vs unpacked (rounds) | "
        "µs per chunk read |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in res["episodes"]:
        base = e["rate"]["unpacked"]
        for kind in STORES:
            files, size, disk = e["sizes"][kind]
            r = e["ratios"][kind]
            lines.append(f"| {e['seconds']:g} s | {kind} | {files} | {size / 1e6:.1f} | {disk / 1e6:.1f} | "
                         f"{e['open_ms'][kind]:.1f} | {e['rate'][kind]:.0f} | {e['rate'][kind] / base:.2f} "
                         f"({r[0]:.2f}-{r[-1]:.2f}) | {_us(e['chunk_us'].get(kind))} |")
    pack = ", ".join(f"{e['seconds']:g} s episode in {e['pack_s']:.2f} s" for e in res["episodes"])
    zip_ratios = [e["rate"]["zip, htouch"] / e["rate"]["unpacked"] for e in res["episodes"]]
    zip_open = [e["open_ms"]["zip, htouch"] / e["open_ms"]["unpacked"] for e in res["episodes"]]
    zip_chunk = [e["chunk_us"]["unpacked"] / e["chunk_us"]["zip, htouch"] for e in res["episodes"]]
    zip_files = max(e["sizes"]["zip, htouch"][0] for e in res["episodes"])
    v3_files = min(e["sizes"]["v3 sharded"][0] for e in res["episodes"])
    lines += [
        "",
        "## Choice",
        "",
        f"Goal: at most 5 files per episode whatever its length, read speed no worse than unpacked. The zip is "
        f"{zip_files} file per episode at any length, with htouch's reader at {min(zip_ratios):.2f}-"
        f"{max(zip_ratios):.2f} times the unpacked read speed (1 is equal; see the spread over the rounds: the "
        "samples' time is mostly JPEG decoding, the same in every store), reading a chunk's bytes "
        f"{min(zip_chunk):.1f}-{max(zip_chunk):.1f} times as fast as from its file, and "
        f"opening in {min(zip_open):.2f}-{max(zip_open):.2f} of the time (one central directory instead of listing "
        "every chunk file); format-3 sharding cannot go below one metadata "
        f"file per array and group plus one shard per array ({v3_files} files here, whatever the length), and it "
        "would change the format every reader, the validator and the plain-zarr snippet know (format 2). So "
        "`htouch pack` writes the zip (docs/format.md, \"Packed episodes\").",
        "",
        f"Packing itself (verify the directory against its manifest, write, fsync, verify the zip, rename, remove "
        f"the directory): {pack}.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in res["machine"].items()],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (2 s and 4 s episodes, few samples)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-pack.md", help="markdown report path")
    ap.add_argument("--samples", type=int, default=None, help="random samples per store and episode (default 300)")
    ap.add_argument("--frame-size", type=parse_size, default=(640, 480), help="camera frame size, WxH")
    args = ap.parse_args(argv)
    lengths = [2.0, 4.0] if args.quick else [14.0, 60.0]
    samples = args.samples or (20 if args.quick else 300)
    if samples < 1:
        ap.error("--samples must be at least 1")
    cpu = max(os.sched_getaffinity(0))
    pin_to_cpu(cpu)
    warnings.filterwarnings("ignore", module="zarr")  # format 3 with numcodecs codecs and string dtypes: known

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        console.print(f"[dim]{time.perf_counter() - t_start:6.1f} s[/]  {msg}")

    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="htouch-bench-") as tmpdir:
        res = run(lengths, samples, 3 if args.quick else 10, *args.frame_size, Path(tmpdir), log)
    res.update(machine=machine_info(cpu), elapsed_s=time.perf_counter() - t_start, load_start=load_start,
               load_end=" ".join(f"{x:.2f}" for x in os.getloadavg()),
               date=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
               command=shlex.join([".venv/bin/python", "tools/bench_pack.py",
                                   *(sys.argv[1:] if argv is None else argv)]))
    table = Table(title="packed episodes (read speed relative to unpacked, same run)")
    for col in ("episode", "store", "files", "MB", "open ms", "samples/s", "vs unpacked"):
        table.add_column(col)
    for e in res["episodes"]:
        for kind in STORES:
            files, size, _ = e["sizes"][kind]
            table.add_row(f"{e['seconds']:g} s", kind, str(files), f"{size / 1e6:.1f}", f"{e['open_ms'][kind]:.1f}",
                          f"{e['rate'][kind]:.0f}", f"{e['rate'][kind] / e['rate']['unpacked']:.2f}")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(build_report(res))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
