"""What hearing is worth: the deaf operator never uses contact information, fragile parts break over their
limit, and the comparison drives both operators over the same scenes."""

from __future__ import annotations

import numpy as np
import pytest

from htouch.collector.config import RigConfig
from htouch.collector.devices import Action
from htouch.sim.hearing import OperatorResult, run_operator
from htouch.sim.operator import ScriptedOperator, drive
from htouch.sim.rig import SimRig
from htouch.sim.tasks import ZipTask


def tiny_config() -> RigConfig:
    config = RigConfig()
    config.camera.width, config.camera.height = 64, 48
    return config


@pytest.mark.parametrize("task", ["zip", "flip", "scoop"])
def test_deaf_operator_never_asks_what_was_heard(task):
    """The world's record of heard contacts is the operator's only ear: the deaf one never reads it (it would
    raise), the hearing one does (so this test can fail)."""
    for deaf in (True, False):
        with SimRig(task, seed=3, config=tiny_config()) as rig:
            asked = []

            def heard_within(touched, steps, _asked=asked, deaf=deaf):
                _asked.append(touched)
                if deaf:
                    raise AssertionError(f"the deaf operator asked whether {touched} was heard")
                return False

            rig.world.heard_within = heard_within
            drive(rig, ScriptedOperator(rig, seed=3, deaf=deaf), max_seconds=25)
            assert bool(asked) is not deaf


def test_deaf_operator_stops_where_the_contact_is_on_average():
    """Deaf on zip: the pull ends where the end stop is in the average episode, whatever this episode's is."""
    stops = []
    for seed in (0, 5):
        with SimRig("zip", seed=seed, config=tiny_config()) as rig:
            op = ScriptedOperator(rig, seed=seed, deaf=True)
            believed = []
            op.contact_point = lambda op=op, out=believed: out.append(op.want_pos.copy()) or op.want_pos.copy()
            drive(rig, op, max_seconds=25)
            stops.append((rig.task.end_y(), believed[0][1] - rig.task.track_origin()[1]))
    assert abs(stops[0][0] - stops[1][0]) > 0.005  # two different tracks ...
    for _, stop in stops:  # ... and the pull stopped at the same place along each: the average end
        assert stop == pytest.approx(ZipTask().mean_end_y(), abs=0.002)


def test_fragile_part_breaks_over_its_limit_once():
    with SimRig("scoop", seed=0, config=tiny_config()) as rig:
        task = rig.task
        _, limit, what = task.FRAGILE
        assert task.check_damage(limit * 0.99) is None and task.damage is None
        broke = task.check_damage(limit * 1.5)
        assert broke and broke.startswith(what) and task.damage == broke
        assert task.check_damage(limit * 3) is None  # reported once
        assert not task.success() and task.progress() == 0.0
        rig.robot.home()
        assert task.damage is None  # the next episode's part is whole


def test_pushing_into_the_fragile_part_breaks_it_and_is_recorded():
    """A stiff push of the spatula into the table: a `damage` event, and the task can no longer succeed."""
    config = tiny_config()
    config.robot.translational_stiffness = 3000.0
    with SimRig("flip", seed=0, config=config) as rig:
        rig.robot.home()
        rig.pop_events()
        for _ in range(90):
            rig.robot.apply(Action(np.array([0, 0, -0.02, 0, 0, 0]), 0.0))
            if rig.task.damage:
                break
        events = rig.pop_events()
        damage = [e for e in events if e[1] == "damage"]
        assert rig.task.damage and len(damage) == 1 and "gouged" in damage[0][2]["what"]
        assert [e[0] for e in events] == sorted(e[0] for e in events)


def test_run_operator_drives_the_same_scenes_and_round_trips():
    hearing = run_operator("zip", 1, seed=2, deaf=False)
    deaf = run_operator("zip", 1, seed=2, deaf=True)
    assert [s.episode for s in hearing.scenes] == [s.episode for s in deaf.scenes] == [1]
    assert hearing.successes == 1  # the scripted operator succeeds on this scene
    low, high = deaf.interval()
    assert 0.0 <= low <= deaf.rate <= high <= 1.0
    again = OperatorResult.from_dict(deaf.to_dict())
    assert again == deaf
