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
from htouch.collector.hardware.clocksync import OffsetFilter
from htouch.collector.hardware.microphones import BlockTimeline, SoundDeviceMicrophones

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


def test_alsa_time_stamps_follow_the_sample_count_and_start_on_the_monotonic_clock(alsa_capture):
    data, _, _ = alsa_capture
    t, n, overflow = data["t"], data["n"], data["overflow"]
    assert (np.diff(t) > 0).all()
    first_lost = int(np.flatnonzero(overflow)[0])
    # The file plugin runs faster than real time: the stamps keep to the sample count (within the 1 %
    # per block the timeline may slew toward the stream clock), not to the arrival times.
    step = np.diff(t[:first_lost]) / (n[: first_lost - 1] * 1e9 / RATE)
    assert (np.abs(step - 1) <= 0.0101).all(), step
    # ALSA's stream clock is CLOCK_MONOTONIC: the first block was captured after start, before its read.
    assert data["start_ns"] - 50_000_000 < t[0] < data["returned_ns"][0]


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
    assert "'system' (JACK Audio Connection Kit, 4 inputs)" in info["description"]
    assert info["probes"][0][0], info["probes"]
    assert len(t) == 120 and (n == 480).all() and (np.diff(t) > 0).all()
    assert not data["pcm"].any()  # the dummy backend captures silence

    lost = np.flatnonzero(overflow)
    assert info["overflows"] >= 1 and len(lost) >= 1 and info["dropped_blocks"] == 0
    k = int(lost[0])
    assert 55 <= k <= 65
    # Before the stall: real-time pacing. The JACK stream clock starts near zero, yet the stamps land on
    # the monotonic clock: a block is read back about one block (10 ms) after its first sample.
    period = 480 / 48000 * 1e9
    steady = slice(5, k - 1)
    assert abs((returned[k - 2] - returned[5]) / ((k - 7) * period) - 1) < 0.3
    assert abs((t[k - 2] - t[5]) / ((k - 7) * period) - 1) < 0.01
    delay = returned[steady] - t[steady]
    assert (delay > 0).all() and 5e6 < np.median(delay) < 60e6, delay
    # The lost input shows as a jump forward of about the stall.
    assert 0.15e9 < t[k] - t[k - 1] < 0.6e9, t[k] - t[k - 1]


def test_unknown_device_is_a_one_line_error_and_probe_never_raises():
    config = MicrophoneConfig(device="no-such-mic-xyz")
    mics = SoundDeviceMicrophones(config)
    assert isinstance(mics, Microphones)
    assert mics.spec == RigConfig(microphones=config).rig_spec().audio
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


def test_stream_clock_mapping_error_under_callback_jitter():
    """A JACK-like stream clock (starts at zero, runs 60 ppm slow against the host) read in callbacks
    that run 0.1-3 ms late: median-filtered offset + timeline stamps stay within 0.2 ms of the truth."""
    rng = np.random.default_rng(1)
    rate, block = 48000, 480
    n_blocks = 1000
    true_host = 7_000_000_000_000 + (np.arange(n_blocks) * block * 1e9 / rate).astype(np.int64)  # first sample
    stream = (true_host - true_host[0]) * (1 - 60e-6) / 1e9  # stream clock, s
    late = rng.exponential(0.5e-3, n_blocks) + 0.1e-3  # callback delay after the block is complete
    offsets = OffsetFilter(200, "median")
    timeline = BlockTimeline(rate)
    stamps = []
    for k in range(n_blocks):
        current = stream[k] + (block / rate) * (1 - 60e-6) + late[k] * (1 - 60e-6)  # stream time at callback
        host_now = true_host[k] + block * 1e9 / rate + late[k] * 1e9 + rng.normal(0, 20e3)
        offset = offsets.update(int(host_now), round(current * 1e9))
        stamps.append(timeline.stamp(stream[k] * 1e9 + offset, block))
    error = np.array(stamps[200:]) - true_host[200:]
    assert np.abs(error - np.median(error)).max() < 0.2e6  # jitter does not leak
    assert abs(np.median(error)) < 1.5e6  # the median callback delay is the only bias


def test_block_timeline_filters_jitter_tracks_drift_and_keeps_gaps():
    ns = 1e9 / 32000
    tl = BlockTimeline(32000)
    t = [tl.stamp(1e9 + k * 320 * ns * (1 + 200e-6) + (300e3 if k % 2 else -300e3), 320) for k in range(500)]
    steps = np.diff(t)
    assert (steps > 0).all()
    assert abs(np.mean(steps[100:]) / (320 * ns) - (1 + 200e-6)) < 20e-6  # 200 ppm drift shows
    assert np.std(steps[100:]) < 0.1 * 600e3  # +-0.3 ms alternating jitter is filtered out (10x)
    end = t[-1] + 320 * ns
    assert tl.stamp(end + 50e6, 320, overflow=True) == round(end + 50e6)  # lost input: a visible gap
    before = tl.stamp(end + 50e6 + 320 * ns - 1e9, 320)  # a clock step backwards: slew, never reverse
    assert before > end + 50e6
