"""Which rigs exist and how each is built: the simulated rig (MuJoCo scene, synthesized contact audio, a
scripted or keyboard operator) and the real one (RealSense, sound card, Quest or keyboard, Franka Panda or
FR3), from a rig file. This module sits above both `htouch.collector` (the loop and the real backends) and
`htouch.sim`, because it knows every backend; device modules are imported only when their rig is asked for,
so the simulated rig needs no hardware libraries.
"""

from __future__ import annotations

from typing import Any

from htouch.collector.config import CameraConfig, ControlConfig, MicrophoneConfig, RigConfig, RobotConfig
from htouch.collector.devices import Clock, DeviceError, MonotonicClock, Robot, Teleop
from htouch.collector.rig import NO_OPERATOR, REAL_OPERATORS, SIM_OPERATORS, NoOperator, Rig
from htouch.collector.safety import SafetyLimits
from htouch.dataset.episode import Episode
from htouch.errors import DatasetError, HtouchError


def resolve_operator(config: RigConfig, operator: str | None) -> str:
    """The operator to use: the sim defaults to the scripted one, the real rig to the config's teleop."""
    choices = SIM_OPERATORS if config.kind == "sim" else REAL_OPERATORS
    if operator is None:
        return "scripted" if config.kind == "sim" else config.teleop.kind
    if operator == "human":
        return "keyboard" if config.kind == "sim" else config.teleop.kind
    if operator not in choices:
        raise HtouchError(f"operator {operator!r} is not available on the {config.kind} rig "
                          f"(choose {', '.join(choices)} or human)")
    return operator


def build_rig(config: RigConfig, task: str, operator: str | None = None, seed: int = 0,
              variation: str = "train", realtime: bool | None = None) -> Rig:
    """realtime (simulated rig): pace simulated time to the wall clock; default only for a person.
    operator "none" (simulated rig only): nobody at the controls, for a policy evaluated on its own."""
    if operator == NO_OPERATOR and config.kind == "sim":
        return _build_sim(config, task, operator, seed, variation, realtime)
    operator = resolve_operator(config, operator)
    if config.kind == "sim":
        return _build_sim(config, task, operator, seed, variation, realtime)
    return _build_real(config, operator)


def _build_sim(config: RigConfig, task: str, operator: str, seed: int, variation: str,
               realtime: bool | None) -> Rig:
    from htouch.sim.rig import SimRig
    from htouch.sim.tasks import TASKS

    if task not in TASKS:
        raise HtouchError(f"unknown task {task!r} for the simulated rig (tasks: {', '.join(TASKS)})")
    if realtime is None:
        realtime = operator == "keyboard"  # a person needs real time; the scripted operator does not
    sim = SimRig(task=task, variation=variation, seed=seed, config=config, realtime=realtime)
    try:
        help_text = ""
        if operator == NO_OPERATOR:
            teleop: Teleop = NoOperator()
        elif operator == "scripted":
            from htouch.sim.operator import ScriptedOperator

            teleop = ScriptedOperator(sim, seed=seed)
        else:
            from htouch.collector.keyboard import KEY_HELP, KeyboardTeleop

            teleop = KeyboardTeleop(clock=sim.clock, axis_remap=config.mapping.axis_remap)
            help_text = KEY_HELP
    except BaseException:
        sim.close()
        raise
    emitters = [sim] + [d for d in (teleop,) if hasattr(d, "pop_events")]
    return Rig(camera=sim.camera, microphones=sim.microphones, teleop=teleop, robot=sim.robot, clock=sim.clock,
               streams=sim.stream_specs(), kind="sim", operator=operator, realtime=realtime,
               description=f"simulated rig (task {task}, {variation}, seed {seed}) "
                           + ("with no operator" if operator == NO_OPERATOR else f"driven by the {operator} operator")
                           + ("" if realtime else ", faster than real time"),
               event_emitters=emitters, task_success=sim.task.success, task_progress=sim.task.progress,
               task_failed=lambda: sim.task.damage is not None,
               info={"rig": "sim", "seed": seed, "sim_variation": variation},
               episode_info=lambda: {"sim_episode": sim.episode_index}, help=help_text,
               resume=lambda dataset: _continue_scenes(sim, seed, dataset), closers=[sim.close])


def _continue_scenes(sim: Any, seed: int, dataset: Any) -> None:
    """Resuming a dataset with the same seed: go on with the next scenes instead of recording the first
    ones again (near-duplicate episodes)."""
    done = []
    for index in dataset.episode_indices():
        try:  # only the attributes are needed; a damaged episode is validate's to report, not a reason to stop
            info = dataset.episode(index, check=False).attrs.get("info", {})
        except DatasetError:
            continue
        if info.get("seed") == seed and isinstance(info.get("sim_episode"), int):
            done.append(info["sim_episode"])
    if done and max(done) > sim.episode_index:
        sim.episode_index = max(done)  # the next home() draws scene max(done) + 1


def _build_real(config: RigConfig, operator: str) -> Rig:
    from htouch.collector.hardware.microphones import SoundDeviceMicrophones
    from htouch.collector.hardware.realsense import RealSenseCamera

    clock = MonotonicClock()
    built: list[Any] = []
    try:
        # The robot first: with no robot reachable, fail before opening anything else.
        robot = build_robot(config.robot, clock, config.safety)
        built.append(robot)
        camera = RealSenseCamera(config.camera, clock)
        built.append(camera)
        microphones = SoundDeviceMicrophones(config.microphones, clock)
        built.append(microphones)
        help_text = ""
        if operator == "quest":
            from htouch.collector.hardware.quest import QuestTeleop

            teleop: Teleop = QuestTeleop(config.teleop, clock)
        else:
            from htouch.collector.keyboard import KEY_HELP, KeyboardTeleop

            teleop = KeyboardTeleop(clock=clock, axis_remap=config.mapping.axis_remap)
            help_text = KEY_HELP
    except BaseException:
        for device in reversed(built):
            try:
                device.stop()
            except DeviceError:
                pass
        raise
    devices = (camera, microphones, teleop, robot)
    return Rig(camera=camera, microphones=microphones, teleop=teleop, robot=robot, clock=clock,
               streams=config.stream_specs(n_joints=robot.n_joints), kind="real", operator=operator, realtime=True,
               description=f"real rig {config.name or config.path} driven by the {operator} operator",
               event_emitters=[d for d in devices if hasattr(d, "pop_events")],
               info={"rig": "real", "rig_config": config.path}, help=help_text)


ROBOT_NAMES = {"panda": "Panda", "fr3": "FR3"}  # [robot] kind -> what the user is told


def build_robot(config: RobotConfig, clock: Clock | None = None, safety: SafetyLimits | None = None) -> Robot:
    """The arm the rig file's [robot] kind names, connected (DeviceError naming the host if it cannot be).
    `safety`: the rig's limits, whose workspace box the backend keeps its target inside."""
    if config.kind == "fr3":
        from htouch.collector.hardware.fr3 import FR3Robot

        return FR3Robot(config, clock, workspace=safety)
    from htouch.collector.hardware.panda import PandaRobot

    return PandaRobot(config, clock, workspace=safety)


def probe_real(config: RigConfig, operator: str | None = None) -> list[tuple[str, str, bool, str]]:
    """For `htouch rig check`: (device, what the config asks for, found, what was found) per device."""
    rows = []

    def check(name: str, wants: str, module: str, cfg: Any) -> None:
        try:
            mod = __import__(f"htouch.collector.hardware.{module}", fromlist=["probe"])
            ok, found = mod.probe(cfg)
        except (ImportError, DeviceError) as e:
            ok, found = False, f"cannot probe: {e}"
        rows.append((name, wants, bool(ok), str(found)))

    cam, mic, tel, rob = config.camera, config.microphones, config.teleop, config.robot
    check("camera", (f"recording {cam.file}" if cam.file else f"RealSense {cam.serial or '(any serial)'}")
          + f", {cam.width}x{cam.height} @ {cam.fps} Hz", "realsense", cam)
    check("microphones", f"{mic.device or '(default input)'}, {mic.channels} ch @ {mic.rate_hz} Hz",
          "microphones", mic)
    kind = resolve_operator(config, operator) if config.kind == "real" else tel.kind
    if kind == "quest":
        check("teleop", f"Quest {tel.serial or tel.ip or '(the only device)'} via adb {tel.adb_host}:{tel.adb_port}",
              "quest", tel)
    else:
        rows.append(("teleop", "keyboard", True, "this terminal"))
    check("robot", f"{ROBOT_NAMES[rob.kind]} at {rob.host}", rob.kind, rob)
    return rows


def probe_sim() -> list[tuple[str, str, bool, str]]:
    """For `htouch rig check` without a real rig: MuJoCo and offscreen rendering (what the sim needs)."""
    import os

    import htouch.sim  # noqa: F401 - chooses the offscreen GL back end before mujoco is imported

    try:
        import mujoco
    except ImportError as e:
        return [("simulator", "MuJoCo with offscreen rendering", False, f"mujoco is not installed ({e})")]
    backend = os.environ.get("MUJOCO_GL", "")
    try:
        model = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size="0.1"/></worldbody></mujoco>')
        renderer = mujoco.Renderer(model, 16, 16)
        try:
            renderer.update_scene(mujoco.MjData(model))
            renderer.render()
        finally:
            renderer.close()
    except Exception as e:  # noqa: BLE001 - GL back ends fail in many ways; all mean "cannot render"
        return [("simulator", "MuJoCo with offscreen rendering", False,
                 f"mujoco {mujoco.__version__} cannot render offscreen (MUJOCO_GL={backend!r}): {e}; "
                 "install libegl1 or libosmesa6 (tools/apt-packages.txt)")]
    return [("simulator", "MuJoCo with offscreen rendering", True,
             f"mujoco {mujoco.__version__}, offscreen rendering works (MUJOCO_GL={backend})")]


# ------------------------------------------------------------------ a simulated rig for a recorded episode


def sim_config_for(ep: Episode) -> RigConfig:
    """A simulated rig like the one the episode was recorded with: camera, microphones, control rate."""
    streams = ep.streams
    cam, aud = streams.camera, streams.audio
    return RigConfig(
        kind="sim",
        camera=CameraConfig(width=cam.width, height=cam.height, fps=max(int(round(cam.rate_hz)), 1)),
        microphones=MicrophoneConfig(channels=min(max(aud.channels, 1), 4), rate_hz=int(round(aud.rate_hz)),
                                     center=aud.center, scale=aud.scale),
        control=ControlConfig(rate_hz=float(streams.action.rate_hz)))


def sim_for_episode(ep: Episode, task: str) -> Any:
    """The simulated rig in the episode's scene (same task, variation, seed and scene number, when the
    episode was recorded on the simulated rig; otherwise the task's first scene)."""
    from htouch.sim.rig import SimRig
    from htouch.sim.tasks import TASKS

    if task not in TASKS:
        raise HtouchError(f"the simulated rig has no task {task!r} (tasks: {', '.join(TASKS)})")
    info = ep.attrs.get("info", {})
    variation = info.get("sim_variation", ep.variation if ep.variation in ("train", "test") else "train")
    seed = int(info.get("seed", 0)) if isinstance(info.get("seed", 0), int) else 0
    try:
        sim = SimRig(task=task, variation=variation, seed=seed, config=sim_config_for(ep), realtime=False)
    except DeviceError as e:
        raise HtouchError(f"cannot build the simulated rig for {ep.name}: {e}") from None
    scene = info.get("sim_episode")
    if isinstance(scene, int) and scene > 0:
        sim.episode_index = scene - 1  # home() draws the episode's own scene
    return sim
