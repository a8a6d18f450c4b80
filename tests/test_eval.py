"""Policies in closed loop: the policy source fed from the loop's live streams (seeing exactly what was captured
up to each tick on a simulated clock), the operator's buttons and teleop silence with a policy driving, the
Wilson interval, `htouch eval` on the simulated rig, a policy refused on the wrong task, and `htouch rollout`
recording episodes that validate (sim) or failing fast without a robot (real)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from htouch.collector.config import ControlConfig, RigConfig
from htouch.collector.loop import Recorder
from htouch.collector.safety import SafetyFilter
from htouch.dataset.schema import NS
from htouch.dataset.store import Dataset
from htouch.dataset.validate import validate_dataset
from htouch.rigs import NO_OPERATOR, build_rig
from htouch.training.evaluate import wilson_interval
from htouch.training.methods import policy_config
from htouch.training.model import ActionNormalization, build_policy
from htouch.training.policy_source import PolicySource, RunInfo
from htouch.training.runner import ObservationBuffer, PolicyRunner, native_bfloat16
from tests.loop_devices import TEST_STREAMS, Plan, PlannedWorld
from tests.test_model import one_torch_thread  # noqa: F401 - autouse fixture

NORM = ActionNormalization([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5], [0.004, 0.004, 0.004, 0.02, 0.02, 0.02, 0.3])


def tiny_policy(method: str = "ours"):
    torch.manual_seed(0)
    config = policy_config("tiny", method, dropout=0.0)
    return build_policy(config).eval(), config


def run_info(tmp_path: Path, config, streams) -> RunInfo:
    return RunInfo(run_dir=tmp_path, config=config, task="zip", streams=streams, random_init=[], training={})


class Tap:
    """A stream device as the loop sees it, keeping a copy of every item it hands out."""

    def __init__(self, device):
        self.device = device
        self.spec = device.spec
        self.items: list = []

    def start(self) -> None:
        self.device.start()

    def stop(self) -> None:
        self.device.stop()

    def read(self, timeout_s: float):
        item = self.device.read(timeout_s)
        if item is not None:
            self.items.append(item)
        return item


def spy_commands(source: PolicySource) -> list:
    """(tick time, robot position, the command's action) for every tick the source was asked."""
    log, command = [], source.command

    def logged(reading, state, now_ns):
        c = command(reading, state, now_ns)
        log.append((now_ns, state.ee_pose[:3].copy(), c.action))
        return c

    source.command = logged
    return log


def test_policy_source_sees_every_frame_and_block_up_to_each_tick(tmp_path):
    """On the simulated rig the policy's re-plans use exactly the frames and audio captured up to the tick (from
    the start of the recording): replaying the tapped streams through a fresh runner gives the same commands, and
    the episode's recorded actions are those commands."""
    cfg = RigConfig()
    cfg.camera = dataclasses.replace(cfg.camera, width=64, height=48)
    cfg.control = dataclasses.replace(cfg.control, max_episode_s=1.5)
    rig = build_rig(cfg, "zip", NO_OPERATOR, seed=3)
    rig.camera, rig.microphones = Tap(rig.camera), Tap(rig.microphones)
    model, config = tiny_policy()
    runner = PolicyRunner(model, config, NORM, SafetyFilter(cfg.safety), execute=2, audio=rig.streams.audio)
    source = PolicySource(runner, run_info(tmp_path, config, rig.streams), operator=False,
                          task_success=rig.task_success, task_progress=rig.task_progress)
    log = spy_commands(source)
    ds = Dataset.open_or_create(tmp_path / "rollouts", "zip", rig.streams)
    try:
        result = Recorder(rig, ds, cfg.control, safety=cfg.safety, source=source).run(1)
    finally:
        rig.close()
    assert result.committed == [0] and not result.error
    ep = ds.episode(0)
    start = next(e["t_ns"] for e in ep.events() if e["kind"] == "start")
    assert runner.counters.model_calls >= 15 and runner.counters.frames_encoded >= 15

    frames = [f for f in rig.camera.items if f.timestamp_ns >= start]
    rate = rig.streams.audio.rate_hz
    blocks = [b for b in rig.microphones.items if b.timestamp_ns >= start]
    replay = PolicyRunner(model, config, NORM, SafetyFilter(cfg.safety), execute=2, audio=rig.streams.audio)
    replans = 0
    for now, position, action in log:
        if action is None:
            continue
        if replay.needs_observation:
            buffer = ObservationBuffer(rig.streams.audio, replay.sample)
            for f in frames:
                if f.timestamp_ns <= now:
                    buffer.add_frame(f)
            for b in blocks:  # a block is handed out once its last sample was captured
                if b.timestamp_ns + (len(b.pcm) - 1) * NS / rate < now:
                    buffer.add_audio(b)
            want = replay.act(position, buffer.frames(now), buffer.clip(now))
            replans += 1
        else:
            want = replay.act(position)
        np.testing.assert_allclose(action.delta_ee, want.delta_ee, rtol=0, atol=1e-12)
        assert action.gripper == pytest.approx(want.gripper, abs=1e-12)
    assert replans == runner.counters.model_calls

    # What the episode recorded is what the policy commanded (the loop's own safety pass changes nothing).
    commanded = np.array([a.delta_ee if a is not None else np.zeros(6) for _, _, a in log])
    recorded = ep.read("action/delta_ee")
    assert len(recorded) == len(commanded)
    np.testing.assert_allclose(recorded, commanded, atol=1e-9)
    info = ep.attrs["info"]
    assert info["action_source"] == "policy" and info["policy"]["method"] == "ours"
    assert info["end"] == "time limit" and ep.success is False and 0.0 <= info["reward"] <= 1.0
    assert info["policy_counters"]["model_calls"] == runner.counters.model_calls
    assert [e for e in ep.events() if e["kind"] == "failure"][0]["detail"] == {"by": "task"}


def test_a_policy_with_an_operator_starts_on_the_grip_holds_on_silence_and_stops_on_a_button(tmp_path):
    """The real robot's path, on the loop's test rig: the operator's grip starts the rollout, the teleop's motion is
    ignored, teleop silence holds the robot (and is recorded), B stops it and labels it a failure."""
    world = PlannedWorld([Plan(grip_s=0.5, end_s=2.5, end_button="B", teleop_silence=(1.2, 1.7))])
    rig = world.rig()
    model, config = tiny_policy()
    runner = PolicyRunner(model, config, NORM, SafetyFilter(), execute=2, audio=TEST_STREAMS.audio)
    source = PolicySource(runner, run_info(tmp_path, config, TEST_STREAMS), operator=True, start_on_clutch=True)
    log = spy_commands(source)
    ds = Dataset.open_or_create(tmp_path / "rollouts", "zip", TEST_STREAMS)
    try:
        result = Recorder(rig, ds, ControlConfig(), source=source).run(1)
    finally:
        rig.close()
    assert result.committed == [0]
    ep = ds.episode(0)
    assert ep.success is False and ep.attrs["info"]["end"] == "failure"
    events = {e["kind"]: e for e in ep.events()}
    assert "detail" not in events["failure"]  # labelled by the operator
    start = events["start"]["t_ns"]
    assert world.since(start) >= 0.5  # not before the grip
    assert "teleop_lost" in events and 1.2 <= world.since(events["teleop_lost"]["t_ns"]) < 1.7
    # During the silence the source was not asked and the robot held still; otherwise the policy moved it.
    asked = [world.since(t) for t, _, _ in log]
    assert not any(1.2 + 0.25 + 0.04 < s < 1.7 for s in asked)
    moved = [world.since(t) for t, a in world.robot.applied if np.any(a.delta_ee != 0)]
    assert moved and not any(1.5 < s < 1.7 for s in moved)
    assert len(ep.read("teleop/timestamp_ns")) > 0  # the teleop is still recorded


def test_policy_source_ends_an_episode_when_the_task_succeeds(tmp_path):
    model, config = tiny_policy("vision-only")
    runner = PolicyRunner(model, config, NORM, SafetyFilter(), execute=2, audio=TEST_STREAMS.audio)
    done = [False]
    source = PolicySource(runner, run_info(tmp_path, config, TEST_STREAMS), operator=False,
                          task_success=lambda: done[0], task_progress=lambda: 0.25 + 0.75 * done[0])
    world = PlannedWorld([Plan(end_button=None, callback_at=(1.0, lambda: done.__setitem__(0, True)))])
    rig = world.rig()
    ds = Dataset.open_or_create(tmp_path / "rollouts", "zip", TEST_STREAMS)
    try:
        result = Recorder(rig, ds, ControlConfig(max_episode_s=5.0), source=source).run(1)
    finally:
        rig.close()
    ep = ds.episode(0)
    assert result.committed == [0] and ep.success is True
    assert ep.attrs["info"]["end"] == "success" and ep.attrs["info"]["reward"] == 1.0
    assert ep.duration_s < 1.5
    assert [e["detail"] for e in ep.events() if e["kind"] == "success"] == [{"by": "task"}]


def test_policy_source_ends_an_episode_as_a_failure_when_the_task_breaks(tmp_path):
    """A simulated part that broke: success is out of reach, the rollout ends at once as a failure."""
    model, config = tiny_policy("vision-only")
    runner = PolicyRunner(model, config, NORM, SafetyFilter(), execute=2, audio=TEST_STREAMS.audio)
    broke = [False]
    source = PolicySource(runner, run_info(tmp_path, config, TEST_STREAMS), operator=False,
                          task_success=lambda: False, task_progress=lambda: 0.0, task_failed=lambda: broke[0])
    world = PlannedWorld([Plan(end_button=None, callback_at=(1.0, lambda: broke.__setitem__(0, True)))])
    rig = world.rig()
    ds = Dataset.open_or_create(tmp_path / "rollouts", "zip", TEST_STREAMS)
    try:
        result = Recorder(rig, ds, ControlConfig(max_episode_s=5.0), source=source).run(1)
    finally:
        rig.close()
    ep = ds.episode(0)
    assert result.committed == [0] and ep.success is False and ep.duration_s < 1.5
    assert [e["detail"] for e in ep.events() if e["kind"] == "failure"] == [{"by": "task"}]


@pytest.mark.parametrize("k, n, low, high", [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (1, 20, 0.0089, 0.2361),
    (37, 50, 0.6045, 0.8413), (0, 0, 0.0, 1.0)])
def test_wilson_interval_hand_computed(k, n, low, high):
    """Against the closed form: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.96."""
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-4)
    if n:
        z, p = 1.959964, k / n
        centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert got == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)), abs=1e-6)


# ---------------------------------------------------------------------------------------------- the CLI


def test_eval_writes_rate_ci_and_reward(cli, tiny_run, tmp_path):
    out = tmp_path / "eval.json"
    r = cli("eval", tiny_run, "--episodes", "2", "--max-seconds", "2", "--variation", "test", "--threads", "1",
            "--out", out)
    assert r.code == 0, r.err
    assert "success 0/2" in r.out or "success 1/2" in r.out or "success 2/2" in r.out
    doc = json.loads(out.read_text())
    assert doc["task"] == "zip" and doc["variation"] == "test" and doc["episodes"] == 2
    assert (doc["ci_low"], doc["ci_high"]) == pytest.approx(wilson_interval(doc["successes"], 2))
    assert doc["success_rate"] == doc["successes"] / 2 and doc["ci_method"] == "wilson"
    assert 0.0 <= doc["reward_mean"] <= 1.0 and doc["reward_std"] >= 0.0
    assert doc["length_mean_s"] == pytest.approx(2.0, abs=0.1) and doc["time_limit_s"] == 2.0
    assert [e["scene"] for e in doc["per_episode"]] == [1, 2]
    assert all(e["model_calls"] > 0 for e in doc["per_episode"])
    assert doc["run"]["method"] == "ours" and doc["run"]["random_init"] == ["audio_encoder", "image_encoder"]
    assert doc["settings"]["seed"] == 1000 and doc["settings"]["camera"].startswith("64x48")
    r = cli("eval", tiny_run, "--episodes", "1", "--max-seconds", "1", "--threads", "1", "--out", out, "--json")
    assert r.code == 0, r.err
    printed = json.loads(r.out)  # stdout is the JSON alone, the same as the file
    assert printed == json.loads(out.read_text()) and printed["episodes"] == 1


def test_eval_refuses_a_policy_on_another_task_and_bad_options(cli, tiny_run):
    r = cli("eval", tiny_run, "--task", "flip", "--episodes", "1")
    assert r.code == 2 and "trained on task 'zip', not 'flip'" in r.err and "--force" in r.err
    assert len(r.err.strip().splitlines()) == 1
    r = cli("eval", tiny_run, "--variation", "sideways")
    assert r.code == 2 and "--variation must be train or test" in r.err
    r = cli("eval", tiny_run.parent / "nothing-here")
    assert r.code == 2 and "no such run directory" in r.err
    for command in ("eval", "rollout"):
        r = cli(command, tiny_run, "--max-seconds", "-1")
        assert r.code == 2 and "--max-seconds must be a positive number, got -1" in r.err
        r = cli(command, tiny_run, "--max-seconds", "1e9")  # beyond [control] max_episode_s's range
        assert r.code == 2 and "got 1e+09 (allowed: 0.1..86400 s)" in r.err and len(r.err.strip().splitlines()) == 1


def test_eval_with_the_planner_beside_the_loop_is_deterministic(cli, tiny_run, tmp_path):
    """--planner async on the simulated clock: each plan is used --plan-latency ticks after it was asked (its
    first actions skipped, counted), the same actions on every run; bad planner options are one line."""
    actions = []
    for k in range(2):
        out, record = tmp_path / f"eval{k}.json", tmp_path / f"rollouts{k}"
        r = cli("eval", tiny_run, "--episodes", "1", "--max-seconds", "1.5", "--threads", "1", "--planner", "async",
                "--plan-latency", "3", "--record", record, "--out", out)
        assert r.code == 0, r.err
        ep = Dataset(record).episode(0)
        info = ep.attrs["info"]
        assert info["policy"]["planning"].startswith("asynchronous, 3 tick(s) latency")
        counters = info["policy_counters"]
        assert counters["ticks_held"] == 3  # until the first plan; then 4 ticks apart, each one in time
        assert counters["actions_skipped"] in (3 * (counters["model_calls"] - 1), 3 * counters["model_calls"])
        assert json.loads(out.read_text())["settings"]["planner"] == "async"
        actions.append(ep.read("action/delta_ee"))
    np.testing.assert_array_equal(actions[0], actions[1])
    assert np.all(actions[0][:3] == 0) and np.any(actions[0][3:] != 0)  # held until the first plan arrived
    if native_bfloat16():
        out, record = tmp_path / "eval-bf16.json", tmp_path / "rollouts-bf16"
        r = cli("eval", tiny_run, "--episodes", "1", "--max-seconds", "1.5", "--threads", "1", "--planner", "async",
                "--plan-latency", "3", "--precision", "bfloat16", "--record", record, "--out", out)
        assert r.code == 0, r.err
        assert Dataset(record).episode(0).attrs["info"]["policy"]["planning"].endswith(", bfloat16")
        assert json.loads(out.read_text())["settings"]["precision"] == "bfloat16"
    for flags, message in [(["--planner", "fast"], "--planner must be sync or async, not 'fast'"),
                           (["--precision", "half"], "--precision must be float32 or bfloat16, not 'half'"),
                           (["--plan-latency", "1"], "--plan-latency is for --planner async"),
                           (["--planner", "async", "--plan-latency", "7"], "latency_ticks must be between 0 and")]:
        r = cli("eval", tiny_run, "--episodes", "1", *flags)
        assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    r = cli("rollout", tiny_run, "--rig", "sim", "--precision", "half")
    assert r.code == 2 and "--precision must be float32 or bfloat16" in r.err
    r = cli("rollout", tiny_run, "--rig", "sim", "--realtime", "--plan-latency", "2")
    assert r.code == 2 and "--plan-latency is for --planner async on a simulated clock" in r.err


def test_rollout_on_the_simulated_rig_records_episodes_that_validate(cli, tiny_run, tmp_path):
    dest = tmp_path / "rollouts"
    r = cli("rollout", tiny_run, "--rig", "sim", "--episodes", "1", "--max-seconds", "3", "--record", dest,
            "--no-panel")
    assert r.code == 0, r.err
    assert "policy ours" in r.out and "mean reward" in r.out
    ds = Dataset(dest)
    assert ds.episode_indices() == [0]
    ep = ds.episode(0)
    info = ep.attrs["info"]
    assert info["action_source"] == "policy" and info["policy"]["run"] == str(tiny_run.resolve())
    assert info["policy"]["execute"] == 2 and "reward" in info and ep.success in (True, False)
    assert [f for f in validate_dataset(ds).findings if f.severity == "error"] == []
    assert cli("validate", dest).code == 0


def test_rollout_on_the_real_rig_without_a_robot_fails_fast(cli, tiny_run, tmp_path):
    config = tmp_path / "rig.toml"
    config.write_text('[rig]\nkind = "real"\n[robot]\nhost = "127.0.0.1"\n')  # nothing listens there
    r = cli("rollout", tiny_run, "--rig", "real", "--config", config, "--yes")
    assert r.code == 2 and "cannot open the real rig" in r.err and "127.0.0.1" in r.err
    assert len(r.err.strip().splitlines()) == 1
    r = cli("rollout", tiny_run, "--rig", "real", "--config", config, "--operator", "none")
    assert r.code == 2 and "needs an operator" in r.err


def test_a_run_moved_with_its_dataset_still_finds_it(tiny_run, tmp_path):
    import shutil

    from htouch.training.evaluate import default_time_limit

    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_run.parent, moved)  # the run and its demos, side by side, as an experiment keeps them
    original = RunInfo.read(tiny_run)
    shutil.move(str(tiny_run.parent / "demos"), str(tmp_path / "demos-away"))  # the recorded path is gone
    try:
        info = RunInfo.read(moved / "run")
        assert info.dataset_root == str((moved / "demos").resolve())
        limit, why = default_time_limit(info)
        assert "longest training demonstration" in why
        shutil.rmtree(moved / "demos")  # gone from both places: the recorded path, as before
        assert RunInfo.read(moved / "run").dataset_root == original.dataset_root
    finally:
        shutil.move(str(tmp_path / "demos-away"), str(tiny_run.parent / "demos"))
