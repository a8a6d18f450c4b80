"""In-domain BYOL-A pretraining of the audio encoder (the paper's BYOL-A baseline, section IV-C / appendix B).

BYOL-A (Niizumi et al. 2021, nttcslab/byol-a) with its default settings, on the dataset's own audio:
- inputs: the `byol-a` log-mel spectrogram (htouch.dataset.audio) of the 2 s window at every camera frame of
  the training episodes (the same windows the policy sees), standardised per mel bin with the dataset's
  statistics: exactly what AudioVisualPolicy.encode_audio feeds the encoder later;
- two views of each window, each: mixup with a random past input (ratio 0.4, a memory of 2048, mixed in the
  linear domain: log((1 - a) e^x + a e^z)), then random resize crop (virtual canvas 1.0 x 1.5, frequency and
  time scales 0.6-1.5, bicubic back to the input size);
- BYOL: online encoder + projector (hidden 4096, out 256) + predictor of the same shape; target = an
  exponential moving average (0.99) of the online encoder and projector; loss 2 - 2 cos, symmetrised;
- Adam, lr 3e-4; the paper: 100 epochs, batch 1024.
The file written holds the online encoder's state dict (AudioNTT2020: features.*, fc.*): BYOL-A's own layout,
which checkpoints.load_byol_a reads. Safetensors for a .safetensors name (with how it was made as JSON
metadata `htouch`, which a training run records), else a plain torch state dict.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from htouch.dataset.audio import DEFAULT_CLIP, params_key, spectrogram_params
from htouch.dataset.files import replacing
from htouch.dataset.spectrograms import EpisodeSpectrograms
from htouch.dataset.split import training_episodes
from htouch.dataset.stats import sample_frames
from htouch.dataset.store import Dataset
from htouch.errors import HtouchError
from htouch.training import ddp
from htouch.training.data import ensure_stats
from htouch.training.encoders import AudioNTT2020
from htouch.training.methods import PRESETS, policy_config

KIND = "byol-a"
MADE_BY = "htouch pretrain byol-a"
LABEL = "in-domain BYOL-A"  # how results name this initialisation (checkpoints.describe_initialisation)


@dataclass
class ByolaConfig:
    dataset: Path
    out: Path
    preset: str = "paper"  # the policy preset the encoder is for (its channels and width)
    epochs: int = 100
    batch_size: int = 1024
    lr: float = 3e-4
    seed: int = 0
    device: str = "auto"
    force: bool = False
    stride: int = 1  # every n-th window
    ema: float = 0.99
    projection: int = 256
    hidden: int = 4096
    mixup_ratio: float = 0.4
    memory: int = 2048
    crop_canvas: tuple[float, float] = (1.0, 1.5)  # virtual crop area, (frequency, time) x input size
    crop_scale: tuple[float, float] = (0.6, 1.5)  # crop size range, x input size, both axes
    threads: int | None = None  # CPU threads for the network (None: torch's default)

    def check(self) -> None:
        if self.preset not in PRESETS:
            raise HtouchError(f"unknown model preset {self.preset!r}; use one of {', '.join(PRESETS)}")
        if self.threads is not None and self.threads < 1:
            raise HtouchError(f"--threads must be at least 1, got {self.threads}")
        for name in ("epochs", "batch_size", "stride", "projection", "hidden", "memory"):
            if getattr(self, name) < 1:
                raise HtouchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise HtouchError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.ema < 1:
            raise HtouchError(f"the EMA decay must be in [0, 1), got {self.ema}")
        if self.out.exists() and not self.force:
            raise HtouchError(f"--out {self.out} exists; add --force to replace it")
        if self.out.exists() and self.out.is_dir():
            raise HtouchError(f"--out {self.out} is a directory; name a file")


@dataclass
class ByolaResult:
    out: Path
    losses: list[float]  # mean BYOL loss per epoch
    n_windows: int
    n_parameters: int
    encoder: AudioNTT2020 = field(repr=False)


# ------------------------------------------------------------------------------------------ augmentations


def log_mixup_exp(x: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Mix log-scale inputs in the linear domain: log((1 - alpha) e^x + alpha e^z) (BYOL-A's log_mixup_exp)."""
    mixed = (1 - alpha) * x.exp() + alpha * z.exp()
    return torch.log(mixed + torch.finfo(mixed.dtype).eps)


class MixupMemory:
    """BYOL-A's mixup: each input mixed with a random earlier input, alpha uniform in [0, ratio)."""

    def __init__(self, ratio: float, size: int, generator: torch.Generator):
        self.ratio, self.size, self.g = ratio, size, generator
        self.bank: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, F, T) -> mixed views; then x joins the memory (the newest `size` inputs are kept)."""
        if self.bank is None or len(self.bank) == 0:
            out = x
        else:
            pick = torch.randint(len(self.bank), (len(x),), generator=self.g)
            alpha = self.ratio * torch.rand((len(x), 1, 1, 1), generator=self.g)
            out = log_mixup_exp(x, self.bank[pick].to(x.device), alpha.to(x.device))
        return out

    def remember(self, x: torch.Tensor) -> None:
        new = x.detach().cpu()
        self.bank = new[-self.size:] if self.bank is None else torch.cat([self.bank, new])[-self.size:]


def random_resize_crop(x: torch.Tensor, canvas: tuple[float, float], scale: tuple[float, float],
                       g: torch.Generator) -> torch.Tensor:
    """BYOL-A's RandomResizeCrop per input: place it at the centre of a zero canvas (canvas x its size), cut a
    random area (scale x its size, clipped to the canvas), resize it back (bicubic, aligned corners)."""
    _, _, fh, tw = x.shape
    ch, cw = int(fh * canvas[0]), int(tw * canvas[1])
    out = torch.empty_like(x)
    for i in range(len(x)):
        area = x.new_zeros((1, 1, ch, cw))
        y0, x0 = (ch - fh) // 2, (cw - tw) // 2
        area[..., y0:y0 + fh, x0:x0 + tw] = x[i]
        u = scale[0] + (scale[1] - scale[0]) * torch.rand(2, generator=g)
        h = int(np.clip(int(u[0] * fh), 1, ch))
        w = int(np.clip(int(u[1] * tw), 1, cw))
        top = int(torch.randint(ch - h + 1, (1,), generator=g)) if ch > h else 0
        left = int(torch.randint(cw - w + 1, (1,), generator=g)) if cw > w else 0
        crop = area[..., top:top + h, left:left + w]
        out[i] = F.interpolate(crop, size=(fh, tw), mode="bicubic", align_corners=True)[0]
    return out


# ------------------------------------------------------------------------------------------ BYOL


def _mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    """BYOL's projector/predictor: Linear, BatchNorm1d, ReLU, Linear."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class Byol(nn.Module):
    """Online encoder + projector + predictor, and the EMA target (encoder + projector)."""

    def __init__(self, encoder: AudioNTT2020, projection: int, hidden: int):
        super().__init__()
        self.encoder = encoder
        self.projector = _mlp(encoder.out_dim, hidden, projection)
        self.predictor = _mlp(projection, hidden, projection)
        self.target = copy.deepcopy(nn.Sequential(self.encoder, self.projector))
        self.target.requires_grad_(False)

    def loss(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        p1 = self.predictor(self.projector(self.encoder(v1)))
        p2 = self.predictor(self.projector(self.encoder(v2)))
        with torch.no_grad():
            t1, t2 = self.target(v1), self.target(v2)

        def one(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return 2 - 2 * F.cosine_similarity(p, t.detach(), dim=-1)

        return (one(p1, t2) + one(p2, t1)).mean()

    @torch.no_grad()
    def update_target(self, decay: float) -> None:
        online = nn.Sequential(self.encoder, self.projector)
        for t, o in zip(self.target.parameters(), online.parameters(), strict=True):
            t.mul_(decay).add_(o.detach(), alpha=1 - decay)


# ------------------------------------------------------------------------------------------ data and loop


def load_windows(ds: Dataset, episodes: list[int], stride: int, progress: Callable[[int], None] | None = None
                 ) -> np.ndarray:
    """The byol-a spectrograms (n, n_mels, T) at the camera frames where a policy sample exists."""
    params = spectrogram_params(KIND)
    out = []
    for i in episodes:
        ep = ds.episode(i)
        frames = sample_frames(ep, DEFAULT_CLIP)[::stride]
        if len(frames):
            out.append(EpisodeSpectrograms(ep, params, DEFAULT_CLIP).frames(frames, progress))
    if not out:
        raise HtouchError(f"no audio windows in {ds.root}: every training episode is too short for one "
                          "training sample (htouch validate says which)")
    return np.concatenate(out)


def pretrain_byol_a(config: ByolaConfig, progress_bar: Any = None,
                    on_epoch: Callable[[int, float], None] | None = None) -> ByolaResult:
    """Pretrain an AudioNTT2020 sized for `config.preset` and write it to config.out; see the module docstring."""
    config.check()
    threads = torch.get_num_threads()
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        return _pretrain(config, progress_bar, on_epoch)
    finally:
        torch.set_num_threads(threads)


def _pretrain(config: ByolaConfig, progress_bar: Any, on_epoch: Callable[[int, float], None] | None) -> ByolaResult:
    ds = Dataset(config.dataset)
    pc = policy_config(config.preset, "byol-a")
    selection = training_episodes(ds)
    stats, _, _ = ensure_stats(ds, [KIND], DEFAULT_CLIP, selection.indices, progress_bar)
    spectrogram_stats = stats["spectrogram"][KIND]
    bar = progress_bar or (lambda d, t: _null_bar())
    n_total = sum(len(sample_frames(ds.episode(i), DEFAULT_CLIP)[::config.stride]) for i in selection.indices)
    with bar(f"{KIND} spectrograms of {len(selection.indices)} episode(s)", n_total) as advance:
        windows = load_windows(ds, selection.indices, config.stride, advance)
    mean = np.asarray(spectrogram_stats["mean"], np.float32)[:, None]
    std = np.asarray(spectrogram_stats["std"], np.float32)[:, None]
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
    data = torch.from_numpy((windows - mean) / std).unsqueeze(1)  # (n, 1, n_mels, T), as encode_audio feeds

    device = ddp.choose_device(config.device)
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    params = spectrogram_params(KIND)
    encoder = AudioNTT2020(params.n_mels, pc.byol_dim, pc.byol_channels)
    model = Byol(encoder, config.projection, config.hidden).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr)
    mixup = MixupMemory(config.mixup_ratio, config.memory, g)
    n = len(data)
    batch = min(config.batch_size, n)
    if n < 2:
        raise HtouchError(f"BYOL-A needs at least 2 audio windows, {ds.root} has {n}")
    losses = []
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=g)
        total, steps = 0.0, 0
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            if len(idx) < 2:  # BatchNorm1d needs two samples
                continue
            x = data[idx]
            views = [random_resize_crop(mixup(x), config.crop_canvas, config.crop_scale, g) for _ in range(2)]
            mixup.remember(x)
            loss = model.loss(views[0].to(device), views[1].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.update_target(config.ema)
            total += float(loss.detach())
            steps += 1
        losses.append(total / max(steps, 1))
        if not np.isfinite(losses[-1]):
            raise HtouchError(f"the BYOL loss became {losses[-1]} in epoch {epoch + 1}; lower --lr")
        if on_epoch:
            on_epoch(epoch + 1, losses[-1])
    encoder = model.encoder.cpu().eval()
    meta = {"format": "byol-a AudioNTT2020 state dict", "made_by": MADE_BY, "label": LABEL, "n_mels": params.n_mels,
            "d": pc.byol_dim,
            "channels": pc.byol_channels, "preset": config.preset, "spectrogram": KIND,
            "spectrogram_key": params_key(DEFAULT_CLIP, params), "dataset": str(ds.root.resolve()),
            "episodes": selection.indices, "windows": n, "epochs": config.epochs, "batch_size": batch,
            "lr": config.lr, "seed": config.seed, "losses": losses, "settings": _settings(config)}
    save_encoder(encoder, config.out, meta)
    return ByolaResult(config.out, losses, n, sum(p.numel() for p in encoder.parameters()), encoder)


def _settings(config: ByolaConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in ("dataset", "out", "force", "device")}


def save_encoder(encoder: nn.Module, out: Path, meta: dict[str, Any]) -> None:
    """The encoder's plain state dict, atomically: safetensors (with `meta` as JSON) or a torch file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with replacing(out) as tmp:
        if out.suffix == ".safetensors":
            safetensors.torch.save_file(tensors, str(tmp), metadata={"htouch": json.dumps(meta)})
        else:
            torch.save(tensors, tmp)


class _null_bar:
    def __enter__(self):
        return lambda n=1: None

    def __exit__(self, *exc):
        return False
