"""The rig TOML: the example file loads; every bad table, key, type or value is one HtouchError that names
the file, the table and the key, so a typo never silently falls back to a default."""

import re
from pathlib import Path

import pytest

from htouch.collector.config import BOUNDS, PLACEHOLDER_HOST, RigConfig, RobotConfig, load_rig_config
from htouch.collector.mapping import MappingConfig
from htouch.errors import HtouchError

REPO = Path(__file__).resolve().parents[1]


EXAMPLE = REPO / "rigs" / "example-real.toml"


def edited_example(tmp_path, host: str = "127.0.0.1") -> Path:
    """The example rig file with its robot host filled in, as a user would."""
    text = EXAMPLE.read_text()
    assert text.count(f'host = "{PLACEHOLDER_HOST}"') == 1
    path = tmp_path / "my-rig.toml"
    path.write_text(text.replace(f'host = "{PLACEHOLDER_HOST}"', f'host = "{host}"'))
    return path


def test_example_rig_file_loads_with_every_table_once_its_host_is_set(tmp_path):
    cfg = load_rig_config(edited_example(tmp_path))
    assert cfg.robot.host == "127.0.0.1"
    assert cfg.kind == "real" and cfg.name == "panda-lab-1"
    assert cfg.camera.width == 640 and cfg.microphones.channels == 4 and cfg.teleop.kind == "quest"
    assert cfg.robot.home_joints[3] == pytest.approx(-2.356194)
    assert cfg.safety.workspace_max == [0.80, 0.40, 0.60]
    assert cfg.mapping.axis_remap == ["-z", "-x", "y"]
    assert cfg.control.rate_hz == 30.0
    # Every key the example sets but the host is its default: the example documents the defaults.
    default = RigConfig()
    default.robot.host = cfg.robot.host
    for table in ("camera", "microphones", "teleop", "robot", "safety", "mapping", "control"):
        assert getattr(cfg, table) == getattr(default, table), table


def test_the_example_as_shipped_is_refused_until_its_host_is_edited():
    with pytest.raises(HtouchError) as info:
        load_rig_config(EXAMPLE)
    message = str(info.value)
    assert "\n" not in message and str(EXAMPLE) in message and "[robot]" in message and "host" in message
    assert "placeholder" in message and "IP address or host name" in message


def test_values_and_stream_specs(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text('[rig]\nkind = "sim"\n[camera]\nwidth = 64\nheight = 48\nfps = 15\n'
                    '[microphones]\nchannels = 2\nrate_hz = 16000\n[control]\nrate_hz = 10\n')
    cfg = load_rig_config(path)
    assert cfg.path == str(path) and isinstance(cfg.control.rate_hz, float)  # an int where a float goes
    streams = cfg.stream_specs(n_joints=7)
    assert (streams.camera.width, streams.camera.height, streams.camera.rate_hz) == (64, 48, 15.0)
    assert streams.audio.channels == 2 and streams.audio.channel_names == ["mic0", "mic1"]
    assert streams.state.rate_hz == streams.action.rate_hz == streams.teleop.rate_hz == 10.0
    assert streams.name == "sim"


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
    ('[camera]\nwidth = "640"\n', ["[camera] width", "expected an integer in 16..8192"]),
    ('[camera]\nwidth = 640.0\n', ["[camera] width", "expected an integer"]),
    ('[camera]\nwidth = 8\n', ["[camera] width", "outside the allowed range 16..8192"]),
    ('[camera]\nfps = 0\n', ["[camera] fps", "range 1..1000"]),
    ('[camera]\nquality = 101\n', ["[camera] quality", "1..100"]),
    ('[camera]\nserial = 123\n', ["[camera] serial", "expected a string"]),
    ('[microphones]\nchannels = 0\n', ["[microphones] channels", "1..64"]),
    ('[microphones]\nrate_hz = -32000\n', ["[microphones] rate_hz", "allowed range"]),
    ('[microphones]\nscale = nan\n', ["[microphones]", "scale"]),
    ('[teleop]\nkind = "gamepad"\n', ["[teleop] kind", "'gamepad'"]),
    ('[teleop]\nport = 70000\n', ["[teleop]", "port"]),
    ('[robot]\nhome_joints = [0.0, 1.0]\n', ["[robot]", "home_joints", "7 joint"]),
    ('[robot]\nhome_joints = "home"\n', ["[robot] home_joints", "expected a list"]),
    ('[robot]\nhome_joints = [0, 0, 0, "x", 0, 0, 0]\n', ["[robot] home_joints", "expected a number"]),
    ('[robot]\ngripper_force = true\n', ["[robot] gripper_force", "expected a number"]),
    ('[safety]\nworkspace_min = [1.0, 0.0, 0.0]\nworkspace_max = [0.5, 1.0, 1.0]\n',
     ["[safety]", "workspace_min", "workspace_max"]),
    ('[safety]\nmax_translation_m = -0.01\n', ["[safety]", "max_translation_m"]),
    ('[mapping]\naxis_remap = ["x", "x", "y"]\n', ["[mapping]", "axis_remap"]),
    ('[mapping]\naxis_remap = ["x", "y", "up"]\n', ["[mapping]", "axis_remap", "'up'"]),
    ('[mapping]\ngain = 0\n', ["[mapping] gain", "allowed range"]),
    ('[mapping]\ngrip_threshold = 1.5\n', ["[mapping]", "grip_threshold"]),
    ('[control]\nrate_hz = 0\n', ["[control] rate_hz", "allowed range"]),
    ('[control]\nteleop_timeout_ms = -5\n', ["[control]", "teleop_timeout_ms"]),
    ('[control]\nrate_hz = 30\nmax_episode_s = nan\n', ["[control] max_episode_s", "not a finite number"]),
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


# ------------------------------------------------------------------------------------------- numbers in range

NONSENSE = [
    # (table, key, TOML value): each must be refused with the table, the key and the allowed range named
    ("camera", "fps", "1e30"),
    ("camera", "fps", "1000000"),
    ("camera", "width", "100000"),
    ("camera", "latency_ms", "inf"),
    ("camera", "latency_ms", "-1.0"),
    ("microphones", "rate_hz", "inf"),
    ("microphones", "rate_hz", "10000000000"),
    ("microphones", "channels", "1000"),
    ("microphones", "blocksize", "1000000000"),
    ("microphones", "scale", "inf"),
    ("microphones", "scale", "nan"),
    ("microphones", "scale", "0.0"),
    ("microphones", "center", "-inf"),
    ("microphones", "latency_ms", "inf"),
    ("teleop", "port", "0"),
    ("robot", "home_joints", "[0.0, 0.0, 0.0, inf, 0.0, 0.0, 0.0]"),
    ("robot", "translational_stiffness", "1e9"),
    ("robot", "gripper_force", "nan"),
    ("robot", "gripper_max_width", "5.0"),
    ("safety", "workspace_max", "[0.8, 0.4, inf]"),
    ("safety", "max_translation_m", "inf"),
    ("safety", "gripper_max", "2.0"),
    ("mapping", "motion_scale", "inf"),
    ("mapping", "max_step_m", "nan"),
    ("control", "rate_hz", "inf"),
    ("control", "rate_hz", "1e30"),
    ("control", "max_episode_s", "inf"),
    ("control", "teleop_timeout_ms", "-inf"),
]


@pytest.mark.parametrize("table,key,value", NONSENSE, ids=[f"{t}.{k}={v}" for t, k, v in NONSENSE])
def test_numbers_outside_their_range_are_refused_with_the_range(tmp_path, table, key, value):
    path = tmp_path / "rig.toml"
    path.write_text(f"[{table}]\n{key} = {value}\n")
    with pytest.raises(HtouchError) as info:
        load_rig_config(path)
    message = str(info.value)
    lo, hi = BOUNDS[(table, key)]
    assert "\n" not in message and message.startswith(f"{path} [{table}] {key}: "), message
    assert f"{lo:g}..{hi:g}" in message, message


def test_every_number_of_every_table_has_a_range():
    """A new numeric key without a range would accept inf: BOUNDS must name every one."""
    import typing

    hints = typing.get_type_hints(RigConfig)
    numeric = set()
    for table in ("camera", "microphones", "teleop", "robot", "safety", "mapping", "control"):
        for name, hint in typing.get_type_hints(hints[table]).items():
            if hint in (int, float, list[float], list[int]):
                numeric.add((table, name))
    assert numeric == set(BOUNDS)
    # and the defaults are inside them
    default = RigConfig()
    for table, key in BOUNDS:
        lo, hi = BOUNDS[(table, key)]
        value = getattr(getattr(default, table), key)
        assert all(lo <= v <= hi for v in (value if isinstance(value, list) else [value])), (table, key)


def test_the_bounds_are_inclusive(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text("[camera]\nfps = 1000\nwidth = 16\n[control]\nrate_hz = 1\n")
    cfg = load_rig_config(path)
    assert (cfg.camera.fps, cfg.camera.width, cfg.control.rate_hz) == (1000, 16, 1.0)


def test_configs_built_in_code_obey_the_same_ranges():
    from htouch.collector.config import CameraConfig, ControlConfig, MicrophoneConfig

    with pytest.raises(ValueError, match=r"fps: 100000 is outside the allowed range 1\.\.1000"):
        CameraConfig(fps=100_000)
    with pytest.raises(ValueError, match="scale: inf is not a finite number"):
        MicrophoneConfig(scale=float("inf"))
    with pytest.raises(ValueError, match="rate_hz"):
        ControlConfig(rate_hz=float("nan"))


# ------------------------------------------------------------------------------------------- addresses

def test_a_real_rig_without_a_robot_host_is_one_clear_line(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text('[rig]\nkind = "real"\n')
    with pytest.raises(HtouchError) as info:
        load_rig_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path} [robot] host: not set")
    # The simulated rig needs no robot address, and the default config has none.
    path.write_text('[rig]\nkind = "sim"\n')
    assert load_rig_config(path).robot.host == "" == RobotConfig().host


BAD_HOSTS = [
    ("", "is empty"),
    ("   ", "is empty"),
    ("EDIT-ME", "placeholder"),
    ("edit-me", "placeholder"),
    ("not a host", "neither an IP address nor a host name"),
    ("http://10.1.2.3/", "neither"),
    ("10.1.2.3:1337", "neither"),
    ("300.1.2.3", "neither"),
    ("-panda", "neither"),
    ("panda..lab", "neither"),
    ("a" * 64, "neither"),
    ("0.0.0.0", "not the address of one device"),
    ("::", "not the address of one device"),
    ("224.0.0.1", "not the address of one device"),
    ("255.255.255.255", "not the address of one device"),
]


@pytest.mark.parametrize("host,words", BAD_HOSTS, ids=[h or "empty" for h, _ in BAD_HOSTS])
def test_bad_robot_hosts_are_refused(tmp_path, host, words):
    path = tmp_path / "rig.toml"
    path.write_text(f'[rig]\nkind = "real"\n[robot]\nhost = "{host}"\n')
    with pytest.raises(HtouchError) as info:
        load_rig_config(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "[robot]" in message and "host" in message
    assert words in message, message


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "panda", "panda-1.lab.example", "fe80::1%eth0"])
def test_good_hosts_are_accepted_without_being_contacted(tmp_path, host):
    """Loading a rig file only checks the text; nothing is resolved or dialled (the test suite's network
    guard, tests/netguard.py, would fail this test if it were)."""
    path = tmp_path / "rig.toml"
    path.write_text(f'[rig]\nkind = "real"\n[robot]\nhost = "{host}"\n')
    assert load_rig_config(path).robot.host == host


def test_quest_and_adb_addresses_are_checked_too(tmp_path):
    path = tmp_path / "rig.toml"
    for table, words in (('[teleop]\nip = "quest headset"\n', "[teleop]: ip"),
                         ('[teleop]\nadb_host = ""\n', "[teleop] adb_host: is empty"),
                         ('[teleop]\nadb_host = "EDIT-ME"\n', "placeholder")):
        path.write_text(table)
        with pytest.raises(HtouchError, match=re.escape(words)):
            load_rig_config(path)


def test_robot_kind_picks_the_backend_and_a_bad_one_is_one_line(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text('[rig]\nkind = "real"\n[robot]\nkind = "fr3"\nhost = "127.0.0.1"\n')
    assert load_rig_config(path).robot.kind == "fr3"
    assert RobotConfig().kind == "panda"  # the default, as before
    path.write_text('[rig]\nkind = "real"\n[robot]\nkind = "ur5"\nhost = "127.0.0.1"\n')
    with pytest.raises(HtouchError) as info:
        load_rig_config(path)
    assert str(info.value) == f"{path} [robot]: kind must be 'panda' or 'fr3', not 'ur5'"
