"""The training methods and the network's configuration, without torch: what the command line, the
experiment and the run files need to know about a method (its audio input, what it starts from, how it
fuses) and the presets that size the network. `htouch.training.model` builds the network from these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from htouch.errors import HtouchError


@dataclass(frozen=True)
class MethodSpec:
    """One training method (the paper's section IV-C): everything that differs between methods is a field
    here, so a new baseline is one row of METHOD_SPECS."""

    help: str
    audio_kind: str | None  # the spectrogram its audio encoder reads (htouch.dataset.audio): "avid" -> AVID's
    #                         Conv2D, "byol-a" -> BYOL-A's AudioNTT2020; None: no audio token
    pretrained: tuple[str, ...]  # the pretrained files it starts from (checkpoints.PRETRAINED's keys)
    fusion: str = "transformer"  # or "mlp": a parameter-matched MLP over the concatenated tokens
    frozen_audio: bool = False  # the audio encoder (weights and BatchNorm statistics) is not trained


METHOD_SPECS: dict[str, MethodSpec] = {
    "ours": MethodSpec("R3M image + AVID audio initialisation, both fine-tuned (the paper's method)", "avid",
                       ("r3m", "avid")),
    "vision-only": MethodSpec("same architecture on the 4 image tokens only", None, ("r3m",)),
    "scratch": MethodSpec("AVID audio network from random initialisation", "avid", ("r3m",)),
    "byol-a": MethodSpec("BYOL-A encoder pretrained in-domain (`htouch pretrain byol-a`) on the byol-a log-mel",
                         "byol-a", ("r3m", "byol-a")),
    "frozen-audio": MethodSpec("as ours, but the AVID encoder stays frozen", "avid", ("r3m", "avid"),
                               frozen_audio=True),
    "mlp-fusion": MethodSpec("as ours, with a parameter-matched MLP over the concatenated tokens instead of the "
                             "transformer", "avid", ("r3m", "avid"), fusion="mlp"),
}
METHODS = tuple(METHOD_SPECS)
DEFAULT_METHOD = "ours"  # what `htouch train` trains unless told otherwise

@dataclass
class PolicyConfig:
    """Everything that fixes the network's shape; stored as JSON beside the weights of a run."""

    method: str = "ours"
    preset: str = "paper"
    n_frames: int = 4  # frames spanning the 2 s window, oldest first
    image_size: int = 224
    width: int = 512  # token width
    heads: int = 8
    mlp_ratio: float = 1.0  # the transformer block's MLP expansion
    dropout: float = 0.5  # on every linear layer
    head_hidden: int = 512  # hidden width of the 2-layer output MLP
    horizon: int = 8  # H actions predicted per call
    action_dim: int = 7  # 6-D delta end effector + gripper (6: no gripper)
    image_base_width: int = 64  # ResNet18 stem width (64: torchvision's / R3M's network)
    audio_base_width: int = 64  # AVID Conv2D stem width (64: AVID's network)
    byol_channels: int = 64  # AudioNTT2020 conv channels (64: BYOL-A's network)
    byol_dim: int = 512  # AudioNTT2020 output width d

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise HtouchError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        positive = ("n_frames", "image_size", "width", "heads", "head_hidden", "horizon", "image_base_width",
                    "audio_base_width", "byol_channels", "byol_dim")
        bad = [f"{k}={getattr(self, k)}" for k in positive if int(getattr(self, k)) < 1]
        if bad:
            raise HtouchError(f"policy config: {', '.join(bad)} must be at least 1")
        if self.width % self.heads:
            raise HtouchError(f"policy config: width {self.width} is not divisible by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0 or self.mlp_ratio <= 0:
            raise HtouchError("policy config: dropout must be in [0, 1) and mlp_ratio > 0")
        if self.action_dim not in (6, 7):
            raise HtouchError(f"policy config: action_dim must be 6 (delta EE) or 7 (+ gripper), got {self.action_dim}")

    @property
    def spec(self) -> MethodSpec:
        return METHOD_SPECS[self.method]

    @property
    def audio_kind(self) -> str | None:
        """The spectrogram kind (htouch.dataset.audio) the audio encoder reads; None without audio."""
        return self.spec.audio_kind

    @property
    def uses_audio(self) -> bool:
        return self.audio_kind is not None

    @property
    def n_tokens(self) -> int:
        return self.n_frames + int(self.uses_audio)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HtouchError(f"policy config has unknown fields: {', '.join(unknown)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise HtouchError(f"policy config is malformed: {e}") from None


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's network: 224 px frames, ResNet18, AVID Conv2D, width 512: 18.8M parameters with ours.
    "paper": {},
    # Same code paths with narrow encoders and tokens, for CPU tests and a quick start (about 0.3M parameters).
    # No dropout: with half of a 64-wide head dropped, tiny policies underfit a few demonstrations and never
    # reached the zip tab (docs/experiment.md, "Dropout").
    "tiny": dict(image_size=64, width=64, heads=4, head_hidden=64, image_base_width=8, audio_base_width=8,
                 byol_channels=16, byol_dim=64, dropout=0.0),
}


def policy_config(preset: str = "paper", method: str = "ours", **overrides: Any) -> PolicyConfig:
    """A preset's configuration for one method, with optional field overrides (e.g. horizon=8)."""
    if preset not in PRESETS:
        raise HtouchError(f"unknown model preset {preset!r}; use one of {', '.join(PRESETS)}")
    return PolicyConfig(method=method, preset=preset, **{**PRESETS[preset], **overrides})
