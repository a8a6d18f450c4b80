"""SoundDeviceMicrophones through the real PortAudio code path, without a sound card.

- ALSA `file` plugin: PortAudio records a raw 4-channel file we wrote (known content, not paced in real
  time), so the data path and the queue-full overflow path are checked sample for sample.
- JACK dummy backend: a real-time paced server, so the stamps' pacing on the monotonic clock and real
  PortAudio input_overflow flags are checked.
Both run the capture in a fresh process (tests/hw/mic_capture.py): PortAudio reads its ALSA/JACK setup
when it initializes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from htouch.collector.config import MicrophoneConfig, RigConfig
from htouch.collector.devices import DeviceError, Microphones
from htouch.collector.hardware import microphones
from htouch.collector.hardware.microphones import BlockClock, SoundDeviceMicrophones

REPO = Path(__file__).resolve().parents[1]
RATE = 32000
SINES_HZ = (440, 1250, 3100)  # channels 0-2; channel 3 carries the sample position / 8


def capture(options: dict, env: dict[str, str], tmp_path: Path) -> tuple[dict, dict]:
    out = tmp_path / "capture.npz"
    proc = subprocess.run([sys.executable, "-m", "tests.hw.mic_capture", json.dumps(options), str(out)],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, json.loads(str(arrays.pop("info")))


def known_signal(seconds: float) -> np.ndarray:
    i = np.arange(int(seconds * RATE))
    sines = [8000 * np.sin(2 * np.pi * f * i / RATE) for f in SINES_HZ]
    return np.stack(sines + [i // 8 - 32768], axis=1).astype("<i2")


@pytest.fixture(scope="module")
def alsa_capture(tmp_path_factory):
    """The file plugin feeding 6 s of the known signal; the consumer pauses after 100 blocks so that the
    unpaced stream fills the backend's 2 s queue (200 blocks) and blocks get dropped: the first flagged
    block is number 200 to 300. The plugin reaches the end of its file within milliseconds; what it
    delivers after that is not checked."""
    home = tmp_path_factory.mktemp("alsa")
    signal = known_signal(6.0)
    signal.tofile(home / "mics.raw")
    (home / ".asoundrc").write_text(f"""
pcm.htouch_file {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{home / 'mics.raw'}"
    format "raw"
}}
pcm.htouch_mics {{
    type plug
    slave {{ pcm "htouch_file"; format S16_LE; channels 4; rate {RATE} }}
}}
""")
    options = {"config": {"device": "htouch_mics", "channels": 4, "rate_hz": RATE, "blocksize": 320},
               "blocks": 400, "pause_after": 100, "pause_s": 0.1, "probe": ["htouch_mics", "htouch", "nope"]}
    data, info = capture(options, {"HOME": str(home)}, home)
    return data, info, signal


def test_alsa_file_plugin_delivers_the_known_signal_channel_by_channel(alsa_capture):
    data, info, signal = alsa_capture
    assert info["description"].startswith("#") and "'htouch_mics' (ALSA" in info["description"]
    n, overflow, pcm = data["n"], data["overflow"], data["pcm"]
    assert (n == 320).all()
    first_lost = int(np.flatnonzero(overflow)[0])
    assert first_lost >= 200  # the queue holds 2 s: nothing is lost before it is full
    clean = int(n[:first_lost].sum())
    np.testing.assert_array_equal(pcm[:clean], signal[:clean])  # sample for sample, every channel in place
    spectrum = np.abs(np.fft.rfft(pcm[:RATE, :3].astype(float), axis=0))  # 1 Hz bins
    assert list(np.argmax(spectrum, axis=0)) == list(SINES_HZ)


def test_alsa_time_stamps_increase_and_start_on_the_monotonic_clock(alsa_capture):
    data, _, _ = alsa_capture
    t, n, overflow = data["t"], data["n"], data["overflow"]
    assert (np.diff(t) > 0).all()
    # ALSA's stream clock is CLOCK_MONOTONIC: the first block was captured after start, before its read.
    assert data["start_ns"] - 50_000_000 < t[0] < data["returned_ns"][0]
    # The file plugin runs much faster than real time: the stamps cannot follow the stream clock, so
    # they keep to the sample count with the shortest sample period the block clock allows (-10 %).
    first_lost = int(np.flatnonzero(overflow)[0])
    step = np.diff(t[:first_lost]) / (n[: first_lost - 1] * 1e9 / RATE)
    assert ((step > 0.85) & (step <= 1 + 1e-6)).all(), step


def test_a_full_queue_drops_blocks_counts_them_and_flags_the_next_block(alsa_capture):
    data, info, _ = alsa_capture
    t, n, overflow = data["t"], data["n"], data["overflow"]
    assert info["overflows"] == 0  # PortAudio itself lost nothing: the backend's own queue dropped
    assert info["dropped_blocks"] > 0
    k = int(np.flatnonzero(overflow)[0])
    assert 200 <= k <= 300
    # The stamp jumps over the dropped samples: the gap stays visible in the data.
    assert t[k] - t[k - 1] > 1.5 * n[k - 1] * 1e9 / RATE


def test_probe_and_device_names_through_alsa(alsa_capture):
    _, info, _ = alsa_capture
    (ok, message), (ok_prefix, prefix), (ok_nope, nope) = info["probes"]
    assert ok and "'htouch_mics' (ALSA" in message and "4 channels of int16 at 32000 Hz" in message
    assert not ok_prefix and prefix.startswith("2 audio inputs match 'htouch'") and "longer name" in prefix
    assert not ok_nope and nope.startswith("no audio input matching 'nope' (inputs: ") and "htouch_mics" in nope


@pytest.fixture(scope="module")
def jack_server():
    jackd, jack_wait = shutil.which("jackd"), shutil.which("jack_wait")
    if jackd is None or jack_wait is None:
        pytest.skip("jackd is not installed (Debian package jackd2, listed in tools/apt-packages.txt)")
    name = f"htouch-test-{os.getpid()}"
    env = {**os.environ, "JACK_NO_AUDIO_RESERVATION": "1", "JACK_NO_START_SERVER": "1"}
    server = subprocess.Popen([jackd, "-n", name, "--no-realtime", "-d", "dummy", "-r", "48000", "-p", "480",
                               "-C", "4", "-P", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ready = subprocess.run([jack_wait, "-s", name, "-w", "-t", "10"], env=env, capture_output=True, text=True)
        if "available" not in ready.stdout:
            server.terminate()
            log = server.communicate(timeout=5)[0].decode(errors="replace")
            pytest.fail(f"jackd dummy server did not start: {log[-2000:]}")
        yield name
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def test_jack_dummy_paced_capture_and_real_input_overflow(jack_server, tmp_path):
    """1.2 s from the JACK dummy backend (48 kHz, 480-sample periods, 4 capture ports); the callback
    stalls once for 0.3 s (test-only subclass) so that PortAudio really loses input."""
    options = {"config": {"device": "system", "channels": 4, "rate_hz": 48000, "blocksize": 480},
               "blocks": 120, "stall_at": 60, "stall_s": 0.3, "probe": ["system"]}
    data, info = capture(options, {"JACK_DEFAULT_SERVER": jack_server, "JACK_NO_START_SERVER": "1"}, tmp_path)
    t, n, overflow, returned = data["t"], data["n"], data["overflow"], data["returned_ns"]
    assert "'system' (JACK Audio Connection Kit, 4 inputs)" in info["description"] and info["error"] is None
    assert info["probes"][0][0], info["probes"]
    assert len(t) == 120 and (n == 480).all() and (np.diff(t) > 0).all()
    assert not data["pcm"].any()  # the dummy backend captures silence

    # The stall in callback 60 makes PortAudio flag the next block (a busy machine may add xruns).
    lost = np.flatnonzero(overflow)
    assert info["overflows"] >= 1 and info["dropped_blocks"] == 0
    at_stall = [int(k) for k in lost if 59 <= k <= 62]
    assert at_stall, lost
    k = at_stall[0]
    # The lost input shows as a jump forward of about the stall.
    assert 0.15e9 < t[k] - t[k - 1] < 0.6e9, t[k] - t[k - 1]
    # Real-time pacing. The JACK stream clock starts near zero, yet the stamps land on the monotonic
    # clock: a block is read back about one block (10 ms) after its first sample, and the stamps
    # advance with the wall clock (the dummy driver may run a little slow on a busy machine).
    period = 480 / 48000 * 1e9
    assert (returned[k - 2] - returned[5]) / ((k - 7) * period) > 0.7  # not faster than real time
    assert abs((t[k - 2] - t[5]) - (returned[k - 2] - returned[5])) < 20e6
    delay = returned[5:] - t[5:]
    assert (delay > 0).all() and 5e6 < np.median(delay) < 60e6, delay


def test_unknown_device_is_a_one_line_error_and_probe_never_raises():
    config = MicrophoneConfig(device="no-such-mic-xyz")
    mics = SoundDeviceMicrophones(config)
    assert isinstance(mics, Microphones)
    assert mics.spec == RigConfig(microphones=config).stream_specs().audio
    with pytest.raises(DeviceError, match="no audio input matching 'no-such-mic-xyz'") as err:
        mics.start()
    assert "\n" not in str(err.value)
    assert mics.read(timeout_s=0.01) is None
    ok, message = microphones.probe(config)
    assert not ok and "no-such-mic-xyz" in message
    ok, message = microphones.probe(MicrophoneConfig(device="999"))
    assert not ok and "#999 is not an input" in message


def test_without_sounddevice_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(DeviceError, match=r"pip install 'htouch\[hardware\]'"):
        SoundDeviceMicrophones(MicrophoneConfig())
    ok, message = microphones.probe(MicrophoneConfig())
    assert not ok and "htouch[hardware]" in message


def test_block_clock_maps_a_drifting_stream_clock_within_a_fraction_of_a_millisecond():
    """A JACK-like stream clock (starts at zero, the device runs 500 ppm slow against the host); the host
    clock is read in the callback 20-200 us after PortAudio read currentTime, now and then 3 ms later
    (the GIL). Stamps stay within 0.1 ms of the truth, apart from the median dispatch delay."""
    rng = np.random.default_rng(1)
    rate, block, n_blocks = 48000, 480, 1500
    period_ns = block * 1e9 / rate / (1 - 500e-6)  # real duration of a block
    true_first = 7_000_000_000_000 + np.arange(n_blocks) * period_ns  # host time of each first sample
    clock = BlockClock(rate)
    stamps = []
    for k in range(n_blocks):
        adc = k * block / rate  # stream clock = sample count
        current = adc + block / rate + rng.uniform(0.1e-3, 1e-3)  # the callback runs after the block
        host_when_current = true_first[k] + (current - adc) * 1e9 / (1 - 500e-6)
        dispatch = rng.uniform(20e3, 200e3) + (3e6 if rng.random() < 0.02 else 0.0)
        measured = clock.measure(int(host_when_current + dispatch), current, adc, block)
        stamps.append(clock.stamp(measured, block))
    error = (np.array(stamps) - true_first)[300:]  # after the loop settled (3 s)
    assert np.abs(error - np.median(error)).max() < 0.1e6, np.abs(error - np.median(error)).max()
    assert 0 < np.median(error) < 0.2e6  # the dispatch delay is the only bias
    assert abs(rate * clock.nominal_ns / clock.ns_per_sample / rate - (1 - 500e-6)) < 30e-6  # rate learnt


def test_block_clock_filters_jitter_learns_the_rate_and_keeps_gaps():
    rate, n = 32000, 320
    block_ns = n * 1e9 / rate * (1 + 2000e-6)  # a device clock 2000 ppm slow: blocks last longer
    clock = BlockClock(rate)
    t = [clock.stamp(1e9 + k * block_ns + (300e3 if k % 2 else -300e3), n) for k in range(600)]
    steps = np.diff(t)
    assert (steps > 0).all()
    assert abs(np.mean(steps[300:]) / block_ns - 1) < 20e-6  # the real block duration is learnt
    assert np.std(steps[300:]) < 0.1 * 600e3  # +-0.3 ms alternating jitter is filtered out (10x)
    end = t[-1] + n * clock.ns_per_sample
    assert clock.stamp(end + 50e6, n, overflow=True) == round(end + 50e6)  # lost input: a visible gap
    later = clock.stamp(end + 50e6 + block_ns - 1e9, n)  # the clock steps 1 s back: slew, never reverse
    assert later > end + 50e6
    # A source faster than real time (measured time stands still) still gets increasing stamps, with
    # the learnt period held within 10 % of nominal.
    c2 = BlockClock(rate)
    t2 = np.array([c2.stamp(1e9, n) for _ in range(500)])
    assert (np.diff(t2) > 0).all() and abs(c2.ns_per_sample / c2.nominal_ns - 0.9) < 1e-9
