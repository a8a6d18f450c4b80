"""The simulated rig: a MuJoCo scene, synthesized contact audio, the three tasks and a scripted operator.

It implements the collector's device interfaces (htouch.collector.devices), so the same recording loop and
writer record it as a real rig.

MuJoCo picks its offscreen OpenGL backend from MUJOCO_GL when it is first imported, so this package sets
it before any of its modules import mujoco: EGL when libEGL is installed, else OSMesa (both render on the
CPU with Mesa here). A value the user set is kept.
"""

from __future__ import annotations

import ctypes.util
import os


def _default_gl_backend() -> str | None:
    if ctypes.util.find_library("EGL"):
        return "egl"
    if ctypes.util.find_library("OSMesa"):
        return "osmesa"
    return None


if not os.environ.get("MUJOCO_GL"):
    _backend = _default_gl_backend()
    if _backend:
        os.environ["MUJOCO_GL"] = _backend
