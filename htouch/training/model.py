"""The paper's audio-visual policy (section III-C and appendix A) and its baselines, behind one `method` flag.

    4 frames -> ResNet18 (R3M init) ----------\\
                                               +-> 5 tokens + learned positions -> 1 pre-LN transformer block
    2 s audio -> AVID Conv2D (AVID init) -----/    (width 512, 8 heads, MLP ratio 1) -> concatenate
                                                   -> 2-layer MLP (hidden 512), dropout 0.5 -> H x action_dim

Methods: `ours` (R3M + AVID, both fine-tuned), `vision-only` (4 image tokens, no audio), `scratch` (random AVID
network), `byol-a` (BYOL-A's AudioNTT2020 on the `byol-a` log-mel, pretrained in-domain), `frozen-audio` (AVID
weights frozen, BatchNorm in eval mode), `mlp-fusion` (an MLP over the concatenated tokens instead of the
transformer block, sized to the block's parameter count). Pretrained weights are loaded by
`htouch.training.checkpoints.load_pretrained` from files the user supplies; `build_policy` starts random.

What goes in (the data pipeline and the policy runner both feed exactly this):
- frames: float in [0, 1], (B, n_frames, 3, S, S) with S = config.image_size, RGB, oldest first;
  `preprocess_frames` turns camera uint8 (..., H, W, 3) into that (a resize of the whole frame). The ImageNet
  normalisation R3M applies (x/255, mean/std) happens inside the model.
- spectrogram: the spectrograms of `htouch.dataset.audio.spectrogram` for `config.audio_kind`, stacked raw (in dB /
  log units, NOT normalised): avid (B, 1, T, 257), byol-a (B, n_mels, T) or (B, 1, n_mels, T). The per-bin
  normalisation with the dataset's statistics (`htouch stats`) happens inside the model: call
  `policy.set_spectrogram_stats(stats["spectrogram"][config.audio_kind])` once before training; the values
  are buffers, saved with the weights.
- The output is the chunk of H actions in normalised units (`ActionNormalization`: (a - mean) / std per
  dimension, from the dataset's action statistics); train with MSE against normalised targets and
  de-normalise at run time (the runner does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from htouch.dataset.audio import LogMelParams, spectrogram_params
from htouch.errors import HtouchError
from htouch.training.encoders import AudioNTT2020, AvidConv2D, resnet18
from htouch.training.methods import PolicyConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ActionNormalization:
    """Per-dimension action mean/std (from the dataset's `htouch stats`): the policy predicts (a - mean) / std."""

    mean: list[float]
    std: list[float]
    MIN_STD = 1e-6  # a dimension that never changes (a gripper never used) is only centred

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise HtouchError("action normalization: mean and std have different lengths")
        self.std = [float(s) if np.isfinite(s) and s > self.MIN_STD else 1.0 for s in self.std]
        self.mean = [float(m) for m in self.mean]

    @classmethod
    def from_stats(cls, stats: dict[str, Any], action_dim: int = 7) -> ActionNormalization:
        """From the dataset metadata's "stats" entry (htouch.dataset.stats)."""
        try:
            delta, grip = stats["action"]["delta_ee"], stats["action"]["gripper"]
            mean, std = list(delta["mean"]) + list(grip["mean"]), list(delta["std"]) + list(grip["std"])
        except (KeyError, TypeError):
            raise HtouchError("the dataset has no action statistics; run `htouch stats DATASET` first") from None
        return cls(mean[:action_dim], std[:action_dim])

    @classmethod
    def identity(cls, action_dim: int = 7) -> ActionNormalization:
        return cls([0.0] * action_dim, [1.0] * action_dim)

    def normalize(self, a: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        mean, std = self._like(a)
        return (a - mean) / std

    def denormalize(self, a: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        mean, std = self._like(a)
        return a * std + mean

    def _like(self, a: np.ndarray | torch.Tensor) -> tuple[Any, Any]:
        if isinstance(a, torch.Tensor):
            return (torch.tensor(self.mean, dtype=a.dtype, device=a.device),
                    torch.tensor(self.std, dtype=a.dtype, device=a.device))
        return np.asarray(self.mean, dtype=np.float64), np.asarray(self.std, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActionNormalization:
        try:
            return cls(list(d["mean"]), list(d["std"]))
        except (KeyError, TypeError):
            raise HtouchError("action normalization is malformed (needs mean and std lists)") from None


def preprocess_frames(rgb: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Camera frames uint8 (..., H, W, 3) -> the model's input float (..., 3, size, size) in [0, 1]: the whole
    frame resized (antialiased bilinear), so the policy sees the full third-person view."""
    x = torch.as_tensor(np.ascontiguousarray(rgb) if isinstance(rgb, np.ndarray) else rgb)
    if x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"frames must be (..., H, W, 3) RGB, got shape {tuple(x.shape)}")
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != (size, size):
        x = TF.resize(x, [size, size], antialias=True)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    return x.reshape(*lead, 3, size, size)


class MlpFusion(nn.Module):
    """The architecture ablation: an MLP over the concatenated tokens in place of the transformer block,
    tokens in, tokens out, with its hidden width chosen so that it has the block's parameter count."""

    def __init__(self, n_tokens: int, width: int, dropout: float, target_params: int):
        super().__init__()
        n = n_tokens * width
        hidden = max(1, round((target_params - n) / (2 * n + 1)))  # params = hidden * (2n + 1) + n
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(n, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens.flatten(1)).view_as(tokens)


class AudioVisualPolicy(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = c = config
        self.image_encoder = resnet18(c.image_base_width)
        self.image_proj = _projection(self.image_encoder.out_dim, c.width)
        self.audio_encoder: nn.Module | None = None
        self.audio_proj: nn.Module | None = None
        self._freq_dim = 3
        if c.uses_audio:
            params = spectrogram_params(c.audio_kind)
            if c.audio_kind == "byol-a":
                self.audio_encoder = AudioNTT2020(params.n_mels, c.byol_dim, c.byol_channels)
                n_bins, self._freq_dim = params.n_mels, 2  # (B, 1, n_mels, T)
            else:
                self.audio_encoder = AvidConv2D(c.audio_base_width)
                n_bins = 257  # (B, 1, T, 257), AVID's pooled STFT bins
            assert isinstance(params, LogMelParams) == (self._freq_dim == 2)
            self.audio_proj = _projection(self.audio_encoder.out_dim, c.width)
            # "spec_mean" / "spec_std": the names the saved weights of every run carry, kept as they are
            self.register_buffer("spec_mean", torch.zeros(n_bins))
            self.register_buffer("spec_std", torch.ones(n_bins))
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.pos_embedding = nn.Parameter(torch.zeros(1, c.n_tokens, c.width))
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        block = nn.TransformerEncoderLayer(d_model=c.width, nhead=c.heads, dim_feedforward=round(c.width * c.mlp_ratio),
                                           dropout=c.dropout, activation="relu", batch_first=True, norm_first=True)
        if c.spec.fusion == "mlp":
            self.fusion: nn.Module = MlpFusion(c.n_tokens, c.width, c.dropout, _n_params(block))
        else:
            self.fusion = block
        self.mlp = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.n_tokens * c.width, c.head_hidden), nn.ReLU(),
                                 nn.Dropout(c.dropout), nn.Linear(c.head_hidden, c.horizon * c.action_dim))
        if c.spec.frozen_audio:
            self.audio_encoder.requires_grad_(False)
            self.audio_encoder.eval()

    # ------------------------------------------------------------------------------------ pieces

    def train(self, mode: bool = True) -> AudioVisualPolicy:
        super().train(mode)
        if self.config.spec.frozen_audio:
            self.audio_encoder.eval()  # frozen means its BatchNorm statistics too
        return self

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [0, 1] -> (N, width). One frame at a time is fine: the runner caches these."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"encode_frames takes (N, 3, S, S) frames, got {tuple(frames.shape)}")
        x = (frames - self.image_mean) / self.image_std
        return self.image_proj(self.image_encoder(x))

    def encode_audio(self, spectrogram: torch.Tensor | None) -> torch.Tensor | None:
        """Raw spectrograms (see the module docstring) -> (B, width); None for vision-only."""
        if self.audio_encoder is None:
            return None
        if spectrogram is None:
            raise ValueError(f"method {self.config.method!r} needs the {self.config.audio_kind} spectrogram")
        x = spectrogram.unsqueeze(1) if spectrogram.ndim == 3 else spectrogram
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[self._freq_dim] != self.spec_mean.numel():
            raise ValueError(f"expected {self.config.audio_kind} spectrograms with {self.spec_mean.numel()} bins "
                             f"on axis {self._freq_dim} of (B, 1, ., .), got {tuple(spectrogram.shape)}")
        shape = [1, 1, 1, 1]
        shape[self._freq_dim] = -1
        x = (x - self.spec_mean.view(shape)) / self.spec_std.view(shape)
        return self.audio_proj(self.audio_encoder(x))

    def fuse(self, frame_emb: torch.Tensor, audio_emb: torch.Tensor | None) -> torch.Tensor:
        """(B, n_frames, width) and (B, width) | None -> the fused tokens (B, n_tokens, width), frames first,
        the audio token last: what the action head reads (and what the embedding diagnostics look at)."""
        c = self.config
        tokens = frame_emb if audio_emb is None else torch.cat([frame_emb, audio_emb.unsqueeze(1)], dim=1)
        if tokens.shape[1:] != (c.n_tokens, c.width):
            raise ValueError(f"expected {c.n_tokens} tokens of width {c.width}, got {tuple(tokens.shape[1:])}")
        return self.fusion(tokens + self.pos_embedding)

    def head(self, frame_emb: torch.Tensor, audio_emb: torch.Tensor | None) -> torch.Tensor:
        """(B, n_frames, width) and (B, width) | None -> (B, horizon, action_dim) normalised actions."""
        c = self.config
        return self.mlp(self.fuse(frame_emb, audio_emb).flatten(1)).view(-1, c.horizon, c.action_dim)

    def forward(self, frames: torch.Tensor, spectrogram: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_frames, 3, S, S) frames and (B, ...) spectrograms -> (B, horizon, action_dim)."""
        b, n = frames.shape[:2]
        frame_emb = self.encode_frames(frames.flatten(0, 1)).view(b, n, -1)
        return self.head(frame_emb, self.encode_audio(spectrogram))

    # ------------------------------------------------------------------------------------ statistics

    def set_spectrogram_stats(self, stats: dict[str, Any]) -> None:
        """Per-bin normalisation from `stats["spectrogram"][config.audio_kind]` (htouch.dataset.stats)."""
        if self.audio_encoder is None:
            return
        kind = self.config.audio_kind
        try:
            mean, std = (torch.as_tensor(stats[k], dtype=torch.float32).reshape(-1) for k in ("mean", "std"))
        except (KeyError, TypeError, ValueError):
            raise HtouchError(f"no usable {kind} spectrogram statistics (run `htouch stats DATASET`)") from None
        n_bins = self.spec_mean.numel()
        if stats.get("kind", kind) != kind or mean.numel() != n_bins or std.numel() != n_bins:
            raise HtouchError(f"spectrogram statistics are for {stats.get('kind')!r} with {mean.numel()} bins; "
                              f"method {self.config.method} needs {kind} with {self.spec_mean.numel()} bins")
        self.spec_mean.copy_(mean)
        self.spec_std.copy_(torch.where(torch.isfinite(std) & (std > 1e-6), std, torch.ones_like(std)))


def _projection(dim_in: int, width: int) -> nn.Module:
    """Encoder output -> token width: nothing for the paper's 512-d encoders at width 512."""
    return nn.Identity() if dim_in == width else nn.Linear(dim_in, width)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_policy(config: PolicyConfig) -> AudioVisualPolicy:
    """A randomly initialised policy; load pretrained encoders with checkpoints.load_pretrained."""
    return AudioVisualPolicy(config)


def count_parameters(model: AudioVisualPolicy) -> dict[str, int]:
    """Parameters per part, the total, and how many are trained (frozen-audio trains fewer)."""
    parts = {
        "image_encoder": model.image_encoder, "audio_encoder": model.audio_encoder,
        "projections": nn.ModuleList([m for m in (model.image_proj, model.audio_proj) if m is not None]),
        "fusion": model.fusion, "head": model.mlp,
    }
    out = {name: _n_params(m) if m is not None else 0 for name, m in parts.items()}
    out["positional"] = model.pos_embedding.numel()
    out["total"] = _n_params(model)
    out["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return out


def describe(model: AudioVisualPolicy) -> str:
    """One line per part with parameter counts, for `htouch train` and the benchmark to print."""
    c, n = model.config, count_parameters(model)
    parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in n.items() if k not in ("total", "trainable"))
    return (f"{c.method} policy ({c.preset} preset, {c.n_tokens} tokens of width {c.width}, H={c.horizon}): "
            f"{n['total'] / 1e6:.2f}M parameters ({n['trainable'] / 1e6:.2f}M trained): {parts}")
