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
from scipy.signal import lfilter, sosfilt, zpk2sos

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
    # Peak counts per N*s of impulse (the impact's whole momentum transfer) on metal at the contact point: a finger
    # closing on an object (~0.05 N*s) peaks near 1/4 of full scale, a hard knock (>= 0.2 N*s) saturates softly.
    impact_gain: float = 200000.0
    friction_gain: float = 3000.0  # RMS counts per sqrt(W) of friction power (normal force x slip speed)
    distance_ref_m: float = 0.05  # gain = ref / (ref + distance): 0.71 at 2 cm, 0.33 at 10 cm
    wave_speed_m_s: float = 1500.0  # structure-borne propagation speed, for the per-microphone delay
    max_delay_samples: int = 32
    hum_level: float = 150.0  # RMS counts of the motor hum at full speed
    hum_full_speed: float = 1.0  # motor_speed (e.g. joint speed norm, rad/s) at which the hum is loudest
    hum_f0_min_hz: float = 70.0  # fundamental when barely moving ...
    hum_f0_max_hz: float = 160.0  # ... and at full speed
    hum_harmonics: int = 5  # the top one at 800 Hz: free motion stays quiet above 1 kHz
    ambient_rms: float = 12.0  # sensor + environment noise floor (white), RMS counts per channel
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
    _require(isinstance(cfg.rate_hz, int) and cfg.rate_hz >= 8000,
             f"ContactAudioConfig.rate_hz must be an int >= 8000, got {cfg.rate_hz!r}")
    _require(isinstance(cfg.channels, int) and cfg.channels >= 1,
             f"ContactAudioConfig.channels must be an int >= 1, got {cfg.channels!r}")
    for name in ("impact_gain", "friction_gain", "hum_level", "ambient_rms", "wave_speed_m_s", "distance_ref_m",
                 "hum_full_speed", "hum_f0_min_hz", "hum_f0_max_hz"):
        _finite_nonneg(f"ContactAudioConfig.{name}", getattr(cfg, name))
    _require(cfg.wave_speed_m_s > 0 and cfg.distance_ref_m > 0 and cfg.hum_full_speed > 0,
             "ContactAudioConfig.wave_speed_m_s, distance_ref_m and hum_full_speed must be > 0")
    _require(isinstance(cfg.hum_harmonics, int) and cfg.hum_harmonics >= 1,
             f"ContactAudioConfig.hum_harmonics must be an int >= 1, got {cfg.hum_harmonics!r}")
    _require(math.isfinite(cfg.dc_offset), f"ContactAudioConfig.dc_offset must be finite, got {cfg.dc_offset!r}")
    _require(cfg.hum_f0_max_hz * cfg.hum_harmonics < cfg.rate_hz / 2,
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


class _Bank:
    """A material's resonant modes, summed in parallel, as one cascade of biquads (one sosfilt call per block),
    with its filter state and the excitation that spills into the next block (delays, pulses)."""

    def __init__(self, sections: list[tuple[np.ndarray, np.ndarray]], weights: np.ndarray, channels: int,
                 tail: int):
        # sum_k w_k b_k / A_k  =  (sum_k w_k b_k prod_{j != k} A_j) / prod_k A_k: zeros from the numerator,
        # poles exactly those of the modes (stability does not depend on the root finding).
        num = np.zeros(1)
        for k, (b, _) in enumerate(sections):
            term = weights[k] * b
            for j, (_, a) in enumerate(sections):
                if j != k:
                    term = np.polymul(term, a)
            num = np.polyadd(num, term)
        poles = np.concatenate([np.roots(a) for _, a in sections])
        order = 2 * len(sections)
        zeros = np.concatenate([np.roots(num), np.zeros(order - (len(num) - 1))])  # z^-1 -> z: zeros at 0
        self.sos = zpk2sos(zeros, poles, num[0])
        self.zi = np.zeros((self.sos.shape[0], 2, channels))
        self.pending = np.zeros((tail, channels))
        self.block: np.ndarray | None = None  # this block's excitation (n + tail, C), set by _excite
        self.active = False

    def run(self, n: int, out: np.ndarray) -> None:
        """Filters this block's excitation (or rings down) into `out`; goes idle once rung out."""
        ext, tail = self.block, self.pending.shape[0]
        if ext is None:
            ext = np.zeros((n + tail, out.shape[1]))
        ext[:tail] += self.pending
        self.pending = ext[n:n + tail].copy()
        self.block = None
        y, self.zi = sosfilt(self.sos, ext[:n], axis=0, zi=self.zi)
        out += y
        if np.abs(self.zi).max() < 1e-4 and not self.pending.any():
            self.zi[:] = 0.0  # rung out: not computed again until touched
            self.active = False


class _MaterialVoice:
    """How one material responds: the impact pulse, and its modes weighted for impacts and for friction noise."""

    def __init__(self, material: Material, rate: int, channels: int, tail: int):
        self.material = material
        n_pulse = max(1, int(round(material.pulse_ms * 1e-3 * rate)))
        self.pulse = np.hanning(n_pulse + 2)[1:-1]
        self.pulse /= self.pulse.sum()  # unit area: the impulse, spread over the contact time
        sections, imp, fric = [], [], []
        modes = [m for m in material.modes if m[0] < 0.45 * rate]  # a lower rate cannot carry the top modes
        for freq, t60, w_imp, w_fric in modes:
            w = 2 * math.pi * freq / rate
            r = math.exp(-math.log(1000.0) / (t60 * rate))
            # Impulse response r^n sin((n+1)w): a unit-amplitude ring with the mode's T60.
            sections.append((np.array([math.sin(w)]), np.array([1.0, -2 * r * math.cos(w), r * r])))
            # Sum over n of (r^n sin((n+1)w))^2: the noise gain of this mode for unit-variance white input.
            e2w = complex(math.cos(2 * w), math.sin(2 * w))
            noise_gain = 0.5 / (1 - r * r) - 0.5 * (e2w / (1 - r * r * e2w)).real
            imp.append(w_imp)
            fric.append(w_fric / math.sqrt(noise_gain))
        fric_w = np.array([m[3] for m in modes])
        fric_scale = np.array(fric) / math.sqrt(float(np.sum(fric_w ** 2)))  # unit RMS for a unit envelope
        # Impact weights normalized so a unit-area pulse peaks at 1 (the loudness is the gain's business).
        probe = np.zeros(int(0.02 * rate))
        probe[:n_pulse] = self.pulse
        ring = sum(wi * lfilter(b, a, probe) for wi, (b, a) in zip(imp, sections, strict=True))
        imp_scale = np.array(imp) / float(np.max(np.abs(ring)))
        self.impact = _Bank(sections, imp_scale, channels, tail)
        self.friction = _Bank(sections, fric_scale, channels, tail)


class ContactAudioSynth:
    """Renders the contact microphones' int16 signal block by block from the contacts of each physics substep."""

    def __init__(self, config: ContactAudioConfig):
        self.config = config
        self._gains = _check_config(config)
        c = config.channels
        self._materials = list(MATERIALS)
        self._material_index = {name: i for i, name in enumerate(self._materials)}
        max_pulse = max(int(round(m.pulse_ms * 1e-3 * config.rate_hz)) for m in MATERIALS.values())
        self._tail = config.max_delay_samples + max_pulse + 1
        self._voices = [_MaterialVoice(MATERIALS[name], config.rate_hz, c, self._tail) for name in self._materials]
        self._banks = [bank for v in self._voices for bank in (v.impact, v.friction)]
        friction_seq, ambient_seq = np.random.SeedSequence(config.seed).spawn(2)
        self._friction_rng = np.random.default_rng(friction_seq)  # a noise column per material, fixed draws per sample
        self._ambient_rng = np.random.default_rng(ambient_seq)
        self._hum_phase = 0.0
        self._hum_amp = 0.0
        self._hum_f0 = config.hum_f0_min_hz
        self._hum_pole = math.exp(-1.0 / (0.02 * config.rate_hz))  # 20 ms glide to a new motor speed
        k = np.arange(1, config.hum_harmonics + 1)
        self._hum_w = (1.0 / k) / math.sqrt(float(np.sum((1.0 / k) ** 2)) / 2)  # harmonic weights, unit RMS

    # -- input checking -------------------------------------------------------------------------------------

    def _check_inputs(self, n_samples, contacts, mic_positions, motor_speed):
        """Validates one render call; returns the contacts as arrays (start, length, position, force x slip,
        impulse, material index). Vectorized: it runs for every span of every block; messages only on failure."""
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
        if not contacts:
            return n, mics, speed, None
        for i, ct in enumerate(contacts):
            if not isinstance(ct, ContactSample):
                raise ValueError(f"contact {i}: expected a ContactSample, got {type(ct).__name__}")
        material = np.array([self._material_index.get(ct.material, -1) for ct in contacts])
        if (material < 0).any():
            i = int(np.argmax(material < 0))
            raise ValueError(f"contact {i}: unknown material {contacts[i].material!r}; use one of "
                             f"{', '.join(MATERIALS)}")
        start = np.array([ct.start for ct in contacts])
        length = np.array([ct.length for ct in contacts])
        bad = np.ones(len(contacts), bool)
        if start.dtype.kind in "iu" and length.dtype.kind in "iu":
            bad = (start < 0) | (start >= n) | (length < 0) | (start + length > n)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"contact {i}: span start={contacts[i].start!r} length={contacts[i].length!r} must be "
                             f"ints within the block of {n} samples")
        fields = {}
        for name in ("normal_force", "slip_speed", "impulse"):
            values = [getattr(ct, name) for ct in contacts]
            try:
                arr = np.array(values, dtype=float)
                bad = ~np.isfinite(arr) | (arr < 0) | np.array([isinstance(v, (str, bytes)) for v in values])
            except (TypeError, ValueError):
                arr, bad = None, np.array([not isinstance(v, (int, float, np.number)) for v in values])
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(f"contact {i}: {name} must be finite and >= 0, got {values[i]!r}")
            fields[name] = arr
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
        power = fields["normal_force"] * fields["slip_speed"]
        return n, mics, speed, (start, length, positions, power, fields["impulse"], material)

    # -- rendering --------------------------------------------------------------------------------------------

    def render(self, n_samples: int, contacts: list[ContactSample], mic_positions: np.ndarray,
               motor_speed: float = 0.0) -> np.ndarray:
        """The next `n_samples` of all microphones, (n_samples, channels) int16.

        `contacts` holds one ContactSample per active contact per substep of this block; `mic_positions` the
        microphones' world positions (C, 3) during the block; `motor_speed` how fast the motors turn (e.g. the
        joint speed norm in rad/s; the hum is loudest from `hum_full_speed` on)."""
        n, mics, speed, arrays = self._check_inputs(n_samples, contacts, mic_positions, motor_speed)
        cfg = self.config
        out = np.zeros((n, cfg.channels))
        noise = self._friction_rng.standard_normal((n, len(self._materials)))  # drawn every block: determinism
        if arrays is not None:
            self._excite(n, arrays, mics, noise)
        for bank in self._banks:
            if bank.active:
                bank.run(n, out)
        self._add_hum(n, speed, out)
        out += cfg.ambient_rms * self._ambient_rng.standard_normal((n, cfg.channels))
        self._saturate(out)
        out += cfg.dc_offset
        np.rint(out, out=out)
        np.clip(out, -FULL_SCALE, FULL_SCALE - 1, out=out)
        return out.astype(np.int16)

    def _excite(self, n: int, arrays, mics: np.ndarray, noise: np.ndarray) -> None:
        """Adds this block's impact pulses and friction noise to each touched material's banks."""
        start, length, pos, power, impulse, material = arrays
        cfg = self.config
        c = cfg.channels
        dist = np.linalg.norm(pos[:, None, :] - mics[None, :, :], axis=2)  # (K, C)
        gain = cfg.distance_ref_m / (cfg.distance_ref_m + dist) * self._gains
        delay = np.minimum(np.rint(dist / cfg.wave_speed_m_s * cfg.rate_hz), cfg.max_delay_samples).astype(int)
        cols = np.arange(c)
        size = n + self._tail
        for m in np.unique(material):
            voice = self._voices[m]
            mat = voice.material
            sel = material == m
            hits = np.flatnonzero(sel & (impulse > 0))
            if hits.size:
                ext = np.zeros((size, c)) if voice.impact.block is None else voice.impact.block
                w = voice.pulse.size
                for k in hits:
                    amp = cfg.impact_gain * mat.impact_level * impulse[k] * gain[k]  # (C,)
                    rows = (start[k] + delay[k])[:, None] + np.arange(w)[None, :]
                    ext[rows, cols[:, None]] += amp[:, None] * voice.pulse[None, :]
                voice.impact.block, voice.impact.active = ext, True
            rubs = np.flatnonzero(sel & (power > 0) & (length > 0))
            if rubs.size:
                # Each rub's noise, from this material's noise column, reaches each microphone with its own delay;
                # its RMS grows with the friction power (normal force x slip speed).
                amp = cfg.friction_gain * mat.friction_level * np.sqrt(power[rubs])[:, None] * gain[rubs]  # (R, C)
                lens = length[rubs]
                which = np.repeat(np.arange(rubs.size), lens)  # the rub of every excitation sample
                t = np.repeat(start[rubs] - (np.cumsum(lens) - lens), lens) + np.arange(which.size)  # time in the noise
                target = (t[:, None] + delay[rubs][which]) * c + cols[None, :]  # flat (sample, channel) index
                values = amp[which] * noise[t, m][:, None]
                ext = np.bincount(target.ravel(), weights=values.ravel(), minlength=size * c).reshape(size, c)
                voice.friction.block, voice.friction.active = ext, True

    def _add_hum(self, n: int, speed: float, out: np.ndarray) -> None:
        """Motor hum: a fundamental rising with speed and its harmonics (all below 1 kHz); silent when still."""
        cfg = self.config
        s = min(speed / cfg.hum_full_speed, 1.0)
        amp = cfg.hum_level * s
        f0 = cfg.hum_f0_min_hz + (cfg.hum_f0_max_hz - cfg.hum_f0_min_hz) * s
        if amp == 0.0 and abs(self._hum_amp) < 1e-3:
            self._hum_amp, self._hum_f0 = 0.0, f0
            return
        # Amplitude and pitch glide to the new speed (one-pole, closed form): the same however blocks are cut.
        decay = self._hum_pole ** np.arange(1, n + 1)
        amps = amp + (self._hum_amp - amp) * decay
        freqs = f0 + (self._hum_f0 - f0) * decay
        phase = self._hum_phase + (2 * math.pi / cfg.rate_hz) * np.cumsum(freqs)
        sin1, cos2 = np.sin(phase), 2 * np.cos(phase)
        prev, cur = np.zeros(n), sin1
        hum = self._hum_w[0] * sin1
        for w in self._hum_w[1:]:  # sin((k+1)x) = 2 cos(x) sin(kx) - sin((k-1)x)
            prev, cur = cur, cos2 * cur - prev
            hum += w * cur
        hum *= amps
        out += hum[:, None] * self._gains[None, :]
        self._hum_amp, self._hum_f0 = float(amps[-1]), float(freqs[-1])
        self._hum_phase = float(phase[-1] % (2 * math.pi))

    def _saturate(self, out: np.ndarray) -> None:
        """Soft saturation above the knee (slope 1 at the knee, asymptote limit_peak): loud hits never clip."""
        knee = self.config.limit_knee * FULL_SCALE
        over = np.abs(out) > knee
        if over.any():
            x = out[over]
            span = self.config.limit_peak - knee
            out[over] = np.sign(x) * (knee + span * np.tanh((np.abs(x) - knee) / span))
