"""Contact-microphone audio synthesized from the simulated contact dynamics.

The real rig has four piezo contact microphones on the gripper. They hear structure-borne vibration: a click and
a ring-down when something hits the gripper or the object it holds, a scraping noise while surfaces slide, the
hum of the motors while the arm moves, and the electrical noise floor of the sensor. This module reproduces those
causes, from the contacts the physics engine reports for every substep, so that the simulated audio carries the
information the policy is meant to hear:

- an impact (a new contact) excites the touched material's resonant modes with a short force pulse whose
  amplitude is proportional to the impulse; soft materials have a long pulse (dull), hard ones a short one
  (bright); metal rings long and high, wood short and mid, rubber and fabric are dull or noisy and soft;
- sliding excites the same modes (and a broad contact-noise band) with noise whose RMS grows with the
  dissipated friction power, normal force x slip speed;
- each microphone hears a contact attenuated with its distance to the contact point, and slightly delayed;
- the motor hum (fundamental + harmonics, below 1 kHz) follows `motor_speed` and is absent when still;
- sensor noise, a small DC offset, a soft saturation near full scale, and int16 quantization.

Without contacts and with `motor_speed == 0` only the noise floor and the DC offset remain. The synthesizer is
stateful (resonators ring on into the next block, with no click at the boundary) and deterministic given the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

FULL_SCALE = 32768.0


@dataclass
class ContactSample:
    """One contact during one span of samples (usually one physics substep)."""

    start: int  # first sample of the span within the block being rendered
    length: int  # samples in the span
    position: np.ndarray  # (3,) world contact point, m
    normal_force: float  # N
    slip_speed: float  # m/s tangential relative speed
    impulse: float  # N*s of a new impact at `start` (0 if the contact is continuing)
    material: str  # material of the object touched, one of MATERIALS


@dataclass(frozen=True)
class Material:
    """How a material sounds: its resonant modes and how hard its surface is.

    Each mode is (frequency Hz, T60 decay time s, weight in an impact, weight in friction noise). Modes with a
    T60 of a fraction of a millisecond are broad bands (the contact noise itself) rather than rings."""

    modes: tuple[tuple[float, float, float, float], ...]
    pulse_ms: float  # duration of the force pulse of an impact: long pulses lose the high modes (dull)
    impact_level: float  # relative loudness of impacts
    friction_level: float  # relative loudness of sliding (roughly the friction coefficient)


MATERIALS: dict[str, Material] = {
    "metal": Material(((2350.0, 1.2, 1.0, 0.35), (5170.0, 0.9, 0.8, 0.3), (7950.0, 0.6, 0.6, 0.25),
                       (11300.0, 0.4, 0.45, 0.2), (6500.0, 0.0006, 0.25, 0.85)),
                      pulse_ms=0.08, impact_level=1.0, friction_level=1.0),
    "ceramic": Material(((3050.0, 0.3, 1.0, 0.3), (6600.0, 0.2, 0.7, 0.3), (10200.0, 0.12, 0.45, 0.2),
                         (5000.0, 0.0005, 0.3, 0.88)),
                        pulse_ms=0.1, impact_level=0.9, friction_level=0.9),
    "plastic": Material(((850.0, 0.1, 1.0, 0.3), (2150.0, 0.07, 0.7, 0.35), (4400.0, 0.045, 0.4, 0.3),
                         (3200.0, 0.0005, 0.35, 0.85)),
                        pulse_ms=0.2, impact_level=0.6, friction_level=0.6),
    "wood": Material(((560.0, 0.06, 1.0, 0.3), (1450.0, 0.04, 0.75, 0.35), (3100.0, 0.025, 0.45, 0.3),
                      (2200.0, 0.0006, 0.35, 0.85)),
                     pulse_ms=0.3, impact_level=0.7, friction_level=0.7),
    "rubber": Material(((220.0, 0.025, 1.0, 0.5), (650.0, 0.015, 0.5, 0.4), (1300.0, 0.0008, 0.3, 0.75)),
                       pulse_ms=1.5, impact_level=0.4, friction_level=0.5),
    "fabric": Material(((320.0, 0.01, 0.3, 0.15), (2600.0, 0.0004, 1.0, 0.75), (6200.0, 0.0003, 0.7, 0.65)),
                       pulse_ms=1.0, impact_level=0.15, friction_level=0.45),
}


@dataclass
class ContactAudioConfig:
    """Levels are in int16 counts (full scale 32768) at the microphone."""

    rate_hz: int = 32000
    channels: int = 4
    seed: int = 0
    impact_gain: float = 50000.0  # peak counts per N*s of impulse on metal at the contact point (0.5 N*s ~ 0.75 FS at 2 cm)
    friction_gain: float = 6000.0  # RMS counts per sqrt(W) of friction power (normal force x slip speed)
    distance_ref_m: float = 0.05  # gain = ref / (ref + distance): 0.71 at 2 cm, 0.33 at 10 cm
    wave_speed_m_s: float = 1500.0  # structure-borne propagation speed, for the per-microphone delay
    max_delay_samples: int = 32
    hum_level: float = 150.0  # RMS counts of the motor hum at full speed
    hum_full_speed: float = 1.0  # motor_speed (e.g. joint speed norm, rad/s) at which the hum is loudest
    hum_f0_min_hz: float = 70.0  # fundamental when barely moving ...
    hum_f0_max_hz: float = 160.0  # ... and at full speed; harmonics 1..hum_harmonics stay below 1 kHz
    hum_harmonics: int = 6
    ambient_rms: float = 12.0  # sensor + environment noise floor, RMS counts per channel
    dc_offset: float = -18.0  # counts
    channel_gains: tuple[float, ...] | None = None  # per-microphone sensitivity; None = all 1
    limit_knee: float = 0.6  # fraction of full scale where the preamp's soft saturation starts
    limit_peak: float = 32000.0  # the saturation's asymptote (below int16 full scale: never clips)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _finite_nonneg(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    _require(math.isfinite(v) and v >= 0.0, f"{name} must be finite and >= 0, got {value!r}")
    return v


def _check_config(cfg: ContactAudioConfig) -> np.ndarray:
    """Validate the config; returns the per-channel gains."""
    _require(isinstance(cfg.rate_hz, int) and cfg.rate_hz >= 8000, f"rate_hz must be an int >= 8000, got {cfg.rate_hz!r}")
    _require(isinstance(cfg.channels, int) and cfg.channels >= 1, f"channels must be an int >= 1, got {cfg.channels!r}")
    for name in ("impact_gain", "friction_gain", "hum_level", "ambient_rms", "wave_speed_m_s", "distance_ref_m",
                 "hum_full_speed", "hum_f0_min_hz", "hum_f0_max_hz"):
        _finite_nonneg(f"ContactAudioConfig.{name}", getattr(cfg, name))
    _require(cfg.wave_speed_m_s > 0 and cfg.distance_ref_m > 0 and cfg.hum_full_speed > 0,
             "ContactAudioConfig.wave_speed_m_s, distance_ref_m and hum_full_speed must be > 0")
    _require(cfg.hum_f0_max_hz * max(cfg.hum_harmonics, 1) < cfg.rate_hz / 2,
             "ContactAudioConfig: the hum's top harmonic must stay below the Nyquist frequency")
    _require(isinstance(cfg.max_delay_samples, int) and cfg.max_delay_samples >= 0,
             f"ContactAudioConfig.max_delay_samples must be an int >= 0, got {cfg.max_delay_samples!r}")
    _require(0.0 < cfg.limit_knee < 1.0, f"ContactAudioConfig.limit_knee must be in (0, 1), got {cfg.limit_knee!r}")
    _require(cfg.limit_knee * FULL_SCALE < cfg.limit_peak <= FULL_SCALE - 1 - abs(cfg.dc_offset),
             "ContactAudioConfig.limit_peak must lie between the knee and full scale minus the DC offset")
    gains = np.ones(cfg.channels) if cfg.channel_gains is None else np.asarray(cfg.channel_gains, dtype=float)
    _require(gains.shape == (cfg.channels,) and bool(np.all(np.isfinite(gains))) and bool(np.all(gains >= 0)),
             f"ContactAudioConfig.channel_gains must hold {cfg.channels} finite gains >= 0, got {cfg.channel_gains!r}")
    return gains


class _MaterialVoice:
    """The resonator bank of one material, with its filter states and excitation still to come (delays, pulses)."""

    def __init__(self, material: Material, rate: int, channels: int, tail: int):
        self.material = material
        n_pulse = max(1, int(round(material.pulse_ms * 1e-3 * rate)))
        self.pulse = np.hanning(n_pulse + 2)[1:-1]
        self.pulse /= self.pulse.sum()  # unit area: the impulse, spread over the contact time
        self.a, self.b, imp, fric = [], [], [], []
        for freq, t60, w_imp, w_fric in material.modes:
            w = 2 * math.pi * freq / rate
            r = math.exp(-math.log(1000.0) / (t60 * rate))
            self.a.append(np.array([1.0, -2 * r * math.cos(w), r * r]))
            self.b.append(np.array([math.sin(w)]))  # impulse response r^n sin((n+1)w): unit-amplitude ring
            # Sum over n of (r^n sin((n+1)w))^2: the noise gain of this mode for unit-variance white input.
            z = r * r * complex(math.cos(2 * w), math.sin(2 * w))
            noise_gain = 0.5 / (1 - r * r) - 0.5 * (complex(math.cos(2 * w), math.sin(2 * w)) / (1 - z)).real
            imp.append(w_imp)
            fric.append(w_fric / math.sqrt(noise_gain))
        fric_w = np.array([m[3] for m in material.modes])
        self.fric_scale = np.array(fric) / math.sqrt(float(np.sum(fric_w ** 2)))  # unit RMS for unit envelope
        # Normalize impact weights so a unit-area pulse gives a unit peak (the loudness is the gain's business).
        probe = np.zeros(int(0.02 * rate))
        probe[:n_pulse] = self.pulse
        ring = sum(wi * lfilter(b, a, probe) for wi, b, a in zip(imp, self.b, self.a))
        self.imp_scale = np.array(imp) / float(np.max(np.abs(ring)))
        self.zi = [np.zeros((2, channels)) for _ in material.modes]
        self.pending_impact = np.zeros((tail, channels))
        self.pending_friction = np.zeros((tail, channels))
        self.block_impact: np.ndarray | None = None  # this block's excitation (n + tail, C), set by _excite
        self.block_friction: np.ndarray | None = None
        self.active = False


class ContactAudioSynth:
    """Renders the contact microphones' int16 signal block by block from the contacts of each physics substep."""

    def __init__(self, config: ContactAudioConfig):
        self.config = config
        self._gains = _check_config(config)
        c = config.channels
        self._materials = list(MATERIALS)
        max_pulse = max(int(round(m.pulse_ms * 1e-3 * config.rate_hz)) for m in MATERIALS.values())
        self._tail = config.max_delay_samples + max_pulse + 1
        self._voices = {name: _MaterialVoice(m, config.rate_hz, c, self._tail) for name, m in MATERIALS.items()}
        friction_seq, ambient_seq = np.random.SeedSequence(config.seed).spawn(2)
        self._friction_rng = np.random.default_rng(friction_seq)  # one source per material, fixed draws per sample
        self._ambient_rng = np.random.default_rng(ambient_seq)
        self._ambient_pole = 0.5  # slightly low-passed (pinkish) floor, unit variance via the numerator
        self._ambient_zi = np.zeros((1, c))
        self._hum_phase = 0.0
        self._hum_amp = 0.0
        self._hum_f0 = config.hum_f0_min_hz
        k = np.arange(1, config.hum_harmonics + 1)
        self._hum_k = k
        self._hum_w = (1.0 / k) / math.sqrt(float(np.sum((1.0 / k) ** 2)) / 2)  # harmonic weights, unit RMS

    # -- input checking -------------------------------------------------------------------------------------

    def _check_inputs(self, n_samples, contacts, mic_positions, motor_speed):
        _require(isinstance(n_samples, (int, np.integer)) and not isinstance(n_samples, bool) and n_samples > 0,
                 f"n_samples must be a positive int, got {n_samples!r}")
        n = int(n_samples)
        c = self.config.channels
        try:
            mics = np.asarray(mic_positions, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"mic_positions must be a ({c}, 3) array of metres, got {mic_positions!r}") from None
        _require(mics.shape == (c, 3), f"mic_positions must have shape ({c}, 3), got {mics.shape}")
        _require(bool(np.all(np.isfinite(mics))), "mic_positions must be finite")
        speed = _finite_nonneg("motor_speed", motor_speed)
        for i, ct in enumerate(contacts):  # messages are built only on failure: this runs for every span
            if not isinstance(ct, ContactSample):
                raise ValueError(f"contact {i}: expected a ContactSample, got {type(ct).__name__}")
            if ct.material not in MATERIALS:
                raise ValueError(f"contact {i}: unknown material {ct.material!r}; use one of {', '.join(MATERIALS)}")
            if not (isinstance(ct.start, (int, np.integer)) and isinstance(ct.length, (int, np.integer))
                    and 0 <= ct.start < n and ct.length >= 0 and ct.start + ct.length <= n):
                raise ValueError(f"contact {i}: span start={ct.start!r} length={ct.length!r} must lie within the "
                                 f"block of {n} samples")
            for name in ("normal_force", "slip_speed", "impulse"):
                v = getattr(ct, name)
                if not (isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v) and v >= 0):
                    raise ValueError(f"contact {i}: {name} must be finite and >= 0, got {v!r}")
        positions = None
        if contacts:
            try:
                positions = np.array([ct.position for ct in contacts], dtype=float)
            except (TypeError, ValueError):
                positions = None
            if positions is None or positions.shape != (len(contacts), 3) or not np.isfinite(positions).all():
                for i, ct in enumerate(contacts):
                    try:
                        pos = np.asarray(ct.position, dtype=float)
                    except (TypeError, ValueError):
                        pos = None
                    if pos is None or pos.shape != (3,) or not np.isfinite(pos).all():
                        raise ValueError(f"contact {i}: position must be 3 finite numbers (m), got {ct.position!r}")
        return n, mics, speed, positions

    # -- rendering --------------------------------------------------------------------------------------------

    def render(self, n_samples: int, contacts: list[ContactSample], mic_positions: np.ndarray,
               motor_speed: float = 0.0) -> np.ndarray:
        """The next `n_samples` of all microphones, (n_samples, channels) int16.

        `contacts` holds one ContactSample per active contact per substep of this block; `mic_positions` the
        microphones' world positions (C, 3) during the block; `motor_speed` how fast the motors turn (e.g. the
        joint speed norm in rad/s; the hum is loudest from `hum_full_speed` on)."""
        n, mics, speed, positions = self._check_inputs(n_samples, contacts, mic_positions, motor_speed)
        cfg = self.config
        out = np.zeros((n, cfg.channels))
        sources = self._friction_rng.standard_normal((n, len(self._materials)))  # drawn every block: determinism
        if contacts:
            self._excite(n, contacts, positions, mics, sources)
        for voice in self._voices.values():
            if voice.active:
                self._ring(voice, n, out)
        self._add_hum(n, speed, out)
        self._add_ambient(n, out)
        self._saturate(out)
        out += cfg.dc_offset
        np.rint(out, out=out)
        np.clip(out, -FULL_SCALE, FULL_SCALE - 1, out=out)
        return out.astype(np.int16)

    def _excite(self, n: int, contacts: list[ContactSample], pos: np.ndarray, mics: np.ndarray,
                sources: np.ndarray) -> None:
        """Adds this block's impact pulses and friction noise to each touched material's excitation."""
        cfg = self.config
        c = cfg.channels
        dist = np.linalg.norm(pos[:, None, :] - mics[None, :, :], axis=2)  # (K, C)
        gain = cfg.distance_ref_m / (cfg.distance_ref_m + dist) * self._gains
        delay = np.minimum(np.rint(dist / cfg.wave_speed_m_s * cfg.rate_hz), cfg.max_delay_samples).astype(int)
        start = np.array([ct.start for ct in contacts], dtype=int)
        length = np.array([ct.length for ct in contacts], dtype=int)
        power = np.array([float(ct.normal_force) * float(ct.slip_speed) for ct in contacts])
        impulse = np.array([float(ct.impulse) for ct in contacts])
        material = np.array([self._materials.index(ct.material) for ct in contacts])
        cols = np.arange(c)
        for m in np.unique(material):
            voice = self._voices[self._materials[m]]
            mat = voice.material
            sel = material == m
            ext_imp = ext_fric = None
            hits = np.flatnonzero(sel & (impulse > 0))
            if hits.size:
                ext_imp = np.zeros((n + self._tail, c))
                w = voice.pulse.size
                for k in hits:
                    amp = cfg.impact_gain * mat.impact_level * impulse[k] * gain[k]  # (C,)
                    rows = (start[k] + delay[k])[:, None] + np.arange(w)[None, :]
                    ext_imp[rows, cols[:, None]] += amp[:, None] * voice.pulse[None, :]
            rubs = np.flatnonzero(sel & (power > 0) & (length > 0))
            if rubs.size:
                amp = cfg.friction_gain * mat.friction_level * np.sqrt(power[rubs])[:, None] * gain[rubs]  # (R, C)
                steps = np.zeros((n + 1, c))
                np.add.at(steps, start[rubs], amp)
                np.add.at(steps, start[rubs] + length[rubs], -amp)
                envelope = np.cumsum(steps[:n], axis=0)
                envelope[np.abs(envelope) < 1e-9] = 0.0  # cumsum round-off where no span is active
                src = envelope * sources[:, m:m + 1]
                # One delay per microphone for this material's sliding in this block (amplitude-weighted).
                d = np.rint(np.sum(amp * delay[rubs], axis=0) / np.maximum(np.sum(amp, axis=0), 1e-12)).astype(int)
                ext_fric = np.zeros((n + self._tail, c))
                for ch in range(c):
                    ext_fric[d[ch]:d[ch] + n, ch] = src[:, ch]
            voice.block_impact = ext_imp
            voice.block_friction = ext_fric
            voice.active = True

    def _ring(self, voice: _MaterialVoice, n: int, out: np.ndarray) -> None:
        """Runs a material's resonators over this block (excitation and ring-down from earlier blocks)."""
        tail = self._tail
        parts = []
        for kind in ("impact", "friction"):
            ext = getattr(voice, f"block_{kind}")
            pending = getattr(voice, f"pending_{kind}")
            if ext is None:
                if not pending.any():
                    parts.append(None)
                    continue
                ext = np.zeros((n + tail, pending.shape[1]))
            ext[:tail] += pending
            setattr(voice, f"pending_{kind}", ext[n:n + tail].copy())
            parts.append(ext[:n])
        voice.block_impact = voice.block_friction = None
        imp, fric = parts
        peak = 0.0
        for i, (b, a) in enumerate(zip(voice.b, voice.a)):
            if imp is not None and fric is not None:
                x = voice.imp_scale[i] * imp + voice.fric_scale[i] * fric
            elif imp is not None:
                x = voice.imp_scale[i] * imp
            elif fric is not None:
                x = voice.fric_scale[i] * fric
            else:
                x = np.zeros((n, out.shape[1]))
            y, voice.zi[i] = lfilter(b, a, x, axis=0, zi=voice.zi[i])
            out += y
            peak = max(peak, float(np.max(np.abs(voice.zi[i]))))
        if peak < 1e-4 and not voice.pending_impact.any() and not voice.pending_friction.any():
            for z in voice.zi:  # rung out: stop computing it until it is touched again
                z[:] = 0.0
            voice.active = False

    def _add_hum(self, n: int, speed: float, out: np.ndarray) -> None:
        cfg = self.config
        s = min(speed / cfg.hum_full_speed, 1.0)
        amp = cfg.hum_level * s
        f0 = cfg.hum_f0_min_hz + (cfg.hum_f0_max_hz - cfg.hum_f0_min_hz) * s
        if amp == 0.0 and self._hum_amp == 0.0:
            self._hum_f0 = f0
            return
        ramp = np.arange(1, n + 1) / n  # glide from the last block's amplitude and pitch: no clicks
        amps = self._hum_amp + (amp - self._hum_amp) * ramp
        freqs = self._hum_f0 + (f0 - self._hum_f0) * ramp
        phase = self._hum_phase + 2 * math.pi * np.cumsum(freqs) / cfg.rate_hz
        hum = amps * (np.sin(phase[:, None] * self._hum_k[None, :]) @ self._hum_w)
        out += hum[:, None] * self._gains[None, :]
        self._hum_phase = float(phase[-1] % (2 * math.pi))
        self._hum_amp, self._hum_f0 = amp, f0

    def _add_ambient(self, n: int, out: np.ndarray) -> None:
        cfg = self.config
        white = self._ambient_rng.standard_normal((n, cfg.channels))
        p = self._ambient_pole
        noise, self._ambient_zi = lfilter([math.sqrt(1 - p * p)], [1.0, -p], white, axis=0, zi=self._ambient_zi)
        out += cfg.ambient_rms * noise

    def _saturate(self, out: np.ndarray) -> None:
        """Soft saturation above the knee (slope 1 at the knee, asymptote limit_peak): loud hits never clip."""
        knee = self.config.limit_knee * FULL_SCALE
        over = np.abs(out) > knee
        if over.any():
            x = out[over]
            span = self.config.limit_peak - knee
            out[over] = np.sign(x) * (knee + span * np.tanh((np.abs(x) - knee) / span))
