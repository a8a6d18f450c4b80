"""In-domain BYOL-A pretraining: the augmentations do what BYOL-A's do, the BYOL loss falls, and the file it
writes is what `htouch train --method byol-a --byol-a FILE` loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch

from htouch.dataset.episode import SampleParams
from htouch.dataset.stats import compute_stats, store_stats
from htouch.errors import HtouchError
from htouch.training.byol_a import (
    Byol,
    ByolaConfig,
    MixupMemory,
    log_mixup_exp,
    pretrain_byol_a,
    random_resize_crop,
)
from htouch.training.checkpoints import load_byol_a, read_run_config
from htouch.training.encoders import AudioNTT2020
from htouch.training.methods import policy_config
from htouch.training.model import build_policy
from tests.training_helpers import copy_dataset


@pytest.fixture(scope="module")
def _template(training_template, tmp_path_factory) -> Path:
    """The training dataset (tests/conftest.py) with BYOL-A's statistics in place of AVID's."""
    root = tmp_path_factory.mktemp("pretrain") / "ds"
    ds = copy_dataset(training_template, root)
    stats, _ = compute_stats(ds, ["byol-a"])
    store_stats(ds, stats)
    return root


@pytest.fixture
def ds(_template, tmp_path):
    return copy_dataset(_template, tmp_path / "ds")


def test_mixup_mixes_in_the_linear_domain_with_past_inputs():
    g = torch.Generator().manual_seed(0)
    mix = MixupMemory(ratio=0.4, size=3, generator=g)
    x = torch.randn(4, 1, 8, 10)
    assert torch.equal(mix(x), x)  # nothing remembered yet
    mix.remember(x)
    assert mix.bank.shape[0] == 3 and torch.equal(mix.bank, x[-3:])  # the newest `size` inputs
    same = torch.full((2, 1, 8, 10), -1.5)
    mix.bank = same[:1].clone()
    torch.testing.assert_close(mix(same), same, atol=1e-5, rtol=0)  # mixing a sound with itself
    loud, quiet = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), -30.0)
    half = log_mixup_exp(loud, quiet, torch.tensor(0.5))
    torch.testing.assert_close(half, torch.full((1, 1, 2, 2), math.log(0.5 + 0.5 * math.exp(-30.0))))


def test_random_resize_crop_keeps_the_shape_and_is_the_identity_without_scaling():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 16, 20)
    out = random_resize_crop(x, (1.0, 1.5), (0.6, 1.5), g)
    assert out.shape == x.shape and not torch.allclose(out, x)
    torch.testing.assert_close(random_resize_crop(x, (1.0, 1.0), (1.0, 1.0), g), x)


def test_target_is_an_exponential_moving_average_of_the_online_network():
    byol = Byol(AudioNTT2020(16, 8, 4), projection=4, hidden=8)
    before = [p.clone() for p in byol.target.parameters()]
    with torch.no_grad():
        for p in byol.encoder.parameters():
            p.add_(1.0)
    byol.update_target(0.75)
    online = list(torch.nn.Sequential(byol.encoder, byol.projector).parameters())
    for t, b, o in zip(byol.target.parameters(), before, online, strict=True):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * o)
    assert not any(p.requires_grad for p in byol.target.parameters())


def test_pretraining_lowers_the_byol_loss_and_writes_byol_a_weights(ds, tmp_path):
    out = tmp_path / "byol.safetensors"
    result = pretrain_byol_a(ByolaConfig(dataset=ds.root, out=out, preset="tiny", epochs=3, batch_size=32,
                                         hidden=256, seed=0, threads=1, stride=2))
    assert len(result.losses) == 3 and result.losses[-1] < result.losses[0]
    train = ds.metadata["split"]["train"]
    assert result.n_windows == sum(len(ds.episode(i).sample_times(SampleParams(), stride=2)) for i in train)
    policy = build_policy(policy_config("tiny", "byol-a"))
    report = load_byol_a(out, policy.audio_encoder)
    assert report.loaded == len(result.encoder.state_dict())
    for k, v in result.encoder.state_dict().items():
        assert torch.equal(policy.audio_encoder.state_dict()[k], v)
    with safetensors.safe_open(str(out), "pt") as f:
        meta = json.loads(f.metadata()["htouch"])
    assert meta["spectrogram"] == "byol-a" and meta["episodes"] == ds.metadata["split"]["train"]
    # a plain torch state dict for other names (the layout of BYOL-A's released .pth files)
    pth = tmp_path / "byol.pth"
    pretrain_byol_a(ByolaConfig(dataset=ds.root, out=pth, preset="tiny", epochs=1, batch_size=16, hidden=64, threads=1,
                                stride=8))
    assert load_byol_a(pth, build_policy(policy_config("tiny", "byol-a")).audio_encoder).loaded == report.loaded
    with pytest.raises(HtouchError, match="exists; add --force"):
        pretrain_byol_a(ByolaConfig(dataset=ds.root, out=pth, preset="tiny", epochs=1))


def test_cli_pretrain_then_train_the_byol_a_baseline(ds, tmp_path, cli):
    out = tmp_path / "enc.safetensors"
    r = cli("pretrain", "byol-a", ds.root, "--out", out, "--preset", "tiny", "--epochs", "1", "--batch-size", "32",
            "--stride", "6", "--threads", "1")
    assert r.code == 0, r.err
    assert "AudioNTT2020" in r.out and out.is_file()
    r = cli("train", ds.root, "--method", "byol-a", "--preset", "tiny", "--byol-a", out, "--allow-random-init",
            "--run", tmp_path / "run", "--epochs", "1", "--batch-size", "32", "--frozen-encoders", "--threads", "1",
            "--stride", "4")
    assert r.code == 0, r.err
    _, extra = read_run_config(tmp_path / "run")
    assert extra["encoders"]["audio_encoder"].startswith("byol-a: ") and extra["random_init"] == ["image_encoder"]
    r = cli("pretrain", "byol-a", ds.root, "--out", out, "--preset", "tiny", "--epochs", "1")
    assert r.code == 2 and "--force" in r.err
    r = cli("pretrain", "byol-a", ds.root, "--out", tmp_path / "x.safetensors", "--preset", "medium")
    assert r.code == 2 and "unknown model preset" in r.err
