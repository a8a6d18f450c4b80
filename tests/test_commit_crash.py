"""A kill at any step of a commit or of a repair: `htouch validate --repair` then leaves the episode committed
with its label (or, only when no data had been flushed, quarantined), and never loses a committed episode.

The kill is deterministic: a forked child sets the crash hook (htouch.dataset.crashpoints) to end the process
with os._exit at one named point, which is what a kill there leaves on disk (nothing is flushed or cleaned up).
"""

import json
import os
import shutil
import traceback

import numpy as np
import pytest

from htouch.dataset import crashpoints
from htouch.dataset.manifest import MANIFEST_FILE
from htouch.dataset.repair import QUARANTINE_NOTE, repair_incoming
from htouch.dataset.schema import INCOMING, QUARANTINE
from htouch.dataset.store import Dataset
from htouch.dataset.synthetic import SyntheticEpisode, write_synthetic_episode
from htouch.dataset.validate import ERROR, validate_dataset
from htouch.dataset.writer import FLUSHED_FILE
from tests.conftest import TINY_RIG
from tests.test_faults import snapshot

CRASHED = 86  # the child's exit status when the hook ended it
EPISODE = SyntheticEpisode(duration_s=3.0, seed=5, success=True)
NAME = "episode_000001"
BROKEN_FRAME = 60  # a frame chunk damaged before some repairs: the salvage cuts there


def run_child(work, crash_at: str | None) -> tuple[int, list[str]]:
    """Run work() in a forked child that dies at crash point `crash_at` (None: never). Returns the child's exit
    status and the crash points it reached, in order."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)

            def hook(name: str) -> None:
                os.write(write_end, (name + "\n").encode())
                if name == crash_at:
                    os._exit(CRASHED)

            crashpoints.hook = hook
            work()
            status = 0
        except BaseException:  # noqa: BLE001 - shown in the test output
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        reached = f.read().split()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), reached


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The lengths of every array of EPISODE committed without a crash."""
    d = Dataset.create(tmp_path_factory.mktemp("full") / "ds", "zip", TINY_RIG)
    index, _ = write_synthetic_episode(d, EPISODE)
    return d.episode(index).attrs["lengths"]


@pytest.fixture(scope="module")
def _template(tmp_path_factory):
    d = Dataset.create(tmp_path_factory.mktemp("template") / "ds", "zip", TINY_RIG)
    write_synthetic_episode(d, SyntheticEpisode(duration_s=3.0, seed=0, success=False))
    return d.root


@pytest.fixture
def ds(_template, tmp_path):
    """A dataset with one committed episode (episode_000000) that no crash may touch."""
    shutil.copytree(_template, tmp_path / "ds")
    return Dataset(tmp_path / "ds")


def record(ds):
    return lambda: write_synthetic_episode(ds, EPISODE)


def crash_commit(ds, point: str) -> None:
    code, reached = run_child(record(ds), point)
    assert code == CRASHED and reached[-1] == point


def repair_and_check(ds, before: dict[str, str]):
    """Repair, then: the earlier committed episode is byte-identical, nothing is left in .incoming, and the
    dataset validates without errors (checksums included). Returns the repaired episode."""
    repair_incoming(ds)
    assert snapshot(ds.root, only=("episode_000000",)) == before
    assert not [p for p in (ds.root / INCOMING).iterdir() if p.is_dir()]
    report = validate_dataset(ds)
    assert [f for f in report.findings if f.severity == ERROR] == []
    assert not [f for f in report.findings if f.check.startswith("checksum.")]
    return Dataset(ds.root).episode(NAME)


def test_the_crash_points_are_reached_in_order(ds):
    code, reached = run_child(record(ds), None)
    assert code == 0 and tuple(reached) == crashpoints.COMMIT


@pytest.mark.parametrize("point", crashpoints.COMMIT)
def test_kill_during_commit(ds, full, point):
    before = snapshot(ds.root)
    crash_commit(ds, point)
    ep = repair_and_check(ds, before)
    assert ep.success is True  # the label was recorded before every crash point
    assert (ep.path / MANIFEST_FILE).exists()
    if crashpoints.COMMIT.index(point) >= crashpoints.COMMIT.index("commit.attributes"):
        assert ep.attrs["status"] == "committed" and not ep.attrs.get("salvaged")  # the commit is completed
    else:
        assert ep.attrs["status"] == "salvaged"
    kept = {path: ep.array(path).shape[0] for path in full}
    if point == "commit.labelled":  # before the final flush: up to the last periodic one
        assert 0 < kept["camera/rgb"] <= full["camera/rgb"]
    else:
        assert kept == full


def test_kill_before_anything_was_flushed_quarantines(ds):
    def work():
        w = ds.new_episode(flush_interval_s=3600)
        w.camera(0, 0, np.zeros((48, 64, 3), np.uint8))
        w.commit(success=True)  # crashes at its first step: the row is still in memory

    before = snapshot(ds.root)
    code, _ = run_child(work, "commit.labelled")
    assert code == CRASHED
    (res,) = repair_incoming(ds)
    assert res.action == "quarantined" and "never flushed" in res.message
    note = json.loads((ds.root / QUARANTINE / NAME / QUARANTINE_NOTE).read_text())
    assert "never flushed" in note["reason"]
    assert snapshot(ds.root) == before and Dataset(ds.root).episode_indices() == [0]


def interrupted_salvage(ds) -> None:
    """An episode whose commit died right after the final flush, with a frame damaged since: repair salvages
    it, cut before the damaged frame, with its label."""
    crash_commit(ds, "commit.flushed")
    path = ds.root / INCOMING / NAME
    (path / f"camera/rgb/{BROKEN_FRAME}.0.0.0").write_bytes(b"\xff\xd8 broken")


def interrupted_commit(ds) -> None:
    """An episode whose commit died after its final attributes and before the manifest: repair completes it."""
    crash_commit(ds, "commit.progress_removed")


SCENARIOS = {"salvage": (interrupted_salvage, crashpoints.REPAIR),
             "commit": (interrupted_commit, crashpoints.REPAIR[2:])}  # nothing to cut: no resize, no attributes


def check_scenario(kind, ep, full):
    assert ep.success is True
    if kind == "salvage":
        assert ep.attrs["status"] == "salvaged" and ep.array("camera/rgb").shape[0] == BROKEN_FRAME
    else:
        assert ep.attrs["status"] == "committed" and {p: ep.array(p).shape[0] for p in full} == full


@pytest.mark.parametrize("kind", SCENARIOS)
def test_repair_reaches_its_crash_points_in_order(ds, kind):
    setup, points = SCENARIOS[kind]
    setup(ds)
    code, reached = run_child(lambda: repair_incoming(ds), None)
    assert code == 0 and tuple(reached) == points


@pytest.mark.parametrize(("kind", "point"), [(k, p) for k, (_, points) in SCENARIOS.items() for p in points])
def test_kill_during_repair(ds, full, kind, point):
    before = snapshot(ds.root)
    SCENARIOS[kind][0](ds)
    code, reached = run_child(lambda: repair_incoming(ds), point)
    assert code == CRASHED and reached[-1] == point
    if point != "repair.renamed":
        assert (ds.root / INCOMING / NAME).is_dir()
    if crashpoints.REPAIR.index(point) >= crashpoints.REPAIR.index("repair.progress_removed"):
        assert not (ds.root / INCOMING / NAME / FLUSHED_FILE).exists()
    ep = repair_and_check(ds, before)
    check_scenario(kind, ep, full)


def test_cli_reports_the_completed_commit(cli, ds):
    crash_commit(ds, "commit.manifest")
    r = cli("validate", ds.root, "--repair")
    assert r.code == 0, r.out
    assert f"committed {NAME}: its commit was interrupted" in r.out and "(success)" in r.out
    assert Dataset(ds.root).episode(NAME).attrs["status"] == "committed"
