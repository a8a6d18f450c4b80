"""The safety filter: whatever it is given (any floats, NaN, Inf, huge values, any robot position), the
command it lets through stays inside the limits; from inside the workspace it never leaves it."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from htouch.collector.devices import Action
from htouch.collector.safety import SafetyFilter, SafetyLimits

LIMITS = SafetyLimits()
EPS = 1e-9

any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
small_float = st.floats(-2.0, 2.0)
vec6 = st.lists(st.one_of(small_float, any_float), min_size=6, max_size=6)
inside = st.tuples(*(st.floats(lo, hi) for lo, hi in zip(LIMITS.workspace_min, LIMITS.workspace_max, strict=True)))
anywhere = st.tuples(*(st.one_of(st.floats(-5, 5), any_float) for _ in range(3)))
limits = st.builds(
    lambda lo, size, t, r, g: SafetyLimits(list(lo), list(np.add(lo, size)), t, r, min(g), max(g)),
    st.tuples(*(st.floats(-1, 1) for _ in range(3))), st.tuples(*(st.floats(0.01, 1) for _ in range(3))),
    st.floats(0, 0.1), st.floats(0, 0.5), st.tuples(st.floats(0, 1), st.floats(0, 1)))


def within_limits(out: Action, lim: SafetyLimits) -> None:
    delta = np.asarray(out.delta_ee)
    assert delta.shape == (6,) and np.all(np.isfinite(delta))
    assert np.linalg.norm(delta[:3]) <= lim.max_translation_m * (1 + EPS) + EPS
    assert np.linalg.norm(delta[3:]) <= lim.max_rotation_rad * (1 + EPS) + EPS
    assert np.isfinite(out.gripper) and lim.gripper_min <= out.gripper <= lim.gripper_max


@settings(max_examples=400, deadline=None)
@given(delta=vec6, gripper=st.one_of(st.floats(-1, 2), any_float), position=anywhere)
def test_no_input_gets_a_command_outside_the_limits(delta, gripper, position):
    out = SafetyFilter(LIMITS)(Action(np.array(delta), gripper), np.array(position)).action
    within_limits(out, LIMITS)


@settings(max_examples=400, deadline=None)
@given(lim=limits, delta=vec6, gripper=any_float, data=st.data())
def test_from_inside_the_workspace_the_robot_stays_inside(lim, delta, gripper, data):
    lo, hi = np.array(lim.workspace_min), np.array(lim.workspace_max)
    position = np.array(data.draw(st.tuples(*(st.floats(a, b) for a, b in zip(lo, hi, strict=True)))))
    out = SafetyFilter(lim)(Action(np.array(delta), gripper), position).action
    within_limits(out, lim)
    end = position + out.delta_ee[:3]
    assert np.all(end >= lo - EPS) and np.all(end <= hi + EPS)


@settings(max_examples=200, deadline=None)
@given(delta=vec6, position=inside)
def test_non_finite_command_holds_still(delta, position):
    if np.all(np.isfinite(delta)):
        delta[0] = np.nan
    f = SafetyFilter(LIMITS)
    out = f(Action(np.array(delta), 0.3), np.array(position))
    np.testing.assert_array_equal(out.action.delta_ee, np.zeros(6))
    assert "non-finite" in out.reasons and out.action.gripper == 0.3


def test_small_command_passes_unchanged():
    out = SafetyFilter(LIMITS)(Action(np.array([0.01, -0.005, 0.002, 0.03, 0, -0.02]), 0.4), np.array([0.5, 0, 0.3]))
    np.testing.assert_allclose(out.action.delta_ee, [0.01, -0.005, 0.002, 0.03, 0, -0.02])
    assert out.action.gripper == 0.4 and out.reasons == ()


def test_clipping_reasons_and_values():
    f = SafetyFilter(LIMITS)
    out = f(Action(np.array([0.0, 0.0, -0.05, 0.3, 0.4, 0.0]), 1.7), np.array([0.5, 0.0, 0.01]))
    # Down 5 cm from 1 cm above the floor: the box stops it at the floor (1 cm), under the step limit.
    np.testing.assert_allclose(out.action.delta_ee[:3], [0, 0, -0.01])
    np.testing.assert_allclose(out.action.delta_ee[3:], [0.06, 0.08, 0.0])  # 0.5 rad scaled to 0.1
    assert out.action.gripper == 1.0
    assert set(out.reasons) == {"workspace", "rotation", "gripper"}
    out = f(Action(np.array([0.1, 0, 0, 0, 0, 0]), 0.5), np.array([0.5, 0.0, 0.3]))
    np.testing.assert_allclose(out.action.delta_ee[:3], [0.02, 0, 0])
    assert out.reasons == ("translation",)


def test_non_finite_gripper_keeps_last_gripper():
    f = SafetyFilter(LIMITS)
    f(Action(np.zeros(6), 0.2), np.array([0.5, 0, 0.3]))
    out = f(Action(np.zeros(6), float("nan")), np.array([0.5, 0, 0.3]))
    assert out.action.gripper == 0.2 and "non-finite gripper" in out.reasons


@pytest.mark.parametrize("kw", [dict(workspace_min=[0, 0, 0], workspace_max=[1, 1, 0]),
                                dict(workspace_min=[0, 0], workspace_max=[1, 1]),
                                dict(max_translation_m=-0.1), dict(gripper_min=0.8, gripper_max=0.2)])
def test_bad_limits_refused(kw):
    with pytest.raises(ValueError):
        SafetyLimits(**kw)


def test_huge_finite_command_is_scaled_not_zeroed():
    out = SafetyFilter(LIMITS)(Action(np.array([1e308, 1e308, 0, 0, 0, -1e308]), 0.5), np.array([0.2, -0.4, 0.3]))
    # Clipped into the box at the corner (0.8, 0.4): a (0.6, 0.8) m move, then scaled to a 2 cm step;
    # rotation scaled to 0.1 rad about -z.
    np.testing.assert_allclose(out.action.delta_ee, [0.012, 0.016, 0, 0, 0, -0.1])


def test_unknown_robot_position_holds_still():
    out = SafetyFilter(LIMITS)(Action(np.zeros(6), 0.5), np.array([0.5, 0.0, np.inf]))
    np.testing.assert_array_equal(out.action.delta_ee, np.zeros(6))
    assert "non-finite" in out.reasons
