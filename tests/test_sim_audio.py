"""The simulated contact microphones: each sound has its physical cause and scales with it, the channels differ
with distance, the materials differ, the signal is continuous across blocks, seeded, int16, and bad input is
refused with a clear message. Ratios are measured, not timings."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from htouch.dataset.audio import LogMelParams, mel_transform, spectrogram
from htouch.sim.audio import FULL_SCALE, MATERIALS, ContactAudioConfig, ContactAudioSynth, ContactSample

RATE = 32000
BLOCK = 1067  # one 1/30 s control step
SUBSTEP = 64  # one 2 ms physics substep
# Four piezos on the gripper (m): two on the fingers, one on the palm, one on the wrist.
MICS = np.array([[0.0, 0.04, 0.0], [0.0, -0.04, 0.0], [0.0, 0.0, 0.06], [0.0, 0.0, 0.16]])
NEAR_FINGER = np.array([0.0, 0.035, -0.01])  # a contact point on the first finger


def synth(**overrides) -> ContactAudioSynth:
    return ContactAudioSynth(ContactAudioConfig(**overrides))


def contact(start=0, length=SUBSTEP, *, force=0.0, slip=0.0, impulse=0.0, material="wood", position=NEAR_FINGER):
    return ContactSample(start=start, length=length, position=np.asarray(position, dtype=float),
                         normal_force=force, slip_speed=slip, impulse=impulse, material=material)


def sliding(force, slip, material="wood", n=BLOCK, position=NEAR_FINGER):
    """One contact per substep covering the whole block, as the scene reports a steady rub."""
    return [contact(s, min(SUBSTEP, n - s), force=force, slip=slip, material=material, position=position)
            for s in range(0, n, SUBSTEP)]


def render_blocks(sy, blocks, motor_speed=0.0, n=BLOCK):
    return np.concatenate([sy.render(n, cs, MICS, motor_speed) for cs in blocks]).astype(float)


def energy(x):
    x = np.asarray(x, dtype=float)
    return float(np.sum((x - x.mean(axis=0)) ** 2))


def band_energy(x, lo, hi):
    """Energy of a mono signal between lo and hi Hz (numpy FFT)."""
    power = np.abs(np.fft.rfft(x - x.mean())) ** 2
    f = np.fft.rfftfreq(len(x), 1 / RATE)
    return float(power[(f >= lo) & (f < hi)].sum())


def centroid(x):
    power = np.abs(np.fft.rfft(x - x.mean())) ** 2
    f = np.fft.rfftfreq(len(x), 1 / RATE)
    return float((power * f).sum() / power.sum())


def impact_response(material, impulse=0.1, blocks=30, **cfg):
    sy = synth(**cfg)
    return render_blocks(sy, [[contact(0, 0, impulse=impulse, material=material)]] + [[]] * (blocks - 1))


def test_output_is_int16_of_the_requested_shape():
    sy = synth()
    for n in (BLOCK, 1066, 1):
        out = sy.render(n, [], MICS)
        assert out.dtype == np.int16 and out.shape == (n, 4)


def test_without_a_cause_only_the_noise_floor_and_dc_remain():
    sy = synth()
    x = render_blocks(sy, [[]] * 10)
    assert abs(x.mean() - sy.config.dc_offset) < 1.0
    rms = x.std(axis=0)
    assert np.all((rms > 0.7 * sy.config.ambient_rms) & (rms < 1.3 * sy.config.ambient_rms)), rms
    silent = render_blocks(synth(ambient_rms=0.0), [[]] * 3)
    assert np.all(silent == ContactAudioConfig().dc_offset)  # nothing at all without noise
    # A contact that neither hits nor slides (resting grasp) makes no sound either.
    resting = render_blocks(synth(ambient_rms=0.0), [sliding(force=8.0, slip=0.0)] * 3)
    assert np.all(resting == ContactAudioConfig().dc_offset)


def test_a_ring_down_ends_in_the_floor_again():
    x = impact_response("metal", impulse=0.2, blocks=150, ambient_rms=0.0)  # 5 s
    assert np.abs(x[:BLOCK] - x[-1]).max() > 5000
    assert np.all(x[-BLOCK:] == ContactAudioConfig().dc_offset)


def test_impact_energy_grows_with_the_impulse():
    impulses = (0.0, 0.002, 0.01, 0.05, 0.2, 1.0)
    energies = [energy(impact_response("wood", impulse=j, blocks=4)[:, 0]) for j in impulses]
    assert all(a < b for a, b in zip(energies, energies[1:], strict=False))  # strictly, even into the soft saturation
    floor = energies[0]
    e = [v - floor for v in energies[1:]]
    assert 15 < e[1] / e[0] < 35  # below saturation the amplitude is proportional to the impulse
    assert 15 < e[2] / e[1] < 35


def test_friction_energy_grows_with_normal_force_and_slip_speed():
    def rub(force, slip):
        return energy(render_blocks(synth(seed=3), [sliding(force, slip)] * 6)[:, 0])

    floor = rub(0.0, 0.0)
    by_force = [rub(f, 0.05) for f in (1.0, 4.0, 16.0)]
    by_slip = [rub(4.0, v) for v in (0.01, 0.04, 0.16)]
    assert floor < by_force[0] < by_force[1] < by_force[2]
    assert floor < by_slip[0] < by_slip[1] < by_slip[2]
    # Energy follows the friction power (force x slip): 4x either way -> about 4x energy.
    assert 3.0 < (by_force[1] - floor) / (by_force[0] - floor) < 5.5
    assert 3.0 < (by_slip[2] - floor) / (by_slip[1] - floor) < 5.5
    assert by_force[0] > 100 * floor  # a light rub is far above the noise floor


@pytest.mark.parametrize("material", sorted(MATERIALS))
def test_contact_stands_out_of_free_motion_between_1_and_8_khz(material):
    moving = render_blocks(synth(seed=1), [[]] * 15, motor_speed=1.0)[:, 0]
    rubbing = render_blocks(synth(seed=1), [sliding(5.0, 0.05, material)] * 15, motor_speed=1.0)[:, 0]
    ratio_db = 10 * np.log10(band_energy(rubbing, 1000, 8000) / band_energy(moving, 1000, 8000))
    assert ratio_db > 20, f"{material}: {ratio_db:.1f} dB"


def test_free_motion_hums_below_1_khz_only_while_moving():
    still = render_blocks(synth(seed=1), [[]] * 15)[:, 0]
    moving = render_blocks(synth(seed=1), [[]] * 15, motor_speed=1.0)[:, 0]
    assert band_energy(moving, 50, 1000) > 100 * band_energy(still, 50, 1000)
    assert band_energy(moving, 1000, 8000) < 2 * band_energy(still, 1000, 8000)
    f = np.fft.rfftfreq(len(moving), 1 / RATE)
    peak = f[np.argmax(np.abs(np.fft.rfft(moving - moving.mean())))]
    assert abs(peak - ContactAudioConfig().hum_f0_max_hz) < 2  # the fundamental at full speed
    slow = render_blocks(synth(seed=1), [[]] * 15, motor_speed=0.2)[:, 0]
    assert energy(still) < energy(slow) < energy(moving)


def test_contact_and_free_motion_separate_in_the_policys_log_mel():
    """The policy's own front end (mono, 16 kHz log-mel) sees contact in the bands above 1 kHz."""
    params = LogMelParams()
    fb = mel_transform(params).mel_scale.fb  # (freqs, mels)
    freqs = torch.linspace(0, params.rate_hz / 2, fb.shape[0])
    centres = ((fb * freqs[:, None]).sum(0) / fb.sum(0)).numpy()
    high = centres > 1000
    blocks = 60  # 2 s, the policy's window
    moving = render_blocks(synth(seed=2), [[]] * blocks, motor_speed=1.0).mean(axis=1) / FULL_SCALE
    rubbing = render_blocks(synth(seed=2), [sliding(3.0, 0.03, "plastic")] * blocks, motor_speed=1.0)
    rubbing = rubbing.mean(axis=1) / FULL_SCALE
    s_moving = spectrogram(moving.astype(np.float32), RATE, params)
    s_rubbing = spectrogram(rubbing.astype(np.float32), RATE, params)
    gap = (s_rubbing.mean(axis=1) - s_moving.mean(axis=1))  # natural-log power per band
    assert gap[high].mean() > np.log(100.0), gap  # > 20 dB louder above 1 kHz while rubbing ...
    assert gap[high & (centres < 6000)].min() > np.log(10.0), gap  # ... and > 10 dB in every band up to 6 kHz


def test_the_nearer_microphone_is_louder_and_hears_it_first():
    x = impact_response("ceramic", impulse=0.1, blocks=2, ambient_rms=0.0)
    e = [energy(x[:, c]) for c in range(4)]
    dist = np.linalg.norm(MICS - NEAR_FINGER, axis=1)
    order = np.argsort(dist)
    assert list(np.argsort(e)[::-1]) == list(order)
    assert e[order[0]] > 4 * e[order[-1]]
    onset = [int(np.flatnonzero(x[:, c] != ContactAudioConfig().dc_offset)[0]) for c in range(4)]
    assert onset[order[0]] < onset[order[-1]]  # structure-borne delay
    rub = render_blocks(synth(seed=4), [sliding(5.0, 0.05, position=NEAR_FINGER)] * 3)
    assert energy(rub[:, order[0]]) > 4 * energy(rub[:, order[-1]])


def decay_time(x, drop_db=40.0):
    """Seconds until the smoothed envelope falls drop_db below its peak (no noise floor in the signal)."""
    env = np.sqrt(np.convolve((x - x[-1]) ** 2, np.ones(64) / 64, mode="same"))
    above = np.flatnonzero(env > env.max() * 10 ** (-drop_db / 20))
    return (above[-1] - np.argmax(env)) / RATE


def test_materials_differ_in_colour_and_decay():
    x = {m: impact_response(m, impulse=0.1, blocks=60, ambient_rms=0.0)[:, 0] for m in MATERIALS}
    decay = {m: decay_time(v) for m, v in x.items()}
    bright = {m: centroid(v[:3200]) for m, v in x.items()}
    assert decay["metal"] > 0.3 and decay["metal"] > 5 * decay["wood"]  # metal rings long
    assert decay["ceramic"] > 2 * decay["wood"]
    assert decay["wood"] > decay["rubber"]
    assert bright["metal"] > 2500 and bright["metal"] > 2 * bright["wood"]  # metal rings high, wood mid
    assert bright["wood"] > 2 * bright["rubber"]  # rubber is dull
    rub = {m: render_blocks(synth(seed=5), [sliding(5.0, 0.05, m)] * 4)[:, 0] for m in ("fabric", "rubber")}
    assert centroid(rub["fabric"]) > 2 * centroid(rub["rubber"])  # fabric: noisy, not dull
    peaks = {m: np.abs(v - v[-1]).max() for m, v in x.items()}
    assert peaks["fabric"] < 0.3 * peaks["metal"]  # fabric is soft


def random_contacts(rng, n_blocks, offset_blocks=0):
    """A contact history (per substep) over n_blocks with impacts, rubs and moving positions."""
    out = [[] for _ in range(n_blocks)]
    t = 0
    while t < n_blocks * BLOCK:
        b, s = divmod(t, BLOCK)
        length = min(SUBSTEP, BLOCK - s)
        out[b].append(contact(s, length, force=float(rng.uniform(0, 10)), slip=float(rng.uniform(0, 0.2)),
                              impulse=float(rng.uniform(0, 0.1)) if rng.random() < 0.1 else 0.0,
                              material=str(rng.choice(sorted(MATERIALS))),
                              position=NEAR_FINGER + rng.normal(0, 0.05, 3)))
        t += length
    return out


def test_two_blocks_equal_one_double_block():
    rng = np.random.default_rng(7)
    blocks = random_contacts(rng, 2)
    blocks[0].append(contact(BLOCK - 3, 3, impulse=0.2, material="metal",
                             position=MICS[3] + 0.3))  # its pulse and delay spill into the next block
    split = render_blocks(synth(seed=9), blocks, motor_speed=0.7)
    joined_contacts = blocks[0] + [dataclasses.replace(c, start=c.start + BLOCK) for c in blocks[1]]
    joined = synth(seed=9).render(2 * BLOCK, joined_contacts, MICS, 0.7).astype(float)
    assert np.abs(split - joined).max() <= 1.0  # identical up to rounding


def test_no_click_at_block_boundaries():
    rng = np.random.default_rng(11)
    x = render_blocks(synth(), random_contacts(rng, 12), motor_speed=0.5)
    steps = np.abs(np.diff(x, axis=0))
    at_boundaries = steps[np.arange(1, 12) * BLOCK - 1]
    assert at_boundaries.max() < np.percentile(steps, 99.9)
    # A metal ring-down goes on smoothly into the silent next block.
    ring = impact_response("metal", impulse=0.2, blocks=2, ambient_rms=0.0)
    assert np.abs(ring[BLOCK:, 0] - ring[-1, 0]).max() > 1000
    d = np.abs(np.diff(ring[:, 0]))
    assert d[BLOCK - 1] < 3 * d[BLOCK - 40:BLOCK - 2].max()


def test_same_seed_same_audio_other_seed_other_noise():
    blocks = random_contacts(np.random.default_rng(3), 3)
    a = render_blocks(synth(seed=1), blocks, motor_speed=0.3)
    b = render_blocks(synth(seed=1), blocks, motor_speed=0.3)
    c = render_blocks(synth(seed=2), blocks, motor_speed=0.3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert energy(a - c) > 0.01 * energy(a)


def test_typical_impacts_do_not_clip_but_a_hard_knock_approaches_full_scale():
    for material in MATERIALS:
        for j in (0.005, 0.02, 0.05):  # fingers closing, an object set down
            x = impact_response(material, impulse=j, blocks=2)
            assert np.abs(x).max() < 0.6 * FULL_SCALE, (material, j)
    knock = synth().render(BLOCK, [contact(0, 0, impulse=0.3, material="metal", position=MICS[0])], MICS)
    assert 0.8 * FULL_SCALE < np.abs(knock.astype(float)).max() < FULL_SCALE - 1  # soft saturation, not the rails
    absurd = synth().render(BLOCK, [contact(0, 0, impulse=50.0, material="metal", position=MICS[0])], MICS)
    assert np.abs(absurd.astype(int)).max() < FULL_SCALE - 1
    # An impact stands out of a steady rub of the same material.
    rub = sliding(5.0, 0.05, "plastic")
    rub[0] = dataclasses.replace(rub[0], impulse=0.05)
    x = render_blocks(synth(seed=6), [rub] + [sliding(5.0, 0.05, "plastic")] * 3)[:, 0]
    steady = x[2 * BLOCK:]
    assert np.abs(x[:320] - steady.mean()).max() > 5 * steady.std()


@pytest.mark.parametrize("rate", [16000, 48000])
def test_other_sample_rates_render_the_same_causes(rate):
    n = rate // 30
    sy = synth(rate_hz=rate)
    quiet = sy.render(n, [], MICS).astype(float)
    hit = sy.render(n, [contact(0, 0, impulse=0.05, material=m) for m in MATERIALS], MICS).astype(float)
    rub = sy.render(n, sliding(5.0, 0.05, "metal", n=n), MICS).astype(float)
    assert energy(hit) > 1000 * energy(quiet) and energy(rub) > 1000 * energy(quiet)
    assert np.abs(hit).max() < FULL_SCALE - 1


@pytest.mark.parametrize("bad, message", [
    (dict(force=-1.0), "contact 0: normal_force must be finite and >= 0"),
    (dict(slip=float("nan")), "contact 0: slip_speed must be finite and >= 0"),
    (dict(impulse=float("inf")), "contact 0: impulse must be finite and >= 0"),
    (dict(material="glass"), "contact 0: unknown material 'glass'"),
    (dict(position=[0.0, 0.0]), "contact 0: position must be 3 finite numbers"),
    (dict(position=[0.0, float("nan"), 0.0]), "contact 0: position must be 3 finite numbers"),
    (dict(start=BLOCK), "contact 0: span start="),
    (dict(start=BLOCK - 10, length=20), "must be ints within the block of 1067 samples"),
    (dict(start=1.5), "contact 0: span start=1.5 length=64 must be ints"),
    (dict(force="5"), "contact 0: normal_force must be finite and >= 0, got '5'"),
    (dict(impulse=None), "contact 0: impulse must be finite and >= 0, got None"),
    (dict(length=-1), "contact 0: span start="),
])
def test_bad_contacts_are_refused_with_a_clear_message(bad, message):
    sy = synth()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        sy.render(BLOCK, [contact(**bad)], MICS)


def test_bad_call_arguments_are_refused():
    sy = synth()
    with pytest.raises(ValueError, match=r"mic_positions must have shape \(4, 3\), got \(3, 3\)"):
        sy.render(BLOCK, [], MICS[:3])
    with pytest.raises(ValueError, match=r"mic_positions must have shape \(4, 3\), got \(4,\)"):
        sy.render(BLOCK, [], MICS[:, 0])
    with pytest.raises(ValueError, match="mic_positions must be finite"):
        sy.render(BLOCK, [], np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="motor_speed must be finite and >= 0"):
        sy.render(BLOCK, [], MICS, motor_speed=-0.5)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        sy.render(0, [], MICS)
    with pytest.raises(ValueError, match="contact 1: expected a ContactSample, got dict"):
        sy.render(BLOCK, [contact(), {"start": 0}], MICS)
    with pytest.raises(ValueError, match="channel_gains must hold 4 finite gains"):
        synth(channel_gains=(1.0, 1.0))
    with pytest.raises(ValueError, match="channels must be an int >= 1"):
        synth(channels=0)
    # A refused call leaves the synthesizer usable and unchanged.
    a, b = synth(seed=4), synth(seed=4)
    with pytest.raises(ValueError):
        a.render(BLOCK, [contact(force=-1.0)], MICS)
    assert np.array_equal(a.render(BLOCK, [], MICS), b.render(BLOCK, [], MICS))


def test_benchmark_script_runs_and_writes_its_report(tmp_path):
    """Smoke run of tools/bench_sim_audio.py (no timing asserted: the figures are the benchmark's business)."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "bench.md"
    r = subprocess.run([sys.executable, str(root / "tools" / "bench_sim_audio.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    assert "`python tools/bench_sim_audio.py --quick --out" in text
    for scenario in ("| silence |", "| free motion (hum) |", "| grasp + drag (3 contacts x 16 substeps) |"):
        assert scenario in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.count("|") == 7][1:]
    assert len(rows) == 5 and all(row.rstrip(" |").endswith(("PASS", "FAIL")) for row in rows)
    bad = subprocess.run([sys.executable, str(root / "tools" / "bench_sim_audio.py"), "--blocks", "3",
                          "--out", str(tmp_path / "b.md")], capture_output=True, text=True, cwd=root, timeout=120)
    assert bad.returncode == 2 and "--blocks must be at least 20" in bad.stderr
    assert not (tmp_path / "b.md").exists()
