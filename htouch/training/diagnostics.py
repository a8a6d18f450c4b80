"""Does the audio reach the policy? Diagnostics for any trained run and dataset (docs/eval.md, "Diagnostics").

Audio ablation at evaluation time (`htouch eval RUN --audio silent|shuffled`): `audio_condition` builds what
the policy hears instead of the rig's audio; PolicyRunner.heard_clip is the one place it is swapped in, so
the recorded episode keeps the real audio.
- silent: digital silence, zeros of the normalised mono clip before the spectrogram, i.e. PCM at the
  rig's centre value (AudioSpec.center: 0 for a sound card's int16, so PCM zeros). It is not the recorded
  noise floor: it is the silence that training pads a window with before an episode's first audio, so the
  policy has heard it.
- shuffled: real audio from another time of another episode. For each evaluation episode k a donor
  episode of the run's training dataset (or `--audio-from DATASET`) and a shift of 25-75 % of its audio's
  length are drawn from the generator seeded with (seed, k); the policy hears the donor's audio at
  (shift + time since its first re-plan), wrapping around the donor's end: a coherent stream out of place.

Contact probe (`htouch probe RUN [DATASET]`): the policy's embeddings of dataset samples (every `stride`-th
training sample time, un-augmented, through the run's weights in eval mode): the audio token, the newest
frame's image token (both before fusion) and the fused tokens (after the transformer block, flattened, what
the action head reads). A logistic-regression probe (scikit-learn; standardised features) predicts the
contact state of each sample; folds hold out whole episodes (GroupKFold), the AUC is computed on the pooled
held-out predictions, and its interval comes from a bootstrap over episodes. The same probe on permuted
labels is the chance control.

Contact state: a sample at time t is in contact when an event of the chosen kind (default `contact`)
overlaps [t - window_s, t]. An event with a duration (detail `end_s` or `duration_s`, as `htouch synth`
writes them) spans it; one without (the simulated rig records contact onsets) is an instant, so there the
state means "a contact began within the last window_s".

Embedding picture: t-SNE of the fused embeddings, coloured by contact state and by task phase (the time
since the episode's first frame as a fraction of the episode's length).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htouch.dataset.audio import DEFAULT_CLIP, ClipParams
from htouch.dataset.episode import Episode
from htouch.dataset.files import write_json_atomic
from htouch.dataset.schema import NS
from htouch.dataset.store import Dataset
from htouch.errors import DatasetError, HtouchError
from htouch.training.checkpoints import load_run_checkpoint, model_digest, read_run_config
from htouch.training.constants import BOOTSTRAP, CONTACT_EVENT, CONTACT_WINDOW_S, PROBE_FOLDS, PROBE_STRIDE
from htouch.training.data import DataSpec, PolicySamples, collate, to_float
from htouch.training.model import ActionNormalization
from htouch.training.policy_source import RunInfo
from htouch.training.runner import Hearing

AUDIO_CONDITIONS = ("real", "silent", "shuffled")
SHIFT_RANGE = (0.25, 0.75)  # shuffled audio: the shift as a fraction of the donor's audio length
PROBE_C = 0.1  # inverse L2 strength of the probe (standardised features; wide fused embeddings overfit)
CONFIDENCE = 0.95
TSNE_MAX_POINTS = 1500


# ------------------------------------------------------------------------------------ audio ablation


class SilentAudio:
    """The policy hears digital silence (see the module docstring)."""

    condition = "silent"

    def reset(self) -> None:
        pass

    def clip(self, real: np.ndarray, t_ns: int) -> np.ndarray:
        return np.zeros_like(real)

    def describe(self) -> dict[str, Any]:
        return {"condition": self.condition, "heard": "digital silence: zeros of the normalised clip before the "
                "spectrogram (PCM at the rig's centre value), as training pads a window before the first audio; "
                "not the recorded noise floor"}


class ShuffledAudio:
    """The policy hears another episode's audio at another time (see the module docstring). `draws` holds,
    per episode started, the donor episode and the shift in seconds."""

    condition = "shuffled"

    def __init__(self, dataset: Dataset, episodes: Sequence[int], seed: int, clip: ClipParams = DEFAULT_CLIP):
        self.dataset = dataset
        self.seed = int(seed)
        self.clip_params = clip
        self._episodes: dict[int, Episode] = {}
        self.donors = [i for i in episodes if len(self._episode(i).audio_block_times) >= 2]
        if not self.donors:
            raise HtouchError(f"{dataset.root}: no episode with audio to take shuffled audio from")
        self.draws: list[dict[str, Any]] = []
        self._donor: Episode | None = None
        self._start_ns = self._length_ns = self._shift_ns = 0
        self._t0: int | None = None

    def _episode(self, index: int) -> Episode:
        if index not in self._episodes:
            self._episodes[index] = self.dataset.episode(index)
        return self._episodes[index]

    def reset(self) -> None:
        """Draw the next episode's donor and shift from (seed, episode number)."""
        rng = np.random.default_rng([self.seed, len(self.draws)])
        index = int(self.donors[int(rng.integers(len(self.donors)))])
        ep = self._episode(index)
        ep.preload_audio()
        times = ep.audio_block_times
        self._donor, self._start_ns = ep, int(times[0])
        self._length_ns = int(times[-1]) - int(times[0])
        self._shift_ns = int(rng.uniform(*SHIFT_RANGE) * self._length_ns)
        self._t0 = None
        self.draws.append({"episode": index, "shift_s": round(self._shift_ns / NS, 4)})

    def donor_time(self, t_ns: int) -> int:
        """The donor's time whose clip is heard at time t of the current episode."""
        if self._donor is None:
            self.reset()
        if self._t0 is None:
            self._t0 = int(t_ns)
        return self._start_ns + (self._shift_ns + int(t_ns) - self._t0) % self._length_ns

    def clip(self, real: np.ndarray, t_ns: int) -> np.ndarray:
        t = self.donor_time(t_ns)
        return self._donor.audio_clip(t, self.clip_params)

    def describe(self) -> dict[str, Any]:
        return {"condition": self.condition, "source": str(self.dataset.root.resolve()),
                "heard": f"the audio of a donor episode shifted by {SHIFT_RANGE[0]:.0%}-{SHIFT_RANGE[1]:.0%} of "
                         "its length, drawn per episode from (seed, episode number)",
                "per_episode": list(self.draws)}


def audio_condition(condition: str, run: RunInfo, seed: int, audio_from: Path | None = None) -> Hearing | None:
    """What the policy of `run` hears under an --audio condition (None: the real audio). Shuffled audio comes
    from `audio_from` (all its episodes) or the run's training dataset (its training episodes)."""
    if condition not in AUDIO_CONDITIONS:
        raise HtouchError(f"--audio must be one of {', '.join(AUDIO_CONDITIONS)}, not {condition!r}")
    if audio_from is not None and condition != "shuffled":
        raise HtouchError("--audio-from goes with --audio shuffled")
    if condition == "real":
        return None
    if not run.config.uses_audio:
        raise HtouchError(f"{run.run_dir}: the {run.config.method} policy hears no audio, so --audio {condition} "
                          "would change nothing; use a policy that hears")
    if condition == "silent":
        return SilentAudio()
    _, extra = read_run_config(run.run_dir)
    clip = DataSpec.from_dict(extra["data"]).clip if isinstance(extra.get("data"), dict) else DEFAULT_CLIP
    if audio_from is not None:
        ds = Dataset(audio_from)
        return ShuffledAudio(ds, ds.episode_indices(), seed, clip)
    try:
        if not run.dataset_root:
            raise DatasetError("the run does not name it")
        ds = Dataset(run.dataset_root)
        present = ds.episode_indices()
        episodes = [i for i in run.train_episodes if i in set(present)] or present
    except DatasetError as e:
        raise HtouchError(f"{run.run_dir}: the training dataset to shuffle audio from cannot be read ({e}); "
                          "pass --audio-from DATASET") from None
    return ShuffledAudio(ds, episodes, seed, clip)


def describe_condition(hearing: Hearing | None) -> dict[str, Any]:
    """The audio condition for a result file."""
    return {"condition": "real"} if hearing is None else hearing.describe()


# ------------------------------------------------------------------------------------ embeddings


def contact_labels(ep: Episode, times_ns: np.ndarray, event: str = CONTACT_EVENT,
                   window_s: float = CONTACT_WINDOW_S) -> np.ndarray:
    """(n,) bool: whether an `event` event overlaps [t - window_s, t] for each time (see the module docstring)."""
    times_ns = np.asarray(times_ns, dtype=np.int64)
    out = np.zeros(len(times_ns), dtype=bool)
    for e in ep.events():
        if e["kind"] != event:
            continue
        detail = e.get("detail") or {}
        duration = detail.get("end_s", detail.get("duration_s", 0.0))
        duration = float(duration) if isinstance(duration, (int, float)) and duration > 0 else 0.0
        start, end = e["t_ns"], e["t_ns"] + int(round(duration * NS))
        out |= (start <= times_ns) & (end >= times_ns - int(round(window_s * NS)))
    return out


def has_events(ep: Episode, event: str) -> bool:
    """Whether the episode recorded at least one event of this kind."""
    return any(e["kind"] == event for e in ep.events())


@dataclass
class Embeddings:
    """A policy's embeddings of dataset samples, one row per sample (see the module docstring)."""

    run: str
    model_xxh3: str | None  # the weights' digest (checkpoints.model_digest)
    method: str
    dataset: str
    event: str
    window_s: float
    stride: int
    episode: np.ndarray  # (N,) episode index
    t_s: np.ndarray  # (N,) seconds since the episode's first camera frame
    phase: np.ndarray  # (N,) t_s over the episode's length, in [0, 1]
    contact: np.ndarray  # (N,) bool
    image: np.ndarray  # (N, width): the newest frame's token before fusion
    audio: np.ndarray | None  # (N, width): the audio token before fusion; None without audio
    fused: np.ndarray  # (N, n_tokens * width): the fused tokens the action head reads

    def __len__(self) -> int:
        return len(self.episode)


def policy_embeddings(run_dir: str | Path, dataset: str | Path | None = None, *, event: str = CONTACT_EVENT,
                      window_s: float = CONTACT_WINDOW_S, stride: int = PROBE_STRIDE,
                      batch_size: int = 64) -> Embeddings:
    """The embeddings of every `stride`-th sample of every episode of `dataset` (default: the run's training
    dataset) under the run's policy, with their contact state. Raises HtouchError when the dataset has no
    `event` events."""
    if stride < 1:
        raise HtouchError(f"--stride must be at least 1, got {stride}")
    if not (window_s >= 0 and math.isfinite(window_s)):
        raise HtouchError(f"--window must be 0 or more seconds, got {window_s}")
    run = RunInfo.read(run_dir)
    if dataset is None:
        if not run.dataset_root:
            raise HtouchError(f"{run_dir}: the run does not name its training dataset; pass DATASET")
        dataset = run.dataset_root
    ds = Dataset(dataset)
    episodes = ds.episode_indices()
    if not episodes:
        raise DatasetError(f"dataset {ds.root} has no episodes")
    if not any(has_events(ds.episode(i), event) for i in episodes):
        raise HtouchError(f"{ds.root}: no episode has {event!r} events, the ground truth the probe needs "
                          "(the simulated rig and `htouch synth` record contacts; on real data label them and "
                          "pass --event NAME)")
    model, config, _ = load_run_checkpoint(run_dir)
    spec = DataSpec.from_policy(config, stride=stride)
    samples = PolicySamples(ds, episodes, spec, ActionNormalization.identity(config.action_dim), augment=False,
                            preload_mb=512)
    loader = torch.utils.data.DataLoader(samples, batch_size=batch_size, shuffle=False, collate_fn=collate)
    image, audio, fused = [], [], []
    with torch.no_grad():
        for batch in loader:
            frames = to_float(batch["frames"])
            b, n = frames.shape[:2]
            frame_emb = model.encode_frames(frames.flatten(0, 1)).view(b, n, -1)
            audio_emb = model.encode_audio(batch.get("spectrogram"))
            image.append(frame_emb[:, -1].numpy())
            if audio_emb is not None:
                audio.append(audio_emb.numpy())
            fused.append(model.fuse(frame_emb, audio_emb).flatten(1).numpy())
    ep_index, t_s, phase, contact = [], [], [], []
    for i, e in zip(episodes, samples.episodes, strict=True):
        first = int(e.ep.camera_times[0]) if len(e.ep.camera_times) else 0
        length = max(e.ep.time_range_ns()[1] - first, 1)
        ep_index.append(np.full(len(e), i))
        t_s.append((e.times - first) / NS)
        phase.append(np.clip((e.times - first) / length, 0.0, 1.0))
        contact.append(contact_labels(e.ep, e.times, event, window_s))
    return Embeddings(str(Path(run_dir).resolve()), model_digest(run_dir), config.method, str(ds.root.resolve()),
                      event, window_s, stride,
                      np.concatenate(ep_index), np.concatenate(t_s), np.concatenate(phase), np.concatenate(contact),
                      np.concatenate(image), np.concatenate(audio) if audio else None, np.concatenate(fused))


# ------------------------------------------------------------------------------------ the probe


@dataclass
class ProbeResult:
    features: str  # "audio", "image", "fused", or a control
    dims: int
    auc: float  # on the pooled held-out predictions
    ci_low: float
    ci_high: float
    samples: int
    positives: int
    episodes: int
    folds: int

    def describe(self) -> str:
        return (f"{self.features:<24} AUC {self.auc:.3f} (95% CI {self.ci_low:.3f}-{self.ci_high:.3f}), "
                f"{self.dims} dims")


def probe(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, name: str = "features", *,
          folds: int = PROBE_FOLDS, bootstrap: int = BOOTSTRAP, seed: int = 0) -> ProbeResult:
    """A logistic-regression probe from features (N, d) to binary labels (N,), held out by group (episode):
    the AUC of the pooled out-of-fold predictions and a percentile bootstrap over groups."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    groups = np.asarray(groups)
    unique = np.unique(groups)
    if len(unique) < 2:
        raise HtouchError(f"the probe holds out whole episodes and needs at least 2, got {len(unique)}")
    if y.all() or not y.any():
        raise HtouchError(f"every one of the {len(y)} samples is {'in' if y.any() else 'out of'} contact: "
                          "the probe needs both (try another --window or more episodes)")
    n_folds = min(folds, len(unique))
    predicted = np.empty(len(y))
    for train, test in GroupKFold(n_splits=n_folds).split(x, y, groups):
        if y[train].all() or not y[train].any():  # nothing to learn from: the training fold's base rate
            predicted[test] = y[train].mean()
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=2000))
        model.fit(x[train], y[train])
        predicted[test] = model.predict_proba(x[test])[:, 1]
    auc = float(roc_auc_score(y, predicted))
    low, high = bootstrap_interval(y, predicted, groups, bootstrap, seed)
    return ProbeResult(name, x.shape[1], auc, float(low), float(high), len(y), int(y.sum()), len(unique), n_folds)


def episode_pair_counts(y: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, ...]:
    """The AUC split by episode: C[g, h] counts the (positive of episode g, negative of episode h) pairs the
    scores order right (ties count half), P[g] / N[g] the positives / negatives of g, groups in np.unique order.
    The AUC of any multiset of episodes with multiplicities w is then w C w / ((w P)(w N)), which makes a
    bootstrap over episodes cheap (tests/test_diagnostics.py checks it against roc_auc_score)."""
    unique = np.unique(groups)
    pos = [scores[(groups == g) & y] for g in unique]
    neg = [np.sort(scores[(groups == g) & ~y]) for g in unique]
    counts = np.zeros((len(unique), len(unique)))
    for i, p in enumerate(pos):
        for j, n in enumerate(neg):
            below, up_to = np.searchsorted(n, p, "left"), np.searchsorted(n, p, "right")
            counts[i, j] = below.sum() + 0.5 * (up_to - below).sum()
    return counts, np.array([len(p) for p in pos], float), np.array([len(n) for n in neg], float)


def bootstrap_interval(y: np.ndarray, scores: np.ndarray, groups: np.ndarray, n: int = BOOTSTRAP, seed: int = 0,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of the AUC over `n` resamples of whole episodes (with replacement); resamples with
    one class only are skipped (nan, nan when all are)."""
    counts, p, q = episode_pair_counts(y, scores, groups)
    w = np.random.default_rng(seed).multinomial(len(p), np.full(len(p), 1 / len(p)), size=n).astype(float)
    pairs = (w @ p) * (w @ q)
    ok = pairs > 0
    if not ok.any():
        return float("nan"), float("nan")
    aucs = np.einsum("bg,gh,bh->b", w[ok], counts, w[ok]) / pairs[ok]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(aucs, [alpha, 1 - alpha])
    return float(low), float(high)


@dataclass
class ProbeReport:
    embeddings: Embeddings
    probes: list[ProbeResult]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        e = self.embeddings
        return {"run": e.run, "model_xxh3": e.model_xxh3, "method": e.method, "dataset": e.dataset, "event": e.event,
                "window_s": e.window_s, "stride": e.stride, "samples": len(e), "positives": int(e.contact.sum()),
                "episodes": len(np.unique(e.episode)), "confidence": CONFIDENCE, "ci_method": "bootstrap over episodes",
                "probe": {"model": f"standardised features, logistic regression (C={PROBE_C})",
                          "held_out": "GroupKFold over episodes"},
                "probes": [dataclasses.asdict(p) for p in self.probes], "notes": self.notes}

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())


def contact_probe(embeddings: Embeddings, *, folds: int = PROBE_FOLDS, bootstrap: int = BOOTSTRAP,
                  seed: int = 0) -> ProbeReport:
    """Probes from the audio, image and fused embeddings to the contact state, and the chance control (the
    audio probe, or the image probe without audio, on labels permuted with `seed`)."""
    e = embeddings
    kw = dict(folds=folds, bootstrap=bootstrap, seed=seed)
    sets = [("audio", e.audio), ("image", e.image), ("fused", e.fused)]
    probes = [probe(x, e.contact, e.episode, name, **kw) for name, x in sets if x is not None]
    notes = [] if e.audio is not None else [f"the {e.method} policy hears no audio: no audio probe"]
    control_name, control_x = ("audio", e.audio) if e.audio is not None else ("image", e.image)
    shuffled = np.random.default_rng(seed).permutation(e.contact)
    probes.append(probe(control_x, shuffled, e.episode, f"{control_name}, shuffled labels", **kw))
    return ProbeReport(e, probes, notes)


# ------------------------------------------------------------------------------------ the picture


def check_plot_path(out: Path) -> str:
    """The format of a plot file name (its suffix), or HtouchError before any work is done."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from htouch.dataset.plot import check_out_path

    return check_out_path(Path(out), FigureCanvasAgg(Figure()))


def embedding_plot(embeddings: Embeddings, out: str | Path, seed: int = 0,
                   max_points: int = TSNE_MAX_POINTS) -> Path:
    """A t-SNE of the fused embeddings, coloured by contact state and by task phase, into `out` (PNG, PDF or
    SVG by its suffix). At most `max_points` samples (a random subset drawn with `seed`)."""
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    from htouch.dataset.files import replacing

    out = Path(out)
    fmt = check_plot_path(out)
    fig = Figure(figsize=(11, 5), dpi=100)
    e = embeddings
    if len(e) < 5:
        raise HtouchError(f"a t-SNE needs at least 5 samples, got {len(e)} (lower --stride)")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(e), max_points, replace=False)) if len(e) > max_points else np.arange(len(e))
    x = e.fused[keep]
    perplexity = float(min(30.0, (len(keep) - 1) / 3))
    # Its OpenMP threads: torch's count (the caller's --threads). More threads than free cores make the spin-waiting
    # gradient steps 10-40x slower (150 points on a busy 2-core machine: 2 s on one thread, 23-100 s on two).
    with threadpool_limits(limits=torch.get_num_threads(), user_api="openmp"):
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    contact, phase = e.contact[keep], e.phase[keep]
    left, right = fig.subplots(1, 2)
    for mask, colour, label in ((~contact, "#9aa5b1", "no contact"), (contact, "#d62728", "contact")):
        left.scatter(xy[mask, 0], xy[mask, 1], s=8, c=colour, label=f"{label} ({int(mask.sum())})", alpha=0.8,
                     linewidths=0)
    left.legend(loc="best", fontsize=8, frameon=False)
    left.set_title(f"contact state ('{e.event}' within {e.window_s:g} s)", fontsize=10)
    points = right.scatter(xy[:, 0], xy[:, 1], s=8, c=phase, cmap="viridis", vmin=0, vmax=1, linewidths=0)
    fig.colorbar(points, ax=right, label="task phase (fraction of the episode)")
    right.set_title("task phase", fontsize=10)
    for ax in (left, right):
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"t-SNE of the fused embeddings: {e.method} policy, {Path(e.run).name}, "
                 f"{len(keep)} samples of {len(np.unique(e.episode))} episodes of {Path(e.dataset).name}",
                 fontsize=11)
    fig.tight_layout()
    try:
        with replacing(out) as tmp:
            fig.savefig(tmp, format=fmt)
    except OSError as err:
        raise HtouchError(f"cannot write a plot to {out}: {err.strerror or err}") from None
    return out
