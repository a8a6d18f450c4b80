import json

import pytest

from htouch.dataset.store import Dataset


def test_synth_then_ls(cli, tmp_path):
    r = cli("synth", tmp_path / "d", "-n", "2", "--seconds", "3", "--width", "32", "--height", "24")
    assert r.code == 0, r.err
    assert Dataset(tmp_path / "d").episode_indices() == [0, 1]
    r = cli("ls", tmp_path / "d")  # stdout is not a terminal here: tab-separated lines with a header
    assert r.code == 0
    lines = [line.split("\t") for line in r.out.splitlines()]
    assert lines[0] == ["episode", "duration_s", "frames", "fps", "audio_s", "variation", "success", "split", "flags"]
    assert [row[0] for row in lines[1:]] == ["0", "1"] and all(len(row) == 9 for row in lines)
    assert "drops" in r.out
    listed = json.loads(cli("ls", tmp_path / "d", "--json").out)
    assert [row["episode"] for row in listed] == [0, 1]
    assert listed[0]["success"] is True and isinstance(listed[0]["flags"], list) and listed[0]["split"] is None
    assert listed[0]["duration_s"] == pytest.approx(3.0, abs=0.1)


def test_missing_dataset_is_one_line_exit_2(cli, tmp_path):
    r = cli("ls", tmp_path / "nope")
    assert r.code == 2
    assert r.err.strip().count("\n") == 0
    assert "not found" in r.err and "Traceback" not in r.err


def test_bad_option_is_usage_error(cli):
    assert cli("ls", "--no-such-option").code == 2


def test_every_command_has_help_with_example(cli):
    import typer.main

    from htouch.cli import app

    group = typer.main.get_command(app)
    for name in group.commands:
        r = cli(name, "--help")
        assert r.code == 0, name
        assert "Example" in r.out, f"htouch {name} --help shows no example"
