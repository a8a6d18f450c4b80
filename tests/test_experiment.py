"""`htouch experiment` end to end at a minuscule scale (one task, two methods, one operator scene, one play episode,
two demonstrations, a sample at every 8th frame, one epoch, one evaluation episode per variation and audio
condition, a 64x48 camera): every stage runs, the results table holds what the stages measured, and running it again
skips every finished stage."""

from __future__ import annotations

import json

from htouch.dataset.store import Dataset
from htouch.training.evaluate import wilson_interval
from tests.test_model import one_torch_thread  # noqa: F401 - autouse fixture


def test_experiment_end_to_end_and_resumed(cli, tmp_path):
    out, work = tmp_path / "results.md", tmp_path / "work"
    args = ("experiment", "--tasks", "zip", "--methods", "ours,vision-only", "--episodes-per-task", "2",
            "--eval-episodes", "1", "--epochs", "1", "--max-seconds", "2",
            "--operator-episodes", "1", "--play-episodes", "1", "--av-epochs", "1", "--stride", "8", "--out", out,
            "--work", work)
    r = cli(*args)
    assert r.code == 0, r.err
    stages = ("scripted operator, hearing and deaf (1 scenes each)", "1 play episodes",
              "audio-visual pretraining on play", "2 demonstrations", "split and statistics",
              "train ours", "evaluate ours on train", "evaluate ours on test",
              "evaluate ours on train, silent audio", "evaluate ours on train, shuffled audio",
              "evaluate ours on test, silent audio", "evaluate ours on test, shuffled audio", "contact probe of ours",
              "train vision-only", "evaluate vision-only on train", "evaluate vision-only on test",
              "contact probe of vision-only")
    for stage in stages:
        assert f"[run] zip: {stage}" in r.out, stage
    assert r.out.count("[run]") == len(stages)  # vision-only hears nothing: no audio ablation

    demos = Dataset(work / "zip" / "demos")
    assert len(demos.episode_indices()) == 2 and all(ep.success for ep in demos.episodes())
    assert demos.streams.camera.width == 64 and demos.metadata["split"]["val"]
    assert set(demos.metadata["stats"]["spectrogram"]) == {"avid"}

    play = Dataset(work / "zip" / "play")
    assert len(play.episode_indices()) == 1  # kept whatever its outcome
    assert (work / "zip" / "av" / "r3m.pt").is_file() and (work / "zip" / "av" / "avid.pt").is_file()
    operators = json.loads((work / "zip" / "operators.json").read_text())
    assert operators["seed"] == 1000 and [len(operators[k]["scenes"]) for k in ("hearing", "deaf")] == [1, 1]

    text = out.read_text()
    assert "htouch experiment --tasks zip --methods ours,vision-only --episodes-per-task 2 --eval-episodes 1" in text
    assert "64x48 camera" in text and "1 epochs" in text and "time limit 2 s" in text
    assert "their stand-in is `htouch pretrain av`" in text
    av = "in-domain AV: `htouch pretrain av` (tiny preset, 1 epochs on play, seed 0)"
    assert f"| ours | {av} | {av} |" in text and f"| vision-only | {av} | " in text
    hearing = operators["hearing"]["scenes"][0]["success"]
    row = next(line for line in text.split("## What hearing is worth")[1].splitlines() if line.startswith("| zip |"))
    assert row.startswith(f"| zip | {int(hearing)}/1 = {int(hearing):.0%}")
    ablation = text.split("## Audio ablation")[1].split("## Contact probes")[0]
    assert "| zip | ours | " in ablation and "vision-only" not in ablation
    silent = json.loads((work / "zip" / "runs" / "ours" / "eval-zip-train-silent.json").read_text())
    assert silent["audio"] == "silent" and silent["episodes"] == 1
    for method, features in (("ours", {"audio", "image", "fused"}), ("vision-only", {"image", "fused"})):
        probe = json.loads((work / "zip" / "runs" / method / "probe-demos.json").read_text())
        assert {p["features"] for p in probe["probes"]} >= features
        assert (work / "zip" / "runs" / method / "probe-demos.png").stat().st_size > 1000
        for variation in ("train", "test"):
            doc = json.loads((work / "zip" / "runs" / method / f"eval-zip-{variation}.json").read_text())
            assert doc["episodes"] == 1 and doc["settings"]["seed"] == 1000
            low, high = wilson_interval(doc["successes"], 1)
            cell = f"{doc['successes']}/1 = {doc['success_rate']:.0%} ({low:.0%}-{high:.0%})"
            reward = f"{doc['reward_mean']:.2f} ± {doc['reward_std']:.2f}"
            row = next(line for line in text.splitlines() if line.startswith(f"| {method} | ") and "±" in line)
            cells = [c.strip() for c in row.strip("|").split("|")]
            at = 1 + 2 * ("train", "test").index(variation)
            assert cells[at:at + 2] == [cell, reward]
    assert "## Against the goal" in text  # ours and vision-only: the yardstick is applied

    # Again: everything is there, nothing runs; the table is written again from the same evaluations.
    r = cli(*args)
    assert r.code == 0, r.err
    assert "[run]" not in r.out and r.out.count("[skip]") == len(stages)
    assert out.read_text().split("## Success rate")[1].split("## Stages")[0] == \
        text.split("## Success rate")[1].split("## Stages")[0]
    # --report-only on a finished experiment writes the same table and runs nothing. A stage whose output was made
    # outside the experiment (here: its time forgotten) is reported as done, untimed.
    state = json.loads((work / "experiment.json").read_text())
    del state["stage_seconds"]["zip: evaluate ours on test (1 episodes)"]
    (work / "experiment.json").write_text(json.dumps(state))
    r = cli(*args, "--report-only")
    assert r.code == 0 and "[run]" not in r.out and "[pending]" not in r.out
    assert "| zip: evaluate ours on test (1 episodes) | - | made outside the experiment, not timed |" in \
        out.read_text()
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


def test_goal_section_applies_the_yardstick_to_what_was_measured(tmp_path):
    from htouch.training.evaluate import wilson_interval
    from htouch.training.experiment import Experiment, ExperimentConfig

    def result(successes: int, n: int = 50) -> dict:
        low, high = wilson_interval(successes, n)
        return {"successes": successes, "episodes": n, "success_rate": successes / n, "ci_low": low, "ci_high": high}

    exp = Experiment(ExperimentConfig(out=tmp_path / "r.md", work=tmp_path / "w", tasks=["zip", "flip", "scoop"],
                                      methods=["ours", "vision-only"]))
    exp.c.tasks.append("pour")  # a made-up fourth task where vision-only is ahead (appended after the check)
    measured = {"zip": (40, 10), "flip": (30, 25), "scoop": (45, 20), "pour": (19, 33)}  # ours, vision-only of 50
    for task, (ours, vision) in measured.items():
        for variation in ("train", "test"):
            exp.results[(task, "ours", variation)] = result(ours)
            exp.results[(task, "vision-only", variation)] = result(vision if variation == "train" else ours)
    exp.ablations[("zip", "ours", "train", "silent")] = result(15)
    exp.ablations[("zip", "ours", "train", "shuffled")] = result(35)
    exp.ablations[("flip", "ours", "test", "silent")] = result(2)
    text = "\n".join(exp._goal_lines())
    assert "| zip | train | 80% | 20% | +60 points | apart, ours ahead |" in text
    assert "| flip | train | 60% | 50% | +10 points | overlap |" in text
    assert "| pour | train | 38% | 66% | -28 points | apart, vision-only ahead |" in text
    assert "- train looks: the goal holds on 2 task(s) (zip, scoop): met." in text
    assert "- test looks: the goal holds on 0 task(s): not met." in text
    assert "- zip, train looks: silent audio costs `ours` +50 points (40/50 -> 15/50): at least 20." in text
    assert "- zip, train looks: shuffled audio costs `ours` +10 points (40/50 -> 35/50): less than 20." in text
    assert "- flip, test looks: silent audio costs `ours` +56 points (30/50 -> 2/50): at least 20." in text
    table = "\n".join(exp._ablation_lines())
    assert "| zip | ours | train | 40/50 = 80% " in table and "| flip | ours | test | 30/50 = 60% " in table
    assert table.split("| flip | ours | test | ")[1].split("\n")[0].endswith("| - |")  # shuffled not measured
    assert Experiment(ExperimentConfig(out=tmp_path / "r.md", work=tmp_path / "w",
                                       methods=["ours", "byol-a"]))._goal_lines() == []
    exp.results = {k: v for k, v in exp.results.items() if k[1] == "ours"}  # vision-only not evaluated yet
    assert "- train looks: not measured yet" in "\n".join(exp._goal_lines())


def test_rewriting_the_report_keeps_its_hand_written_reading(tmp_path):
    from htouch.training.experiment import Experiment, ExperimentConfig

    out = tmp_path / "r.md"
    out.write_text("# old generated table\n\n## Reading (hand-written; kept when the file is written again)\n\nWhy.\n")
    exp = Experiment(ExperimentConfig(out=out, work=tmp_path / "w", tasks=["zip"], methods=["ours"]))
    assert exp._kept_reading() == "\n## Reading (hand-written; kept when the file is written again)\n\nWhy.\n"
    out.write_text("# a file without one\n")
    assert exp._kept_reading() == ""


def test_report_only_runs_nothing_and_lists_what_is_left(cli, tmp_path):
    out, work = tmp_path / "r.md", tmp_path / "work"
    r = cli("experiment", "--tasks", "zip", "--methods", "ours,vision-only", "--episodes-per-task", "2",
            "--operator-episodes", "1", "--out", out, "--work", work, "--report-only")
    assert r.code == 0, r.err
    assert "[run]" not in r.out and "[pending] zip: 2 demonstrations" in r.out
    assert "[pending] zip: train ours" in r.out and "[pending] zip: train vision-only" in r.out
    assert not (work / "zip").exists()  # nothing recorded
    text = out.read_text()
    assert "| zip: 2 demonstrations | - | not run yet |" in text
    assert "--report-only" not in text  # the command that continues the experiment
