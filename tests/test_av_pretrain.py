"""In-domain audio-visual pretraining (`htouch pretrain av`): the InfoNCE loss, that the encoders learn to pair a
clip with its frames (below chance on held-out episodes), and that the R3M / AVID files it writes initialise a
policy exactly as the released files would, with the run saying where they came from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from htouch.dataset.synthetic import SyntheticEpisode, write_synthetic_episode
from htouch.errors import HtouchError
from htouch.training.av_pretrain import (
    AVID_FILE,
    LABEL,
    MADE_BY,
    R3M_FILE,
    RECORD_FILE,
    AvConfig,
    info_nce,
    pretrain_av,
)
from htouch.training.checkpoints import (
    PRETRAINING_KEY,
    describe_initialisation,
    load_avid_audio,
    load_pretrained,
    load_r3m_encoder,
    pretraining_of,
    read_run_config,
)
from htouch.training.methods import policy_config
from htouch.training.model import build_policy
from htouch.training.train import Session, TrainConfig
from htouch.training.weights import WEIGHTS_ENV, file_sha256
from tests.conftest import tiny_dataset
from tests.training_helpers import copy_dataset

BATCH = 16


@pytest.fixture(scope="module")
def _template(training_template, tmp_path_factory) -> Path:
    """This module's copy of the training dataset (tests/conftest.py): pretraining may write caches into it."""
    root = tmp_path_factory.mktemp("avpre") / "ds"
    copy_dataset(training_template, root)
    return root


@pytest.fixture(scope="module")
def pretrained(_template, tmp_path_factory):
    """One short pretraining shared by the tests that only read its outputs: (result, per-step losses)."""
    out = tmp_path_factory.mktemp("avpre-out") / "enc"
    steps: list[float] = []
    result = pretrain_av(AvConfig(dataset=_template, out=out, preset="tiny", epochs=3, batch_size=BATCH, stride=3,
                                  seed=0, threads=1), on_step=lambda i, n, loss: steps.append(loss))
    return result, steps


@pytest.fixture
def ds(_template, tmp_path):
    return copy_dataset(_template, tmp_path / "ds")


def test_info_nce_is_log_b_at_chance_and_small_for_matched_pairs():
    b = 8
    same = torch.nn.functional.normalize(torch.ones(b, 4), dim=-1)  # nothing tells the moments apart
    loss, a2v, v2a = info_nce(same, same, 0.07)
    assert loss.item() == pytest.approx(math.log(b), abs=1e-5)
    eye = torch.eye(b)  # each clip aligned with its own frames only
    loss, a2v, v2a = info_nce(eye, eye, 0.07)
    assert loss.item() < 0.01 and a2v == v2a == 1.0
    shifted = torch.roll(eye, 1, dims=0)  # every clip nearest to another moment's frames
    loss, a2v, v2a = info_nce(eye, shifted, 0.07)
    assert loss.item() > math.log(b) and a2v == v2a == 0.0


def test_pretraining_learns_to_pair_clips_with_their_frames(pretrained, _template):
    result, steps = pretrained
    chance = math.log(BATCH)
    assert abs(steps[0] - chance) < 0.3  # random encoders: about chance
    assert result.losses[-1] < chance and result.losses[-1] < result.losses[0]
    assert sum(steps[-3:]) / 3 < chance
    ret = result.record["retrieval"]
    assert ret["on"].startswith("held-out validation episodes")  # the split's validation episode
    before, after = ret["before"], ret["after"]
    assert after["chance_top1"] == pytest.approx(1 / BATCH)
    # Held out: 32 pairs of one 4 s episode, so top-1 moves in steps of 1/32; the loss is the finer measure.
    assert after["audio_to_video_top1"] > before["audio_to_video_top1"] and after["loss"] < before["loss"] - 0.1
    record = json.loads((result.record_path).read_text())
    assert record["made_by"] == MADE_BY and record["preset"] == "tiny" and record["epochs"] == 3
    assert record["seed"] == 0 and record["final_loss"] == result.losses[-1] and record["labels"].startswith("ignored")
    assert record["episodes"] == json.loads((_template / "htouch.json").read_text())["split"]["train"]


def test_files_have_the_released_layouts_and_initialise_a_policy(pretrained, _template, tmp_path):
    result, _ = pretrained
    out = result.r3m.parent
    r3m = torch.load(out / R3M_FILE, weights_only=True)
    avid = torch.load(out / AVID_FILE, weights_only=True)
    assert all(k.startswith("module.convnet.") for k in r3m["r3m"]) and len(r3m["r3m"]) == 120
    assert all(k.startswith("module.audio_model.") for k in avid["model"]) and len(avid["model"]) == 54
    assert json.loads(r3m[PRETRAINING_KEY])["made_by"] == MADE_BY and avid["epoch"] == 3

    policy = build_policy(policy_config("tiny", "frozen-audio"))
    assert load_r3m_encoder(out / R3M_FILE, policy.image_encoder).made_by["preset"] == "tiny"
    assert load_avid_audio(out / AVID_FILE, policy.audio_encoder).loaded == 54
    for mine, theirs in ((policy.image_encoder, result.policy.image_encoder),
                         (policy.audio_encoder, result.policy.audio_encoder)):
        for k, v in theirs.state_dict().items():
            assert torch.equal(mine.state_dict()[k], v), k

    paper = build_policy(policy_config("paper", "ours"))
    with pytest.raises(HtouchError, match=r"has shape .*made by `htouch pretrain av` \(tiny preset") as e:
        load_r3m_encoder(out / R3M_FILE, paper.image_encoder)
    assert "\n" not in str(e.value)

    # the training session starts (epoch 0) from exactly these weights, and says so
    session = Session(TrainConfig(dataset=_template, run_dir=tmp_path / "run", method="ours", preset="tiny",
                                  epochs=1, batch_size=BATCH, stride=4, r3m=result.r3m, avid=result.avid, threads=1,
                                  device="cpu"))
    for k, v in result.policy.image_encoder.state_dict().items():
        assert torch.equal(session.model.image_encoder.state_dict()[k], v), k
    for k, v in result.policy.audio_encoder.state_dict().items():
        assert torch.equal(session.model.audio_encoder.state_dict()[k], v), k
    assert set(session.encoder_pretraining) == {"image_encoder", "audio_encoder"}
    labels = describe_initialisation(session.encoder_origin, session.encoder_pretraining)
    assert labels["image_encoder"].startswith(f"{LABEL}: `{MADE_BY}` (tiny preset, 3 epochs on ")


def test_initialisation_labels_tell_files_random_and_in_domain_apart(tmp_path):
    policy = build_policy(policy_config("tiny", "ours"))
    r3m = tmp_path / "r3m_resnet18.pt"
    torch.save({"r3m": {f"module.convnet.{k}": v for k, v in policy.image_encoder.state_dict().items()}}, r3m)
    reports, origin = load_pretrained(policy, {"r3m": r3m, "avid": None}, allow_random=True)
    assert pretraining_of(reports) == {}  # a third-party file carries no record
    assert describe_initialisation(origin, pretraining_of(reports)) == {"image_encoder": "R3M file (r3m_resnet18.pt)",
                                                                        "audio_encoder": "random"}
    vision = build_policy(policy_config("tiny", "vision-only"))
    _, origin = load_pretrained(vision, {}, allow_random=True)
    assert describe_initialisation(origin)["audio_encoder"] == "none (no audio)"
    # a damaged record is refused with one line
    torch.save({"r3m": {f"module.convnet.{k}": v for k, v in policy.image_encoder.state_dict().items()},
                PRETRAINING_KEY: "{not json"}, r3m)
    with pytest.raises(HtouchError, match="'htouch' entry is not the JSON record"):
        load_r3m_encoder(r3m, policy.image_encoder)


def test_cli_pretrain_then_train_records_the_initialisation(ds, tmp_path, cli, monkeypatch):
    out = tmp_path / "pre"
    r = cli("pretrain", "av", ds.root, "--out", out, "--preset", "tiny", "--epochs", "1", "--batch-size", "8",
            "--stride", "6", "--threads", "1")
    assert r.code == 0, r.err
    assert "wrote" in r.out and "chance" in r.out and (out / RECORD_FILE).is_file()
    again = pretrain_av(AvConfig(dataset=ds.root, out=tmp_path / "again", preset="tiny", epochs=1, batch_size=8,
                                 stride=6, threads=1))  # seeded: the same files again
    first = torch.load(out / R3M_FILE, weights_only=True)["r3m"]
    assert all(torch.equal(v, torch.load(again.r3m, weights_only=True)["r3m"][k]) for k, v in first.items())
    assert again.losses == json.loads((out / RECORD_FILE).read_text())["losses"]
    run = tmp_path / "run"
    monkeypatch.setenv(WEIGHTS_ENV, str(out))  # the weights directory: train finds r3m.pt and avid.pt there
    r = cli("weights")
    assert r.code == 0, r.err
    listed = {line.split("\t")[0]: line.split("\t") for line in r.out.splitlines()[1:]}
    assert listed["r3m"][2] == "found" and listed["r3m"][3] == file_sha256(out / R3M_FILE)
    assert listed["avid"][2] == "found" and listed["byol-a"][2] == "missing"
    r = cli("train", ds.root, "--method", "frozen-audio", "--preset", "tiny", "--run", run, "--epochs", "1",
            "--batch-size", "16", "--frozen-encoders", "--threads", "1", "--stride", "4")
    assert r.code == 0, r.err
    assert "made by `htouch pretrain av`" in r.out and "(from the weights directory)" in r.out
    files = json.loads((run / "run.json").read_text())["encoder_files"]
    assert files == {kind: {"path": str((out / name).resolve()), "sha256": file_sha256(out / name)}
                     for kind, name in (("r3m", R3M_FILE), ("avid", AVID_FILE))}
    _, extra = read_run_config(run)
    assert extra["random_init"] == [] and extra["encoders"]["audio_encoder"].startswith("avid: ")
    assert extra["encoder_pretraining"]["audio_encoder"]["made_by"] == MADE_BY
    r = cli("train", ds.root, "--method", "frozen-audio", "--preset", "tiny", "--run", run, "--epochs", "2",
            "--batch-size", "16", "--frozen-encoders", "--threads", "1", "--stride", "4", "--resume")
    assert r.code == 0, r.err
    record = json.loads((run / "run.json").read_text())
    assert record["encoder_pretraining"]["image_encoder"]["made_by"] == MADE_BY  # kept across --resume

    r = cli("pretrain", "av", ds.root, "--out", out, "--preset", "tiny", "--epochs", "1")
    assert r.code == 2 and "--force" in r.err
    r = cli("train", ds.root, "--method", "ours", "--preset", "paper", "--r3m", out / R3M_FILE, "--avid",
            out / AVID_FILE, "--run", tmp_path / "paper", "--epochs", "1", "--frozen-encoders", "--threads", "1",
            "--stride", "8")
    assert r.code == 2 and "tiny preset" in r.err and len(r.err.strip().splitlines()) == 1


def test_bad_input_gets_one_line(tmp_path, cli, ds):
    silent = tiny_dataset(tmp_path / "silent", n=2, seconds=3.0, audio_gaps=((0.0, 100.0),))
    r = cli("pretrain", "av", silent.root, "--out", tmp_path / "o", "--preset", "tiny")
    assert r.code == 2 and "has no audio" in r.err and len(r.err.strip().splitlines()) == 1
    write_synthetic_episode(silent, SyntheticEpisode(duration_s=3.0, seed=7))  # one episode that has sound
    r = cli("pretrain", "av", silent.root, "--out", tmp_path / "mixed", "--preset", "tiny", "--epochs", "1",
            "--batch-size", "8", "--stride", "4", "--threads", "1")
    assert r.code == 0, r.err
    assert "2 episode(s) without audio left out" in r.out
    assert json.loads((tmp_path / "mixed" / RECORD_FILE).read_text())["episodes"] == [2]
    r = cli("pretrain", "av", ds.root, "--out", tmp_path / "o", "--preset", "tiny", "--batch-size", "500")
    assert r.code == 2 and "do not fill one batch of 500" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("pretrain", "av", ds.root, "--out", tmp_path / "o", "--preset", "tiny", "--batch-size", "1")
    assert r.code == 2 and "--batch-size must be at least 2" in r.err
    r = cli("pretrain", "av", ds.root, "--out", tmp_path / "o", "--preset", "medium")
    assert r.code == 2 and "unknown model preset" in r.err
    (tmp_path / "file").write_text("x")
    r = cli("pretrain", "av", ds.root, "--out", tmp_path / "file", "--preset", "tiny")
    assert r.code == 2 and "not a directory" in r.err
    assert not (tmp_path / "o").exists()  # nothing written by a refused run


def test_byol_a_files_carry_their_record_too(tmp_path):
    from htouch.training.byol_a import MADE_BY as BYOL_MADE_BY
    from htouch.training.byol_a import save_encoder
    from htouch.training.checkpoints import load_byol_a

    policy = build_policy(policy_config("tiny", "byol-a"))
    out = tmp_path / "byol.safetensors"
    # as written before the record named its maker: only `htouch pretrain byol-a` writes this metadata
    save_encoder(policy.audio_encoder, out, {"preset": "tiny", "dataset": "/data/demos", "epochs": 5, "seed": 0})
    report = load_byol_a(out, policy.audio_encoder)
    assert report.made_by["made_by"] == BYOL_MADE_BY
    labels = describe_initialisation({"audio_encoder": f"byol-a: {out}"}, {"audio_encoder": report.made_by})
    assert labels == {"audio_encoder": f"in-domain BYOL-A: `{BYOL_MADE_BY}` (tiny preset, 5 epochs on demos, seed 0)"}
    plain = tmp_path / "byol.pth"  # BYOL-A's released layout: no record
    torch.save(policy.audio_encoder.state_dict(), plain)
    assert load_byol_a(plain, policy.audio_encoder).made_by is None
