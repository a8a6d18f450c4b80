"""The policy network: the paper's shapes and parameter count, each method's wiring, input checks, and
that encoding frames one at a time (as the runner's cache does) gives the same actions as a batch forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from htouch.dataset import audio
from htouch.dataset.stats import compute_stats
from htouch.errors import HtouchError
from htouch.training.methods import METHODS, PRESETS, PolicyConfig, policy_config
from htouch.training.model import ActionNormalization, build_policy, count_parameters, describe, preprocess_frames

TINY = PRESETS["tiny"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread: on a shared 2-core machine two threads contend and run these tiny models slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spectrogram(config: PolicyConfig, batch: int, seed: int = 0) -> torch.Tensor | None:
    if not config.uses_audio:
        return None
    rng = np.random.default_rng(seed)
    clips = [rng.normal(0, 0.1, audio.DEFAULT_CLIP.n_samples).astype(np.float32) for _ in range(batch)]
    params = audio.spectrogram_params(config.audio_kind)
    return torch.from_numpy(np.stack([audio.spectrogram(c, audio.DEFAULT_CLIP.rate_hz, params) for c in clips]))


def _frames(config: PolicyConfig, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.n_frames, 3, config.image_size, config.image_size, generator=g)


def test_paper_model_parameter_count_and_parts():
    torch.manual_seed(0)
    model = build_policy(policy_config("paper", "ours"))
    n = count_parameters(model)
    print(describe(model))
    assert 18e6 <= n["total"] <= 23e6  # the paper: "around 20M parameters"
    assert n["total"] == n["trainable"] == sum(v for k, v in n.items() if k not in ("total", "trainable"))
    # R3M's ResNet18 trunk (120 tensors, 11.18M) and AVID's Conv2D (54 tensors, 4.73M), unchanged.
    assert len(model.image_encoder.state_dict()) == 120 and round(n["image_encoder"] / 1e4) == 1118
    assert len(model.audio_encoder.state_dict()) == 54 and round(n["audio_encoder"] / 1e4) == 473
    assert n["projections"] == 0  # both encoders are 512-d, the token width
    block = model.fusion
    assert isinstance(block, torch.nn.TransformerEncoderLayer) and block.norm_first
    assert block.self_attn.num_heads == 8 and block.linear1.out_features == 512  # MLP ratio 1
    assert model.pos_embedding.shape == (1, 5, 512)
    # one forward at the paper's sizes: 4 frames of 224 px and the AVID (1, 200, 257) spectrogram
    with torch.no_grad():
        out = model.eval()(_frames(model.config, 1), _spectrogram(model.config, 1))
    assert out.shape == (1, model.config.horizon, 7) and torch.isfinite(out).all()


def test_mlp_fusion_is_parameter_matched():
    ours = count_parameters(build_policy(policy_config("paper", "ours")))
    mlp = count_parameters(build_policy(policy_config("paper", "mlp-fusion")))
    assert abs(mlp["fusion"] - ours["fusion"]) / ours["fusion"] < 0.01
    assert abs(mlp["total"] - ours["total"]) / ours["total"] < 0.01


@pytest.mark.parametrize("method", METHODS)
def test_every_method_predicts_the_action_chunk(method):
    torch.manual_seed(0)
    config = policy_config("tiny", method, horizon=5)
    model = build_policy(config).eval()
    with torch.no_grad():
        out = model(_frames(config, 3), _spectrogram(config, 3))
    assert out.shape == (3, 5, 7) and torch.isfinite(out).all()
    assert model.pos_embedding.shape[1] == (4 if method == "vision-only" else 5)
    if method == "vision-only":
        assert model.audio_encoder is None and model.encode_audio(None) is None
    else:
        with pytest.raises(ValueError, match="needs the"):
            model(_frames(config, 1), None)


def test_action_dim_6_without_gripper():
    config = policy_config("tiny", "ours", action_dim=6, horizon=3)
    with torch.no_grad():
        assert build_policy(config).eval()(_frames(config, 2), _spectrogram(config, 2)).shape == (2, 3, 6)


@pytest.mark.parametrize("method", ["ours", "vision-only", "byol-a"])
def test_cached_frame_embeddings_give_the_same_actions(method):
    """The runner encodes each frame once and calls head(); that must equal forward() on the stack."""
    torch.manual_seed(1)
    config = policy_config("tiny", method)
    model = build_policy(config).eval()
    frames, spectrogram = _frames(config, 2), _spectrogram(config, 2)
    with torch.no_grad():
        full = model(frames, spectrogram)
        one_by_one = torch.stack([torch.cat([model.encode_frames(f[i:i + 1]) for i in range(4)]) for f in frames])
        pieced = model.head(one_by_one, model.encode_audio(spectrogram))
    torch.testing.assert_close(pieced, full, rtol=1e-4, atol=1e-5)


def test_training_moves_every_trainable_part_and_frozen_audio_stays_put():
    torch.manual_seed(0)
    for method in ("ours", "frozen-audio"):
        config = policy_config("tiny", method, dropout=0.0)
        model = build_policy(config).train()
        frozen_before = {k: v.clone() for k, v in model.audio_encoder.state_dict().items()}
        frames, spectrogram = _frames(config, 4), _spectrogram(config, 4)
        target = torch.randn(4, config.horizon, 7)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        losses = []
        for _ in range(15):
            loss = torch.nn.functional.mse_loss(model(frames, spectrogram), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.7 * losses[0]
        for name, p in model.named_parameters():
            if method == "frozen-audio" and name.startswith("audio_encoder."):
                assert not p.requires_grad and p.grad is None
            else:
                assert p.grad is not None and p.grad.abs().sum() > 0, name
        after = model.audio_encoder.state_dict()
        same = all(torch.equal(frozen_before[k], after[k]) for k in after)
        assert same == (method == "frozen-audio")  # frozen: weights AND BatchNorm running statistics
        assert model.audio_encoder.training == (method != "frozen-audio")


def test_spectrogram_statistics_normalise_inside_the_model(tiny_ds):
    torch.manual_seed(0)
    config = policy_config("tiny", "ours")
    model = build_policy(config).eval()
    frames, spectrogram = _frames(config, 2), _spectrogram(config, 2)
    with torch.no_grad():
        before = model(frames, spectrogram)
    stats, _ = compute_stats(tiny_ds, kinds=("avid",), max_windows=8)
    model.set_spectrogram_stats(stats["spectrogram"]["avid"])
    assert torch.allclose(model.spec_mean, torch.tensor(stats["spectrogram"]["avid"]["mean"], dtype=torch.float32))
    assert "spec_mean" in model.state_dict()  # saved with the weights
    with torch.no_grad():
        assert not torch.allclose(model(frames, spectrogram), before)
    with pytest.raises(HtouchError, match="needs avid with 257 bins"):
        model.set_spectrogram_stats({"kind": "logmel", "mean": [0.0] * 64, "std": [1.0] * 64})
    with pytest.raises(HtouchError, match="htouch stats"):
        model.set_spectrogram_stats({})
    with pytest.raises(ValueError, match="257 bins"):
        model.encode_audio(torch.zeros(2, 64, 201))  # a log-mel given to the AVID encoder


def test_action_normalization_from_dataset_stats(tiny_ds):
    stats, _ = compute_stats(tiny_ds, kinds=())
    norm = ActionNormalization.from_stats(stats)
    assert len(norm.mean) == 7
    assert norm.mean[:6] == pytest.approx(stats["action"]["delta_ee"]["mean"])
    a = np.random.default_rng(0).normal(size=(8, 7))
    np.testing.assert_allclose(norm.denormalize(norm.normalize(a)), a)
    t = torch.from_numpy(a)
    torch.testing.assert_close(norm.denormalize(norm.normalize(t)), t)
    constant = ActionNormalization([1.0, 2.0], [0.0, float("nan")])
    assert constant.std == [1.0, 1.0]  # constant dimensions are only centred
    assert ActionNormalization.from_stats(stats, action_dim=6).mean == norm.mean[:6]
    assert ActionNormalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(HtouchError, match="htouch stats"):
        ActionNormalization.from_stats({})


def test_preprocess_frames():
    rgb = np.zeros((2, 48, 64, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    x = preprocess_frames(rgb, 32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.ones(1)) and torch.allclose(x[:, 1:], torch.zeros(1))
    same = preprocess_frames(np.full((32, 32, 3), 51, np.uint8), 32)
    assert same.shape == (3, 32, 32) and torch.allclose(same, torch.full((1,), 0.2))
    with pytest.raises(ValueError, match="RGB"):
        preprocess_frames(np.zeros((4, 32, 32)), 32)


def test_config_round_trip_and_errors():
    c = policy_config("tiny", "byol-a", horizon=4)
    assert PolicyConfig.from_dict(c.to_dict()) == c
    assert c.audio_kind == "byol-a" and policy_config("tiny", "ours").audio_kind == "avid"
    assert policy_config("tiny", "vision-only").audio_kind is None
    for kw, msg in [(dict(method="transformer"), "unknown method"), (dict(width=30, heads=4), "divisible"),
                    (dict(horizon=0), "at least 1"), (dict(action_dim=3), "action_dim"),
                    (dict(dropout=1.0), "dropout")]:
        with pytest.raises(HtouchError, match=msg):
            PolicyConfig(**{**TINY, **kw})
    with pytest.raises(HtouchError, match="unknown model preset"):
        policy_config("huge")
    with pytest.raises(HtouchError, match="unknown fields: colour"):
        PolicyConfig.from_dict({**c.to_dict(), "colour": 1})
