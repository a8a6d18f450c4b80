"""`htouch experiment` end to end at a minuscule scale (one task, two methods, two demonstrations, one epoch, two
evaluation episodes per variation, a 64x48 camera): every stage runs, the results table holds what the
evaluations measured, and running it again skips every finished stage."""

from __future__ import annotations

import json

from htouch.dataset.store import Dataset
from htouch.training.evaluate import wilson_interval
from tests.test_model import one_torch_thread  # noqa: F401 - autouse fixture


def test_experiment_end_to_end_and_resumed(cli, tmp_path):
    out, work = tmp_path / "results.md", tmp_path / "work"
    args = ("experiment", "--tasks", "zip", "--methods", "ours,byol-a", "--episodes-per-task", "2",
            "--eval-episodes", "2", "--epochs", "1", "--byol-epochs", "1", "--max-seconds", "2", "--out", out,
            "--work", work)
    r = cli(*args)
    assert r.code == 0, r.err
    for stage in ("2 demonstrations", "split and statistics", "BYOL-A pretraining", "train ours", "train byol-a",
                  "evaluate ours on train", "evaluate ours on test", "evaluate byol-a on test"):
        assert f"[run] zip: {stage}" in r.out, stage

    demos = Dataset(work / "zip" / "demos")
    assert len(demos.episode_indices()) == 2 and all(ep.success for ep in demos.episodes())
    assert demos.rig.camera.width == 64 and demos.metadata["split"]["val"]
    assert set(demos.metadata["stats"]["spectrogram"]) == {"avid", "byol-a"}
    assert (work / "zip" / "byol_a.safetensors").is_file()

    text = out.read_text()
    assert "htouch experiment --tasks zip --methods ours,byol-a --episodes-per-task 2 --eval-episodes 2" in text
    assert "64x48 camera" in text and "1 epochs" in text and "time limit 2 s" in text
    assert "no R3M or AVID checkpoint was given" in text
    assert "| byol-a | random | BYOL-A, pretrained in-domain on the task's demonstrations |" in text
    assert "| ours | random | random |" in text
    for method in ("ours", "byol-a"):
        for variation in ("train", "test"):
            doc = json.loads((work / "zip" / "runs" / method / f"eval-zip-{variation}.json").read_text())
            assert doc["episodes"] == 2 and doc["settings"]["seed"] == 1000
            low, high = wilson_interval(doc["successes"], 2)
            cell = f"{doc['successes']}/2 = {doc['success_rate']:.0%} ({low:.0%}-{high:.0%})"
            reward = f"{doc['reward_mean']:.2f} ± {doc['reward_std']:.2f}"
            row = next(line for line in text.splitlines() if line.startswith(f"| {method} | ") and "±" in line)
            cells = [c.strip() for c in row.strip("|").split("|")]
            at = 1 + 2 * ("train", "test").index(variation)
            assert cells[at:at + 2] == [cell, reward]

    # Again: everything is there, nothing runs; the table is written again from the same evaluations.
    r = cli(*args)
    assert r.code == 0, r.err
    assert "[run]" not in r.out and r.out.count("[skip]") == 9
    assert out.read_text().split("## Success rate")[1].split("## Stages")[0] == \
        text.split("## Success rate")[1].split("## Stages")[0]
    # Other training settings in the same work directory are refused, not mixed into one table.
    r = cli(*args, "--dropout", "0.3")
    assert r.code == 2 and "trained with other settings (dropout)" in r.err


def test_experiment_refuses_bad_settings(cli, tmp_path):
    r = cli("experiment", "--tasks", "zip,juggle", "--out", tmp_path / "r.md")
    assert r.code == 2 and "unknown task 'juggle'" in r.err
    r = cli("experiment", "--tasks", "zip", "--methods", "ours,telepathy", "--out", tmp_path / "r.md")
    assert r.code == 2 and "unknown method 'telepathy'" in r.err
    r = cli("experiment", "--tasks", "zip", "--episodes-per-task", "1", "--out", tmp_path / "r.md")
    assert r.code == 2 and "--episodes-per-task must be at least 2" in r.err
    r = cli("experiment", "--tasks", "zip", "--dropout", "-0.1", "--out", tmp_path / "r.md")
    assert r.code == 2 and "--dropout must be in [0, 1)" in r.err
    r = cli("experiment", "--tasks", "zip", "--r3m", tmp_path / "missing.pt", "--out", tmp_path / "r.md")
    assert r.code == 2 and "missing.pt: no such file" in r.err
    r = cli("experiment", "--tasks", "zip", "--max-seconds", "0", "--out", tmp_path / "r.md")
    assert r.code == 2 and "--max-seconds must be a positive number" in r.err
    assert not (tmp_path / "r-work").exists()  # refused before any demonstration was recorded
