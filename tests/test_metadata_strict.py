"""htouch.json and the episode attributes are strict JSON with the types readers expect: NaN and infinity are
never written (a clear error instead), a file holding them or a wrong type is refused with one line naming
the file and the key, and an episode index beyond the names' nine digits is refused instead of recorded
under a name nobody lists."""

from __future__ import annotations

import json
import math

import pytest

from htouch.dataset.schema import MAX_EPISODE_INDEX, AudioSpec, StreamSpecs, episode_name, parse_episode_name
from htouch.dataset.store import Dataset
from htouch.errors import DatasetError


def edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # Python's json writes NaN / Infinity as a careless tool would


# ------------------------------------------------------------------------------------------- writing


def test_a_rig_with_infinity_is_not_written_to_htouch_json(tmp_path):
    streams = StreamSpecs(audio=AudioSpec(scale=math.inf))
    with pytest.raises(DatasetError, match=r"htouch\.json.*audio\.scale is inf, which JSON cannot store"):
        Dataset.create(tmp_path / "ds", "zip", streams)
    assert not (tmp_path / "ds" / "htouch.json").exists()


def test_metadata_updates_are_strict_and_leave_the_file_as_it_was(tiny_ds):
    before = (tiny_ds.root / "htouch.json").read_text()
    with pytest.raises(DatasetError, match=r"stats\.mean\.1 is nan"):
        tiny_ds.update_metadata(stats={"mean": [0.0, math.nan]})
    assert (tiny_ds.root / "htouch.json").read_text() == before
    tiny_ds.update_metadata(note="fine")
    assert "NaN" not in (tiny_ds.root / "htouch.json").read_text()


def test_episode_attributes_are_strict(tiny_ds):
    with pytest.raises(DatasetError, match=r"info: reward is inf"):
        tiny_ds.new_episode(info={"reward": math.inf})
    assert not any((tiny_ds.root / ".incoming").glob("episode_*"))  # refused before anything was created
    w = tiny_ds.new_episode(info={"reward": 1.0})
    with pytest.raises(DatasetError, match=r"commit info: score is nan"):
        w.commit(True, score=math.nan)
    path = w.commit(True, score=0.5)  # nothing was changed by the refused commit
    attrs = json.loads((path / ".zattrs").read_text())["htouch_episode"]
    assert attrs["info"] == {"reward": 1.0, "score": 0.5} and attrs["success"] is True


# ------------------------------------------------------------------------------------------- reading

BAD_METADATA = [
    # (change to htouch.json, words the one-line error must contain)
    (lambda m: m["rig"]["camera"].update(rate_hz=math.inf), ["htouch.json", "Infinity", "strict JSON"]),
    (lambda m: m["rig"]["audio"].update(scale=math.nan), ["htouch.json", "NaN"]),
    (lambda m: m["rig"]["camera"].update(width="64"), ["htouch.json", "rig.camera.width", "'64'"]),
    (lambda m: m["rig"]["camera"].update(height=True), ["htouch.json", "rig.camera.height"]),
    (lambda m: m["rig"]["audio"].update(rate_hz=0), ["htouch.json", "rig.audio.rate_hz", "positive"]),
    (lambda m: m["rig"]["audio"].update(channel_names="mic0"), ["htouch.json", "rig.audio.channel_names"]),
    (lambda m: m["rig"].update(audio=[]), ["htouch.json", "rig.audio", "not an object"]),
    (lambda m: m["rig"].update(extra=1), ["htouch.json", "unknown key rig.extra"]),
    (lambda m: m.update(rig="synthetic"), ["htouch.json", "expected an object"]),
    (lambda m: m.update(next_episode_index="7"), ["htouch.json", "next_episode_index", "'7'"]),
    (lambda m: m.update(next_episode_index=-1), ["htouch.json", "next_episode_index", "non-negative"]),
    (lambda m: m.update(next_episode_index=2.5), ["htouch.json", "next_episode_index"]),
    (lambda m: m.update(task=["zip"]), ["htouch.json", "task", "expected a string"]),
]


@pytest.mark.parametrize("change,words", BAD_METADATA, ids=[w[-1] for _, w in BAD_METADATA])
def test_damaged_htouch_json_is_one_line(cli, tiny_ds, change, words):
    edit_json(tiny_ds.root / "htouch.json", change)
    with pytest.raises(DatasetError):
        Dataset(tiny_ds.root)
    r = cli("ls", tiny_ds.root)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    for word in words:
        assert word in r.err, (word, r.err)


BAD_ATTRS = [
    (lambda a: a.update(index="0"), ["episode attribute index", "expected an integer"]),
    (lambda a: a.update(index=True), ["episode attribute index"]),
    (lambda a: a.update(success="yes"), ["episode attribute success", "true, false or null"]),
    (lambda a: a.update(variation=3), ["episode attribute variation"]),
    (lambda a: a.update(info=[]), ["episode attribute info", "an object"]),
    (lambda a: a["info"].update(reward=math.nan), ["info.reward is nan"]),
    (lambda a: a["rig"]["camera"].update(rate_hz=-math.inf), ["rig.camera.rate_hz"]),
    (lambda a: a["rig"]["audio"].update(channels="4"), ["rig.audio.channels", "'4'"]),
]


@pytest.mark.parametrize("change,words", BAD_ATTRS, ids=[w[0] for _, w in BAD_ATTRS])
def test_damaged_episode_attributes_are_one_line(cli, tiny_ds, change, words):
    ep = tiny_ds.root / episode_name(0)
    edit_json(ep / ".zattrs", lambda z: change(z["htouch_episode"]))
    r = cli("inspect", "0", "-d", tiny_ds.root)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert str(ep) in r.err or episode_name(0) in r.err
    for word in words:
        assert word in r.err, (word, r.err)
    r = cli("validate", tiny_ds.root)
    assert r.code == 1 and "Traceback" not in r.err  # a finding, not a crash


# ------------------------------------------------------------------------------------------- episode indices


def test_the_last_index_the_names_can_hold(tiny_ds):
    assert parse_episode_name(episode_name(MAX_EPISODE_INDEX)) == MAX_EPISODE_INDEX
    assert parse_episode_name(episode_name(MAX_EPISODE_INDEX + 1)) is None
    tiny_ds.update_metadata(next_episode_index=MAX_EPISODE_INDEX)
    assert tiny_ds.reserve_index() == MAX_EPISODE_INDEX
    with pytest.raises(DatasetError, match=f"no episode index left: the next would be {MAX_EPISODE_INDEX + 1}"):
        tiny_ds.reserve_index()
    assert json.loads((tiny_ds.root / "htouch.json").read_text())["next_episode_index"] == MAX_EPISODE_INDEX + 1


def test_collect_refuses_an_index_beyond_the_names(cli, tmp_path):
    """A next_episode_index of 10^9 once made collect report an episode that ls never showed."""
    sim = tmp_path / "sim.toml"
    sim.write_text('[rig]\nkind = "sim"\n[camera]\nwidth = 64\nheight = 48\n[control]\nmax_episode_s = 1.0\n')
    root = tmp_path / "ds"
    assert cli("collect", root, "--task", "zip", "-n", "1", "-c", sim, "--no-panel").code == 0
    Dataset(root).update_metadata(next_episode_index=10**9)
    r = cli("collect", root, "--task", "zip", "-n", "1", "-c", sim, "--no-panel")
    assert r.code == 2 and "no episode index left" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert "1000000000" not in r.out  # no episode reported under a name the format cannot hold
    assert Dataset(root).episode_indices() == [0] and not any((root / ".incoming").iterdir())
