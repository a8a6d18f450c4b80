"""The rig TOML: the example file loads; every bad table, key, type or value is one HtouchError that names
the file, the table and the key, so a typo never silently falls back to a default."""

from pathlib import Path

import pytest

from htouch.collector.config import RigConfig, load_rig_config
from htouch.collector.mapping import MappingConfig
from htouch.errors import HtouchError

REPO = Path(__file__).resolve().parents[1]


def test_example_rig_file_loads_with_every_table():
    cfg = load_rig_config(REPO / "rigs" / "example-real.toml")
    assert cfg.kind == "real" and cfg.name == "panda-lab-1"
    assert cfg.camera.width == 640 and cfg.microphones.channels == 4 and cfg.teleop.kind == "quest"
    assert cfg.robot.home_joints[3] == pytest.approx(-2.356194)
    assert cfg.safety.workspace_max == [0.80, 0.40, 0.60]
    assert cfg.mapping.axis_remap == ["-z", "-x", "y"]
    assert cfg.control.rate_hz == 30.0
    # Every key the example sets is its default: the example documents the defaults.
    default = RigConfig()
    for table in ("camera", "microphones", "teleop", "robot", "safety", "mapping", "control"):
        assert getattr(cfg, table) == getattr(default, table), table


def test_values_and_rig_spec(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text('[rig]\nkind = "sim"\n[camera]\nwidth = 64\nheight = 48\nfps = 15\n'
                    '[microphones]\nchannels = 2\nrate_hz = 16000\n[control]\nrate_hz = 10\n')
    cfg = load_rig_config(path)
    assert cfg.source == str(path) and isinstance(cfg.control.rate_hz, float)  # an int where a float goes
    spec = cfg.rig_spec(n_joints=7)
    assert (spec.camera.width, spec.camera.height, spec.camera.rate_hz) == (64, 48, 15.0)
    assert spec.audio.channels == 2 and spec.audio.channel_names == ["mic0", "mic1"]
    assert spec.state.rate_hz == spec.action.rate_hz == spec.teleop.rate_hz == 10.0
    assert spec.name == "sim"


def test_empty_file_is_the_default_sim_rig(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("")
    cfg = load_rig_config(path)
    assert cfg.kind == "sim" and cfg.camera == RigConfig().camera


BAD = [
    # (TOML text, words the message must contain)
    ('[camera]\nwidht = 640\n', ["[camera]", "'widht'", "unknown key"]),
    ('[cameras]\nwidth = 640\n', ["unknown table [cameras]"]),
    ('kind = "real"\n', ["'kind'", "under [rig]"]),
    ('[rig]\nkind = "virtual"\n', ["[rig] kind", "'virtual'"]),
    ('[rig]\ncolour = 1\n', ["[rig]", "'colour'"]),
    ('camera = 3\n', ["[camera]", "expected a table"]),
    ('[camera]\nwidth = "640"\n', ["[camera] width", "expected int"]),
    ('[camera]\nwidth = 640.0\n', ["[camera] width", "expected int"]),
    ('[camera]\nwidth = 8\n', ["[camera]", "width", "at least 16"]),
    ('[camera]\nfps = 0\n', ["[camera]", "fps", "> 0"]),
    ('[camera]\nquality = 101\n', ["[camera]", "quality"]),
    ('[camera]\nserial = 123\n', ["[camera] serial", "expected str"]),
    ('[microphones]\nchannels = 0\n', ["[microphones]", "channels", "> 0"]),
    ('[microphones]\nrate_hz = -32000\n', ["[microphones]", "rate_hz", "> 0"]),
    ('[microphones]\nscale = nan\n', ["[microphones]", "scale"]),
    ('[teleop]\nkind = "gamepad"\n', ["[teleop] kind", "'gamepad'"]),
    ('[teleop]\nport = 70000\n', ["[teleop]", "port"]),
    ('[robot]\nhome_joints = [0.0, 1.0]\n', ["[robot]", "home_joints", "7 joint"]),
    ('[robot]\nhome_joints = "home"\n', ["[robot] home_joints", "expected a list"]),
    ('[robot]\nhome_joints = [0, 0, 0, "x", 0, 0, 0]\n', ["[robot] home_joints", "expected float"]),
    ('[robot]\ngripper_force = true\n', ["[robot] gripper_force", "expected float"]),
    ('[safety]\nworkspace_min = [1.0, 0.0, 0.0]\nworkspace_max = [0.5, 1.0, 1.0]\n',
     ["[safety]", "workspace_min", "workspace_max"]),
    ('[safety]\nmax_translation_m = -0.01\n', ["[safety]", "max_translation_m"]),
    ('[mapping]\naxis_remap = ["x", "x", "y"]\n', ["[mapping]", "axis_remap"]),
    ('[mapping]\naxis_remap = ["x", "y", "up"]\n', ["[mapping]", "axis_remap", "'up'"]),
    ('[mapping]\ngain = 0\n', ["[mapping]", "gain", "> 0"]),
    ('[mapping]\ngrip_threshold = 1.5\n', ["[mapping]", "grip_threshold"]),
    ('[control]\nrate_hz = 0\n', ["[control]", "rate_hz", "> 0"]),
    ('[control]\nteleop_timeout_ms = -5\n', ["[control]", "teleop_timeout_ms"]),
    ('[control]\nrate_hz = inf\nmax_episode_s = nan\n', ["[control]", "max_episode_s"]),
    ('[control\nrate_hz = 30\n', ["not valid TOML"]),
]


@pytest.mark.parametrize("text,words", BAD, ids=[t.splitlines()[0] + "|" + w[-1] for t, w in BAD])
def test_each_mistake_is_one_clear_error(tmp_path, text, words):
    path = tmp_path / "rig.toml"
    path.write_text(text)
    with pytest.raises(HtouchError) as info:
        load_rig_config(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, (word, message)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(HtouchError, match="does not exist"):
        load_rig_config(tmp_path / "nope.toml")
    binary = tmp_path / "rig.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(HtouchError, match="rig.toml"):
        load_rig_config(binary)


def test_mapping_config_refuses_bad_values_in_code_too():
    with pytest.raises(ValueError, match="axis_remap"):
        MappingConfig(axis_remap=["x", "y"])
    with pytest.raises(ValueError, match="motion_scale"):
        MappingConfig(motion_scale=-1.0)
