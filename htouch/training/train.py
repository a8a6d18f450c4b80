"""Behaviour cloning of the audio-visual policy, as in the paper (appendix B).

Adam, cosine annealing from lr 1e-3 over the epochs, batch 64, at most 100 epochs, early stopping when the
validation loss has not improved for 15 epochs, and the lowest-validation-loss model kept. The loss is the
MSE between the predicted and demonstrated chunk of H normalised actions (steps past an episode's end are
masked out). Seeded: the same config gives the same run, resumed or not (the RNG, optimizer and scheduler
states are saved after every epoch; data order and augmentation depend only on (seed, epoch, sample)).

Two modes:
- end to end (default): frames and spectrograms go through the encoders, which are fine-tuned (the paper);
- frozen encoders (`frozen_encoders`): every frame and every audio window is encoded once by the frozen
  encoders (BatchNorm in eval mode, no image augmentation, since a cached embedding cannot be augmented),
  and only the head (positional embeddings, transformer block, MLP) is trained on the cached embeddings.

A run directory's files: run_dir.py.
Several processes (torchrun) train one policy with DistributedDataParallel: see ddp.py.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import math
import os
import platform
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from htouch.dataset.files import replacing, write_json_atomic
from htouch.dataset.store import Dataset
from htouch.errors import HtouchError
from htouch.training import ddp
from htouch.training.checkpoints import load_pretrained, pretraining_of, save_run_checkpoint
from htouch.training.data import (
    DEFAULT_PRELOAD_MB,
    DataSpec,
    PolicySamples,
    collate,
    plan_dataset,
    to_float,
)
from htouch.training.methods import METHOD_SPECS, METHODS, PolicyConfig, policy_config
from htouch.training.model import AudioVisualPolicy, build_policy
from htouch.training.run_dir import RunDir
from htouch.training.weights import file_sha256

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "lr", "train_samples", "train_seconds", "samples_per_s",
                 "val_seconds", "best")
# Settings a resumed run must share with the run it continues (epochs and patience may change).
RESUME_KEYS = ("dataset", "method", "preset", "seed", "batch_size", "lr", "frozen_encoders", "horizon", "dropout",
               "stride", "episodes")
PRETRAINED_FLAGS = {"r3m": "--r3m", "avid": "--avid", "byol-a": "--byol-a"}


@dataclass
class TrainConfig:
    dataset: Path
    run_dir: Path
    method: str = "ours"
    preset: str = "paper"
    epochs: int = 100
    batch_size: int = 64  # over all processes
    lr: float = 1e-3
    patience: int = 15
    seed: int = 0
    device: str = "auto"
    frozen_encoders: bool = False
    num_workers: int | None = None  # None: 0 on the CPU (the cores train), a few per GPU
    resume: bool = False
    r3m: Path | None = None
    avid: Path | None = None
    byol_a: Path | None = None
    allow_random_init: bool = False
    horizon: int | None = None  # None: the preset's
    dropout: float | None = None  # None: the preset's
    stride: int = 1
    episodes: int | None = None  # train on the first N train episodes of the split (None: all)
    preload_mb: float = DEFAULT_PRELOAD_MB
    threads: int | None = None  # CPU threads for the model (None: torch's default, one per core)
    skip_invalid: bool = False  # leave out (and name) episodes that fail the structural checks, instead of stopping

    def check(self) -> None:
        if self.method not in METHODS:
            raise HtouchError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.episodes is not None and self.episodes < 1:
            raise HtouchError(f"--episodes must be at least 1, got {self.episodes}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("patience", 1), ("stride", 1)):
            if getattr(self, name) < low:
                raise HtouchError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise HtouchError(f"--lr must be a positive number, got {self.lr}")
        if self.seed < 0:
            raise HtouchError(f"--seed must be 0 or more, got {self.seed}")
        if self.num_workers is not None and self.num_workers < 0:
            raise HtouchError(f"--workers must be 0 or more, got {self.num_workers}")
        if self.threads is not None and self.threads < 1:
            raise HtouchError(f"--threads must be at least 1, got {self.threads}")
        if self.horizon is not None and self.horizon < 1:
            raise HtouchError(f"--horizon must be at least 1, got {self.horizon}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise HtouchError(f"--dropout must be in [0, 1), got {self.dropout}")

    def pretrained_files(self) -> dict[str, Path | None]:
        return {"r3m": self.r3m, "avid": self.avid, "byol-a": self.byol_a}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v.resolve())
        return d


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    lr: float
    train_samples: int
    train_seconds: float
    val_seconds: float
    best: bool = False

    @property
    def samples_per_s(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else float("nan")

    def row(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "samples_per_s": self.samples_per_s}


@dataclass
class RunResult:
    run_dir: Path
    history: list[EpochMetrics]
    best_epoch: int
    best_val_loss: float
    stopped: str  # "early stopping", "max epochs", "already finished"
    model: AudioVisualPolicy  # the final (last-epoch) model, on the CPU
    n_parameters: int = 0

    @property
    def epochs_run(self) -> int:
        return len(self.history)


class Reporter:
    """What a run tells its user; the CLI shows it with rich, tests and other ranks stay silent."""

    def note(self, text: str) -> None:
        pass

    def start(self, session: Session) -> None:
        """Called once everything is set up, before the first epoch."""

    @contextlib.contextmanager
    def phase(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        pass

    def batch(self, loss: float, samples: int) -> None:
        pass

    def epoch_end(self, metrics: EpochMetrics) -> None:
        pass


# ------------------------------------------------------------------------------------------ batches


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean squared error over the action steps that exist, and how many values it averaged."""
    m = mask.unsqueeze(-1).to(pred.dtype)
    n = int(mask.sum().item()) * pred.shape[-1]
    return ((pred - target) ** 2 * m).sum() / max(n, 1), n


class HeadOnly(nn.Module):
    """The policy's head as a module of its own, so DistributedDataParallel can wrap it in frozen mode."""

    def __init__(self, policy: AudioVisualPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, frame_emb: torch.Tensor, audio_emb: torch.Tensor | None) -> torch.Tensor:
        return self.policy.head(frame_emb, audio_emb)


def epoch_indices(n: int, epoch: int, seed: int, env: ddp.DistEnv) -> list[int]:
    """This rank's share of the epoch's permutation (DistributedSampler: seeded by seed + epoch)."""
    sampler = DistributedSampler(range(n), num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


class EndToEnd:
    """Batches of samples through the whole policy (encoders fine-tuned)."""

    def __init__(self, train_set: PolicySamples, val_set: PolicySamples, batch_size: int, num_workers: int,
                 seed: int, env: ddp.DistEnv, device: torch.device):
        self.train_set, self.val_set = train_set, val_set
        self.batch_size, self.num_workers, self.seed, self.env, self.device = batch_size, num_workers, seed, env, device

    def _loader(self, dataset: PolicySamples, indices: list[int]) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, sampler=indices, num_workers=self.num_workers,
                          collate_fn=collate, pin_memory=self.device.type == "cuda")

    def n_train(self) -> int:
        return len(self.train_set)

    def train_batches(self, epoch: int) -> tuple[int, Iterator[dict[str, torch.Tensor]]]:
        self.train_set.set_epoch(epoch)
        indices = epoch_indices(len(self.train_set), epoch, self.seed, self.env)
        return math.ceil(len(indices) / self.batch_size), iter(self._loader(self.train_set, indices))

    def val_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self._loader(self.val_set, list(range(self.env.rank, len(self.val_set), self.env.world_size))))

    def predict(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        frames = to_float(batch["frames"].to(self.device, non_blocking=True))
        spectrogram = batch["spectrogram"].to(self.device, non_blocking=True) if "spectrogram" in batch else None
        return module(frames, spectrogram)


class EmbeddingTable:
    """One sample set encoded once: a table of frame embeddings, each sample's rows into it, the audio
    embedding of each sample, and the targets. Everything stays on the training device."""

    def __init__(self, samples: PolicySamples, policy: AudioVisualPolicy, device: torch.device, batch: int = 64,
                 progress: Callable[[int], None] | None = None):
        tables, rows, audio, actions, masks = [], [], [], [], []
        offset = 0
        policy.eval()
        with torch.no_grad():
            for e in samples.episodes:
                for start in range(0, len(e.used_frames), batch):
                    chunk = e.used_frames[start:start + batch]
                    frames = to_float(samples.episode_frames(e, chunk).to(device))
                    tables.append(policy.encode_frames(frames))
                    if progress:
                        progress(len(chunk))
                rows.append(torch.from_numpy(e.frame_row[e.frame_idx] + offset))
                offset += len(e.used_frames)
                actions.append(torch.from_numpy(e.actions))
                masks.append(torch.from_numpy(e.mask))
            if policy.audio_encoder is not None:
                for start in range(0, len(samples), batch):
                    idx = range(start, min(start + batch, len(samples)))
                    spectrogram = torch.stack([samples.spectrogram(i) for i in idx]).to(device)
                    audio.append(policy.encode_audio(spectrogram))
                    if progress:
                        progress(len(idx))
        self.frames = torch.cat(tables)  # (frames, D)
        self.rows = torch.cat(rows).to(device)  # (samples, k)
        self.audio = torch.cat(audio) if audio else None  # (samples, D)
        self.actions = torch.cat(actions).to(device)
        self.mask = torch.cat(masks).to(device)

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def work(samples: PolicySamples, audio: bool) -> int:
        return samples.n_frames_used() + (len(samples) if audio else 0)

    def batch(self, idx: list[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        i = torch.as_tensor(idx, device=self.rows.device)
        out = {"frame_emb": self.frames[self.rows[i]], "actions": self.actions[i], "mask": self.mask[i]}
        if self.audio is not None:
            out["audio_emb"] = self.audio[i]
        return out


class FrozenEncoders:
    """Batches of cached embeddings through the head only."""

    def __init__(self, train: EmbeddingTable, val: EmbeddingTable, batch_size: int, seed: int, env: ddp.DistEnv):
        self.train, self.val, self.batch_size, self.seed, self.env = train, val, batch_size, seed, env

    def n_train(self) -> int:
        return len(self.train)

    def train_batches(self, epoch: int) -> tuple[int, Iterator[dict[str, torch.Tensor]]]:
        idx = epoch_indices(len(self.train), epoch, self.seed, self.env)
        chunks = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        return len(chunks), (self.train.batch(c) for c in chunks)

    def val_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        idx = list(range(self.env.rank, len(self.val), self.env.world_size))
        return (self.val.batch(idx[i:i + self.batch_size]) for i in range(0, len(idx), self.batch_size))

    def predict(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return module(batch["frame_emb"], batch.get("audio_emb"))


# ------------------------------------------------------------------------------------------ the session


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_pretrained(config: TrainConfig, resuming: bool) -> None:
    """Refuse at once (before any data is read) a method whose pretrained files are missing."""
    files = config.pretrained_files()
    wanted = METHOD_SPECS[config.method].pretrained
    for kind, path in files.items():
        if path is not None and kind in wanted and not Path(path).is_file():
            raise HtouchError(f"{PRETRAINED_FLAGS[kind]} {path}: no such file")
    lacking = [k for k in wanted if files[k] is None]
    if lacking and not config.allow_random_init and not resuming:
        flags = " ".join(f"{PRETRAINED_FLAGS[k]} PATH" for k in lacking)
        raise HtouchError(f"method {config.method} starts from {' and '.join(k.upper() for k in wanted)} weights: "
                          f"pass {flags} (checkpoint files you supply; none can be downloaded here), or "
                          "--allow-random-init to train from random encoders (recorded in the run)")


def _default_workers(device: torch.device, env: ddp.DistEnv) -> int:
    if device.type != "cuda":
        return 0  # on the CPU the cores are busy training; preloaded samples are cheap to assemble
    per_node = max(1, torch.cuda.device_count())
    return max(1, min(4, (os.cpu_count() or 1) // per_node - 1))


def _check_run_dir(config: TrainConfig) -> dict[str, Any] | None:
    """The state to resume from (None for a new run); refuses to overwrite a run or resume a different one."""
    run_dir, run = config.run_dir, RunDir(config.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise HtouchError(f"--run {run_dir}: exists and is not a directory")
    has_run = run.record.exists()
    if not config.resume:
        if has_run or (run_dir.is_dir() and any(run_dir.iterdir())):
            raise HtouchError(f"--run {run_dir} already holds files; add --resume to continue that run or "
                              "choose a new directory")
        return None
    if not has_run:
        raise HtouchError(f"--resume: {run_dir} holds no run ({run.record.name} not found)")
    saved = run.read_record()["config"]
    now = config.to_dict()
    for key in RESUME_KEYS:
        if saved.get(key) != now.get(key):
            raise HtouchError(f"--resume: {key} differs from the run in {run_dir} (was {saved.get(key)!r}, "
                              f"now {now.get(key)!r})")
    if not run.state.is_file():
        return {}  # started but never finished an epoch: start afresh with the same settings
    try:
        return torch.load(run.state, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable state is the same user-facing problem
        raise HtouchError(f"{run.state}: unreadable training state ({type(e).__name__}: {e})") from None


class Session:
    """Everything one training needs, set up from a TrainConfig: data, model, optimizer, the feed of batches.
    `train` runs it to the end; the benchmark times `train_epoch` on a few batches."""

    def __init__(self, config: TrainConfig, reporter: Reporter | None = None, env: ddp.DistEnv | None = None):
        config.check()
        self.config = c = config
        self.env = env = env or ddp.DistEnv.from_environ()
        self.reporter = reporter if (reporter is not None and env.is_main) else Reporter()
        self.device = ddp.choose_device(c.device, env)
        if c.batch_size % env.world_size:
            raise HtouchError(f"--batch-size {c.batch_size} is split over {env.world_size} processes: "
                              "make it a multiple of the process count")
        self.owns_process_group = ddp.init(env, self.device)
        overrides = {k: v for k, v in (("horizon", c.horizon), ("dropout", c.dropout)) if v is not None}
        self.policy_config: PolicyConfig = policy_config(c.preset, c.method, **overrides)
        self.resume_state = _check_run_dir(c)
        _check_pretrained(c, resuming=bool(self.resume_state))
        ddp.barrier(env)  # every rank has checked the run directory before rank 0 writes to it

        # data
        self.spec = DataSpec.from_policy(self.policy_config, stride=c.stride)
        ds, left_out = _open_dataset(c)
        if self.policy_config.uses_audio:
            ds.require_audio(f"--method {c.method}")
        failure: HtouchError | None = None
        if env.is_main:
            try:  # stats made without the left-out episodes are used, not stored as the dataset's
                self.plan = plan_dataset(ds, self.spec, progress_bar=self.reporter.phase, write=not left_out,
                                         episodes=c.episodes)
            except HtouchError as e:
                failure = e
        # stats computed by rank 0 are stored before the others read them; its failure stops them all
        if ddp.agree(failure is not None, env):
            raise failure or HtouchError("rank 0 could not prepare the dataset (see its error)")
        if not env.is_main:
            self.plan = plan_dataset(_open_dataset(c)[0], self.spec, write=False, episodes=c.episodes)
        self.dataset = ds
        for note in left_out + self.plan.notes:
            self.reporter.note(note)
        self.normalization = self.plan.action_normalization(self.policy_config.action_dim)
        if self.resume_state:
            self._check_same_data(RunDir(c.run_dir).read_record())
        augment = not c.frozen_encoders
        self.train_set = self._samples(ds, self.plan.train, augment, "training")
        self.val_set = self._samples(ds, self.plan.val, False, "validation")
        self.reporter.note(f"training: {self.train_set.describe()}")
        self.reporter.note(f"validation: {self.val_set.describe()}")
        hint = self.train_set.frame_cache_hint()
        if hint:
            self.reporter.note(hint)

        # model
        _seed_everything(c.seed)
        self.model = build_policy(self.policy_config)
        self.encoder_origin: dict[str, str] = {}
        self.encoder_pretraining: dict[str, dict[str, Any]] = {}  # encoder -> record of an htouch-made file
        if not self.resume_state:
            reports, self.encoder_origin = load_pretrained(self.model, c.pretrained_files(), c.allow_random_init)
            self.encoder_pretraining = pretraining_of(reports)
            for r in reports:
                self.reporter.note(f"pretrained {r.summary()}")
        self.model.set_spectrogram_stats(self.plan.spectrogram_stats(self.policy_config.audio_kind) or {})
        if c.frozen_encoders:
            for enc in (self.model.image_encoder, self.model.image_proj, self.model.audio_encoder,
                        self.model.audio_proj):
                if enc is not None:
                    enc.requires_grad_(False)
        self.model.to(self.device)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=c.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=c.epochs)
        if self.resume_state:
            self._restore(self.resume_state)

        # batches
        per_rank = c.batch_size // env.world_size
        if c.frozen_encoders:
            audio = self.model.audio_encoder is not None
            work = EmbeddingTable.work(self.train_set, audio) + EmbeddingTable.work(self.val_set, audio)
            with self.reporter.phase("encoding frames and audio once (frozen encoders)", work) as advance:
                tables = [EmbeddingTable(s, self.model, self.device, progress=advance)
                          for s in (self.train_set, self.val_set)]
            self.feed: EndToEnd | FrozenEncoders = FrozenEncoders(*tables, per_rank, c.seed, env)
            self.module = ddp.wrap(HeadOnly(self.model), env, self.device)
        else:
            workers = c.num_workers if c.num_workers is not None else _default_workers(self.device, env)
            self.feed = EndToEnd(self.train_set, self.val_set, per_rank, workers, c.seed, env, self.device)
            self.module = ddp.wrap(self.model, env, self.device)

    def _samples(self, ds: Dataset, episodes: list[int], augment: bool, what: str) -> PolicySamples:
        samples = PolicySamples(ds, episodes, self.spec, self.normalization, augment=augment,
                                seed=self.config.seed, preload_mb=0)
        budget = self.config.preload_mb
        with self.reporter.phase(f"loading {what} samples into memory", samples.preload_work(budget)) as advance:
            samples.preload(budget, advance)
        return samples

    def data_record(self) -> dict[str, Any]:
        """What a resumed run must find unchanged in the dataset: the split and the normalisation."""
        return {"train_episodes": self.plan.train, "val_episodes": self.plan.val,
                "action_normalization": self.normalization.to_dict(),
                "spectrogram_stats": self.plan.spectrogram_stats(self.spec.audio_kind)}

    def _check_same_data(self, record: dict[str, Any]) -> None:
        saved = record.get("data", {})
        now = json.loads(json.dumps(self.data_record()))  # as it reads back from JSON
        for key, what in (("train_episodes", "the train split"), ("val_episodes", "the validation split"),
                          ("action_normalization", "the action statistics"),
                          ("spectrogram_stats", "the spectrogram statistics")):
            if saved.get(key) != now[key]:
                raise HtouchError(f"--resume: {what} of {self.config.dataset} changed since the run in "
                                  f"{self.config.run_dir} started (re-split or new stats?); start a new run")

    # ---------------------------------------------------------------- state

    def state(self, history: list[EpochMetrics], best_epoch: int, best_val: float, bad_epochs: int) -> dict[str, Any]:
        return {"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "epoch": len(history), "history": [m.row() for m in history], "best_epoch": best_epoch,
                "best_val_loss": best_val, "bad_epochs": bad_epochs, "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "encoder_origin": json.dumps(self.encoder_origin),
                "encoder_pretraining": json.dumps(self.encoder_pretraining)}

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.encoder_origin = json.loads(state.get("encoder_origin", "{}"))
            self.encoder_pretraining = json.loads(state.get("encoder_pretraining", "{}"))
        except (KeyError, RuntimeError, ValueError) as e:
            raise HtouchError(f"{RunDir(self.config.run_dir).state}: does not fit this run's model "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
        if self.scheduler.T_max != self.config.epochs:  # --epochs changed: the same cosine, stretched
            done = self.scheduler.last_epoch
            self.scheduler.T_max = self.config.epochs
            for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
                group["lr"] = base * (1 + math.cos(math.pi * done / self.config.epochs)) / 2
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # ---------------------------------------------------------------- epochs

    def train_epoch(self, epoch: int, max_batches: int | None = None) -> tuple[float, int, float]:
        """One pass over this rank's shard; returns (mean loss over all ranks, samples over all ranks, seconds)."""
        self.module.train()
        n_batches, batches = self.feed.train_batches(epoch)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        self.reporter.epoch_start(epoch + 1, self.config.epochs, n_batches)
        total, count, samples = 0.0, 0, 0
        start = time.perf_counter()
        for b, batch in enumerate(batches):
            if b >= n_batches:
                break
            actions = batch["actions"].to(self.device, non_blocking=True)
            mask = batch["mask"].to(self.device, non_blocking=True)
            pred = self.feed.predict(self.module, batch)
            loss, n = masked_mse(pred, actions, mask)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise HtouchError(f"the training loss became {value} in epoch {epoch + 1}; lower --lr or check "
                                  "the dataset's statistics (`htouch stats`)")
            total += value * n
            count += n
            samples += len(actions)
            self.reporter.batch(value, len(actions) * self.env.world_size)
        seconds = time.perf_counter() - start
        total, count, samples = ddp.all_sum([total, count, samples], self.env, self.device)
        return total / max(count, 1), int(samples), seconds

    def validate(self) -> tuple[float, float]:
        """Validation MSE over all validation samples (split across ranks), and the seconds it took."""
        self.module.eval()
        total, count = 0.0, 0
        start = time.perf_counter()
        with torch.no_grad():
            for batch in self.feed.val_batches():
                actions = batch["actions"].to(self.device)
                mask = batch["mask"].to(self.device)
                loss, n = masked_mse(self.feed.predict(self.module, batch), actions, mask)
                total += float(loss) * n
                count += n
        total, count = ddp.all_sum([total, count], self.env, self.device)
        return total / max(count, 1), time.perf_counter() - start

    # ---------------------------------------------------------------- what the run records

    def run_record(self, status: str, history: list[EpochMetrics], best_epoch: int, best_val: float) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "policy": self.policy_config.to_dict(), "status": status,
                "epochs_done": len(history), "best_epoch": best_epoch,
                "best_val_loss": best_val if math.isfinite(best_val) else None,
                "encoders": self.encoder_origin, "encoder_pretraining": self.encoder_pretraining,
                "encoder_files": self.encoder_files,
                "random_init": self.random_encoders(), "data": self.data_record(),
                "processes": self.env.world_size, "device": str(self.device), "torch": torch.__version__,
                "python": platform.python_version()}

    @functools.cached_property
    def encoder_files(self) -> dict[str, dict[str, str]]:
        """Per pretrained file the run started from: its path and SHA-256 (a result traced to exact weights);
        hashed once, though the run record is written several times."""
        wanted = METHOD_SPECS[self.config.method].pretrained
        return {kind: {"path": str(Path(path).resolve()), "sha256": file_sha256(Path(path))}
                for kind, path in self.config.pretrained_files().items()
                if path is not None and kind in wanted and Path(path).is_file()}

    def random_encoders(self) -> list[str]:
        return sorted(k for k, v in self.encoder_origin.items() if v == "random")

    def checkpoint_extra(self, best_epoch: int, best_val: float) -> dict[str, Any]:
        """What config.json holds besides the policy: how to feed it and how to read its outputs."""
        ds = self.dataset
        return {
            "action_normalization": self.normalization.to_dict(),
            "data": self.spec.to_dict(),
            "rig": ds.streams.to_dict(),
            "dataset": {"root": str(ds.root.resolve()), "task": ds.task, "train_episodes": self.plan.train,
                        "val_episodes": self.plan.val, "stats_computed": self.plan.stats.get("computed")},
            "encoders": self.encoder_origin, "encoder_pretraining": self.encoder_pretraining,
            "random_init": self.random_encoders(),
            "training": {"method": self.config.method, "preset": self.config.preset, "seed": self.config.seed,
                         "frozen_encoders": self.config.frozen_encoders, "best_epoch": best_epoch,
                         "best_val_loss": best_val},
        }


def _write_metrics(path: Path, history: list[EpochMetrics]) -> None:
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        w.writeheader()
        for m in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in m.row().items()})


def plot_losses(path: Path, history: list[EpochMetrics], title: str) -> None:
    """Training and validation loss per epoch as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [m.epoch for m in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(epochs, [m.train_loss for m in history], "o-", ms=3, label="training")
    ax.plot(epochs, [m.val_loss for m in history], "o-", ms=3, label="validation")
    best = min(history, key=lambda m: m.val_loss)
    ax.axvline(best.epoch, color="0.6", ls="--", lw=1, label=f"best (epoch {best.epoch})")
    ax.set(xlabel="epoch", ylabel="MSE (normalised actions)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if all(m.train_loss > 0 and m.val_loss > 0 for m in history):
        ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _open_dataset(c: TrainConfig) -> tuple[Dataset, list[str]]:
    """The dataset and, with --skip-invalid, one line per damaged episode left out. Without it a damaged
    episode stops training with its line when it is opened (Dataset.episode checks it)."""
    ds = Dataset(c.dataset)
    return ds, (ds.leave_out_damaged() if c.skip_invalid else [])


def _history_from_state(rows: list[dict[str, Any]]) -> list[EpochMetrics]:
    names = {f.name for f in dataclasses.fields(EpochMetrics)}
    return [EpochMetrics(**{k: v for k, v in r.items() if k in names}) for r in rows]


def train(config: TrainConfig, reporter: Reporter | None = None) -> RunResult:
    """Train (or, with config.resume, continue) a policy into config.run_dir; see the module docstring."""
    env = ddp.DistEnv.from_environ()
    threads = torch.get_num_threads()
    session = None
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        session = Session(config, reporter, env)
        return _train(session)
    finally:
        torch.set_num_threads(threads)
        if session is not None and session.owns_process_group:
            ddp.shutdown(env)


def _train(s: Session) -> RunResult:
    c, env, run_dir = s.config, s.env, s.config.run_dir
    run = RunDir(run_dir)
    state = s.resume_state or {}
    history = _history_from_state(state.get("history", []))
    best_epoch, best_val = int(state.get("best_epoch", 0)), float(state.get("best_val_loss", math.inf))
    bad_epochs = int(state.get("bad_epochs", 0))
    if state:
        torch.set_rng_state(state["rng_cpu"])
        if torch.cuda.is_available() and state.get("rng_cuda"):
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        s.reporter.note(f"resuming {run_dir} after epoch {len(history)} (best validation loss {best_val:.4g} "
                        f"at epoch {best_epoch})")
    s.reporter.start(s)
    stopped = "max epochs"
    if len(history) >= c.epochs or bad_epochs >= c.patience:
        stopped = "already finished"
        s.reporter.note(f"{run_dir} has finished ({len(history)} epochs); raise --epochs to train on")
    writer = None
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run.record, s.run_record("running", history, best_epoch, best_val))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.tensorboard), purge_step=len(history) + 1)
    try:
        for epoch in range(len(history), c.epochs):
            if bad_epochs >= c.patience:
                break
            lr = s.optimizer.param_groups[0]["lr"]
            train_loss, samples, seconds = s.train_epoch(epoch)
            val_loss, val_seconds = s.validate()
            s.scheduler.step()
            improved = val_loss < best_val
            m = EpochMetrics(epoch + 1, train_loss, val_loss, lr, samples, seconds, val_seconds, best=improved)
            history.append(m)
            if improved:
                best_epoch, best_val, bad_epochs = epoch + 1, val_loss, 0
            else:
                bad_epochs += 1
            if bad_epochs >= c.patience:
                stopped = "early stopping"
            if env.is_main:
                _record_epoch(s, writer, history, best_epoch, best_val, bad_epochs, improved, stopped)
            s.reporter.epoch_end(m)
    finally:
        if writer is not None:
            writer.close()
    if env.is_main:
        write_json_atomic(run.record, s.run_record(stopped, history, best_epoch, best_val))
    n_params = sum(p.numel() for p in s.model.parameters())
    return RunResult(run_dir, history, best_epoch, best_val, stopped, s.model.cpu(), n_params)


def _record_epoch(s: Session, writer: Any, history: list[EpochMetrics], best_epoch: int, best_val: float,
                  bad_epochs: int, improved: bool, stopped: str) -> None:
    """Rank 0 after each epoch: the best model, the state to resume from, metrics, events, the plot."""
    c, run_dir, m = s.config, s.config.run_dir, history[-1]
    run = RunDir(run_dir)
    if improved:
        save_run_checkpoint(run_dir, s.model, s.policy_config, s.checkpoint_extra(best_epoch, best_val))
    with replacing(run.state) as tmp:
        torch.save(s.state(history, best_epoch, best_val, bad_epochs), tmp)
    _write_metrics(run.metrics, history)
    for name, value in (("loss/train", m.train_loss), ("loss/val", m.val_loss), ("lr", m.lr),
                        ("throughput/train_samples_per_s", m.samples_per_s)):
        writer.add_scalar(name, value, m.epoch)
    writer.flush()
    plot_losses(run.plot, history, f"{c.method} ({c.preset})")
    status = "running" if stopped == "max epochs" and m.epoch < c.epochs else stopped
    write_json_atomic(run.record, s.run_record(status, history, best_epoch, best_val))
