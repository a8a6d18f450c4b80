"""The policy runner: executes h of the H predicted actions, re-encodes only frames it has not seen
(counted), chooses frames and audio from a live stream exactly as training samples do, and sends every
command through the safety filter."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from htouch.collector.devices import AudioBlock, Frame
from htouch.collector.safety import SafetyFilter, SafetyLimits
from htouch.dataset.episode import SampleParams
from htouch.dataset.schema import NS, AudioSpec
from htouch.errors import HtouchError
from htouch.training.methods import policy_config
from htouch.training.model import ActionNormalization, AudioVisualPolicy, build_policy
from htouch.training.policy_source import planning_options
from htouch.training.runner import ObservationBuffer, PolicyRunner, native_bfloat16
from tests.test_model import one_torch_thread  # noqa: F401 - autouse fixture

FRAME_NS = NS // 30
BASE = 10 * NS
LOOSE = SafetyLimits(workspace_min=[-100.0] * 3, workspace_max=[100.0] * 3, max_translation_m=100.0,
                     max_rotation_rad=100.0)
HOME = np.array([0.5, 0.0, 0.3])


def _policy(method: str = "ours", **kw):
    torch.manual_seed(0)
    config = policy_config("tiny", method, dropout=0.0, **kw)
    return build_policy(config).eval(), config


def _frame(i: int, phase_ns: int = 0) -> Frame:
    rgb = np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return Frame(timestamp_ns=BASE + i * FRAME_NS - phase_ns, frame_number=i, rgb=rgb)


def _block(j: int, n: int = 320, channels: int = 4) -> AudioBlock:  # 10 ms at 32 kHz
    pcm = np.random.default_rng(1000 + j).integers(-3000, 3000, (n, channels), dtype=np.int16)
    return AudioBlock(timestamp_ns=BASE + j * NS * n // 32000, pcm=pcm)


def _expected_chunk(model, config, frames, clip, norm) -> np.ndarray:
    from htouch.dataset import audio
    from htouch.training.model import preprocess_frames

    x = preprocess_frames(np.stack([f.rgb for f in frames]), config.image_size).unsqueeze(0)
    spec = None
    if config.uses_audio:
        spec = torch.from_numpy(audio.spectrogram(clip, 16000, audio.spectrogram_params(config.audio_kind)))[None]
    with torch.no_grad():
        return norm.denormalize(model(x, spec)[0].double().numpy())


def test_executes_h_of_H_then_replans():
    model, config = _policy(horizon=6)
    norm = ActionNormalization([0.001] * 6 + [0.5], [0.01] * 6 + [0.2])
    runner = PolicyRunner(model, config, norm, SafetyFilter(LOOSE), execute=2)
    clip = np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32)
    got = []
    for step in range(6):
        frames = [_frame(step * 3 + k) for k in range(4)]
        needs = runner.needs_observation
        assert needs == (step % 2 == 0)
        got.append((runner.act(HOME, frames, clip), frames))
    assert runner.counters.model_calls == 3 and runner.counters.steps == 6 and runner.counters.audio_encoded == 3
    for plan in range(3):
        frames = got[2 * plan][1]  # the observation of the re-plan
        chunk = _expected_chunk(model, config, frames, clip, norm)
        for i in range(2):  # the first h = 2 of H = 6, in order
            action = got[2 * plan + i][0]
            np.testing.assert_allclose(action.delta_ee, chunk[i, :6], rtol=1e-4, atol=1e-7)
            assert action.gripper == pytest.approx(chunk[i, 6], rel=1e-4)
    # between re-plans the observation is not needed, and is ignored
    runner.reset()
    runner.act(HOME, [_frame(k) for k in range(4)], clip)
    assert runner.act(HOME) is not None and runner.needs_observation
    with pytest.raises(HtouchError, match="re-planning needs 4 frames"):
        runner.act(HOME)
    with pytest.raises(HtouchError, match="needs the audio clip"):
        runner.act(HOME, [_frame(k) for k in range(4)])


def _stream(runner: PolicyRunner, seconds: float, phase_ns: int) -> list[tuple[int, int]]:
    """Feed a 30 fps camera (captured `phase_ns` before each control tick) and 10 ms audio blocks into the
    runner's buffer, stepping it at 30 Hz; returns (model_calls, frames_encoded) after every step."""
    trace, block = [], 0
    for i in range(int(seconds * 30)):
        t = BASE + i * FRAME_NS
        runner.buffer.add_frame(_frame(i, phase_ns))
        while _block(block).timestamp_ns <= t:
            runner.buffer.add_audio(_block(block))
            block += 1
        runner.step(t, HOME)
        trace.append((runner.counters.model_calls, runner.counters.frames_encoded))
    return trace


def test_live_stream_encodes_only_the_new_frame_per_replan():
    model, config = _policy()
    norm = ActionNormalization.identity()
    cached = PolicyRunner(model, config, norm, SafetyFilter(LOOSE), execute=2, audio=AudioSpec())
    uncached = PolicyRunner(model, config, norm, SafetyFilter(LOOSE), execute=2, audio=AudioSpec(), cache=False)
    phase = 10_000_000  # frames captured 10 ms before the control tick
    a, _ = _stream(cached, 5.0, phase), _stream(uncached, 5.0, phase)
    calls = cached.counters.model_calls
    assert calls == 75 and uncached.counters.model_calls == calls  # 150 steps, 2 per model call
    assert uncached.counters.frames_encoded == 4 * calls
    # once the 2 s window is full of real frames, each re-plan encodes exactly one frame: the newest
    after_window = [(c, f) for c, f in a if c > 35]
    per_call = np.diff([f for _, f in after_window][::2])
    assert set(per_call.tolist()) == {1}
    assert cached.counters.frames_encoded < 0.3 * uncached.counters.frames_encoded
    assert len(cached._cache) <= 31  # bounded: one newest frame per re-plan over the 2 s window, older ones dropped
    # the cache changes nothing but the work: same commands (checked on the last one)
    np.testing.assert_allclose(cached.last.action.delta_ee, uncached.last.action.delta_ee, rtol=1e-4, atol=1e-6)
    # a new episode starts cold
    cached.reset()
    before = cached.counters.frames_encoded
    _stream(cached, 0.1, phase)
    assert cached.counters.frames_encoded - before == 2  # frame 0 (all targets before it) then frame 2


def test_buffer_chooses_frames_and_audio_as_training_samples_do(tiny_ds):
    ep = tiny_ds.episode(0)
    params = SampleParams(n_frames=4, horizon=8)
    buffer = ObservationBuffer(ep.streams.audio, params)
    rgb, numbers = ep.array("camera/rgb"), ep.read("camera/frame_number")
    pcm, offsets = ep.read("audio/pcm"), ep.audio_block_offsets
    ends = np.append(offsets[1:], len(pcm))
    times = ep.sample_times(params)  # the first re-plans too: a window padded alike
    checked = 0
    fi = bi = 0
    for t in times[:: max(1, len(times) // 6)]:
        while fi < len(ep.camera_times) and ep.camera_times[fi] <= t:  # what a live loop has read by time t
            buffer.add_frame(Frame(int(ep.camera_times[fi]), int(numbers[fi]), rgb[fi]))
            fi += 1
        while bi < len(offsets) and ep.audio_block_times[bi] <= t:
            buffer.add_audio(AudioBlock(int(ep.audio_block_times[bi]), pcm[offsets[bi]:ends[bi]]))
            bi += 1
        sample = ep.sample(int(t), params)
        frames = buffer.frames(int(t))
        assert [f.timestamp_ns for f in frames] == sample.frame_times_ns.tolist()
        np.testing.assert_array_equal(np.stack([f.rgb for f in frames]), sample.frames)
        np.testing.assert_allclose(buffer.clip(int(t)), sample.audio, atol=1e-6)
        checked += 1
    assert checked >= 3
    assert len(buffer._frames) < len(ep.camera_times)  # old frames were let go


def test_every_command_passes_the_safety_filter():
    model, config = _policy("vision-only")
    huge = ActionNormalization([0.5] * 6 + [3.0], [10.0] * 7)  # metres per step: far beyond the limits
    limits = SafetyLimits()
    runner = PolicyRunner(model, config, huge, SafetyFilter(limits), execute=3)
    frames = [_frame(k) for k in range(4)]
    for _ in range(3):
        action = runner.act(HOME, frames)  # vision-only: no audio needed
        assert np.linalg.norm(action.delta_ee[:3]) <= limits.max_translation_m + 1e-12
        assert np.linalg.norm(action.delta_ee[3:]) <= limits.max_rotation_rad + 1e-12
        assert limits.gripper_min <= action.gripper <= limits.gripper_max
        assert "translation" in runner.last.reasons
    assert runner.counters.safety_changed == 3
    nan = ActionNormalization([float("nan")] * 7, [1.0] * 7)
    runner = PolicyRunner(model, config, nan, SafetyFilter(limits))
    action = runner.act(HOME, frames)
    assert np.all(action.delta_ee == 0) and "non-finite" in runner.last.reasons


def test_policy_without_gripper_holds_the_gripper():
    model, config = _policy("vision-only", action_dim=6)
    safety = SafetyFilter(LOOSE)
    safety.last_gripper = 0.25
    runner = PolicyRunner(model, config, ActionNormalization.identity(6), safety)
    assert runner.act(HOME, [_frame(k) for k in range(4)]).gripper == 0.25


def test_runner_argument_errors():
    model, config = _policy(horizon=4)
    norm = ActionNormalization.identity()
    with pytest.raises(HtouchError, match="between 1 and the horizon 4"):
        PolicyRunner(model, config, norm, SafetyFilter(), execute=5)
    with pytest.raises(HtouchError, match="6 dimensions"):
        PolicyRunner(model, config, ActionNormalization.identity(6), SafetyFilter())
    with pytest.raises(HtouchError, match="3 frames"):
        PolicyRunner(model, config, norm, SafetyFilter(), sample=SampleParams(n_frames=3))
    runner = PolicyRunner(model, config, norm, SafetyFilter())
    with pytest.raises(HtouchError, match="no camera frame"):
        runner.step(BASE, HOME)
    with pytest.raises(HtouchError, match=r"shape \(320, 2\); the rig has 4 channels"):
        runner.buffer.add_audio(_block(0, channels=2))


def test_benchmark_smoke_run(tmp_path):
    """tools/bench_policy.py runs end to end (tiny preset, short stream) and writes its report; no timing
    is asserted here (the benchmark measures, tests do not)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "bench-policy.md"
    r = subprocess.run([sys.executable, str(root / "tools" / "bench_policy.py"), "--quick", "--presets", "tiny",
                        "--out", str(out)], capture_output=True, text=True, cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    for heading in ("## Parameters", "## Control-step latency", "## Breakdown of one re-plan"):
        assert heading in text
    assert "| paper | ours | 18,822,712" in text  # the parameter table covers the paper preset
    rows = [line for line in text.splitlines() if line.startswith("| tiny | cache |")]
    assert len(rows) == 1 and rows[0].split("|")[9].strip() == "1.00"  # one frame encoded per re-plan


def test_async_benchmark_smoke_run(tmp_path):
    """tools/bench_async_policy.py records its rollouts through the real loop on the stand-in rig and writes its
    report (tiny preset, 3 s rollouts; no timing asserted), leaving nothing in the temporary directory."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out, scratch = tmp_path / "bench-async-policy.md", tmp_path / "scratch"
    scratch.mkdir()
    r = subprocess.run([sys.executable, str(root / "tools" / "bench_async_policy.py"), "--seconds", "3", "--preset",
                        "tiny", "--repeats", "2", "--modes", "sync,async-channels-last", "--out", str(out)],
                       capture_output=True, text=True, cwd=root, timeout=300,
                       env={**os.environ, "TMPDIR": str(scratch)})
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    for heading in ("## Goals", "## One re-plan's encoders by layout"):
        assert heading in text
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines()
            if line.startswith(("| sync |", "| async-channels-last |")) and line.count("|") > 10}
    assert set(rows) == {"sync", "async-channels-last"}
    assert int(rows["sync"][12]) == 0 and int(rows["sync"][13]) == 0  # the synchronous runner skips and holds nothing
    assert int(rows["async-channels-last"][13]) >= 1  # the first ticks hold until the first plan
    assert list(scratch.iterdir()) == []
    r = subprocess.run([sys.executable, str(root / "tools" / "bench_async_policy.py"), "--modes", "fastest"],
                       capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode != 0 and "--modes: unknown ['fastest']" in r.stderr


def test_runner_from_a_run_directory(tmp_path):
    from htouch.dataset.schema import StreamSpecs
    from htouch.training.checkpoints import save_run_checkpoint
    from htouch.training.data import DataSpec

    model, config = _policy(horizon=4)
    norm = ActionNormalization([0.0] * 7, [0.01] * 7)
    streams = StreamSpecs(audio=AudioSpec(channels=2, channel_names=["a", "b"], center=100.0, scale=1000.0))
    extra = {"action_normalization": norm.to_dict(), "data": DataSpec.from_policy(config).to_dict(),
             "rig": streams.to_dict()}
    save_run_checkpoint(tmp_path / "run", model, config, extra)
    runner = PolicyRunner.from_run(tmp_path / "run", SafetyFilter(LOOSE), execute=3)
    assert runner.execute == 3 and runner.normalization == norm and runner.config == config
    assert runner.buffer.audio == streams.audio and runner.sample == DataSpec.from_policy(config).sample_params
    clip = np.zeros(32000, np.float32)
    frames = [_frame(k) for k in range(4)]
    expected = _expected_chunk(model, config, frames, clip, norm)
    np.testing.assert_allclose(runner.act(HOME, frames, clip).delta_ee, expected[0, :6], rtol=1e-4, atol=1e-7)
    save_run_checkpoint(tmp_path / "bare", model, config, {})
    with pytest.raises(HtouchError, match="no action_normalization"):
        PolicyRunner.from_run(tmp_path / "bare", SafetyFilter())


# ------------------------------------------------------------------------------ planning beside the loop


class SlowPolicy(AudioVisualPolicy):
    """The real model, made slow (a real sleep before the head) or failing, as a loaded CPU would make it."""

    delay_s = 0.0
    fail = False

    def head(self, frame_emb, audio_emb):
        if self.fail:
            raise RuntimeError("out of memory in the head")
        time.sleep(self.delay_s)
        return super().head(frame_emb, audio_emb)


def _slow_policy(method: str = "vision-only", **kw) -> tuple[SlowPolicy, object]:
    torch.manual_seed(0)
    config = policy_config("tiny", method, dropout=0.0, **kw)
    return SlowPolicy(config).eval(), config


def _feed(runner: PolicyRunner, k: int) -> None:
    """The stream up to tick k (frames 10 ms before each tick, 10 ms audio blocks)."""
    runner.buffer.add_frame(_frame(k, phase_ns=10_000_000))
    for j in range(int(k * 10 / 3), int((k + 1) * 10 / 3)):
        runner.buffer.add_audio(_block(j))


def test_async_runner_with_instant_planning_returns_the_synchronous_actions():
    """latency_ticks=0 (each plan adopted at the tick it was asked): through the worker thread, the very
    actions of the synchronous runner, tick by tick, with the same model calls and encodes."""
    model, config = _policy()
    norm = ActionNormalization([0.001] * 6 + [0.5], [0.01] * 6 + [0.2])
    sync = PolicyRunner(model, config, norm, SafetyFilter(LOOSE), execute=2)
    lockstep = PolicyRunner(model, config, norm, SafetyFilter(LOOSE), execute=2, asynchronous=True, latency_ticks=0,
                            period_ns=FRAME_NS)
    try:
        for k in range(40):
            for r in (sync, lockstep):
                _feed(r, k)
            t = BASE + k * FRAME_NS
            a, b = sync.step(t, HOME), lockstep.step(t, HOME)
            np.testing.assert_array_equal(a.delta_ee, b.delta_ee)
            assert a.gripper == b.gripper
        assert dataclasses.asdict(sync.counters) == dataclasses.asdict(lockstep.counters)
        assert lockstep.counters.model_calls == 20 and lockstep.counters.ticks_held == 0
    finally:
        lockstep.close()


def test_async_runner_skips_the_actions_whose_tick_passed():
    """latency_ticks=3 (a plan arrives 3 ticks after it was asked): the first 3 ticks hold, then tick t
    executes action (t - t_asked) / period of the newest plan, which is the chunk the model gives for the
    observation at t_asked; 3 actions of every plan are skipped. One plan is made at a time, so with a
    latency over h = 2 ticks the next is asked after the last arrives, 4 ticks after the last was asked
    (the smallest divisor of the frames' 20-tick spacing >= 3: each plan encodes only its newest frame)."""
    model, config = _policy("vision-only")
    norm = ActionNormalization([0.001] * 6 + [0.5], [0.01] * 6 + [0.2])
    runner = PolicyRunner(model, config, norm, SafetyFilter(LOOSE), execute=2, asynchronous=True, latency_ticks=3,
                          period_ns=FRAME_NS)
    snapshots: dict[int, ObservationBuffer] = {}
    try:
        for k in range(30):
            _feed(runner, k)
            t = BASE + k * FRAME_NS
            action = runner.act_at(t, HOME, lambda t=t: snapshots.setdefault(t, runner.buffer.snapshot()))
            if k < 3:
                assert np.all(action.delta_ee == 0)
                continue
            asked = max(s for s in snapshots if s <= t - 3 * FRAME_NS)
            frames = snapshots[asked].frames(asked)
            expected = _expected_chunk(model, config, frames, None, norm)[(t - asked) // FRAME_NS]
            np.testing.assert_allclose(action.delta_ee, expected[:6], rtol=1e-4, atol=1e-7, err_msg=f"tick {k}")
        assert sorted(snapshots) == [BASE + k * FRAME_NS for k in range(0, 30, 4)]
        assert runner.counters.ticks_held == 3
        calls = runner.counters.model_calls
        assert runner.counters.frames_encoded - calls <= 3  # one new frame per plan once the 2 s window filled
        assert runner.counters.actions_skipped == 3 * (runner.counters.model_calls - 1)  # the last one is in flight
    finally:
        runner.close()
    with pytest.raises(HtouchError, match="latency_ticks must be between 0 and horizon - execute = 6"):
        PolicyRunner(model, config, norm, SafetyFilter(), execute=2, asynchronous=True, latency_ticks=7)


def test_ticks_never_wait_for_a_slow_planner():
    """A planner 5 ticks slow (a real sleep in the model): in real time at 30 Hz, every step returns at once;
    ticks hold until the first plan, and each plan is executed from the tick it arrives at, aligned to the
    time it was asked."""
    model, config = _slow_policy()
    model.delay_s = 5 * FRAME_NS / NS
    runner = PolicyRunner(model, config, ActionNormalization.identity(), SafetyFilter(LOOSE), execute=2,
                          asynchronous=True, period_ns=FRAME_NS)
    steps, executed = [], []
    try:
        start = time.monotonic_ns()
        for k in range(45):
            time.sleep(max(0.0, (start + k * FRAME_NS - time.monotonic_ns()) / NS))
            _feed(runner, k)
            t = BASE + k * FRAME_NS
            held, t0 = runner.counters.ticks_held, time.perf_counter()
            action = runner.step(t, HOME)
            steps.append(time.perf_counter() - t0)
            if runner.counters.ticks_held == held:  # a planned action, not a hold
                executed.append((t, runner._chunk.t_ns, action))
        model.delay_s = 0.0
    finally:
        runner.close()
    assert max(steps) < 0.5 * model.delay_s or max(steps) < 0.05, f"a step took {max(steps) * 1e3:.0f} ms"
    assert runner.counters.ticks_held >= 5  # nothing to do before the first plan
    assert runner.counters.model_calls >= 3 and runner.counters.actions_skipped >= 4 * runner.counters.model_calls
    assert len(executed) >= 10
    for t, asked, action in executed:  # the chunk of the observation at `asked`, at the index of tick t
        snapshot = ObservationBuffer(AudioSpec(), runner.sample)
        for k in range((asked - BASE) // FRAME_NS + 1):
            snapshot.add_frame(_frame(k, phase_ns=10_000_000))
        chunk = _expected_chunk(model, config, snapshot.frames(asked), None, ActionNormalization.identity())
        np.testing.assert_allclose(action.delta_ee, chunk[(t - asked) // FRAME_NS, :6], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("latency_ticks", [None, 0])
def test_planner_failure_is_one_clear_error(latency_ticks):
    model, config = _slow_policy()
    model.fail = True
    runner = PolicyRunner(model, config, ActionNormalization.identity(), SafetyFilter(), asynchronous=True,
                          latency_ticks=latency_ticks, period_ns=FRAME_NS)
    try:
        deadline = time.monotonic() + 10
        with pytest.raises(HtouchError, match="the policy failed while planning: RuntimeError: out of memory"):
            k = 0
            while time.monotonic() < deadline:
                _feed(runner, k)
                runner.step(BASE + k * FRAME_NS, HOME)
                k += 1
                time.sleep(0.005)
        with pytest.raises(HtouchError, match="the policy failed while planning"):  # until the episode is reset
            runner.step(BASE + k * FRAME_NS, HOME)
        model.fail = False
        runner.reset()
        _feed(runner, 0)
        runner.step(BASE, HOME)
    finally:
        runner.close()
    with pytest.raises(HtouchError, match="asynchronous runner acts through step"):
        runner.act(HOME, [_frame(k) for k in range(4)])


def test_onnxruntime_encoders_give_the_torch_actions():
    """encoders="onnxruntime" (the onnx extra): the encoders exported in memory and run by ONNX Runtime give
    the actions of the PyTorch encoders, for a policy that hears and one that does not."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    norm = ActionNormalization([0.001] * 6 + [0.5], [0.01] * 6 + [0.2])
    for method in ("ours", "vision-only"):
        model, config = _policy(method)
        runners = [PolicyRunner(model, config, norm, SafetyFilter(LOOSE), encoders=e) for e in ("torch", "onnxruntime")]
        for k in range(12):
            for r in runners:
                _feed(r, k)
            a, b = (r.step(BASE + k * FRAME_NS, HOME) for r in runners)
            np.testing.assert_allclose(b.delta_ee, a.delta_ee, rtol=1e-4, atol=1e-7)
            assert b.gripper == pytest.approx(a.gripper, rel=1e-4)
        assert runners[1].counters.frames_encoded == runners[0].counters.frames_encoded
    with pytest.raises(HtouchError, match="encoders must be torch or onnxruntime, not 'tvm'"):
        PolicyRunner(model, config, norm, SafetyFilter(), encoders="tvm")


@pytest.mark.skipif(not native_bfloat16(), reason="this CPU has no native bfloat16")
def test_bfloat16_replans_stay_near_the_float32_actions():
    """precision="bfloat16" (autocast in the re-plan, also in the planner's thread) moves each action by a
    small fraction of the normalization's spread, and encodes the same frames."""
    norm = ActionNormalization([0.001] * 6 + [0.5], [0.01] * 6 + [0.2])
    model, config = _policy("ours")
    runners = [PolicyRunner(model, config, norm, SafetyFilter(LOOSE), precision=p) for p in ("float32", "bfloat16")]
    worst = 0.0
    for k in range(12):
        for r in runners:
            _feed(r, k)
        a, b = (r.step(BASE + k * FRAME_NS, HOME) for r in runners)
        worst = max(worst, float(np.abs(b.delta_ee - a.delta_ee).max()) / 0.01)
    assert 0 < worst < 0.05  # bfloat16 really ran, and stayed within 5 % of a standard deviation
    assert runners[1].counters.frames_encoded == runners[0].counters.frames_encoded
    threaded = PolicyRunner(model, config, norm, SafetyFilter(LOOSE), asynchronous=True, latency_ticks=0,
                            period_ns=FRAME_NS, precision="bfloat16")
    try:
        plain = PolicyRunner(model, config, norm, SafetyFilter(LOOSE), precision="bfloat16")
        for k in range(6):
            for r in (plain, threaded):
                _feed(r, k)
            a, b = (r.step(BASE + k * FRAME_NS, HOME) for r in (plain, threaded))
            np.testing.assert_array_equal(b.delta_ee, a.delta_ee)  # the worker thread computes in bfloat16 too
    finally:
        threaded.close()


def test_precision_is_checked():
    model, config = _policy("ours")
    norm = ActionNormalization.identity()
    with pytest.raises(HtouchError, match="precision must be float32 or bfloat16, not 'float16'"):
        PolicyRunner(model, config, norm, SafetyFilter(), precision="float16")
    with pytest.raises(HtouchError, match="bfloat16 re-plans need the torch encoders"):
        PolicyRunner(model, config, norm, SafetyFilter(), precision="bfloat16", encoders="onnxruntime")
    with pytest.raises(HtouchError, match="--precision must be float32 or bfloat16, not 'half'"):
        planning_options("async", True, precision="half")
    if native_bfloat16():  # async bfloat16 plans with torch's channels-last encoders, even with the onnx extra
        assert planning_options("async", True, precision="bfloat16") == {
            "asynchronous": True, "channels_last": True, "precision": "bfloat16"}
        assert planning_options("sync", False, precision="bfloat16") == {"precision": "bfloat16"}


def test_onnxruntime_encoders_write_and_send_nothing(tmp_path):
    """ONNX Runtime's Linux builds keep a telemetry device id under ~/.cache and a session file in $TMPDIR
    for their uploader; a runner with its encoders (imported the way the CLI does) leaves both empty."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import os
    import subprocess
    import sys

    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(), tmp.mkdir()
    code = "\n".join([
        "from htouch.training.runner import PolicyRunner",  # as the CLI does: htouch first, then onnxruntime
        "import onnxruntime",
        "from htouch.collector.safety import SafetyFilter",
        "from htouch.training.methods import policy_config",
        "from htouch.training.model import ActionNormalization, build_policy",
        "c = policy_config('tiny', 'ours')",
        "r = PolicyRunner(build_policy(c), c, ActionNormalization.identity(), SafetyFilter(), encoders='onnxruntime')",
    ])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HOME": str(home), "TMPDIR": str(tmp)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(home.rglob("*")) == [] and list(tmp.rglob("*")) == []
