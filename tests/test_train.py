"""Training: the tiny preset learns on a small synthetic dataset, the run directory holds what it promises,
a run is reproducible and resumes to the same result, frozen encoders train only the head, bad input is refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from htouch.dataset.split import make_split, split_dataset
from htouch.dataset.store import Dataset
from htouch.errors import HtouchError
from htouch.training.checkpoints import load_run_checkpoint, read_run_config
from htouch.training.data import DataSpec, PolicySamples, collate, to_float
from htouch.training.encoders import resnet18
from htouch.training.methods import policy_config
from htouch.training.model import ActionNormalization
from htouch.training.train import (
    Reporter,
    TrainConfig,
    masked_mse,
    train,
)
from tests.training_helpers import copy_dataset


@pytest.fixture
def ds(training_template, tmp_path):
    """A copy of the 4-episode training dataset (tests/conftest.py), split, with AVID statistics."""
    return copy_dataset(training_template, tmp_path / "ds")


def _config(ds, run: Path, **kw) -> TrainConfig:
    base = dict(dataset=ds.root, run_dir=run, method="ours", preset="tiny", epochs=4, batch_size=16,
                allow_random_init=True, seed=0, threads=1)
    return TrainConfig(**{**base, **kw})


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _StopAfter(Reporter):
    """Interrupts the run like Ctrl-C once an epoch has been recorded."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def epoch_end(self, metrics) -> None:
        if metrics.epoch == self.epoch:
            raise KeyboardInterrupt


def test_tiny_training_lowers_validation_loss_and_writes_the_run(ds, tmp_path):
    run = tmp_path / "run"
    result = train(_config(ds, run, epochs=5, stride=2))  # every 2nd frame: half the samples, same code paths
    losses = [m.val_loss for m in result.history]
    assert len(losses) == 5 and result.stopped == "max epochs"
    assert min(losses[1:]) < losses[0] and result.best_val_loss == min(losses)
    assert result.history[-1].train_loss < result.history[0].train_loss
    for name in ("model.safetensors", "config.json", "last.pt", "run.json", "metrics.csv", "loss_curves.png"):
        assert (run / name).is_file(), name  # the layout docs/ and run_dir.py describe
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([float(r["val_loss"]) for r in rows], losses, rtol=1e-5)
    assert float(rows[0]["lr"]) == pytest.approx(1e-3) and float(rows[-1]["lr"]) < 1e-3  # cosine annealing
    record = json.loads((run / "run.json").read_text())
    assert record["random_init"] == ["audio_encoder", "image_encoder"] and record["status"] == "max epochs"

    # The saved model is the best epoch's: evaluated on the validation samples it gives the best loss.
    model, config, extra = load_run_checkpoint(run)
    assert extra["training"]["best_epoch"] == result.best_epoch and extra["random_init"]
    spec = DataSpec.from_dict(extra["data"])
    assert spec.audio_kind == "avid" and extra["rig"]["camera"]["width"] == 64
    val = PolicySamples(ds, extra["dataset"]["val_episodes"], spec,
                        ActionNormalization.from_dict(extra["action_normalization"]))
    batch = collate([val[i] for i in range(len(val))])
    with torch.no_grad():
        loss, _ = masked_mse(model(to_float(batch["frames"]), batch["spectrogram"]), batch["actions"], batch["mask"])
    assert float(loss) == pytest.approx(result.best_val_loss, rel=1e-4)


def test_same_seed_same_run_and_resume_continues_it_exactly(ds, tmp_path):
    kw = dict(epochs=3, stride=4)  # every 4th frame: a quarter of the samples, same code paths
    straight = train(_config(ds, tmp_path / "a", **kw))
    with pytest.raises(KeyboardInterrupt):
        train(_config(ds, tmp_path / "b", **kw), _StopAfter(1))
    assert len(list(csv.DictReader(open(tmp_path / "b" / "metrics.csv")))) == 1
    resumed = train(_config(ds, tmp_path / "b", resume=True, **kw))
    assert [m.epoch for m in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert (a.train_loss, a.val_loss, a.lr) == (b.train_loss, b.val_loss, b.lr)
    pa, pb = _params(straight.model), _params(resumed.model)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    # a finished run resumed again trains no further; more epochs continue the count
    again = train(_config(ds, tmp_path / "b", resume=True, **kw))
    assert again.stopped == "already finished" and len(again.history) == 3
    more = train(_config(ds, tmp_path / "b", resume=True, **{**kw, "epochs": 4}))
    assert [m.epoch for m in more.history] == [1, 2, 3, 4] and more.history[3].lr > 0
    different = train(_config(ds, tmp_path / "c", seed=1, **{**kw, "epochs": 1}))
    assert different.history[0].train_loss != straight.history[0].train_loss


def test_frozen_encoders_train_only_the_head_from_the_supplied_weights(ds, tmp_path):
    # a synthetic R3M file in the released layout ({'r3m': DataParallel state dict}), sized for the tiny preset
    net = resnet18(8)
    torch.manual_seed(5)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    r3m = tmp_path / "r3m_tiny.pt"
    torch.save({"r3m": {f"module.convnet.{k}": v for k, v in net.state_dict().items()}}, r3m)
    result = train(_config(ds, tmp_path / "run", method="vision-only", epochs=3, frozen_encoders=True,
                           r3m=r3m, allow_random_init=False))
    trained = result.model.image_encoder.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in net.state_dict().items())  # frozen: still the file's
    assert min(m.val_loss for m in result.history[1:]) < result.history[0].val_loss
    _, _, extra = load_run_checkpoint(tmp_path / "run")
    assert extra["encoders"]["image_encoder"].startswith("r3m: ") and extra["random_init"] == []
    assert extra["training"]["frozen_encoders"] is True


def test_frozen_mode_gives_the_same_predictions_as_the_full_model(ds, tmp_path):
    """The cached embeddings feed the head exactly what the full forward pass computes."""
    result = train(_config(ds, tmp_path / "run", epochs=1, frozen_encoders=True, stride=2))
    model, _, extra = load_run_checkpoint(tmp_path / "run")
    assert result.best_val_loss == pytest.approx(_val_loss(ds, model, extra), rel=1e-4)


def _val_loss(ds, model, extra) -> float:
    spec = DataSpec.from_dict(extra["data"])
    val = PolicySamples(ds, extra["dataset"]["val_episodes"], spec,
                        ActionNormalization.from_dict(extra["action_normalization"]))
    b = collate([val[i] for i in range(len(val))])
    with torch.no_grad():
        return float(masked_mse(model(to_float(b["frames"]), b.get("spectrogram")), b["actions"], b["mask"])[0])


def test_refusals(ds, tmp_path):
    with pytest.raises(HtouchError, match=r"pass --r3m PATH --avid PATH .*--allow-random-init"):
        train(_config(ds, tmp_path / "r", allow_random_init=False))
    assert not (tmp_path / "r").exists()
    with pytest.raises(HtouchError, match="--avid .*no such file"):
        train(_config(ds, tmp_path / "r", avid=tmp_path / "missing.pth.tar"))
    with pytest.raises(HtouchError, match="unknown method"):
        train(_config(ds, tmp_path / "r", method="ears-only"))
    with pytest.raises(HtouchError, match="holds no run"):
        train(_config(ds, tmp_path / "r", resume=True))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(HtouchError, match="already holds files"):
        train(_config(ds, tmp_path / "r"))
    train(_config(ds, tmp_path / "ok", method="vision-only", epochs=1, frozen_encoders=True, stride=4))
    with pytest.raises(HtouchError, match="method differs"):
        train(_config(ds, tmp_path / "ok", method="ours", epochs=2, frozen_encoders=True, resume=True, stride=4))
    split_dataset(Dataset(ds.root), 0.5, seed=7)  # a new split: other validation episodes, other stats
    with pytest.raises(HtouchError, match="the train split of .* changed since the run"):
        train(_config(ds, tmp_path / "ok", method="vision-only", epochs=2, frozen_encoders=True, resume=True,
                      stride=4))
    with pytest.raises(HtouchError, match="--epochs must be at least 1"):
        train(_config(ds, tmp_path / "r2", epochs=0))


def test_cli_train_prints_parameters_and_progress(ds, tmp_path, cli):
    run = tmp_path / "cli_run"
    r = cli("train", ds.root, "--method", "vision-only", "--preset", "tiny", "--run", run, "--epochs", "2",
            "--batch-size", "16", "--frozen-encoders", "--allow-random-init", "--threads", "1", "--dropout", "0.1",
            "--stride", "4")
    assert r.code == 0, r.err
    assert "parameters" in r.out and "best validation loss" in r.out and "samples/s" in r.out
    assert (run / "model.safetensors").is_file()
    assert read_run_config(run)[0].dropout == 0.1 != policy_config("tiny").dropout
    r = cli("train", ds.root, "--method", "vision-only", "--preset", "tiny", "--run", run, "--epochs", "3",
            "--batch-size", "16", "--frozen-encoders", "--resume", "--threads", "1", "--stride", "4")
    assert r.code == 2 and "dropout" in r.err  # a resumed run keeps its dropout
    r = cli("train", ds.root, "--method", "vision-only", "--preset", "tiny", "--run", run, "--epochs", "3",
            "--batch-size", "16", "--frozen-encoders", "--resume", "--threads", "1", "--dropout", "0.1",
            "--stride", "4")
    assert r.code == 0, r.err
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 3


def test_cli_one_line_errors(ds, tmp_path, cli):
    r = cli("train", ds.root, "--method", "ours", "--preset", "tiny", "--run", tmp_path / "x")
    assert r.code == 2 and "--allow-random-init" in r.err and "Traceback" not in r.err + r.out
    r = cli("train", ds.root, "--method", "nope", "--run", tmp_path / "x")
    assert r.code == 2 and "unknown method 'nope'" in r.err
    r = cli("train", ds.root, "--preset", "huge", "--run", tmp_path / "x", "--allow-random-init")
    assert r.code == 2 and "unknown model preset" in r.err
    r = cli("train", ds.root, "--preset", "tiny", "--run", tmp_path / "x", "--allow-random-init", "--dropout", "1")
    assert r.code == 2 and "--dropout must be in [0, 1), got 1.0" in r.err


def test_cli_train_without_run_or_split_makes_both_and_says_so(ds, tmp_path, cli, monkeypatch):
    """`htouch train` as a new user types it: the split is made as `htouch split` makes it by default (and
    said), the run goes to runs/DATASET-METHOD (said), a second run does not overwrite the first, --resume
    continues the newest."""
    Dataset(ds.root).update_metadata(split=None)
    monkeypatch.chdir(tmp_path)
    args = ("--method", "vision-only", "--preset", "tiny", "--epochs", "1", "--batch-size", "16",
            "--frozen-encoders", "--allow-random-init", "--threads", "1", "--stride", "4")
    r = cli("train", ds.root, *args)
    assert r.code == 0, r.err
    assert "no train/validation split: made one as `htouch split` does by default (val 0.2, seed 0)" in r.out
    assert "run directory: runs/ds-vision-only" in r.out
    assert (tmp_path / "runs" / "ds-vision-only" / "model.safetensors").is_file()
    made, expected = Dataset(ds.root).metadata["split"], make_split(Dataset(ds.root), 0.2, 0)
    assert (made["train"], made["val"]) == (expected.train, expected.val)
    r = cli("train", ds.root, *args)
    assert r.code == 0 and "run directory: runs/ds-vision-only-2" in r.out and "no train/validation" not in r.out
    r = cli("train", ds.root, *args[:2], "--preset", "tiny", "--epochs", "2", "--batch-size", "16",
            "--frozen-encoders", "--threads", "1", "--stride", "4", "--resume")
    assert r.code == 0, r.err
    assert "run directory: runs/ds-vision-only-2" in r.out
    assert len(list(csv.DictReader(open(tmp_path / "runs" / "ds-vision-only-2" / "metrics.csv")))) == 2
    r = cli("train", ds.root, "--method", "ours", "--resume")
    assert r.code == 2 and "no run to continue in runs/ds-ours" in r.err


def test_episodes_trains_on_the_first_train_episodes_of_the_split(ds, tmp_path, cli):
    split = Dataset(ds.root).metadata["split"]
    assert len(split["train"]) >= 2
    stats_before = Dataset(ds.root).metadata["stats"]
    run = tmp_path / "first"
    r = cli("train", ds.root, "--method", "vision-only", "--preset", "tiny", "--run", run, "--epochs", "1",
            "--batch-size", "16", "--allow-random-init", "--threads", "1", "--stride", "4", "--episodes", "1")
    assert r.code == 0, r.err
    assert f"first 1 of the split's {len(split['train'])} train episodes" in r.out
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["episodes"] == 1
    assert record["data"]["train_episodes"] == sorted(split["train"])[:1]
    assert record["data"]["val_episodes"] == split["val"]  # validation: the whole split's
    assert Dataset(ds.root).metadata["stats"] == stats_before  # the stored statistics are untouched
    for bad, message in (("0", "--episodes must be at least 1, got 0"),
                         ("99", f"--episodes 99: the split of {ds.root} has only {len(split['train'])} train")):
        r = cli("train", ds.root, "--method", "vision-only", "--preset", "tiny", "--run", tmp_path / f"e{bad}",
                "--allow-random-init", "--episodes", bad)
        assert r.code == 2 and message in r.err and "Traceback" not in r.err + r.out


@pytest.mark.parametrize("method", ["scratch", "frozen-audio", "mlp-fusion"])
def test_every_baseline_trains_end_to_end(ds, tmp_path, method):
    from htouch.training.methods import policy_config
    from htouch.training.model import build_policy

    result = train(_config(ds, tmp_path / method, method=method, epochs=1, stride=4))
    assert len(result.history) == 1 and np.isfinite(result.best_val_loss)
    torch.manual_seed(0)  # the run's initialisation, rebuilt
    start = build_policy(policy_config("tiny", method))
    audio_same = all(torch.equal(a, b) for a, b in zip(start.audio_encoder.state_dict().values(),
                                                       result.model.audio_encoder.state_dict().values(), strict=True))
    image_same = all(torch.equal(a, b) for a, b in zip(start.image_encoder.state_dict().values(),
                                                       result.model.image_encoder.state_dict().values(), strict=True))
    assert not image_same
    assert audio_same == (method == "frozen-audio")  # frozen AVID: weights and BatchNorm statistics kept
