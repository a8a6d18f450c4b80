"""Pretrained checkpoint files in the exact upstream layouts (R3M, AVID, BYOL-A), built here from our own
encoders' state dicts with the upstream prefixes and extra entries; wrong layouts and code-running pickles
refused; run checkpoints (safetensors + JSON) round-trip and refuse a missing or corrupt run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torchvision.models import resnet18 as torchvision_resnet18

from htouch.errors import HtouchError
from htouch.training.checkpoints import (
    AVID_PREFIX,
    R3M_PREFIX,
    load_avid_audio,
    load_byol_a,
    load_pretrained,
    load_r3m_encoder,
    load_run_checkpoint,
    read_run_config,
    save_run_checkpoint,
)
from htouch.training.encoders import AudioNTT2020, AvidConv2D, resnet18
from htouch.training.methods import policy_config
from htouch.training.model import ActionNormalization, build_policy
from tests.test_model import one_torch_thread  # noqa: F401 - autouse fixture


def _randomised(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The module's state dict with every float tensor replaced by random values (so arrival is checkable)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in module.state_dict().items()}


def r3m_file(path: Path, trunk_state: dict[str, torch.Tensor], prefix: str = R3M_PREFIX, **save_kw) -> Path:
    """R3M's released layout: {'r3m': DataParallel state dict} with the trunk under module.convnet. and the
    language reward head (and, in some files, the language encoder) beside it."""
    g = torch.Generator().manual_seed(7)
    state = {prefix + k: v for k, v in trunk_state.items()}
    state.update({"module.lang_rew.pred.0.weight": torch.randn(1024, 1280, generator=g),
                  "module.lang_rew.pred.0.bias": torch.randn(1024, generator=g),
                  "module.lang_enc.model.embeddings.word_embeddings.weight": torch.randn(10, 8, generator=g)})
    torch.save({"r3m": state}, path, **save_kw)
    return path


def avid_file(path: Path, audio_state: dict[str, torch.Tensor], with_criterion: bool = True, **save_kw) -> Path:
    """AVID-CMA's layout: {'epoch', 'model', 'optimizer', 'train_criterion'}; 'model' holds the wrapper with
    the video network, the audio network under module.audio_model. and the projection heads."""
    g = torch.Generator().manual_seed(8)
    model = {"module.video_model.conv1.0.weight": torch.randn(45, 3, 1, 7, 7, generator=g),
             "module.video_model.conv1.1.running_mean": torch.zeros(45)}
    model.update({AVID_PREFIX + k: v for k, v in audio_state.items()})
    for head in ("video_proj", "audio_proj"):
        for i in (0, 2, 4):
            model[f"module.{head}.projection.{i}.weight"] = torch.randn(16, 16, generator=g)
            model[f"module.{head}.projection.{i}.bias"] = torch.randn(16, generator=g)
    ckpt = {"epoch": 200, "model": model,
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                          "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0]}]}}
    if with_criterion:  # the memory bank (1.8 GB upstream; small here)
        ckpt["train_criterion"] = {"memory": torch.randn(64, 128, generator=g),
                                   "view1_mem": torch.randn(64, 128, generator=g)}
    torch.save(ckpt, path, **save_kw)
    return path


def _assert_arrived(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert torch.equal(own[k], v.to(own[k].dtype)), k


# ------------------------------------------------------------------------------------------ R3M


def test_r3m_layout_loads_a_full_torchvision_resnet18(tmp_path):
    net = torchvision_resnet18(weights=None)
    trunk = {k: v for k, v in _randomised(net, 1).items() if not k.startswith("fc.")}
    assert len(trunk) == 120
    path = r3m_file(tmp_path / "r3m_18.pt", trunk)
    encoder = resnet18(64)
    report = load_r3m_encoder(path, encoder)
    _assert_arrived(encoder, trunk)
    assert report.loaded == 120 and report.layout == "R3M"
    assert report.ignored == {"module.lang_rew.": 2, "module.lang_enc.": 1}
    assert "ignored" in report.summary()


def test_r3m_tiny_encoder_and_legacy_torch_format(tmp_path):
    trunk = _randomised(resnet18(8), 2)
    path = r3m_file(tmp_path / "legacy.pt", trunk, _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    encoder = resnet18(8)
    load_r3m_encoder(path, encoder)
    _assert_arrived(encoder, trunk)


def test_wrong_r3m_layouts_are_refused(tmp_path):
    trunk = _randomised(resnet18(8), 3)
    encoder = resnet18(8)
    pristine = {k: v.clone() for k, v in encoder.state_dict().items()}
    plain = tmp_path / "plain.pt"
    torch.save(trunk, plain)  # a bare torchvision state dict, not R3M's file
    cases = [
        (plain, "not an R3M checkpoint: expected a dict with an 'r3m' entry"),
        (r3m_file(tmp_path / "prefix.pt", trunk, prefix="module.encoder."), "no keys under 'module.convnet.'"),
        (r3m_file(tmp_path / "big.pt", _randomised(resnet18(16), 3)), r"conv1.weight has shape \(16, 3, 7, 7\)"),
        (r3m_file(tmp_path / "missing.pt", {k: v for k, v in trunk.items() if k != "layer4.1.bn2.bias"}),
         r"1 missing \(e.g. module.convnet.layer4.1.bn2.bias\)"),
        (r3m_file(tmp_path / "fc.pt", {**trunk, "fc.weight": torch.zeros(3, 64)}), "1 unexpected"),
        (r3m_file(tmp_path / "nan.pt", {**trunk, "conv1.weight": torch.full_like(trunk["conv1.weight"], float("nan"))}),
         "NaN"),
        (avid_file(tmp_path / "avid.pth.tar", _randomised(AvidConv2D(8), 0)), "not an R3M checkpoint"),
        (tmp_path / "absent.pt", "no such checkpoint file"),
    ]
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    cases.append((tmp_path / "garbage.pt", "not a readable torch checkpoint"))
    for path, message in cases:
        with pytest.raises(HtouchError, match=message) as info:
            load_r3m_encoder(path, encoder)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    for k, v in encoder.state_dict().items():  # nothing half-loaded
        assert torch.equal(v, pristine[k])


class _RunsCode:
    """Pickles as a call to Path.touch: loading it without weights_only would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    for name, obj in [("evil.pt", _RunsCode(marker)), ("evil_inside.pt", {"r3m": {"x": _RunsCode(marker)}})]:
        torch.save(obj, tmp_path / name)
        with pytest.raises(HtouchError, match="refused: it holds Python objects"):
            load_r3m_encoder(tmp_path / name, resnet18(8))
        with pytest.raises(HtouchError, match="refused"):
            load_byol_a(tmp_path / name, AudioNTT2020(64, 16, 8))
    assert not marker.exists()
    # the check is real: unpickling without weights_only runs the call
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------------------------ AVID


def test_avid_layout_loads_only_the_audio_network(tmp_path):
    audio_state = _randomised(AvidConv2D(64), 4)
    assert len(audio_state) == 54
    path = avid_file(tmp_path / "AVID_AudioSet.pth.tar", audio_state)
    encoder = AvidConv2D(64)
    report = load_avid_audio(path, encoder)
    _assert_arrived(encoder, audio_state)
    assert report.loaded == 54
    assert report.ignored == {"module.video_model.": 2, "module.video_proj.": 6, "module.audio_proj.": 6}


def test_avid_without_train_criterion_and_in_legacy_format(tmp_path):
    audio_state = _randomised(AvidConv2D(8), 5)
    for name, kw in [("nocrit.pth.tar", {}), ("legacy.pth.tar", {"_use_new_zipfile_serialization": False})]:
        encoder = AvidConv2D(8)
        load_avid_audio(avid_file(tmp_path / name, audio_state, with_criterion=(name != "nocrit.pth.tar"), **kw),
                        encoder)
        _assert_arrived(encoder, audio_state)


def test_wrong_avid_layouts_are_refused(tmp_path):
    audio_state = _randomised(AvidConv2D(8), 6)
    bare = tmp_path / "bare.pt"
    torch.save({AVID_PREFIX + k: v for k, v in audio_state.items()}, bare)  # the 'model' dict alone
    cases = [
        (bare, "expected a dict with a 'model' entry"),
        (avid_file(tmp_path / "small.pth.tar", _randomised(AvidConv2D(4), 6)), "has shape"),
        (avid_file(tmp_path / "short.pth.tar", {k: v for k, v in audio_state.items() if not k.startswith("block4.")}),
         "12 missing"),
        (r3m_file(tmp_path / "r3m.pt", _randomised(resnet18(8), 0)), "not an AVID checkpoint"),
    ]
    for path, message in cases:
        with pytest.raises(HtouchError, match=message):
            load_avid_audio(path, AvidConv2D(8))


# ------------------------------------------------------------------------------------------ BYOL-A


def test_byol_a_plain_state_dict_torch_and_safetensors(tmp_path):
    upstream = AudioNTT2020(n_mels=64, d=32, channels=8)
    state = _randomised(upstream, 9)
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in state} == {
        "features.0", "features.1", "features.4", "features.5", "features.8", "features.9", "fc.0", "fc.3"}
    torch.save(state, tmp_path / "byola.pth")
    safetensors.torch.save_file(state, str(tmp_path / "byola.safetensors"))
    for name in ("byola.pth", "byola.safetensors"):
        encoder = AudioNTT2020(n_mels=64, d=32, channels=8)
        assert load_byol_a(tmp_path / name, encoder).loaded == len(state)
        _assert_arrived(encoder, state)
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    torch.save({**state, "projector.0.weight": torch.zeros(2, 2)}, tmp_path / "extra.pth")
    (tmp_path / "broken.safetensors").write_bytes(b"12345678{not json")
    for name, message in [("wrapped.pth", "not a BYOL-A checkpoint: the file is not a state dict|do not match"),
                          ("extra.pth", "1 unexpected"), ("broken.safetensors", "not a readable safetensors")]:
        with pytest.raises(HtouchError, match=message):
            load_byol_a(tmp_path / name, AudioNTT2020(n_mels=64, d=32, channels=8))
    with pytest.raises(HtouchError, match=r"fc.0.weight has shape \(32, 64\)"):  # another d / n_mels
        load_byol_a(tmp_path / "byola.pth", AudioNTT2020(n_mels=64, d=16, channels=8))


# ------------------------------------------------------------------------------------------ per method


def test_load_pretrained_follows_the_method(tmp_path):
    model = build_policy(policy_config("tiny", "ours"))
    r3m = r3m_file(tmp_path / "r3m.pt", _randomised(model.image_encoder, 10))
    avid = avid_file(tmp_path / "avid.pth.tar", _randomised(model.audio_encoder, 11))
    reports, origin = load_pretrained(model, {"r3m": r3m, "avid": avid, "byol-a": None})
    assert [r.layout for r in reports] == ["R3M", "AVID"]
    assert origin["image_encoder"].startswith("r3m: ") and origin["audio_encoder"].startswith("avid: ")
    with pytest.raises(HtouchError, match="does not use a avid checkpoint"):
        load_pretrained(build_policy(policy_config("tiny", "scratch")), {"r3m": r3m, "avid": avid})
    with pytest.raises(HtouchError, match="give the avid checkpoint"):
        load_pretrained(build_policy(policy_config("tiny", "frozen-audio")), {"r3m": r3m})
    _, origin = load_pretrained(build_policy(policy_config("tiny", "vision-only")), {}, allow_random=True)
    assert origin == {"image_encoder": "random", "audio_encoder": "none"}
    with pytest.raises(HtouchError, match="unknown pretrained"):
        load_pretrained(model, {"clip": r3m})


# ------------------------------------------------------------------------------------------ run checkpoints


def _extra() -> dict:
    return {"action_normalization": ActionNormalization([0.1] * 7, [2.0] * 7).to_dict(),
            "rig": {"camera": {"width": 64, "height": 48}}, "sample": {"n_frames": 4, "frame_window_s": 2.0}}


def test_run_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    config = policy_config("tiny", "ours", horizon=4)
    model = build_policy(config)
    model.set_spectrogram_stats({"kind": "avid", "mean": [-50.0] * 257, "std": [20.0] * 257})
    run = tmp_path / "run"
    weights = save_run_checkpoint(run, model, config, _extra())
    assert weights == run / "model.safetensors" and not list(run.glob("*.tmp*"))  # no temporary file left
    loaded, config2, extra = load_run_checkpoint(run)
    assert config2 == config and extra == _extra() and not loaded.training
    frames, spectrogram = torch.rand(2, 4, 3, 64, 64), torch.randn(2, 1, 200, 257) * 20 - 50
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames, spectrogram), model.eval()(frames, spectrogram))
    doc = json.loads((run / "config.json").read_text())
    assert doc["format"] == "htouch-policy" and doc["policy"]["method"] == "ours"
    save_run_checkpoint(run, model, config, _extra(), name="last")
    assert (run / "last.safetensors").is_file() and load_run_checkpoint(run, name="last")[1] == config


def test_run_checkpoint_errors(tmp_path):
    config = policy_config("tiny", "ours")
    model = build_policy(config)
    with pytest.raises(HtouchError, match="no such run directory"):
        load_run_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HtouchError, match="no config.json"):
        load_run_checkpoint(tmp_path / "empty")
    with pytest.raises(HtouchError, match="not plain JSON"):
        save_run_checkpoint(tmp_path / "bad-extra", model, config, {"x": object()})
    run = tmp_path / "run"
    save_run_checkpoint(run, model, config, _extra())
    good = (run / "config.json").read_text()
    # weights truncated
    blob = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(HtouchError, match="corrupt or unreadable weights"):
        load_run_checkpoint(run)
    (run / "model.safetensors").unlink()
    with pytest.raises(HtouchError, match="no weights file model.safetensors"):
        load_run_checkpoint(run)
    # weights of another network under this config
    save_run_checkpoint(run, build_policy(policy_config("tiny", "vision-only")), config, _extra())
    with pytest.raises(HtouchError, match="do not match the ours policy"):
        load_run_checkpoint(run)
    save_run_checkpoint(run, build_policy(policy_config("tiny", "ours", horizon=3)), config, _extra())
    (run / "config.json").write_text(good)
    with pytest.raises(HtouchError, match="has shape"):
        load_run_checkpoint(run)
    for text, message in [("{oops", "unreadable JSON"), ('{"format": "other"}', "not an htouch policy config"),
                          (good.replace('"version": 1', '"version": 99'), "version 99 is not supported"),
                          (good.replace('"method": "ours"', '"method": "magic"'), "unknown method 'magic'")]:
        (run / "config.json").write_text(text)
        with pytest.raises(HtouchError, match=message):
            read_run_config(run)
