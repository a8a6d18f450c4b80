"""`htouch validate`: check that episodes hold what the schema promises and that the data is usable.

Every finding names a check, a severity, the episode, the stream or array, the time (seconds since the
episode start) where it applies, and one line of explanation. Errors make an episode unfit for training
(unreadable chunks, broken time stamps, NaN, dead microphones, too short); warnings are worth knowing but
normal on real rigs (a dropped frame, clock drift, a missing label). The synthetic generator's planted frame
drops and 20 ppm audio drift are warnings at most, so a fresh `htouch synth` dataset validates cleanly.

It starts with the structural checks every reader runs (structure.py: no links or special files, arrays as the
schema says, chunk files present and bounded, time order), on every array read fully, then hashes the files
against the manifest and checks the data. Each array is read once; frames are decoded in batches so that memory
stays bounded for long episodes. All thresholds live in `ValidationLimits`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from htouch.dataset.episode import Episode, SampleParams
from htouch.dataset.location import UrlPath, location
from htouch.dataset.manifest import EXTRA, MANIFEST_FILE, MISSING, ManifestError, read_manifest, verify_files
from htouch.dataset.packed import ZipPath, interrupted_packs
from htouch.dataset.schema import (
    EVENT_KINDS,
    METADATA_FILE,
    NS,
    TIMED_AXES,
    ArraySpec,
    StreamSpecs,
)
from htouch.dataset.store import Dataset, dataset_links, find_dataset, resolve_episode_path
from htouch.dataset.structure import (  # noqa: F401 - stored_chunks: kept importable from here
    ERROR,
    WARNING,
    Finding,
    StructureCheck,
    chunk_index,
    stored_chunks,
    timestamp_spec,
    unsafe_files,
)
from htouch.dataset.summary import dropped_frames, measured_rate_hz
from htouch.dataset.writer import is_being_written, lock_path

INT16_EXTREMES = (np.iinfo(np.int16).min, np.iinfo(np.int16).max)
GAUSS_MAD = 1.4826  # MAD -> standard deviation for normal data
GAUSS_90 = 3.29  # width of the central 90 % of a normal distribution, in standard deviations
PARTIAL_SUFFIX = ".partial"  # zarr writes a chunk to NAME.<hex>.partial, then renames it to NAME


@dataclass(frozen=True)
class ValidationLimits:
    """Every threshold of the validator, in one place."""

    frame_gap_factor: float = 1.5  # a camera interval over this many nominal periods is a gap
    rate_tolerance: float = 0.05  # measured rate vs the rig's nominal rate, relative
    audio_drift_ppm: float = 500.0  # audio clock vs host clock, from a fit of block times vs sample offsets
    clipped_fraction: float = 0.001  # share of a channel's samples at the int16 extremes
    dead_channel_std: float = 0.5  # counts; a channel quieter than this is dead or stuck
    dc_offset_fraction: float = 0.25  # |mean - AudioSpec.center| over this share of AudioSpec.scale
    action_jump_sigmas: float = 5.0  # a delta_ee value this many robust std from the median is a jump
    action_jump_min_scale: float = 1e-6  # floor of the robust std (m or rad per step), against all-equal series
    frozen_camera_s: float = 0.5  # identical consecutive frames for longer than this
    sample: SampleParams = SampleParams()  # an episode must hold at least one training sample of this shape
    max_reports: int = 5  # findings of one check per episode and array; the rest are summed up in one more
    frame_batch: int = 32  # frames decoded at a time


DEFAULT_LIMITS = ValidationLimits()


@dataclass(frozen=True)
class ChecksumOptions:
    """How files are checked against the episode's manifest."""

    contents: bool = True  # hash every file; False (`validate --quick`) checks presence and sizes only
    progress: Callable[[int], None] | None = None  # called with the bytes of each file hashed


# Check ids and what they mean (the ids are stable: scripts may filter on them).
CHECKS = {
    "dataset.incomplete": "an episode left in .incoming by a crashed or aborted writer",
    "episode.unreadable": "the episode group or its attributes cannot be read",
    "episode.schema": "schema version missing or not supported",
    "episode.status": "the episode was not committed normally",
    "episode.salvaged": "the episode was salvaged after a crash and ends at the writer's last flush",
    "episode.rig": "the episode's rig differs from the dataset's",
    "episode.short": "no training sample fits in the episode",
    "episode.empty": "the episode holds no rows at all",
    "label.missing": "no success label",
    "dataset.link": "a symbolic link among the dataset's own folders and files (.incoming, .quarantine, derived, "
                    "lock files): htouch neither reads nor writes through it",
    "episode.files": "a symbolic link, FIFO, device or oversized metadata file in an episode (it is not read)",
    "episode.packed": "a packed episode file that is not a sound zip (truncated, damaged, compressed or linked "
                      "members, names leaving the episode): it is not read",
    "episode.pack": "an interrupted `htouch pack` left a temporary file or the directory beside the packed file "
                    "(harmless: readers use the packed file; `htouch pack` again clears it)",
    "checksum.none": "the episode has no checksum manifest (committed by an htouch without checksums)",
    "checksum.manifest": "the checksum manifest is missing (the episode was committed with one) or damaged",
    "checksum.missing": "a file listed in the manifest is missing",
    "checksum.mismatch": "a file's size or content differs from the manifest, or it cannot be read (damaged)",
    "checksum.extra": "a file the manifest does not list (not part of the recording; htouch does not read it)",
    "array.missing": "a schema array is missing",
    "array.dtype": "an array has the wrong dtype",
    "array.shape": "an array has the wrong trailing shape (frame size, audio channels, ... as the rig says)",
    "array.layout": "an array's chunks are not whole rows, or larger than the schema allows",
    "array.chunk": "a chunk file is missing, larger than a chunk can be, or does not decode",
    "array.length": "arrays sharing a time axis have different lengths",
    "stream.empty": "a stream has no rows",
    "time.order": "time stamps not strictly increasing",
    "time.overlap": "streams that do not overlap in time",
    "camera.gap": "an interval between frames over frame_gap_factor nominal periods",
    "camera.frame_number": "frame numbers not increasing",
    "camera.frozen": "identical consecutive frames for longer than frozen_camera_s",
    "rate.off": "measured rate off the nominal rate by more than rate_tolerance",
    "audio.blocks": "block offsets inconsistent with the PCM",
    "audio.gap": "audio missing between two blocks",
    "audio.overflow": "the device reported lost input",
    "audio.drift": "the audio clock drifts against the host clock",
    "audio.clipped": "samples at the int16 extremes",
    "audio.dead": "a dead or constant channel",
    "audio.dc": "a channel's mean far from AudioSpec.center",
    "values.nonfinite": "NaN or Inf in state, action or teleop values",
    "action.jump": "an action step far outside the episode's usual steps",
    "events.unknown": "event kinds htouch does not know",
}


@dataclass
class Report:
    dataset: Path
    episodes: list[str] = field(default_factory=list)  # committed episodes checked
    findings: list[Finding] = field(default_factory=list)
    live: list[str] = field(default_factory=list)  # incoming episodes a writer is still writing (skipped)

    @property
    def errors(self) -> int:
        return sum(f.severity == ERROR for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.severity == WARNING for f in self.findings)

    def failed(self, strict: bool = False) -> bool:
        return self.errors > 0 or (strict and self.warnings > 0)


# ------------------------------------------------------------------------------------------------ helpers


def chunk_of(file: str, specs: list[ArraySpec]) -> tuple[ArraySpec, int] | None:
    """The schema array and chunk index (along time) of a file given relative to the episode directory
    (`camera/rgb/12.0.0.0`, or `camera/rgb/12/0/0/0` with "/" separators); None for any other file."""
    for spec in specs:
        prefix = spec.path + "/"
        if file.startswith(prefix):
            rest = file[len(prefix):]
            i = chunk_index(rest, "/" if "/" in rest else ".")
            return (spec, i) if i is not None else None
    return None


def _same_frame(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two uint8 frames are identical, compared as bytes: the comparison stops at the first byte that
    differs (within the first row for a camera that sees anything move), where an element-wise comparison
    would allocate and fill a mask of the whole frame first."""
    return a.shape == b.shape and (memoryview(np.ascontiguousarray(a)).cast("B")
                                   == memoryview(np.ascontiguousarray(b)).cast("B"))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D bool array."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def _segment_slope(x: np.ndarray, y: np.ndarray, segment: np.ndarray) -> float | None:
    """Least-squares slope of y on x with a separate intercept per segment (a gap restarts the line)."""
    counts = np.bincount(segment)
    xm = (np.bincount(segment, x) / np.maximum(counts, 1))[segment]
    ym = (np.bincount(segment, y) / np.maximum(counts, 1))[segment]
    dx, dy = x - xm, y - ym
    sxx = float(np.dot(dx, dx))
    return float(np.dot(dx, dy)) / sxx if sxx > 0 else None


# ------------------------------------------------------------------------------------------------ one episode


class _EpisodeCheck(StructureCheck):
    """The structural checks readers run too (structure.py), on every array read fully, then the rest."""

    def __init__(self, ep: Episode, dataset_streams: StreamSpecs | None, limits: ValidationLimits,
                 checksums: ChecksumOptions):
        super().__init__(ep)
        self.dataset_streams = dataset_streams
        self.limits = limits
        self.checksums = checksums

    def read_fully(self, spec: ArraySpec) -> bool:
        return spec.codec != "image"  # frames are decoded in batches by check_frames

    def run(self) -> list[Finding]:
        self.check_checksums()
        self.check_schema_version()
        self.check_attrs()
        self.load_arrays()
        self.check_lengths()
        self.set_start()
        if self.check_empty():
            return self.findings
        self.check_time_order()
        self.check_times()
        self.check_frames()
        self.check_blocks()
        self.check_audio()
        self.check_finite()
        self.check_action_jumps()
        self.check_events()
        self.check_sample_fits()
        return self.findings

    # ---------------------------------------------------------------- files against the manifest

    def check_checksums(self) -> None:
        expected = self.ep.attrs.get("manifest") == MANIFEST_FILE
        for f in checksum_findings(self.ep.path, expected, self.checksums):
            self.findings.append(f)
            found = chunk_of(f.path, self.specs)
            if found is not None:
                spec, chunk = found
                self.chunk_rows.append((f, spec.path, chunk * spec.chunk_len))

    # ---------------------------------------------------------------- metadata

    def check_attrs(self) -> None:
        a = self.ep.attrs
        status = a.get("status")
        if a.get("salvaged"):
            self.add("episode.salvaged", WARNING, "", "salvaged after a crash: it ends at the writer's last flush")
        elif status != "committed":
            self.add("episode.status", WARNING, "", f"status is {status!r}, not 'committed'")
        if a.get("success") is None:
            self.add("label.missing", WARNING, "", "no success label (record one with the operator's keys)")
        mine, theirs = self.ep.streams.to_dict(), self.dataset_streams.to_dict() if self.dataset_streams else None
        if theirs is not None and mine != theirs:
            diff = sorted(k for k, v in mine.items() if theirs.get(k) != v)
            self.add("episode.rig", WARNING, "",
                     f"recorded with a rig different from the dataset's ({', '.join(diff)})")

    def check_empty(self) -> bool:
        lengths = {s: self.arrays[sp.path].shape[0] for s in TIMED_AXES
                   if (sp := timestamp_spec(self.specs, s)) and sp.path in self.arrays}
        if lengths and not any(lengths.values()):
            self.add("episode.empty", ERROR, "", "the episode holds no rows in any stream")
            return True
        for stream, n in lengths.items():
            if n == 0:
                severity = WARNING if stream == "teleop" else ERROR
                self.add("stream.empty", severity, stream, "stream has no rows")
        return False

    # ---------------------------------------------------------------- time stamps, rates, gaps, overlap

    def check_times(self) -> None:
        lim = self.limits
        spans: dict[str, tuple[int, int]] = {}
        for stream in TIMED_AXES:
            t = self.times(stream)
            if t is None or len(t) == 0:
                continue
            spans[stream] = (int(t.min()), int(t.max()))
            if stream in self.disordered:  # reported by check_time_order
                continue
            d = np.diff(t)
            if stream != "audio":
                nominal = self.ep.streams.nominal_rate(stream)
                rate = measured_rate_hz(t)
                if len(t) > 2 and nominal > 0 and abs(rate / nominal - 1) > lim.rate_tolerance:
                    self.add("rate.off", WARNING, stream, f"measured {rate:.2f} Hz, nominal {nominal:g} Hz "
                             f"({(rate / nominal - 1) * 100:+.1f} %)")
            if stream == "camera":
                self.check_frame_gaps(t, d)
        self.check_overlap(spans)

    def check_frame_gaps(self, t: np.ndarray, d: np.ndarray) -> None:
        lim = self.limits
        period_ns = NS / self.ep.streams.camera.rate_hz
        numbers = self.data.get("camera/frame_number")
        jumps = np.diff(numbers) if numbers is not None and len(numbers) == len(t) else None
        if jumps is not None and (jumps <= 0).any():
            i = int(np.flatnonzero(jumps <= 0)[0])
            self.add("camera.frame_number", WARNING, "camera/frame_number",
                     f"frame number does not increase at row {i + 1} ({int(numbers[i])} -> {int(numbers[i + 1])})",
                     int(t[i + 1]))
        gaps = np.flatnonzero(d > lim.frame_gap_factor * period_ns)
        for i in gaps[: lim.max_reports]:
            lost = f"; {int(jumps[i]) - 1} frame(s) lost by frame_number" if jumps is not None else ""
            self.add("camera.gap", WARNING, "camera/timestamp_ns",
                     f"frame gap of {d[i] / 1e6:.1f} ms ({d[i] / period_ns:.1f} periods){lost}", int(t[i]))
        if len(gaps) > lim.max_reports:
            lost = f", {dropped_frames(numbers)} frame(s) lost in all" if jumps is not None else ""
            self.add("camera.gap", WARNING, "camera/timestamp_ns",
                     f"{len(gaps) - lim.max_reports} more frame gaps ({len(gaps)} in all{lost})")

    def check_overlap(self, spans: dict[str, tuple[int, int]]) -> None:
        spans = {s: v for s, v in spans.items() if s in ("camera", "audio", "state", "action", "teleop")}
        if len(spans) < 2:
            return
        late = max(spans, key=lambda s: spans[s][0])
        early = min(spans, key=lambda s: spans[s][1])
        if spans[late][0] > spans[early][1]:
            def fmt(s: str) -> str:
                a, b = ((v - (self.t0 or 0)) / NS for v in spans[s])
                return f"{s} ({a:.2f}..{b:.2f} s)"
            self.add("time.overlap", ERROR, "", f"{fmt(early)} and {fmt(late)} do not overlap in time",
                     spans[late][0])

    # ---------------------------------------------------------------- frames

    def check_frames(self) -> None:
        """Decode every frame (in batches) and look for frozen stretches."""
        lim = self.limits
        arr = self.arrays.get("camera/rgb")
        if arr is None or "camera/rgb" in self.unusable or arr.shape[0] == 0:
            return
        n = arr.shape[0]
        t = self.times("camera")
        same = np.zeros(max(n - 1, 0), bool)
        bad: list[int] = []
        prev = None
        for start in range(0, n, lim.frame_batch):
            stop = min(start + lim.frame_batch, n)
            try:
                batch = arr[start:stop]
            except Exception:  # noqa: BLE001 - find the frames that do not decode
                frames = []
                for i in range(start, stop):
                    try:
                        frames.append(arr[i])
                    except Exception:  # noqa: BLE001
                        bad.append(i)
                        frames.append(None)
                for i, f in enumerate(frames, start):
                    if f is not None and prev is not None and i > 0 and _same_frame(f, prev):
                        same[i - 1] = True
                    prev = f
                continue
            if prev is not None:
                same[start - 1] = _same_frame(batch[0], prev)
            for i in range(start + 1, stop):
                same[i - 1] = _same_frame(batch[i - start], batch[i - start - 1])
            prev = batch[-1]
        if bad:
            self.add("array.chunk", ERROR, "camera/rgb", f"{len(bad)} frame(s) do not decode, first row {bad[0]}",
                     self.time_of("camera", bad[0]))
        period_ns = NS / self.ep.streams.camera.rate_hz
        for a, b in _runs(same):  # frames a..b (inclusive) are all identical
            if t is not None and len(t) == n:
                span, at = int(t[b]) - int(t[a]), int(t[a])
            else:
                span, at = int((b - a) * period_ns), None
            if span > lim.frozen_camera_s * NS:
                self.add("camera.frozen", WARNING, "camera/rgb",
                         f"{b - a + 1} identical frames over {span / NS:.2f} s (frozen camera?)", at)

    # ---------------------------------------------------------------- audio

    def check_audio(self) -> None:
        lim = self.limits
        spec = self.ep.streams.audio
        pcm = self.data.get("audio/pcm")
        offsets = self.data.get("audio/block_offset")
        times = self.data.get("audio/block_timestamp_ns")
        overflow = self.data.get("audio/block_overflow")
        if pcm is not None and len(pcm):
            self.check_channels(pcm)
        if pcm is None or not self.blocks_ok:
            return  # unreadable or inconsistent arrays are reported already
        n = len(pcm)
        if overflow is not None and overflow.any():
            i = int(np.flatnonzero(overflow)[0])
            self.add("audio.overflow", WARNING, "audio/block_overflow",
                     f"{int(overflow.sum())} block(s) flagged: the device lost input", self.time_of("audio", i))
        if len(times) < 2 or (np.diff(times) <= 0).any():
            return  # time stamp problems are reported by check_times
        rate = spec.rate_hz
        lengths = np.diff(np.append(offsets, n))
        block_ns = lengths[:-1] * (NS / rate)
        excess = times[1:] - (times[:-1] + block_ns)
        gaps = np.flatnonzero(excess > block_ns)
        for i in gaps[: lim.max_reports]:
            self.add("audio.gap", WARNING, "audio/block_timestamp_ns",
                     f"{excess[i] / 1e6:.1f} ms of audio missing before block {i + 1} "
                     f"(~{int(round(excess[i] * rate / NS))} samples)", int(times[i] + block_ns[i]))
        if len(gaps) > lim.max_reports:
            lost = float(excess[gaps].sum()) / NS
            self.add("audio.gap", WARNING, "audio/block_timestamp_ns",
                     f"{len(gaps) - lim.max_reports} more gaps ({lost:.2f} s missing in all)")
        segment = np.zeros(len(times), np.int64)
        segment[gaps + 1] = 1
        segment = np.cumsum(segment)
        slope = _segment_slope(offsets.astype(np.float64), (times - times[0]).astype(np.float64), segment)
        if slope is not None:
            ppm = (slope * rate / NS - 1) * 1e6
            if abs(ppm) > lim.audio_drift_ppm:
                span_s = (times[-1] - times[0]) / NS
                self.add("audio.drift", WARNING, "audio/block_timestamp_ns",
                         f"audio clock drifts {ppm:+.0f} ppm against the host clock "
                         f"({abs(ppm) * 1e-6 * span_s * 1e3:.1f} ms over {span_s:.1f} s; measured rate "
                         f"{rate / (1 + ppm * 1e-6):.1f} Hz)")

    def check_channels(self, pcm: np.ndarray) -> None:
        lim = self.limits
        spec = self.ep.streams.audio
        names = spec.channel_names if len(spec.channel_names) == pcm.shape[1] else [
            f"channel {c}" for c in range(pcm.shape[1])]
        clipped = ((pcm == INT16_EXTREMES[0]) | (pcm == INT16_EXTREMES[1])).sum(axis=0) / len(pcm)
        mean = pcm.mean(axis=0, dtype=np.float64)
        std = pcm.std(axis=0, dtype=np.float64)
        for c, name in enumerate(names):
            if std[c] < lim.dead_channel_std:
                what = "constant" if pcm[:, c].min() == pcm[:, c].max() else "nearly constant"
                self.add("audio.dead", ERROR, "audio/pcm", f"{name} is dead: {what} "
                         f"(std {std[c]:.2f} counts, mean {mean[c]:.0f})")
                continue
            if clipped[c] > lim.clipped_fraction:
                self.add("audio.clipped", WARNING, "audio/pcm",
                         f"{name}: {clipped[c] * 100:.2f} % of samples clipped at the int16 extremes")
            if abs(mean[c] - spec.center) > lim.dc_offset_fraction * spec.scale:
                self.add("audio.dc", WARNING, "audio/pcm", f"{name}: mean {mean[c]:.0f} counts is far from the "
                         f"centre {spec.center:g} (scale {spec.scale:g})")

    # ---------------------------------------------------------------- values

    def check_action_jumps(self) -> None:
        """delta_ee is the motion of one control step; a value far from the episode's usual steps is a jump
        (a teleop tracking glitch, say). The gripper target is left out: it switches legitimately."""
        lim = self.limits
        x = self.data.get("action/delta_ee")
        if x is None or len(x) < 10:
            return
        finite = np.isfinite(x).all(axis=1)
        rows = np.flatnonzero(finite)
        v = x[finite]
        med = np.median(v, axis=0)
        mad = GAUSS_MAD * np.median(np.abs(v - med), axis=0)
        q5, q95 = np.percentile(v, [5, 95], axis=0)
        # MAD collapses when most steps are equal (the arm held still); the 5-95 % range does not.
        scale = np.maximum(np.maximum(mad, (q95 - q5) / GAUSS_90), lim.action_jump_min_scale)
        z = np.abs(v - med) / scale
        jump = (z > lim.action_jump_sigmas).any(axis=1)
        if jump.any():
            k = int(np.flatnonzero(jump)[0])
            dim = int(np.argmax(z[k]))
            row = int(rows[k])
            self.add("action.jump", WARNING, "action/delta_ee",
                     f"{int(jump.sum())} step(s) over {lim.action_jump_sigmas:g} robust std from the median; "
                     f"first at row {row}, component {dim} = {v[k, dim]:.4g} (median {med[dim]:.3g}, "
                     f"std {scale[dim]:.3g})", self.time_of("action", row))

    def check_events(self) -> None:
        kinds = self.data.get("events/kind")
        if kinds is None or not len(kinds):
            return
        unknown = sorted({str(k) for k in kinds} - set(EVENT_KINDS))
        if unknown:
            mask = np.isin(kinds.astype(str), unknown)
            i = int(np.flatnonzero(mask)[0])
            t = self.data.get("events/timestamp_ns")
            at = int(t[i]) if t is not None and i < len(t) else None
            self.add("events.unknown", WARNING, "events/kind",
                     f"{int(mask.sum())} event(s) of unknown kind: {', '.join(unknown)}", at)

    def check_sample_fits(self) -> None:
        cam, act = self.times("camera"), self.times("action")
        if cam is None or act is None:
            return
        if (np.diff(cam) <= 0).any() or (np.diff(act) <= 0).any():
            return
        p = self.limits.sample
        if len(self.ep.sample_times(p)) == 0:
            self.add("episode.short", ERROR, "", f"too short for one training sample: {len(cam)} frames and "
                     f"{len(act)} actions; a sample needs {p.horizon} actions from its frame on")


def checksum_findings(path: Path, expected: bool, options: ChecksumOptions = ChecksumOptions()) -> list[Finding]:
    """The episode's files against its manifest: one finding per damaged, missing or unlisted file.
    expected: the episode's attributes say it was committed with a manifest (so a missing one is an error;
    otherwise the episode predates checksums and that is a warning)."""
    name = location(path).name
    try:
        manifest = read_manifest(path)
    except ManifestError as e:
        return [Finding("checksum.manifest", ERROR, name, MANIFEST_FILE, None, f"{e}; the files cannot be verified")]
    except OSError as e:
        return [Finding("checksum.manifest", ERROR, name, MANIFEST_FILE, None, f"cannot be read ({e})")]
    if manifest is None:
        if expected:
            return [Finding("checksum.manifest", ERROR, name, MANIFEST_FILE, None,
                            "missing, though the episode was committed with one; the files cannot be verified")]
        return [Finding("checksum.none", WARNING, name, "", None, "no checksums (committed by an htouch without "
                        "them): damage that still decodes cannot be detected")]
    out = []
    for p in verify_files(path, manifest, contents=options.contents, progress=options.progress):
        check, severity = {MISSING: ("checksum.missing", ERROR), EXTRA: ("checksum.extra", WARNING)}.get(
            p.kind, ("checksum.mismatch", ERROR))
        out.append(Finding(check, severity, name, p.file, None, p.message))
    return out


def validate_episode(path: str | os.PathLike[str], dataset_streams: StreamSpecs | None = None,
                     limits: ValidationLimits = DEFAULT_LIMITS,
                     checksums: ChecksumOptions = ChecksumOptions()) -> list[Finding]:
    """All findings for one episode directory (committed or not); never raises for bad data."""
    path = location(path)
    unsafe = unsafe_files(path)
    if unsafe:  # nothing of it is opened: a link could lead out of the dataset, a FIFO block, /dev/zero never end
        check = "episode.packed" if isinstance(path, ZipPath) else "episode.files"
        return [Finding(check, ERROR, path.name, rel, None, f"{why}; the episode is not read") for rel, why in unsafe]
    try:
        ep = Episode(path)
    except Exception as e:  # noqa: BLE001 - an unreadable episode is a finding, not a crash
        message = str(e) if str(e) else type(e).__name__
        return [*checksum_findings(path, False, checksums),
                Finding("episode.unreadable", ERROR, path.name, "", None, message)]
    try:
        return _EpisodeCheck(ep, dataset_streams, limits, checksums).run()
    except Exception as e:  # noqa: BLE001 - corruption no check foresaw: still a finding
        return [Finding("episode.unreadable", ERROR, path.name, "", None,
                        f"validation stopped: {type(e).__name__}: {e}")]


# ------------------------------------------------------------------------------------------------ datasets


def resolve_target(target: str | None,
                   dataset: str | os.PathLike[str] | None = None) -> tuple[Dataset, list[Path] | None]:
    """What `htouch validate TARGET` means: a dataset directory (all its episodes, returned as None), or one
    committed episode given by name or path (resolved in --dataset, or the dataset found as usual)."""
    if target is None:
        return find_dataset(dataset), None
    if dataset is None and (location(target) / METADATA_FILE).exists():
        return Dataset(target), None
    ds, path = resolve_episode_path(target, dataset)
    return ds, [path]


def incomplete_findings(ds: Dataset, report: Report) -> None:
    """Add a finding for every episode left in .incoming (being written, or left by a crash)."""
    for path in ds.incoming_paths():
        if isinstance(path, UrlPath):  # nothing writes into a dataset at a URL: left by a crash before upload
            report.findings.append(Finding("dataset.incomplete", WARNING, path.name, ".incoming", None,
                                           "incomplete episode (uploaded from a crashed or aborted recording): "
                                           "run htouch validate --repair on the local copy"))
            continue
        if path.is_symlink() or lock_path(path).is_symlink():
            continue  # reported by dataset_links
        if is_being_written(path):
            report.live.append(path.name)
            continue
        report.findings.append(Finding("dataset.incomplete", WARNING, path.name, ".incoming", None,
                                       "incomplete episode left by a crashed or aborted writer: "
                                       "run htouch validate --repair"))


def validate_dataset(ds: Dataset, episodes: list[Path] | None = None, limits: ValidationLimits = DEFAULT_LIMITS,
                     progress: Callable[[], None] | None = None,
                     checksums: ChecksumOptions = ChecksumOptions()) -> Report:
    """Validate the given episode directories, or every committed episode plus the incoming ones.
    progress() is called after each episode."""
    report = Report(dataset=ds.root)
    paths = episodes if episodes is not None else [ds.episode_path(i) for i in ds.episode_indices()]
    for path in paths:
        report.episodes.append(path.name)
        report.findings.extend(validate_episode(path, ds.streams, limits, checksums))
        if progress is not None:
            progress()
    if episodes is None:
        for rel, target in dataset_links(ds.root):
            report.findings.append(Finding("dataset.link", ERROR, "", rel, None, f"is a symbolic link (to {target}); "
                                           "htouch neither reads nor writes through it: replace it with a directory"))
        incomplete_findings(ds, report)
        for name, what in interrupted_packs(ds.root):
            report.findings.append(Finding("episode.pack", WARNING, name, "", None,
                                           f"{what}; run `htouch pack` on the dataset again to finish"))
    return report
