"""The MuJoCo scene of the simulated rig: table, hand, camera and lights, its physics step and its contacts.

The robot is a floating two-finger hand without an arm, pushed by a Cartesian impedance controller
(the rig's `translational_stiffness` / `rotational_stiffness`, critically damped, gravity compensated)
toward a target pose that each action moves. Why not a Franka arm with inverse kinematics: the recorded
quantities (end-effector pose, delta-EE actions, gripper opening) and the compliant behaviour in contact
are the same as with the real robot's Cartesian impedance controller, while a seven-link arm would add
IK failure modes, joint-limit handling and a third of the physics and rendering time, none of which the
dataset or the policies see. The world frame is the robot base frame: x away from the robot, z up, the
table top at z = 0, and every task's workspace inside the default SafetyLimits box.

Contacts are what the contact microphones hear. A contact microphone on the gripper picks up vibrations
that reach the gripper, so a contact is heard when it touches the hand, a finger or the held tool
(directly), or when it touches a body that the gripper holds at that moment (transmitted through it,
weaker). Each physics step reports every heard contact with its normal force, slip speed, the impulse
of a new impact (reduced mass times approach speed) and the material of the touched object.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from htouch.collector.safety import clip_norm

TIMESTEP_S = 0.002  # physics step (500 Hz); 64 audio samples at 32 kHz
HOME_ROT = Rotation.from_euler("x", 180, degrees=True)  # the gripper pointing down, as the Panda at home
FINGER_MAX = 0.04  # m per finger: 8 cm fully open, like the Panda hand
PAD_DEPTH = 0.0025  # the finger pads stand this far inward from the finger joint position
SOUNDS = ("metal", "plastic", "wood", "ceramic", "rubber", "fabric")  # materials the audio synthesis knows
TRANSMISSION = 0.5  # share of a held object's contact that reaches the gripper's microphones
ONSET_GAP_S = 0.010  # a geom pair apart for longer than this touches anew (an impact)
EVENT_GAP_S = 0.100  # a body apart from the gripper for longer than this makes a new contact event
EVENT_MIN_IMPULSE = 5e-4  # N s; softer onsets (a bean rolling against the spoon) are heard, not listed
MAX_FORCE_N = 100.0  # the impedance controller's force limit (keeps a stiff configuration stable)
MAX_TORQUE_NM = 4.0


# ------------------------------------------------------------------------------------------- looks


@dataclass(frozen=True)
class VisualStyle:
    """How a variation looks. Train and test differ in all of these; physics is the same."""

    name: str
    table_rgb: tuple[float, float, float]  # plain: a texture's perspective would tell the table's height
    wall_rgb: tuple[float, float, float]
    floor_rgb: tuple[float, float, float]
    light_dir: tuple[float, float, float]  # the key light's direction
    light_rgb: tuple[float, float, float]
    ambient: float
    palette: dict[str, tuple[float, float, float]]  # colours by role: "object", "fixture", "tool", "accent"
    distractors: int  # extra objects on the table, away from the task
    camera_shift_m: tuple[float, float, float]  # from the nominal camera position
    camera_turn_deg: tuple[float, float]  # yaw, pitch from the nominal view


VARIATIONS: dict[str, VisualStyle] = {
    "train": VisualStyle(
        name="train", table_rgb=(0.62, 0.46, 0.30),
        wall_rgb=(0.80, 0.80, 0.78), floor_rgb=(0.35, 0.35, 0.38), light_dir=(-0.3, 0.4, -1.0),
        light_rgb=(0.75, 0.75, 0.72), ambient=0.25,
        palette={"object": (0.85, 0.55, 0.20), "fixture": (0.60, 0.62, 0.66), "tool": (0.75, 0.75, 0.78),
                 "accent": (0.80, 0.15, 0.15)},
        distractors=0, camera_shift_m=(0.0, 0.0, 0.0), camera_turn_deg=(0.0, 0.0)),
    "test": VisualStyle(
        name="test", table_rgb=(0.30, 0.36, 0.45),
        wall_rgb=(0.45, 0.55, 0.40), floor_rgb=(0.55, 0.45, 0.35), light_dir=(0.5, -0.3, -1.0),
        light_rgb=(0.95, 0.85, 0.65), ambient=0.15,
        palette={"object": (0.30, 0.70, 0.35), "fixture": (0.25, 0.25, 0.30), "tool": (0.85, 0.70, 0.30),
                 "accent": (0.20, 0.30, 0.85)},
        distractors=3, camera_shift_m=(0.02, -0.03, 0.015), camera_turn_deg=(2.0, -1.5)),
}

CAMERA_EYE = np.array([0.98, -0.40, 0.62])  # nominal third-person camera, robot base frame
CAMERA_TARGET = np.array([0.46, 0.0, 0.12])
CAMERA_FOVY = 45.0  # degrees, close to the D435 colour camera's vertical field of view
CAMERA_JITTER_M = 0.005  # per episode, within a variation
CAMERA_JITTER_DEG = 0.5


def look_at(eye: np.ndarray, target: np.ndarray, yaw_deg: float = 0.0, pitch_deg: float = 0.0) -> np.ndarray:
    """MuJoCo camera quaternion (w x y z) looking from `eye` at `target`, then turned by yaw/pitch."""
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rot = Rotation.from_matrix(np.column_stack([right, up, -forward]))  # camera looks along its -z
    rot = Rotation.from_euler("z", yaw_deg, degrees=True) * rot * Rotation.from_euler("x", pitch_deg, degrees=True)
    x, y, z, w = rot.as_quat()
    return np.array([w, x, y, z])


def fmt(v) -> str:
    """Numbers as MJCF attribute text ("0.1 0.2 0.3")."""
    return " ".join(f"{float(x):.6g}" for x in np.atleast_1d(v))


def wxyz(rot: Rotation) -> np.ndarray:
    """A rotation as MuJoCo's quaternion order (w, x, y, z); scipy gives (x, y, z, w)."""
    x, y, z, w = rot.as_quat()
    return np.array([w, x, y, z])


class MJCF:
    """Writes MJCF geoms and remembers what each one sounds like (the material the audio needs)."""

    def __init__(self, style: VisualStyle):
        self.style = style
        self.sounds: dict[str, str] = {}

    def rgba(self, role: str, alpha: float = 1.0) -> str:
        return fmt((*self.style.palette[role], alpha))

    def geom(self, name: str, kind: str, size, pos=(0, 0, 0), rot: Rotation | None = None, *, sound: str,
             role: str | None = None, rgba: str | None = None, **attrs) -> str:
        if sound not in SOUNDS:
            raise ValueError(f"geom {name}: unknown sound material {sound!r}")
        self.sounds[name] = sound
        parts = [f'name="{name}" type="{kind}" size="{fmt(size)}" pos="{fmt(pos)}"']
        if rot is not None:
            parts.append(f'quat="{fmt(wxyz(rot))}"')
        if role is not None:
            parts.append(f'rgba="{self.rgba(role)}"')
        elif rgba is not None:
            parts.append(f'rgba="{rgba}"')
        parts += [f'{k}="{v}"' for k, v in attrs.items()]
        return f"<geom {' '.join(parts)}/>"

    def tool_geom(self, name: str, kind: str, size, pos, rot: Rotation | None = None, **kw) -> str:
        """A geom of the held tool, given in the home frame (world axes at the TCP with the hand at
        home); stored in the hand's own frame."""
        local_rot = HOME_ROT.inv() * (rot or Rotation.identity())
        return self.geom(name, kind, size, HOME_ROT.inv().apply(pos), local_rot, **kw)


def hand_xml(mjcf: MJCF, tool_geoms: str, finger_min: float) -> str:
    """The floating hand: palm, flange and two fingers sliding along the hand's y axis; its origin is the
    TCP, 1 cm above the fingertips, its z axis pointing from the palm toward the fingertips. Four contact
    microphone sites: one on each finger, two on the palm."""
    g = mjcf.geom
    dark, grey = "0.18 0.18 0.2 1", "0.55 0.56 0.6 1"
    finger = lambda side, sign: f"""
      <body name="finger_{side}" pos="0 0 -0.0175" gravcomp="1">
        <joint name="finger_{side}" type="slide" axis="0 {sign} 0" range="{finger_min:.4f} {FINGER_MAX}" damping="1"/>
        <inertial pos="0 {sign * 0.009} 0" mass="0.04" diaginertia="1e-5 1e-5 4e-6"/>
        {g(f"finger_{side}", "box", (0.011, 0.008, 0.0275), (0, sign * 0.008, 0), sound="metal", rgba=grey)}
        {g(f"pad_{side}", "box", (0.010, 0.0015, 0.012), (0, sign * -0.001, 0.014), sound="rubber",
           rgba=dark, friction="1.2 0.01 0.001", priority="1")}
        <site name="mic{0 if side == 'l' else 1}" pos="0 {sign * 0.017} -0.015" size="0.004" rgba="0.1 0.1 0.1 1"/>
      </body>"""
    return f"""
    <body name="hand" pos="0.45 0 0.3" quat="{fmt(wxyz(HOME_ROT))}" gravcomp="1">
      <freejoint name="hand"/>
      <inertial pos="0 0 -0.075" mass="0.8" diaginertia="0.0035 0.0012 0.003"/>
      {g("palm", "box", (0.025, 0.1, 0.022), (0, 0, -0.067), sound="metal", rgba="0.92 0.92 0.94 1")}
      {g("flange", "cylinder", (0.04, 0.02), (0, 0, -0.108), sound="metal", rgba=dark)}
      {g("wrist", "cylinder", (0.035, 0.03), (0, 0, -0.155), sound="metal", rgba="0.92 0.92 0.94 1",
         contype="0", conaffinity="0")}
      <site name="tcp" pos="0 0 0" size="0.004" rgba="1 0 0 0"/>
      <site name="mic2" pos="0.026 0.03 -0.06" size="0.004" rgba="0.1 0.1 0.1 1"/>
      <site name="mic3" pos="-0.026 -0.03 -0.06" size="0.004" rgba="0.1 0.1 0.1 1"/>
      {tool_geoms}
      {finger("l", 1)}
      {finger("r", -1)}
    </body>"""


def table_xml(mjcf: MJCF, objects_on_table: str) -> str:
    """The table body (top and legs) with the task's objects fixed on it, as MJCF."""
    g = mjcf.geom
    leg = lambda i, x, y: g(f"table_leg{i}", "box", (0.03, 0.03, 0.37), (x, y, -0.41), sound="wood",
                            material="table_mat", contype="0", conaffinity="0")
    return f"""
    <body name="table" pos="0 0 0">
      {g("table_top", "box", (1.5, 1.5, 0.02), (0.45, 0, -0.02), sound="wood", material="table_mat")}
      {leg(0, -0.05, -0.6)}{leg(1, 0.95, -0.6)}{leg(2, -0.05, 0.6)}{leg(3, 0.95, 0.6)}
      {objects_on_table}
    </body>"""


DISTRACTOR_ZONES = ((0.45, 0.65, 0.26, 0.38), (0.30, 0.45, -0.38, -0.26), (0.62, 0.75, -0.36, -0.26))  # x, y ranges


def distractors_xml(mjcf: MJCF, n: int) -> str:
    """Static objects that only change the view: a mug, a box, a ball. Placed per episode, in zones
    that the tasks never reach."""
    shapes = [("cylinder", (0.035, 0.05), "ceramic", "0.9 0.9 0.3 1"),
              ("box", (0.04, 0.03, 0.03), "wood", "0.3 0.2 0.6 1"),
              ("sphere", (0.035,), "rubber", "0.9 0.3 0.6 1")]
    out = []
    for i in range(n):
        kind, size, sound, rgba = shapes[i % len(shapes)]
        z = size[-1] if kind != "sphere" else size[0]
        out.append(f'<body name="distractor{i}" pos="0.9 0.4 0">'
                   f'{mjcf.geom(f"distractor{i}", kind, size, (0, 0, z), sound=sound, rgba=rgba)}</body>')
    return "".join(out)


def scene_xml(mjcf: MJCF, *, task_name: str, objects_on_table: str, free_bodies: str, tool_geoms: str,
              finger_min: float,
              width: int, height: int, shadows: bool, grip_force: float = 20.0, extra_assets: str = "",
              excludes: str = "", camera: tuple[np.ndarray, np.ndarray] = (CAMERA_EYE, CAMERA_TARGET)) -> str:
    """The whole MJCF of a task's scene: lights, camera (eye, target: the task's nominal view), floor, table
    with its objects, free bodies, and the hand holding its tool."""
    s = mjcf.style
    eye, target = camera
    shadow = 1024 if shadows else 0
    return f"""
<mujoco model="htouch-{task_name}-{s.name}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP_S}" integrator="implicitfast" cone="elliptic" impratio="2"/>
  <size memory="8M"/>
  <visual>
    <global offwidth="{width}" offheight="{height}"/>
    <quality shadowsize="{shadow}" offsamples="0"/>
    <headlight ambient="{fmt([s.ambient] * 3)}" diffuse="0.35 0.35 0.35" specular="0.05 0.05 0.05"/>
    <map znear="0.02" zfar="10"/>
  </visual>
  <asset>
    <texture name="table_tex" type="2d" builtin="flat" rgb1="{fmt(s.table_rgb)}" width="16" height="16"/>
    <material name="table_mat" texture="table_tex" texrepeat="6 6" texuniform="true"/>
    <texture name="floor_tex" type="2d" builtin="flat" rgb1="{fmt(s.floor_rgb)}" width="64" height="64"
             mark="random" random="0.2" markrgb="{fmt(np.array(s.floor_rgb) * 0.7)}"/>
    <material name="floor_mat" texture="floor_tex" texrepeat="8 8"/>
    {extra_assets}
  </asset>
  <default>
    <geom solref="0.005 1" solimp="0.95 0.99 0.001" friction="0.6 0.005 0.0001"/>
  </default>
  <worldbody>
    <light name="key" directional="true" pos="0 0 2" dir="{fmt(s.light_dir)}" diffuse="{fmt(s.light_rgb)}"
           specular="0.1 0.1 0.1" castshadow="{str(shadows).lower()}"/>
    <geom name="floor" type="box" size="3 3 0.01" pos="0 0 -0.79" material="floor_mat"
          contype="0" conaffinity="0"/>
    <geom name="wall" type="box" size="0.02 3 1.5" pos="-0.6 0 0.5" rgba="{fmt((*s.wall_rgb, 1))}"
          contype="0" conaffinity="0"/>
    <geom name="wall_side" type="box" size="3 0.02 1.5" pos="0.5 1.4 0.5" rgba="{fmt((*s.wall_rgb, 1))}"
          contype="0" conaffinity="0"/>
    <camera name="scene" pos="{fmt(eye)}" quat="{fmt(look_at(eye, target))}"
            fovy="{CAMERA_FOVY}"/>
    {table_xml(mjcf, objects_on_table + distractors_xml(mjcf, s.distractors))}
    {free_bodies}
    {hand_xml(mjcf, tool_geoms, finger_min)}
  </worldbody>
  <contact>
    <exclude body1="finger_l" body2="finger_r"/>
    {excludes}
  </contact>
  <actuator>
    <position name="finger_l" joint="finger_l" kp="2000" dampratio="1" ctrlrange="0 {FINGER_MAX}"
              forcerange="-{grip_force:g} {grip_force:g}"/>
    <position name="finger_r" joint="finger_r" kp="2000" dampratio="1" ctrlrange="0 {FINGER_MAX}"
              forcerange="-{grip_force:g} {grip_force:g}"/>
  </actuator>
</mujoco>"""


def randomize_looks(world: World, style: VisualStyle, rng: np.random.Generator,
                    camera: tuple[np.ndarray, np.ndarray] = (CAMERA_EYE, CAMERA_TARGET)) -> None:
    """Per-episode changes within a variation: the camera shifts from its nominal view (eye, target) by a few
    millimetres and turns by a fraction of a degree, the light's strength varies, and distractors move within
    their zones."""
    m = world.model
    cam = world.camera_id
    nominal_eye, target = camera
    eye = nominal_eye + np.asarray(style.camera_shift_m) + rng.uniform(-CAMERA_JITTER_M, CAMERA_JITTER_M, 3)
    yaw, pitch = np.asarray(style.camera_turn_deg) + rng.uniform(-CAMERA_JITTER_DEG, CAMERA_JITTER_DEG, 2)
    m.cam_pos[cam] = eye
    m.cam_quat[cam] = look_at(eye, target, yaw, pitch)
    world.light_diffuse = np.asarray(style.light_rgb) * rng.uniform(0.9, 1.1)
    m.light_diffuse[world.key_light] = world.light_diffuse
    for i in range(style.distractors):
        x0, x1, y0, y1 = DISTRACTOR_ZONES[i % len(DISTRACTOR_ZONES)]
        body = world.body_id(f"distractor{i}")
        m.body_pos[body, :2] = (rng.uniform(x0, x1), rng.uniform(y0, y1))
        m.body_quat[body] = wxyz(Rotation.from_euler("z", rng.uniform(0, 360), degrees=True))


# ------------------------------------------------------------------------------------------- rendering


def gl_context_class(backend: str | None = None):
    """The offscreen OpenGL context class for MUJOCO_GL (egl, osmesa or glfw). Chosen here rather than by
    mujoco.Renderer, which fixes its back end when mujoco is first imported, whoever imports it first."""
    backend = (backend or os.environ.get("MUJOCO_GL") or "egl").strip().lower()
    if backend == "egl":
        from mujoco.egl import GLContext
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    elif backend == "glfw":
        from mujoco.glfw import GLContext
    else:
        raise ValueError(f"MUJOCO_GL={backend!r} is not an offscreen back end htouch knows (egl, osmesa, glfw)")
    return GLContext


class OffscreenCamera:
    """Renders one fixed camera of a model into RGB arrays, in the thread that created it."""

    def __init__(self, model: mujoco.MjModel, width: int, height: int, camera_id: int,
                 backend: str | None = None):
        self._model = model
        self._gl = gl_context_class(backend)(width, height)
        self._gl.make_current()
        self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100.value)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self._context)
        self._scene = mujoco.MjvScene(model, maxgeom=model.ngeom + 100)
        self._option = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = camera_id
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._rgb = np.empty((height, width, 3), np.uint8)

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """A new (height, width, 3) uint8 image of the scene in `data`."""
        self._gl.make_current()
        mujoco.mjv_updateScene(self._model, data, self._option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL.value, self._scene)
        mujoco.mjr_render(self._rect, self._scene, self._context)
        mujoco.mjr_readPixels(self._rgb, None, self._rect, self._context)
        return self._rgb[::-1].copy()  # OpenGL rows run bottom-up

    def close(self) -> None:
        if self._context is not None:
            with self._gl.as_current():
                self._context.free()
            self._gl.free()
        self._context = None


# ------------------------------------------------------------------------------------------- physics


@dataclass
class Heard:
    """One contact the microphones hear during one physics step (all points of one geom pair)."""

    position: np.ndarray  # (3,) world, m (force-weighted mean of the pair's contact points)
    normal_force: float  # N, already scaled by the transmission factor when heard through a held body
    slip_speed: float  # m/s
    impulse: float  # N s of a new impact (0 while the contact continues)
    material: str
    touched: str  # see ContactOnset.touched
    via: str = ""  # the held body it is heard through, "" when touching the gripper itself


@dataclass
class ContactOnset:
    step: int  # the contact exists from the state at this step (World.step_index before the step that found it)
    touched: str  # the touched geom if it is fixed to the world (a table, a wall, a stop), else its body
    via: str  # the held body it was heard through, "" when it touched the gripper itself
    material: str
    impulse: float  # N s


@dataclass
class HandTarget:
    position: np.ndarray
    rotation: np.ndarray  # MuJoCo quaternion w x y z
    finger: float  # per-finger target opening, m


class World:
    """One compiled model and its data, the hand's impedance controller, and contact bookkeeping."""

    def __init__(self, xml: str, sounds: dict[str, str], stiffness: tuple[float, float] = (600.0, 30.0),
                 gripper_speed: float = 0.1):
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.xml = xml
        self.hand = self.body_id("hand")
        self.fingers = (self.body_id("finger_l"), self.body_id("finger_r"))
        self.gripper_bodies = frozenset((self.hand, *self.fingers))
        self.finger_qpos = [m.jnt_qposadr[self.joint_id(f"finger_{s}")] for s in "lr"]
        self.finger_range = m.jnt_range[self.joint_id("finger_l")].copy()
        self.hand_qpos = m.jnt_qposadr[self.joint_id("hand")]
        self.hand_qvel = m.jnt_dofadr[self.joint_id("hand")]
        self.mic_sites = [self.site_id(f"mic{i}") for i in range(4)]
        self.camera_id = self._id(mujoco.mjtObj.mjOBJ_CAMERA, "scene")
        self.key_light = self._id(mujoco.mjtObj.mjOBJ_LIGHT, "key")
        self.light_diffuse = m.light_diffuse[self.key_light].copy()
        self.geom_sound = [sounds.get(mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_GEOM, i) or "", "wood")
                           for i in range(m.ngeom)]
        self.geom_names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_GEOM, i) or f"geom{i}" for i in range(m.ngeom)]
        self.body_names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, i) or "world" for i in range(m.nbody)]
        # What a contact is called: the geom on fixed bodies (the floor of a container, not "the container"),
        # the body on movable ones (a pancake is one thing, whichever of its geoms is hit).
        self.touch_names = [self.geom_names[g] if m.body_weldid[m.geom_bodyid[g]] == 0
                            else self.body_names[m.geom_bodyid[g]] for g in range(m.ngeom)]
        self.gripper_mass = float(m.body_subtreemass[self.hand])
        # Mass behind each body in an impact: its own subtree; bodies welded to the world are immovable.
        self.impact_mass = np.where(m.body_weldid == 0, np.inf, m.body_subtreemass[m.body_weldid])
        for b in self.gripper_bodies:
            self.impact_mass[b] = self.gripper_mass
        self.k_lin, self.k_rot = stiffness
        inertia = float(m.body_inertia[self.hand].max()) + m.body_mass[self.hand] * float(
            np.sum(m.body_ipos[self.hand] ** 2))
        self.d_lin = 2.0 * math.sqrt(self.k_lin * self.gripper_mass)
        self.d_rot = 2.0 * math.sqrt(self.k_rot * inertia)
        self.target = HandTarget(np.zeros(3), np.array([1.0, 0, 0, 0]), FINGER_MAX)
        self.finger_step = gripper_speed / 2 * m.opt.timestep  # per finger per step: the gripper's speed
        self.step_index = 0  # physics steps since the world was built (never reset: it is the clock)
        self._never = -(10 ** 12)
        self._last_touch = np.full(m.ngeom * m.ngeom, self._never, np.int64)  # geom pair -> last step touching
        self._is_grip = np.zeros(m.nbody, bool)
        self._is_grip[list(self.gripper_bodies)] = True
        self._movable = m.body_weldid != 0
        self._last_event: dict[tuple[str, str], int] = {}  # (touched, via) -> last step heard in contact
        self.onsets: list[ContactOnset] = []
        self.last_heard: dict[str, int] = {}  # touched name -> last step the microphones heard it
        self.timing = {"physics": 0, "contacts": 0}  # CPU ns of this thread, for the benchmark
        self._quat = np.zeros(4)
        self._err = np.zeros(4)
        self._rotvec = np.zeros(3)

    # -------------------------------------------------------------- names

    def body_id(self, name: str) -> int:
        return self._id(mujoco.mjtObj.mjOBJ_BODY, name)

    def joint_id(self, name: str) -> int:
        return self._id(mujoco.mjtObj.mjOBJ_JOINT, name)

    def geom_id(self, name: str) -> int:
        return self._id(mujoco.mjtObj.mjOBJ_GEOM, name)

    def site_id(self, name: str) -> int:
        return self._id(mujoco.mjtObj.mjOBJ_SITE, name)

    def _id(self, kind, name: str) -> int:
        i = mujoco.mj_name2id(self.model, kind, name)
        if i < 0:
            raise KeyError(f"the scene has no {kind.name[6:].lower()} named {name!r}")
        return i

    # -------------------------------------------------------------- hand

    @property
    def tcp_position(self) -> np.ndarray:
        return self.data.xpos[self.hand].copy()

    @property
    def tcp_rotation(self) -> Rotation:
        w, x, y, z = self.data.xquat[self.hand]
        return Rotation.from_quat([x, y, z, w])

    @property
    def finger_opening(self) -> np.ndarray:
        return self.data.qpos[self.finger_qpos].copy()

    def tcp_speed(self) -> tuple[float, float]:
        v = self.data.qvel[self.hand_qvel: self.hand_qvel + 6]
        return float(np.linalg.norm(v[:3])), float(np.linalg.norm(v[3:]))

    def place_hand(self, position: np.ndarray, rotation: Rotation, opening: float) -> None:
        """Put the hand at a pose at rest (scene resets only) and make it the controller's target."""
        q = self.data.qpos
        q[self.hand_qpos: self.hand_qpos + 3] = position
        q[self.hand_qpos + 3: self.hand_qpos + 7] = wxyz(rotation)
        finger = float(np.clip(opening * FINGER_MAX, *self.finger_range))
        q[self.finger_qpos] = finger
        self.data.qvel[self.hand_qvel: self.hand_qvel + 6] = 0
        self.set_target(position, rotation, opening)
        self.data.ctrl[:] = self.target.finger

    def set_target(self, position: np.ndarray, rotation: Rotation, opening: float) -> None:
        self.target = HandTarget(np.asarray(position, float).copy(), wxyz(rotation),
                                 float(np.clip(opening * FINGER_MAX, *self.finger_range)))

    def _control(self) -> None:
        """Cartesian impedance at the TCP: F = K (x* - x) - D v, torque likewise; applied at the hand's
        centre of mass with the moment of moving it from the TCP."""
        d, h = self.data, self.hand
        pos = d.xpos[h]
        v = d.qvel[self.hand_qvel: self.hand_qvel + 6]
        force = self.k_lin * (self.target.position - pos) - self.d_lin * v[:3]
        mujoco.mju_negQuat(self._quat, d.xquat[h])
        mujoco.mju_mulQuat(self._err, self.target.rotation, self._quat)
        mujoco.mju_quat2Vel(self._rotvec, self._err, 1.0)  # rotation vector of the error, world frame
        omega = d.xmat[h].reshape(3, 3) @ v[3:]  # free joint angular velocity is in the body frame
        torque = self.k_rot * self._rotvec - self.d_rot * omega
        force, _ = clip_norm(force, MAX_FORCE_N)
        torque, _ = clip_norm(torque, MAX_TORQUE_NM)
        d.xfrc_applied[h, :3] = force
        arm = pos - d.xipos[h]
        d.xfrc_applied[h, 3:] = torque + (arm[1] * force[2] - arm[2] * force[1], arm[2] * force[0] - arm[0] * force[2],
                                          arm[0] * force[1] - arm[1] * force[0])
        ctrl = d.ctrl[0]  # the fingers move toward their target at the gripper's speed
        d.ctrl[:] = ctrl + np.clip(self.target.finger - ctrl, -self.finger_step, self.finger_step)

    # -------------------------------------------------------------- stepping

    def step(self) -> list[Heard]:
        """One physics step; returns the contacts heard during it."""
        t0 = time.thread_time_ns()
        self._control()
        mujoco.mj_step(self.model, self.data)
        self.step_index += 1
        t1 = time.thread_time_ns()
        heard = self._heard_contacts()
        self.timing["physics"] += t1 - t0
        self.timing["contacts"] += time.thread_time_ns() - t1
        return heard

    def settle(self, steps: int) -> None:
        """Let the scene come to rest after a reset (no contacts are reported)."""
        for _ in range(steps):
            self._control()
            mujoco.mj_step(self.model, self.data)
        self._last_touch.fill(self._never)
        self._last_event.clear()
        self.last_heard.clear()
        self.onsets.clear()
        n = self.data.ncon
        c = self.data.contact
        active = c.efc_address[:n] >= 0
        self._last_touch[c.geom1[:n][active] * self.model.ngeom + c.geom2[:n][active]] = self.step_index

    def _heard_contacts(self) -> list[Heard]:
        m, d = self.model, self.data
        n = d.ncon
        if n == 0:
            return []
        c = d.contact
        addr = c.efc_address[:n]
        keep = addr >= 0
        g1, g2 = c.geom1[:n][keep], c.geom2[:n][keep]
        if not len(g1):
            return []
        step = self.step_index
        # Every touching geom pair's last step in contact: a pair apart for long enough touches anew.
        keys = g1 * m.ngeom + g2
        b1, b2 = m.geom_bodyid[g1], m.geom_bodyid[g2]
        grip1, grip2 = self._is_grip[b1], self._is_grip[b2]
        if not (grip1.any() or grip2.any()):  # nothing touches the gripper: nothing is heard
            self._last_touch[keys] = step
            return []
        fresh = step - self._last_touch[keys] > int(round(ONSET_GAP_S / TIMESTEP_S))
        self._last_touch[keys] = step
        direct = grip1 ^ grip2
        # Movable bodies touching the gripper now (held or pushed): their own contacts reach the microphones.
        held = np.zeros(m.nbody, bool)
        held[b2[grip1 & ~grip2 & self._movable[b2]]] = True
        held[b1[grip2 & ~grip1 & self._movable[b1]]] = True
        through = ~(grip1 | grip2) & (held[b1] | held[b2])
        idx = np.flatnonzero(direct | through)
        if not len(idx):
            return []
        rows = np.flatnonzero(keep)[idx]
        pos = c.pos[rows]
        normal = c.frame[rows][:, :3]
        force = np.maximum(d.efc_force[addr[rows]], 0.0)  # elliptic cones: the first row is the normal force
        vel = self._point_velocity(b1[idx], pos) - self._point_velocity(b2[idx], pos)
        vn = np.einsum("ij,ij->i", vel, normal)  # > 0: geom 1 moves toward geom 2 along the normal
        slip = np.linalg.norm(vel - vn[:, None] * normal, axis=1)
        pair_keys, pair_of = np.unique(keys[idx], return_inverse=True)
        heard: list[Heard] = []
        event_gap = int(round(EVENT_GAP_S / TIMESTEP_S))
        for p in range(len(pair_keys)):
            sel = pair_of == p
            i0 = idx[np.argmax(sel)]  # one contact of the pair, in the kept arrays
            ga, gb, ba, bb = int(g1[i0]), int(g2[i0]), int(b1[i0]), int(b2[i0])
            if direct[i0]:
                other_geom, other, via, gain = (gb, bb, -1, 1.0) if grip1[i0] else (ga, ba, -1, 1.0)
            else:
                via, other, other_geom = (ba, bb, gb) if held[ba] else (bb, ba, ga)
                gain = TRANSMISSION
            f = force[sel]
            total = float(f.sum())
            where = (pos[sel] * f[:, None]).sum(0) / total if total > 0 else pos[sel].mean(0)
            impulse = 0.0
            if fresh[i0]:
                ma, mb = self.impact_mass[ba], self.impact_mass[bb]
                if via >= 0:  # a held body is clamped to the gripper: its mass moves with the gripper's
                    ma = ma + self.gripper_mass if ba == via else ma
                    mb = mb + self.gripper_mass if bb == via else mb
                reduced = 1.0 / (1.0 / ma + 1.0 / mb) if np.isfinite(ma) or np.isfinite(mb) else self.gripper_mass
                impulse = gain * reduced * max(float(vn[sel].max()), 0.0)
            name, via_name = self.touch_names[other_geom], (self.body_names[via] if via >= 0 else "")
            material = self.geom_sound[other_geom]
            heard.append(Heard(where, gain * total, float(slip[sel].max()), impulse, material, name, via_name))
            self.last_heard[name] = step
            key = (name, via_name)
            last_event = self._last_event.get(key)
            self._last_event[key] = step
            if (last_event is None or step - last_event > event_gap) and impulse >= EVENT_MIN_IMPULSE:
                self.onsets.append(ContactOnset(step - 1, name, via_name, material, impulse))
        return heard

    def _point_velocity(self, bodies: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Linear velocity of points fixed to `bodies` (cvel is spatial velocity at the root's centre of mass)."""
        d, m = self.data, self.model
        cvel = d.cvel[bodies]
        w, r = cvel[:, :3], points - d.subtree_com[m.body_rootid[bodies]]
        cross = np.stack([w[:, 1] * r[:, 2] - w[:, 2] * r[:, 1], w[:, 2] * r[:, 0] - w[:, 0] * r[:, 2],
                          w[:, 0] * r[:, 1] - w[:, 1] * r[:, 0]], axis=1)
        return cvel[:, 3:] + cross

    def mic_positions(self) -> np.ndarray:
        return self.data.site_xpos[self.mic_sites].copy()

    def heard_within(self, touched: str, steps: int) -> bool:
        """Whether the microphones heard a contact with `touched` (a ContactOnset.touched name) in the last
        `steps` physics steps."""
        last = self.last_heard.get(touched)
        return last is not None and self.step_index - last < steps

    def touching(self, body_a: int, body_b: int) -> bool:
        """Whether two bodies are in contact now."""
        m, d = self.model, self.data
        n = d.ncon
        b1 = m.geom_bodyid[d.contact.geom1[:n]]
        b2 = m.geom_bodyid[d.contact.geom2[:n]]
        return bool(np.any(((b1 == body_a) & (b2 == body_b)) | ((b1 == body_b) & (b2 == body_a))))

    def contact_force(self, body_a: int, body_b: int) -> float:
        """Total normal force between two bodies now, N."""
        m, d = self.model, self.data
        n = d.ncon
        c = d.contact
        b1 = m.geom_bodyid[c.geom1[:n]]
        b2 = m.geom_bodyid[c.geom2[:n]]
        sel = (((b1 == body_a) & (b2 == body_b)) | ((b1 == body_b) & (b2 == body_a))) & (c.efc_address[:n] >= 0)
        return float(np.maximum(d.efc_force[c.efc_address[:n][sel]], 0).sum())

    def body_contact_force(self, body: int) -> float:
        """Total normal force on one body from everything touching it now, N."""
        m, d = self.model, self.data
        n = d.ncon
        c = d.contact
        b1 = m.geom_bodyid[c.geom1[:n]]
        b2 = m.geom_bodyid[c.geom2[:n]]
        sel = ((b1 == body) ^ (b2 == body)) & (c.efc_address[:n] >= 0)
        return float(np.maximum(d.efc_force[c.efc_address[:n][sel]], 0).sum())

    def gripper_contact_force(self) -> float:
        """Total normal force on the hand, fingers and tool from everything else, N."""
        m, d = self.model, self.data
        n = d.ncon
        c = d.contact
        b1 = m.geom_bodyid[c.geom1[:n]]
        b2 = m.geom_bodyid[c.geom2[:n]]
        g1, g2 = self._is_grip[b1], self._is_grip[b2]
        sel = (g1 ^ g2) & (c.efc_address[:n] >= 0)
        return float(np.maximum(d.efc_force[c.efc_address[:n][sel]], 0).sum())

