"""The three simulated tasks, analogues of the paper's (section IV-B): zip, flip and scoop.

Each task writes its objects (and the tool the hand holds) into the scene, draws a new layout per
episode from a random generator, and judges the state: `success()` is the task's 0-1 outcome and
`progress()` a reward in [0, 1]. In every task the decisive moment is a contact whose place the camera
cannot resolve well, because heights and positions are drawn anew per episode by a couple of
centimetres: the end of the zipper track, the height of the table under the spatula, the depth of the
container's floor under the spoon. The microphones hear those contacts; the camera sees them poorly.

Over-pushing costs: each task has a fragile part (`Task.FRAGILE`: the zipper's end stop, the pan under
the spatula, the container's floor) that breaks when the contact force on it, averaged over a control
period, exceeds its limit. A broken part ends the hope of success (`damage`, recorded as a `damage`
event). A blind push to where the contact usually is breaks it in some episodes and falls short in others;
stopping when the contact is heard does neither. This is what makes hearing worth something here
(docs/sim.md, `htouch.sim.hearing`).

Variations ("train", "test") change only the looks (htouch.sim.scene.VARIATIONS): colours, textures,
lighting, distractor objects and the camera position. Physics and layouts are drawn the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from htouch.sim.scene import CAMERA_EYE, CAMERA_TARGET, HOME_ROT, MJCF, PAD_DEPTH, VARIATIONS, World, scene_xml, wxyz


@dataclass
class SceneParts:
    """What a task adds to the scene."""

    objects: str  # MJCF bodies fixed to the table (children of the table body, they move with it)
    free: str = ""  # MJCF bodies with a free joint (children of the world)
    tool: str = ""  # geoms of a tool held by the hand, in the hand frame
    finger_min: float = 0.0  # the fingers stop here (closed on the tool's handle)
    assets: str = ""
    excludes: str = ""


class Task:
    """A task bound to one world after the scene is compiled (`bind`)."""

    name = ""
    description = ""
    variations = tuple(VARIATIONS)
    home_position = np.array([0.42, 0.0, 0.25])
    home_rotation = HOME_ROT
    home_opening = 1.0  # gripper opening at home, 0..1
    camera = (CAMERA_EYE, CAMERA_TARGET)  # the fixed camera's nominal eye and target, world m
    max_seconds = 40.0  # the scripted operator gives up after this long
    FRAGILE: tuple[str, float, str] = ("", 0.0, "")  # body, force limit (N), what breaks

    def __init__(self) -> None:
        self.world: World | None = None
        self.layout: dict[str, float] = {}
        self.damage: str | None = None  # what broke this episode, None while intact

    def parts(self, mjcf: MJCF) -> SceneParts:
        raise NotImplementedError

    def bind(self, world: World) -> None:
        self.world = world
        self._fragile = world.body_id(self.FRAGILE[0])

    def randomize(self, rng: np.random.Generator) -> dict[str, float]:
        """Draw and apply this episode's layout (model fields and qpos) before the scene settles."""
        raise NotImplementedError

    def new_episode(self, rng: np.random.Generator) -> dict[str, float]:
        """Draw the next episode's layout; the fragile part is whole again."""
        self.damage = None
        return self.randomize(rng)

    def fragile_force(self) -> float:
        """Contact force on the fragile part now, N."""
        return self.w.body_contact_force(self._fragile)

    def check_damage(self, mean_force_n: float) -> str | None:
        """Break the fragile part if `mean_force_n` (the force on it averaged over a control period) is over
        its limit. Returns what broke, once (None otherwise)."""
        _, limit, what = self.FRAGILE
        if self.damage is not None or mean_force_n <= limit:
            return None
        self.damage = f"{what}: {mean_force_n:.1f} N over the {limit:g} N limit"
        return self.damage

    def success(self) -> bool:
        return self.damage is None and self.achieved()

    def progress(self) -> float:
        """Reward in [0, 1]: the task's progress, 0 once something broke."""
        return 0.0 if self.damage is not None else self.advance()

    def achieved(self) -> bool:
        """The task's goal state holds (damage aside)."""
        raise NotImplementedError

    def advance(self) -> float:
        """How far toward the goal, in [0, 1] (damage aside)."""
        raise NotImplementedError

    # helpers for subclasses
    @property
    def w(self) -> World:
        if self.world is None:
            raise RuntimeError(f"task {self.name} is not bound to a world yet")
        return self.world

    def body_position(self, name: str) -> np.ndarray:
        return self.w.data.xpos[self.w.body_id(name)].copy()

    def body_rotation(self, name: str) -> Rotation:
        w, x, y, z = self.w.data.xquat[self.w.body_id(name)]
        return Rotation.from_quat([x, y, z, w])


# ------------------------------------------------------------------------------------------- zip


class ZipTask(Task):
    """Pull a zipper slider along its track to the end stop.

    A slider rides on a metal track: slide joints along the track and up, with a spring that presses it
    onto the track (it is captive, in contact all along) but lets it ride over a snag. The fingers pinch
    its tab from both sides of the track and pull it toward +y by friction, as a person pulls a zipper.
    A snag on the track makes it jump; the end stop stops it. Per episode: the track's position (+-2 cm), its
    height (3-7 cm) and its length (the end stop's place, +-2 cm), and the snag's place."""

    name = "zip"
    description = "pull a zipper slider along its track until it hits the end stop"
    home_position = np.array([0.45, -0.12, 0.22])
    home_rotation = Rotation.from_euler("z", 90, degrees=True) * HOME_ROT  # fingers close across the track
    TRACK_HALF = 0.165  # m, the metal track's half length (the end stop moves along it)
    START_STOP_Y = -0.14  # track frame, the start stop's centre
    STOP_HALF_Y = 0.006
    SLIDER_FRONT = 0.015  # from the slider's centre to its front (the base plus the rounded edge)
    TAB_Z = 0.026  # the tab's centre above the track's top
    TAB_HALF = (0.003, 0.010, 0.016)  # thin across the track: the fingers pinch its faces
    END_FACE_Y = (0.08, 0.15)  # track frame y of the end stop's inner face, drawn per episode
    FRAGILE = ("end_stop", 7.5, "the end stop tore off the zipper")

    def parts(self, mjcf: MJCF) -> SceneParts:
        g = mjcf.geom
        across = Rotation.from_euler("y", 90, degrees=True)  # a capsule's axis along x
        objects = f"""
      <body name="track" pos="0.52 0 0.05">
        {g("stand", "box", (0.02, self.TRACK_HALF, 0.05), (0, 0, -0.058), sound="wood", role="accent")}
        {g("track", "box", (0.015, self.TRACK_HALF, 0.004), (0, 0, -0.004), sound="metal", role="fixture",
           friction="0.5 0.005 0.0001")}
        {g("start_stop", "box", (0.02, self.STOP_HALF_Y, 0.012), (0, self.START_STOP_Y, 0.012), sound="metal",
           role="fixture")}
        <body name="end_stop" pos="0 0.13 0.012">
          {g("end_stop", "box", (0.02, self.STOP_HALF_Y, 0.012), (0, 0, 0), sound="metal", role="fixture")}
        </body>
        <body name="snag" pos="0 0 -0.009">
          {g("snag", "capsule", (0.012, 0.015), (0, 0, 0), across, sound="metal", role="fixture")}
        </body>
        <body name="slider" pos="0 0 0">
          <joint name="slider_y" type="slide" axis="0 1 0" range="-0.13 0.16" damping="0.5" frictionloss="0.15"/>
          <joint name="slider_z" type="slide" axis="0 0 1" range="0 0.008" damping="2" stiffness="150"
                 springref="-0.008"/>
          <inertial pos="0 0 0.012" mass="0.12" diaginertia="3e-5 3e-5 3e-5"/>
          {g("slider", "box", (0.016, 0.010, 0.005), (0, 0, 0.005), sound="metal", role="object")}
          {g("slider_front", "capsule", (0.005, 0.016), (0, 0.010, 0.005), across, sound="metal", role="object")}
          {g("slider_back", "capsule", (0.005, 0.016), (0, -0.010, 0.005), across, sound="metal", role="object")}
          {g("tab", "box", self.TAB_HALF, (0, 0, self.TAB_Z), sound="metal", role="object")}
        </body>
      </body>"""
        return SceneParts(objects=objects)

    def bind(self, world: World) -> None:
        super().bind(world)
        self._track = world.body_id("track")
        self._end_stop = world.body_id("end_stop")  # bodies, not geoms, are moved: MuJoCo's collision
        self._snag = world.body_id("snag")  # bounding volumes hold geoms fixed in their bodies
        self._slider_y = world.model.jnt_qposadr[world.joint_id("slider_y")]
        self._slider_z = world.model.jnt_qposadr[world.joint_id("slider_z")]

    def randomize(self, rng: np.random.Generator) -> dict[str, float]:
        m, d = self.w.model, self.w.data
        x, y, height = 0.52 + rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02), rng.uniform(0.03, 0.07)
        end_face = rng.uniform(*self.END_FACE_Y)
        start = self.START_STOP_Y + self.STOP_HALF_Y + self.SLIDER_FRONT + rng.uniform(0.003, 0.012)
        snag = start + rng.uniform(0.40, 0.65) * (end_face - self.SLIDER_FRONT - start)
        m.body_pos[self._track] = (x, y, height)
        m.body_pos[self._end_stop, 1] = end_face + self.STOP_HALF_Y
        m.body_pos[self._snag, 1] = snag
        d.qpos[self._slider_y] = start
        d.qpos[self._slider_z] = 0.0
        self.layout = {"track_x": x, "track_y": y, "track_height": height, "end_face_y": end_face,
                       "start_y": start, "snag_y": snag}
        return self.layout

    # privileged facts for the scripted operator and the predicates
    def slider_y(self) -> float:
        """Slider position along the track (track frame), m."""
        return float(self.w.data.qpos[self._slider_y])

    def end_y(self) -> float:
        """Slider position at which it touches the end stop (track frame)."""
        return self.layout["end_face_y"] - self.SLIDER_FRONT

    def mean_end_y(self) -> float:
        """end_y() of the average episode: all a deaf operator knows of where the end stop is."""
        return float(np.mean(self.END_FACE_Y)) - self.SLIDER_FRONT

    def tab_position(self) -> np.ndarray:
        """World position of the tab's centre."""
        return self.body_position("slider") + np.array([0, 0, self.TAB_Z])

    def track_origin(self) -> np.ndarray:
        return self.w.data.xpos[self._track].copy()

    def achieved(self) -> bool:
        return self.slider_y() >= self.end_y() - 0.006

    def advance(self) -> float:
        start = self.layout["start_y"]
        return float(np.clip((self.slider_y() - start) / (self.end_y() - start), 0.0, 1.0))


# ------------------------------------------------------------------------------------------- flip


class FlipTask(Task):
    """Slide a spatula along the table under a thin pancake and turn it over.

    The hand holds a metal spatula whose blade tip reaches below the fingers. The blade must touch the
    table, slide under the pancake's near edge, then lift and turn about the pancake's far edge until
    the pancake falls over onto its top. Per episode: the table's height (+-1.5 cm), the pancake's place
    (+-2 cm, +-3 cm) and its turn about the vertical (+-15 degrees)."""

    name = "flip"
    description = "slide a spatula under a thin pancake and turn it over"
    home_position = np.array([0.30, 0.0, 0.22])
    home_opening = 0.0  # closed on the spatula's handle
    HALF = 0.034  # the pancake's core half width; its rounded rim adds RIM
    RIM = 0.004
    HANDLE = ((0.05, 0.0, -0.03), 0.064, 0.004, 0.008, 38.7)  # centre, half length, half thickness, half height, pitch
    BLADE = ((0.14, 0.0, -0.078), (0.045, 0.04, 0.0006), 8.0)  # centre, half sizes, pitch (front down)
    TABLE_Z = (-0.035, 0.035)  # the table top's offset from its nominal height, drawn per episode
    # A steep view of a plain pan: a frame shows the pan's height only as a shift the pancake's own place
    # could make and a few percent of scale (docs/sim.md, "What the camera sees").
    camera = (np.array([0.78, -0.12, 0.80]), np.array([0.46, 0.0, 0.0]))
    FRAGILE = ("table", 7.0, "the spatula gouged the pan")

    def parts(self, mjcf: MJCF) -> SceneParts:
        g, tg = mjcf.geom, mjcf.tool_geom
        (hc, hl, ht, hh, hp), (bc, bs, bp) = self.HANDLE, self.BLADE
        pitch = lambda deg: Rotation.from_euler("y", deg, degrees=True)
        tool = (tg("spatula_handle", "box", (hl, ht, hh), hc, pitch(hp), sound="wood", role="accent")
                + tg("spatula_blade", "box", bs, bc, pitch(bp), sound="metal", role="tool",
                     friction="0.15 0.005 0.0001", priority="1"))
        h, r = self.HALF, self.RIM
        along_x, along_y = Rotation.from_euler("y", 90, degrees=True), Rotation.from_euler("x", 90, degrees=True)
        rim = "".join(g(f"cake_rim{i}", "capsule", (r, h), pos, rot, sound="rubber", role="object",
                        friction="0.9 0.005 0.0001")
                      for i, (pos, rot) in enumerate((((0, h, 0), along_x), ((0, -h, 0), along_x),
                                                      ((h, 0, 0), along_y), ((-h, 0, 0), along_y))))
        free = f"""
      <body name="cake" pos="0.55 0 0.5">
        <freejoint name="cake"/>
        <inertial pos="0 0 0" mass="0.03" diaginertia="1.2e-5 1.2e-5 2.3e-5"/>
        {g("cake", "box", (h, h, r), (0, 0, 0), sound="rubber", role="object", friction="0.9 0.005 0.0001")}
        {rim}
        <geom name="cake_top" type="box" size="{h - 0.006} {h - 0.006} 0.0005" pos="0 0 {r}"
              rgba="{mjcf.rgba("accent")}" contype="0" conaffinity="0" mass="0"/>
      </body>"""
        return SceneParts(objects="", free=free, tool=tool, finger_min=ht + PAD_DEPTH)

    def bind(self, world: World) -> None:
        super().bind(world)
        self._table = world.body_id("table")
        self._cake = world.body_id("cake")
        self._cake_qpos = world.model.jnt_qposadr[world.joint_id("cake")]

    def randomize(self, rng: np.random.Generator) -> dict[str, float]:
        m, d = self.w.model, self.w.data
        table_z = rng.uniform(*self.TABLE_Z)
        x, y, yaw = 0.50 + rng.uniform(-0.02, 0.02), rng.uniform(-0.03, 0.03), rng.uniform(-15, 15)
        m.body_pos[self._table, 2] = table_z
        d.qpos[self._cake_qpos: self._cake_qpos + 3] = (x, y, table_z + self.RIM + 0.0005)
        d.qpos[self._cake_qpos + 3: self._cake_qpos + 7] = wxyz(Rotation.from_euler("z", yaw, degrees=True))
        self.layout = {"table_z": table_z, "cake_x": x, "cake_y": y, "cake_yaw_deg": yaw}
        return self.layout

    def blade_tip(self) -> np.ndarray:
        """The blade's front bottom edge (centre) in the home frame: where it meets the table first."""
        (bc, bs, bp) = self.BLADE
        return np.asarray(bc) + Rotation.from_euler("y", bp, degrees=True).apply([bs[0], 0, -bs[2]])

    def table_z(self) -> float:
        return float(self.w.data.xpos[self._table, 2])

    def mean_table_z(self) -> float:
        """table_z() of the average episode: all a deaf operator knows of the table's height."""
        return float(np.mean(self.TABLE_Z))

    def cake_position(self) -> np.ndarray:
        return self.w.data.xpos[self._cake].copy()

    def cake_up(self) -> float:
        """World z of the pancake's up axis: 1 as placed, -1 turned over."""
        return float(self.w.data.xmat[self._cake].reshape(3, 3)[2, 2])

    def achieved(self) -> bool:
        return self.cake_up() < -0.7 and self.w.touching(self._cake, self._table)

    def advance(self) -> float:
        return float(np.clip((1.0 - self.cake_up()) / 2.0, 0.0, 1.0))


# ------------------------------------------------------------------------------------------- scoop


class ScoopTask(Task):
    """Push a spoon down into a container until it touches the bottom, then tilt and lift beans out.

    The hand holds a metal spoon whose shallow bowl points down and forward. Beans (small plastic balls)
    lie on the container's floor. The spoon must reach the floor, scrape forward so beans roll onto it,
    tilt up and lift. The container looks the same in every episode, but its floor sits at a height
    drawn per episode (2-6 cm above the table, hidden under the beans and the walls), and the container
    moves by +-2 cm."""

    name = "scoop"
    description = "push a spoon down to the container's floor, tilt it and lift beans out"
    home_position = np.array([0.40, 0.0, 0.30])
    home_opening = 0.0  # closed on the spoon's handle
    INNER = (0.085, 0.06)  # inner half sizes of the container, m
    WALL = 0.006  # half thickness
    RIM = 0.10  # wall height above the table
    BEAN_R = 0.008
    BEANS = (3, 5)  # beans in a grid on the floor (along x, along y), in the container's front half
    BEANS_X = 0.058  # the grid's centre from the container's centre (against the front wall)
    HANDLE = ((0.0, 0.0, 0.01), (0.025, 0.0, -0.125), 0.004, 0.007)  # from, to, half thickness, half width
    BOWL_HALF = (0.03, 0.022, 0.0006)
    BOWL_PITCH = 30.0  # degrees, front down
    LIP = 0.006  # half height of the bowl's side and back lips
    MIN_BEANS = 2  # success: at least this many beans lifted above the rim
    FLOOR_Z = (0.015, 0.075)  # the floor's height above the table, drawn per episode
    PANEL = 0.22  # height of the wall on the camera's side: the camera sees over it, not into the container
    camera = (np.array([1.05, 0.0, 0.48]), np.array([0.5, 0.0, 0.20]))  # from the front, over the panel
    FRAGILE = ("pot_floor", 7.5, "the spoon cracked the container's floor")

    def bowl_frame(self) -> tuple[np.ndarray, Rotation]:
        """The bowl plate's centre and orientation in the home frame."""
        _, b, _, _ = self.HANDLE
        rot = Rotation.from_euler("y", self.BOWL_PITCH, degrees=True)
        return np.asarray(b) + rot.apply([self.BOWL_HALF[0], 0, 0]), rot

    def spoon_tip(self) -> np.ndarray:
        """The bowl's front bottom edge (centre) in the home frame."""
        c, rot = self.bowl_frame()
        return c + rot.apply([self.BOWL_HALF[0], 0, -self.BOWL_HALF[2]])

    def parts(self, mjcf: MJCF) -> SceneParts:
        g, tg = mjcf.geom, mjcf.tool_geom
        a, b, ht, hw = (np.asarray(v) if isinstance(v, tuple) else v for v in self.HANDLE)
        axis = b - a
        handle_rot = Rotation.from_euler("y", -np.degrees(np.arctan2(axis[2], axis[0])), degrees=True)
        c, rot = self.bowl_frame()
        bx, by, bz = self.BOWL_HALF
        lip = self.LIP
        tool = (tg("spoon_handle", "box", (np.linalg.norm(axis) / 2, ht, hw), (a + b) / 2, handle_rot,
                   sound="metal", role="tool")
                + tg("spoon_bowl", "box", self.BOWL_HALF, c, rot, sound="metal", role="tool")
                + tg("spoon_lip_l", "box", (bx, bz, lip), c + rot.apply([0, by, lip]), rot, sound="metal",
                     role="tool")
                + tg("spoon_lip_r", "box", (bx, bz, lip), c + rot.apply([0, -by, lip]), rot, sound="metal",
                     role="tool")
                + tg("spoon_lip_b", "box", (bz, by, lip), c + rot.apply([-bx, 0, lip]), rot, sound="metal",
                     role="tool"))
        ix, iy = self.INNER
        t, h = self.WALL, self.RIM / 2
        p = self.PANEL / 2
        walls = "".join(g(f"pot_wall{i}", "box", size, pos, sound="ceramic", role="fixture") for i, (size, pos) in
                        enumerate((((t, iy + 2 * t, p), (ix + t, 0, p)), ((t, iy + 2 * t, h), (-ix - t, 0, h)),
                                   ((ix, t, h), (0, iy + t, h)), ((ix, t, h), (0, -iy - t, h)))))
        objects = f"""
      <body name="pot" pos="0.55 0 0">
        {walls}
        <body name="pot_floor" pos="0 0 -0.01">
          {g("pot_floor", "box", (ix, iy, 0.04), (0, 0, 0), sound="ceramic", rgba=mjcf.rgba("fixture"))}
        </body>
      </body>"""
        n = self.BEANS[0] * self.BEANS[1]
        beans = "".join(f"""
      <body name="bean{i}" pos="0.55 0 0.5">
        <freejoint name="bean{i}"/>
        {g(f"bean{i}", "sphere", (self.BEAN_R,), (0, 0, 0), sound="plastic", role="object", mass="0.003",
           condim="6", friction="0.5 0.005 0.003")}
      </body>""" for i in range(n))
        return SceneParts(objects=objects, free=beans, tool=tool, finger_min=ht + PAD_DEPTH)

    def bind(self, world: World) -> None:
        super().bind(world)
        self._pot = world.body_id("pot")
        self._floor = world.body_id("pot_floor")
        n = self.BEANS[0] * self.BEANS[1]
        self._beans = [world.body_id(f"bean{i}") for i in range(n)]
        self._bean_qpos = [world.model.jnt_qposadr[world.joint_id(f"bean{i}")] for i in range(n)]

    def randomize(self, rng: np.random.Generator) -> dict[str, float]:
        m, d = self.w.model, self.w.data
        x, y = 0.55 + rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)
        floor = rng.uniform(*self.FLOOR_Z)
        m.body_pos[self._pot] = (x, y, 0.0)
        m.body_pos[self._floor, 2] = floor - 0.04
        nx, ny = self.BEANS
        spacing = 2 * self.BEAN_R + 0.003
        for k, adr in enumerate(self._bean_qpos):
            i, j = divmod(k, ny)
            bx = x + self.BEANS_X + (i - (nx - 1) / 2) * spacing + rng.uniform(-0.002, 0.002)
            by = y + (j - (ny - 1) / 2) * spacing + rng.uniform(-0.002, 0.002)
            d.qpos[adr: adr + 3] = (bx, by, floor + self.BEAN_R + 0.0005)
            d.qpos[adr + 3: adr + 7] = (1, 0, 0, 0)
        self.layout = {"pot_x": x, "pot_y": y, "floor_z": floor}
        return self.layout

    def pot_position(self) -> np.ndarray:
        return self.w.data.xpos[self._pot].copy()

    def floor_z(self) -> float:
        return float(self.w.data.xpos[self._floor, 2] + 0.04)

    def mean_floor_z(self) -> float:
        """floor_z() of the average episode: all a deaf operator knows of the floor's height."""
        return float(np.mean(self.FLOOR_Z))

    def rim_z(self) -> float:
        return float(self.w.data.xpos[self._pot, 2] + self.RIM)

    def beans_lifted(self) -> int:
        """Beans held above the rim (nothing but the spoon can hold them there)."""
        z = self.w.data.xpos[self._beans, 2]
        return int(np.sum(z > self.rim_z() + 0.01))

    def achieved(self) -> bool:
        return self.beans_lifted() >= self.MIN_BEANS

    def advance(self) -> float:
        return float(min(1.0, self.beans_lifted() / self.MIN_BEANS))


TASKS: dict[str, type[Task]] = {"zip": ZipTask, "flip": FlipTask, "scoop": ScoopTask}


def build(task: str, variation: str, *, width: int = 640, height: int = 480, shadows: bool = True,
          stiffness: tuple[float, float] = (600.0, 30.0), gripper_force: float = 20.0,
          gripper_speed: float = 0.1) -> tuple[Task, World]:
    """Compile the scene of `task` in `variation` and bind the task to it."""
    if task not in TASKS:
        raise KeyError(f"unknown simulated task {task!r} (known: {', '.join(TASKS)})")
    if variation not in VARIATIONS:
        raise KeyError(f"unknown variation {variation!r} (known: {', '.join(VARIATIONS)})")
    t = TASKS[task]()
    mjcf = MJCF(VARIATIONS[variation])
    parts = t.parts(mjcf)
    xml = scene_xml(mjcf, task_name=task, objects_on_table=parts.objects, free_bodies=parts.free,
                    tool_geoms=parts.tool, finger_min=parts.finger_min, width=width, height=height, shadows=shadows,
                    grip_force=gripper_force, extra_assets=parts.assets, excludes=parts.excludes,
                    camera=t.camera)
    world = World(xml, mjcf.sounds, stiffness=stiffness, gripper_speed=gripper_speed)
    t.bind(world)
    return t, world
