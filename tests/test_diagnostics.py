"""Does the audio reach the policy? The evaluation's audio ablation (silent: the policy hears silence while the
episode records the real audio; shuffled: another episode's audio at another time, the same per seed; a policy
without audio refused), the contact labels against the synthetic writer's ground truth, the episode bootstrap
against scikit-learn's AUC, the contact probe (above chance on known contacts, at chance on permuted labels, a
dataset without the events refused) and the t-SNE picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from htouch.collector.devices import AudioBlock, Frame
from htouch.collector.safety import SafetyFilter
from htouch.dataset.schema import NS, AudioSpec
from htouch.dataset.store import Dataset
from htouch.dataset.synthetic import SyntheticEpisode, write_synthetic_episode
from htouch.training.diagnostics import (
    SHIFT_RANGE,
    ShuffledAudio,
    SilentAudio,
    bootstrap_interval,
    contact_labels,
    contact_probe,
    episode_pair_counts,
    policy_embeddings,
    probe,
)
from htouch.training.runner import PolicyRunner
from tests.conftest import TINY_RIG
from tests.test_eval import NORM, tiny_policy
from tests.test_model import one_torch_thread  # noqa: F401 - autouse fixture
from tests.training_helpers import copy_dataset


@pytest.fixture(scope="module")
def runs(training_template, tmp_path_factory) -> dict[str, Path]:
    """Tiny `ours` and `vision-only` policies trained for one epoch on a copy of the 4-episode synthetic zip
    dataset (tests/conftest.py)."""
    from htouch.training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("diag")
    copy_dataset(training_template, root / "demos")
    out = {"demos": root / "demos"}
    for method in ("ours", "vision-only"):
        out[method] = root / method
        train(TrainConfig(dataset=root / "demos", run_dir=out[method], method=method, preset="tiny", epochs=1,
                          batch_size=16, stride=2, allow_random_init=True, threads=1))
    return out


# ---------------------------------------------------------------------------------------------- ablation


def test_silent_audio_reaches_the_policy_as_silence_only(tmp_path):
    """The runner's heard clip is zeros while its live buffer holds sound, and the policy's commands are those of
    a policy given a zero clip."""
    model, config = tiny_policy()
    spec = AudioSpec()
    heard = PolicyRunner(model, config, NORM, SafetyFilter(), audio=spec, hearing=SilentAudio())
    plain = PolicyRunner(model, config, NORM, SafetyFilter(), audio=spec)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    block = int(spec.rate_hz // 100)
    for k in range(300):  # 3 s of loud noise in 10 ms blocks
        heard.buffer.add_audio(AudioBlock(k * block * NS // int(spec.rate_hz),
                                          rng.integers(-8000, 8000, (block, spec.channels), dtype=np.int16)))
    frame = Frame(0, 0, rgb)
    heard.buffer.add_frame(frame)
    t = 3 * NS
    assert np.abs(heard.buffer.clip(t)).max() > 0.05
    silence = heard.heard_clip(t)
    assert silence.shape == heard.buffer.clip(t).shape and not silence.any()
    position = np.zeros(3)
    got = heard.step(t, position)
    want = plain.act(position, [frame] * config.n_frames, np.zeros_like(silence))
    np.testing.assert_array_equal(got.delta_ee, want.delta_ee)


def test_shuffled_audio_comes_from_another_time_of_another_episode_the_same_per_seed(tmp_path):
    ds = Dataset.create(tmp_path / "src", "zip", TINY_RIG)
    for seed in range(3):
        write_synthetic_episode(ds, SyntheticEpisode(duration_s=3.0, seed=seed))
    real = np.ones(32000, np.float32)
    shuffled = ShuffledAudio(ds, [0, 1, 2], seed=7)
    again = ShuffledAudio(ds, [0, 1, 2], seed=7)
    other = ShuffledAudio(ds, [0, 1, 2], seed=8)
    t0 = 123 * NS
    for _ in range(6):
        for s in (shuffled, again, other):
            s.reset()
        for dt in (0, NS // 2, 3 * NS):  # times into the evaluation episode
            clip = shuffled.clip(real, t0 + dt)
            np.testing.assert_array_equal(clip, again.clip(real, t0 + dt))
            other.clip(real, t0 + dt)
            draw = shuffled.draws[-1]
            ep = ds.episode(draw["episode"])
            times = ep.audio_block_times
            length = int(times[-1] - times[0])
            donor_t = shuffled.donor_time(t0 + dt)
            np.testing.assert_array_equal(clip, ep.audio_clip(donor_t))  # the donor's real audio there
            shift = (donor_t - int(times[0]) - dt) % length  # another time: a quarter to three quarters away
            assert SHIFT_RANGE[0] * length - 1 <= shift <= SHIFT_RANGE[1] * length + 1
            assert shift == pytest.approx(draw["shift_s"] * NS, abs=1e5)
            assert not np.array_equal(clip, real)
    assert shuffled.draws == again.draws and shuffled.draws != other.draws
    assert len({d["episode"] for d in shuffled.draws}) > 1  # the donor episode is drawn, not fixed


def test_eval_silent_records_real_audio_and_names_its_results(cli, runs, tmp_path):
    record = tmp_path / "rollouts"
    r = cli("eval", runs["ours"], "--episodes", "1", "--max-seconds", "1.5", "--threads", "1", "--audio", "silent",
            "--record", record)
    assert r.code == 0, r.err
    assert "audio silent" in r.out and "digital silence" in r.out
    path = runs["ours"] / "eval-zip-train-silent.json"
    assert "eval-zip-train-silent.json" in r.out and not (runs["ours"] / "eval-zip-train.json").exists()
    doc = json.loads(path.read_text())
    assert doc["audio"] == "silent" and doc["audio_condition"]["condition"] == "silent"
    pcm = Dataset(record).episode(0).read("audio/pcm")  # the episode still records what the rig heard
    assert len(pcm) > 0 and pcm.std() > 0


def test_eval_shuffled_draws_training_episodes_deterministically(cli, runs, tmp_path):
    from htouch.training.diagnostics import audio_condition
    from htouch.training.policy_source import RunInfo

    out = tmp_path / "shuffled.json"
    r = cli("eval", runs["ours"], "--episodes", "2", "--max-seconds", "1", "--threads", "1", "--audio", "shuffled",
            "--seed", "5", "--out", out)
    assert r.code == 0, r.err
    assert "audio shuffled" in r.out
    doc = json.loads(out.read_text())
    info = RunInfo.read(runs["ours"])
    heard = doc["audio_condition"]
    assert doc["audio"] == "shuffled" and heard["source"] == str(runs["demos"].resolve())
    assert [d["episode"] in info.train_episodes for d in heard["per_episode"]] == [True, True]
    expected = audio_condition("shuffled", info, seed=5)
    for _ in range(2):
        expected.reset()
    assert heard["per_episode"] == expected.draws


def test_audio_ablation_refuses_a_policy_without_audio_and_bad_options(cli, runs, tmp_path):
    for condition in ("silent", "shuffled"):
        r = cli("eval", runs["vision-only"], "--audio", condition, "--episodes", "1")
        assert r.code == 2 and "hears no audio" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("eval", runs["ours"], "--audio", "loud")
    assert r.code == 2 and "--audio must be one of real, silent, shuffled, not 'loud'" in r.err
    r = cli("eval", runs["ours"], "--audio-from", runs["demos"])
    assert r.code == 2 and "--audio-from goes with --audio shuffled" in r.err
    r = cli("eval", runs["ours"], "--audio", "shuffled", "--audio-from", tmp_path / "nothing")
    assert r.code == 2 and "nothing" in r.err and len(r.err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------- labels, AUC


def test_contact_labels_follow_the_synthetic_ground_truth(tmp_path):
    ds = Dataset.create(tmp_path / "ds", "zip", TINY_RIG)
    index, truth = write_synthetic_episode(ds, SyntheticEpisode(duration_s=6.0, seed=3))
    ep = ds.episode(index)
    start = SyntheticEpisode().start_ns
    t = np.arange(0, 6.0, 0.01)
    for window in (0.0, 0.5):
        want = np.zeros(len(t), bool)
        for onset, end, _ in truth.contacts:
            want |= (t >= onset) & (t - window <= end)
        got = contact_labels(ep, start + np.round(t * NS).astype(np.int64), window_s=window)
        edges = np.array([x for onset, end, _ in truth.contacts for x in (onset, end + window)])
        near = np.abs(t[:, None] - edges[None]).min(axis=1) < 1e-3  # rounding of the stored event times
        np.testing.assert_array_equal(got[~near], want[~near])
        assert want.any() and not want.all()
    assert not contact_labels(ep, start + np.array([NS]), event="touch").any()


def test_episode_bootstrap_matches_sklearn_auc():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(6), 40)
    y = rng.random(len(groups)) < 0.4
    scores = np.round(rng.random(len(groups)) + 0.5 * y, 1)  # with ties
    counts, p, q = episode_pair_counts(y, scores, groups)
    assert counts.sum() / (p.sum() * q.sum()) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    w = np.array([2, 0, 1, 0, 3, 0])
    idx = np.concatenate([np.flatnonzero(groups == g) for g in range(6) for _ in range(w[g])])
    assert w @ counts @ w / ((w @ p) * (w @ q)) == pytest.approx(roc_auc_score(y[idx], scores[idx]), abs=1e-12)
    low, high = bootstrap_interval(y, scores, groups, n=300)
    assert low < roc_auc_score(y, scores) < high and bootstrap_interval(y, scores, groups, n=300) == (low, high)


def test_probe_beats_chance_on_separable_features_and_not_on_permuted_labels():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(8), 50)
    y = rng.random(len(groups)) < 0.5
    x = rng.normal(size=(len(y), 16))
    x[:, 3] += 1.5 * y
    good = probe(x, y, groups, "informative", bootstrap=300)
    assert good.auc > 0.8 and good.ci_low > 0.7 and good.folds == 5 and good.episodes == 8
    chance = probe(x, rng.permutation(y), groups, "permuted", bootstrap=300)
    assert 0.4 < chance.auc < 0.6 and chance.ci_low < 0.5 < chance.ci_high
    with pytest.raises(Exception, match="needs at least 2"):
        probe(x, y, np.zeros(len(y)))
    with pytest.raises(Exception, match="probe needs both"):
        probe(x, np.zeros(len(y), bool), groups)


# ---------------------------------------------------------------------------------------------- probe command


def test_probe_finds_the_known_contacts_in_a_trained_policy(runs):
    emb = policy_embeddings(runs["ours"], stride=4)
    assert emb.audio is not None and emb.audio.shape == emb.image.shape and emb.fused.shape[1] == 5 * 64
    assert 0 < emb.contact.mean() < 1 and set(np.unique(emb.episode)) == {0, 1, 2, 3}
    assert emb.phase.min() >= 0 and emb.phase.max() <= 1
    report = contact_probe(emb, bootstrap=300)
    probes = {p.features: p for p in report.probes}
    assert set(probes) == {"audio", "image", "fused", "audio, shuffled labels"}
    assert probes["audio"].auc > 0.75 and probes["audio"].ci_low > 0.5  # synthetic contacts are loud
    control = probes["audio, shuffled labels"]  # chance, far below the real labels' probe (4 episodes: its
    assert 0.3 < control.auc < 0.7 and control.auc < probes["audio"].ci_low  # interval is too coarse to test)


def test_probe_command_writes_json_and_a_tsne_picture(cli, runs, tmp_path):
    out, plot = tmp_path / "probe.json", tmp_path / "tsne.png"
    r = cli("probe", runs["vision-only"], runs["demos"], "--json", "--out", out, "--plot", plot, "--bootstrap", "200")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc == json.loads(out.read_text())
    assert doc["method"] == "vision-only" and doc["event"] == "contact" and doc["window_s"] == 0.5
    assert [p["features"] for p in doc["probes"]] == ["image", "fused", "image, shuffled labels"]
    assert any("hears no audio" in n for n in doc["notes"])
    from matplotlib.image import imread

    img = imread(plot)
    assert img.shape[0] > 300 and img.shape[1] > 600
    red = (img[..., 0] > 0.7) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3)  # contact points
    assert red.sum() > 50 and len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 50


def test_probe_refuses_a_dataset_without_contact_events(cli, runs, tmp_path):
    r = cli("probe", runs["ours"], runs["demos"], "--event", "touch")
    assert r.code == 2 and "no episode has 'touch' events" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("probe", runs["ours"], tmp_path / "nothing")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    r = cli("probe", runs["ours"], "--plot", tmp_path / "x.txt", "--bootstrap", "10")
    assert r.code == 2 and ".png" in r.err
