"""Audio preprocessing: the one place that owns the policy's audio window and spectrogram parameters.

The policy hears a 2 s clip ending at the observation time, mono (channels averaged), normalised,
resampled to 16 kHz (the paper, section IV-A). Three spectrogram front ends are offered:
- `logmel`: the paper authors' variant, MelSpectrogram(16 kHz, n_fft 400, hop 160, 64 mels), log(x + 1e-8);
- `avid`: AVID's AudioSet front end, 24 kHz, STFT n_fft 1024 hop 240, power, bins 1..512 averaged in
  pairs -> 257 bins, power_to_db(top_db=100), shape (1, 200, 257) for 2 s (see encoders-and-audio.md);
- `byol-a`: BYOL-A's front end for its AudioNTT2020 encoder (the BYOL-A baseline), a log-mel like `logmel`
  with n_fft 1024, 64 mels between 60 and 7800 Hz, log(x + float32 eps).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from htouch.errors import HtouchError

if TYPE_CHECKING:
    import numpy as np
    import torchaudio.transforms as AT

# numpy, torch and torchaudio are imported where a signal is processed, not here: the command line (which
# reads the parameters below for its options and help) starts without them.


@dataclass(frozen=True)
class ClipParams:
    window_s: float = 2.0
    rate_hz: int = 16000

    @property
    def n_samples(self) -> int:
        return int(round(self.window_s * self.rate_hz))


@dataclass(frozen=True)
class LogMelParams:
    kind: str = "logmel"
    rate_hz: int = 16000
    n_fft: int = 400
    hop: int = 160
    n_mels: int = 64
    log_eps: float = 1e-8


@dataclass(frozen=True)
class AvidParams:
    kind: str = "avid"
    rate_hz: int = 24000
    n_fft: int = 1024
    hop: int = 240
    top_db: float = 100.0


@dataclass(frozen=True)
class ByolaParams(LogMelParams):
    """BYOL-A's default front end (nttcslab/byol-a config.yaml): a log-mel with its own STFT and band limits."""

    kind: str = "byol-a"
    n_fft: int = 1024
    log_eps: float = 2.0 ** -23  # float32 machine epsilon (numpy.finfo(numpy.float32).eps)
    f_min: float = 60.0
    f_max: float = 7800.0


SpectrogramParams = LogMelParams | AvidParams | ByolaParams
SPECTROGRAM_KINDS = {"logmel": LogMelParams, "avid": AvidParams, "byol-a": ByolaParams}
DEFAULT_CLIP = ClipParams()
# Spectrogram windows in the deterministic subsample `htouch stats` describes when it computes them (stats.py);
# here, beside the other spectrogram parameters, because the command line shows it as a default.
DEFAULT_MAX_WINDOWS = 256


def spectrogram_params(kind: str) -> SpectrogramParams:
    """The parameters of a spectrogram kind (avid, logmel, byol-a); HtouchError naming the kinds otherwise."""
    try:
        return SPECTROGRAM_KINDS[kind]()
    except KeyError:
        raise HtouchError(f"unknown spectrogram kind {kind!r}; use one of {', '.join(SPECTROGRAM_KINDS)}") from None


def freq_axis(params: SpectrogramParams) -> int:
    """The frequency axis of one `spectrogram` output: logmel (n_mels, frames) -> 0, avid (1, frames, 257) -> 2."""
    return 0 if isinstance(params, LogMelParams) else 2


def params_key(clip: ClipParams, params: SpectrogramParams) -> str:
    """A short stable name for a (clip, spectrogram) parameter set, used to key cached arrays."""
    # the blob's spelling ("spec" included) is part of every cache's name on disk: keep it as it is
    blob = json.dumps({"clip": dataclasses.asdict(clip), "spec": dataclasses.asdict(params)}, sort_keys=True)
    return f"{params.kind}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def resample(x: np.ndarray, from_hz: float, to_hz: float) -> np.ndarray:
    """Band-limited resampling (torchaudio's windowed sinc) of a float signal along its last axis (a 1-D signal,
    or (channels, samples))."""
    import numpy as np

    a, b = int(round(from_hz)), int(round(to_hz))
    if a == b:
        return x.astype(np.float32, copy=False)
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), a, b).numpy()


@lru_cache(maxsize=4)
def mel_transform(params: LogMelParams) -> AT.MelSpectrogram:
    """The mel filterbank of these parameters (shared, so plots label bands with the same centres)."""
    import torchaudio.transforms as AT

    return AT.MelSpectrogram(sample_rate=params.rate_hz, n_fft=params.n_fft, hop_length=params.hop,
                             n_mels=params.n_mels, f_min=getattr(params, "f_min", 0.0),
                             f_max=getattr(params, "f_max", None))


def spectrogram(clip: np.ndarray, clip_rate_hz: int, params: SpectrogramParams) -> np.ndarray:
    """Spectrogram of one mono clip (float32). logmel: (n_mels, frames); avid: (1, frames, 257)."""
    import numpy as np
    import torch
    import torchaudio.functional as AF

    x = torch.from_numpy(resample(clip, clip_rate_hz, params.rate_hz))
    with torch.no_grad():
        if isinstance(params, LogMelParams):
            return torch.log(mel_transform(params)(x) + params.log_eps).numpy().astype(np.float32)
        spec = torch.stft(x, n_fft=params.n_fft, hop_length=params.hop, window=torch.hann_window(params.n_fft),
                          center=True, return_complex=True).abs() ** 2  # (513, frames)
        n_frames = int(len(x) // params.hop)  # 2 s at 24 kHz / 240 -> 200, as AVID's trimmed clips give
        spec = spec[:, :n_frames]
        pooled = torch.cat([spec[:1], 0.5 * (spec[1:-1:2] + spec[2::2])], dim=0)  # 1 + 256 = 257 bins
        db = AF.amplitude_to_DB(pooled, multiplier=10.0, amin=1e-10, db_multiplier=0.0, top_db=params.top_db)
        return db.T.unsqueeze(0).numpy().astype(np.float32)
