"""The simulated tasks: success predicates and progress on hand-made states, layouts, and the two variations."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from htouch.sim.scene import VARIATIONS, OffscreenCamera, wxyz
from htouch.sim.tasks import TASKS, build


def world_for(task: str, seed: int = 0, variation: str = "train"):
    t, w = build(task, variation, width=64, height=48)
    mujoco.mj_resetData(w.model, w.data)
    t.randomize(np.random.default_rng(seed))
    w.place_hand(t.home_position, t.home_rotation, t.home_opening)
    mujoco.mj_forward(w.model, w.data)
    return t, w


def test_registry_and_variations():
    assert set(TASKS) == {"zip", "flip", "scoop"}
    for cls in TASKS.values():
        assert cls.variations == ("train", "test")
    with pytest.raises(KeyError, match="unknown simulated task"):
        build("knit", "train")
    with pytest.raises(KeyError, match="unknown variation"):
        build("zip", "night")


def test_zip_success_at_the_end_stop_only():
    t, w = world_for("zip")
    assert not t.success() and t.progress() == 0.0
    for y, ok in ((t.layout["start_y"] + 0.05, False), (t.end_y() - 0.01, False), (t.end_y() - 0.002, True)):
        w.data.qpos[t._slider_y] = y
        mujoco.mj_forward(w.model, w.data)
        assert t.success() is ok, y
    w.data.qpos[t._slider_y] = (t.layout["start_y"] + t.end_y()) / 2
    mujoco.mj_forward(w.model, w.data)
    assert t.progress() == pytest.approx(0.5)


def test_zip_end_stop_holds_under_a_hard_pull():
    """The end stop is a real obstacle: 30 N along the track does not push the slider through it."""
    t, w = world_for("zip")
    w.data.qpos[t._slider_y] = t.end_y() - 0.01
    dof = w.model.jnt_dofadr[w.joint_id("slider_y")]
    for _ in range(400):
        w.data.qfrc_applied[dof] = 30.0
        w.step()
    assert t.end_y() - 0.002 < t.slider_y() < t.end_y() + 0.001
    assert t.success()


def test_flip_success_needs_upside_down_on_the_table():
    t, w = world_for("flip")
    adr = t._cake_qpos
    assert not t.success() and t.progress() == pytest.approx(0.0, abs=1e-9)
    x, y = t.layout["cake_x"], t.layout["cake_y"]
    resting = t.table_z() + t.RIM
    d = w.data
    d.qpos[adr: adr + 3] = (x, y, resting - 0.0002)
    d.qpos[adr + 3: adr + 7] = wxyz(Rotation.from_euler("x", 180, degrees=True))
    mujoco.mj_forward(w.model, w.data)
    assert t.success() and t.progress() == pytest.approx(1.0)
    d.qpos[adr + 2] = resting + 0.05  # upside down but in the air (on the spatula, say)
    mujoco.mj_forward(w.model, w.data)
    assert not t.success()
    d.qpos[adr: adr + 3] = (x, y, resting + 0.03)  # standing on its edge: half way
    d.qpos[adr + 3: adr + 7] = wxyz(Rotation.from_euler("y", 90, degrees=True))
    mujoco.mj_forward(w.model, w.data)
    assert not t.success() and t.progress() == pytest.approx(0.5, abs=1e-6)


def test_scoop_success_counts_beans_above_the_rim():
    t, w = world_for("scoop")
    assert t.beans_lifted() == 0 and not t.success() and t.progress() == 0.0
    d = w.data
    above = t.rim_z() + 0.03
    for k, adr in enumerate(t._bean_qpos[:2]):
        d.qpos[adr + 2] = above
        mujoco.mj_forward(w.model, w.data)
        assert t.beans_lifted() == k + 1
        assert t.success() is (k + 1 >= t.MIN_BEANS)
    assert t.progress() == 1.0


@pytest.mark.parametrize("task", sorted(TASKS))
def test_layouts_are_drawn_from_the_seed(task):
    a, _ = world_for(task, seed=3)
    b, _ = world_for(task, seed=3)
    c, _ = world_for(task, seed=4)
    assert a.layout == b.layout
    assert a.layout != c.layout
    d, _ = world_for(task, seed=3, variation="test")
    assert d.layout == a.layout  # variations change the looks, not the layout


def test_heights_vary_by_centimetres():
    """The decisive places move by centimetres across episodes (what vision resolves poorly), within the
    ranges the tasks declare (a deaf operator knows only their middle)."""
    spans = {"zip": ("end_face_y", TASKS["zip"].END_FACE_Y), "flip": ("table_z", TASKS["flip"].TABLE_Z),
             "scoop": ("floor_z", TASKS["scoop"].FLOOR_Z)}
    for task, (key, (low, high)) in spans.items():
        values = [world_for(task, seed=s)[0].layout[key] for s in range(12)]
        assert low <= min(values) and max(values) <= high, (task, values)
        assert max(values) - min(values) > 0.6 * (high - low) > 0.03, (task, values)


def test_train_and_test_look_different():
    t, w = world_for("zip")
    assert VARIATIONS["train"].distractors == 0 and VARIATIONS["test"].distractors > 0
    images = {}
    for variation in ("train", "test"):
        t, w = world_for("zip", variation=variation)
        camera = OffscreenCamera(w.model, 64, 48, w.camera_id)
        images[variation] = camera.render(w.data).astype(float)
        camera.close()
    diff = np.abs(images["train"] - images["test"]).mean()
    assert diff > 20, diff  # mean absolute difference, out of 255
