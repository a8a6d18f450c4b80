import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from htouch.dataset.store import Dataset
from tests.conftest import tiny_dataset

ROOT = Path(__file__).resolve().parent.parent


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


def _modules_imported(args: list[str], tmp_path) -> set[str]:
    """The modules a fresh `python -m htouch ARGS` process has imported when it exits."""
    out = tmp_path / "modules.json"
    program = ("import json, runpy, sys\n"
               "out = sys.argv.pop(1)\n"
               "try:\n"
               "    runpy.run_module('htouch', run_name='__main__', alter_sys=True)\n"
               "finally:\n"
               "    open(out, 'w').write(json.dumps(sorted(sys.modules)))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    r = subprocess.run([sys.executable, "-c", program, str(out), *args], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return set(json.loads(out.read_text()))


def test_the_quick_commands_start_without_heavy_imports(tmp_path):
    """--help (and so shell completion, which loads the same commands) imports neither numpy nor zarr; listing,
    inspecting and checking a dataset import no torch (docs/bench-cli.md times them)."""
    ds = tiny_dataset(tmp_path / "ds", n=1, seconds=2.0)
    help_modules = _modules_imported(["--help"], tmp_path)
    assert "htouch.cli.dataset_cmds" in help_modules  # the commands were loaded
    assert not {"numpy", "zarr", "torch"} & help_modules
    for args in (["ls", str(ds.root)], ["inspect", "0", "--dataset", str(ds.root)],
                 ["validate", str(ds.root), "--quick"]):
        modules = _modules_imported(args, tmp_path)
        assert "zarr" in modules and "torch" not in modules, args
