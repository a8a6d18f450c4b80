from htouch.dataset.store import Dataset


def test_synth_then_ls(cli, tmp_path):
    r = cli("synth", tmp_path / "d", "-n", "2", "--seconds", "3", "--width", "32", "--height", "24")
    assert r.code == 0, r.err
    assert Dataset(tmp_path / "d").episode_indices() == [0, 1]
    r = cli("ls", tmp_path / "d")
    assert r.code == 0
    assert "drops" in r.out


def test_missing_dataset_is_one_line_exit_2(cli, tmp_path):
    r = cli("ls", tmp_path / "nope")
    assert r.code == 2
    assert r.err.strip().count("\n") == 0
    assert "not found" in r.err and "Traceback" not in r.err


def test_bad_option_is_usage_error(cli):
    assert cli("ls", "--no-such-option").code == 2


def test_every_command_has_help_with_example(cli):
    from htouch.cli import app
    import typer.main

    group = typer.main.get_command(app)
    for name in group.commands:
        r = cli(name, "--help")
        assert r.code == 0, name
        assert "Example" in r.out, f"htouch {name} --help shows no example"
