"""Datasets at URLs: the read-only commands and training read an S3 bucket (moto's S3 server on 127.0.0.1, through
s3fs) and an HTTP server on 127.0.0.1 and give the same answers as for the local copy; storage failures and
writing commands give one line and exit 2."""

from __future__ import annotations

import csv
import functools
import http.server
import json
import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from htouch.dataset.location import UrlPath, forget_listings, location
from htouch.dataset.store import Dataset
from htouch.errors import DatasetError
from tests.training_helpers import make_training_dataset

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

BUCKET = "htouch-urls"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}


def _fresh_clients() -> None:
    """New s3fs instances (they cache credentials) and no kept listings: each test sees the bucket as it is."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    forget_listings()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on an ephemeral loopback port, with the environment s3fs reads pointing at it (dummy
    credentials, a region, no instance metadata lookup, no ~/.aws files), and the local dataset uploaded."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    empty = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(empty),
                     "AWS_SHARED_CREDENTIALS_FILE": str(empty)}.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        _fresh_clients()
        local = tmp_path_factory.mktemp("urls") / "ds"
        make_training_dataset(local, n=3, seconds=2.0, kinds=("avid",))  # few objects: each is a request
        import fsspec

        fs = fsspec.filesystem("s3")
        fs.mkdir(BUCKET)
        fs.put(str(local), f"{BUCKET}/ds", recursive=True)
        yield {"local": local, "url": f"s3://{BUCKET}/ds", "fs": fs}
    server.stop()
    _fresh_clients()


@pytest.fixture(autouse=True)
def _clients(s3):
    _fresh_clients()
    yield
    _fresh_clients()


def _table(out: str) -> str:
    """A command's output without the line naming the dataset (a path here, a URL there)."""
    return "\n".join(line for line in out.splitlines() if "/ds" not in line)


def _one_line_error(r, *words: str) -> None:
    assert r.code == 2, (r.out, r.err)
    assert "Traceback" not in r.out + r.err
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.err
    for w in words:
        assert w in lines[0], lines[0]


def test_location_tells_urls_from_paths(tmp_path):
    assert location("runs/x") == Path("runs/x") and location(str(tmp_path)) == tmp_path
    assert location(f"file://{tmp_path}") == tmp_path  # a file:// URL is the local path, with all its checks
    with pytest.raises(DatasetError, match="local path"):
        location("file://otherhost/x")
    with pytest.raises(DatasetError, match="nope://"):
        location("nope://bucket/ds")


def test_ls_inspect_validate_stats_match_the_local_copy(s3, cli, tmp_path):
    local, url = tmp_path / "ds", s3["url"]
    shutil.copytree(s3["local"], local)  # `stats` stores into the local copy: not into the one other tests upload
    before = Dataset(url).metadata
    for args in (("ls",), ("validate",), ("stats", "-k", "avid", "--windows", "8")):
        a, b = cli(*args, local), cli(*args, url)
        assert a.code == b.code == 0, (a.err, b.err)
        assert "episode" in b.out
        if args[0] == "stats":  # the same numbers; only where they went differs
            assert _table(a.out).split("computed on")[0] == _table(b.out).split("computed on")[0]
            assert "not stored: the dataset is at a URL" in b.out
        else:
            assert _table(a.out) == _table(b.out)
    forget_listings()
    assert Dataset(url).metadata == before  # stats on a URL stored nothing
    a = json.loads(cli("inspect", "1", "--dataset", local, "--json").out)
    b = json.loads(cli("inspect", f"{url}/episode_000001", "--json").out)
    assert b.pop("path") == f"{url}/episode_000001"
    a.pop("path")
    assert a == b
    a, b = cli("validate", local, "--json"), cli("validate", f"{url}/episode_000002", "--json")
    assert [f for f in json.loads(a.out) if f["episode"] == "episode_000002"] == json.loads(b.out)


def test_train_on_a_url_learns_what_it_learns_locally(s3, cli, tmp_path):
    runs = {}
    for name, source in (("local", s3["local"]), ("url", s3["url"])):  # the same loader; a worker reads the URL
        run = tmp_path / name
        r = cli("train", source, "--run", run, "--method", "ours", "--preset", "tiny", "--epochs", "1",
                "--batch-size", "16", "--allow-random-init", "--threads", "1", "--seed", "0", "--stride", "3",
                "--preload-mb", "0", "--workers", "1")
        assert r.code == 0, r.err
        runs[name] = list(csv.DictReader(open(run / "metrics.csv")))
    for a, b in zip(runs["local"], runs["url"], strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-5)
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), rel=1e-5)
    record = json.loads((tmp_path / "url" / "run.json").read_text())
    assert record["config"]["dataset"] == s3["url"]  # a resumed run, eval and probe find the dataset again
    from htouch.training.evaluate import default_time_limit
    from htouch.training.policy_source import RunInfo

    info = RunInfo.read(tmp_path / "url")  # `htouch eval RUN` reads the run's dataset at its URL
    assert info.dataset_root == s3["url"]
    assert "longest training demonstration" in default_time_limit(info)[1]


def test_export_reads_a_url(s3, cli, tmp_path):
    import zarr

    arrays = {}
    for name, source in (("local", s3["local"]), ("url", s3["url"])):
        out = tmp_path / f"{name}.zarr.zip"
        r = cli("export", source, out, "--format", "dp")
        assert r.code == 0, r.err
        with zarr.storage.ZipStore(out, mode="r") as store:
            group = zarr.open_group(store, mode="r")
            arrays[name] = {k: group[f"data/{k}"][...] for k in ("action", "robot0_eef_pos", "camera0_rgb")}
    for k, v in arrays["local"].items():
        assert (v == arrays["url"][k]).all(), k


def test_a_missing_object_is_named(s3, cli):
    fs, url = s3["fs"], f"s3://{BUCKET}/damaged"
    fs.copy(f"{BUCKET}/ds", f"{BUCKET}/damaged", recursive=True)
    chunk = sorted(fs.find(f"{BUCKET}/damaged/episode_000001/audio/pcm"))[-1]
    fs.rm(chunk)
    r = cli("ls", url)  # the damaged episode is refused with one line, the others listed
    assert r.code == 2 and "episode_000001 is damaged" in r.err and "chunk file(s) missing" in r.err
    assert "Traceback" not in r.out + r.err
    r = cli("validate", url, "--json", "--quick")
    found = {(f["episode"], f["check"]) for f in json.loads(r.out)}
    assert r.code == 1 and ("episode_000001", "checksum.missing") in found
    assert ("episode_000001", "array.chunk") in found
    _one_line_error(cli("inspect", f"s3://{BUCKET}/ds/episode_000009"), "not found")


def test_wrong_bucket_prefix_and_no_credentials_are_one_line(s3, cli, monkeypatch):
    _one_line_error(cli("ls", "s3://no-such-bucket/ds"), "no htouch dataset at s3://no-such-bucket/ds",
                    "bucket does not exist")
    _one_line_error(cli("validate", f"s3://{BUCKET}/nothing-here"), "not found")
    _one_line_error(cli("train", f"s3://{BUCKET}/nothing-here", "--run", "r", "--allow-random-init"), "not found")
    for k in CREDENTIALS:
        monkeypatch.delenv(k)
    _fresh_clients()
    _one_line_error(cli("ls", s3["url"]), "Unable to locate credentials", "AWS_ACCESS_KEY_ID")


def test_writing_commands_refuse_a_url(s3, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = s3["url"]
    for args in (("split", url), ("spectrogram", url), ("validate", url, "--repair"), ("collect", url, "--task", "zip"),
                 ("synth", url), ("export", s3["local"], f"s3://{BUCKET}/out", "--format", "dp"),
                 ("train", s3["local"], "--run", f"s3://{BUCKET}/run", "--allow-random-init")):
        _one_line_error(cli(*args), "is a URL", "only reads")
    assert not any(tmp_path.iterdir())  # no "s3:" directory made from a mangled URL
    ds = Dataset(url)
    with pytest.raises(DatasetError, match="only reads"):
        ds.update_metadata(split=None)
    with pytest.raises(DatasetError, match="URL"):
        Dataset.create(f"s3://{BUCKET}/new", "zip")


def test_an_http_server_serves_a_dataset(s3, cli, tmp_path):
    """Any fsspec URL: here a plain HTTP server on loopback that lists directories (as `python -m http.server`)."""
    pytest.importorskip("aiohttp")
    local = tmp_path / "ds"
    shutil.copytree(s3["local"], local)
    for episode in sorted(local.glob("episode_*"))[1:]:  # one episode: every chunk is a request of its own
        shutil.rmtree(episode)
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ds"
        assert isinstance(location(url), UrlPath)
        for args in (("ls",), ("validate",)):
            a, b = cli(*args, local), cli(*args, url)
            assert a.code == b.code == 0, b.err
            assert _table(a.out) == _table(b.out)
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_local_dataset_is_opened_as_before(tiny_ds):
    assert type(tiny_ds.root) is type(Path()) and not tiny_ds.remote
    assert os.path.isdir(tiny_ds.root)
    shutil.rmtree(tiny_ds.root / "episode_000000")
    assert Dataset(tiny_ds.root).episode_indices() == [1]


def test_spectrogram_caches_uploaded_with_a_dataset_are_read_at_its_url(s3, tmp_path):
    """A URL reads the rows of an uploaded cache through Zarr (no memory maps), checksums checked; frame caches
    are local only (training decodes the frames at a URL)."""
    import numpy as np

    from htouch.dataset import frames, spectrograms
    from htouch.dataset.audio import spectrogram_params

    local = tmp_path / "ds"
    shutil.copytree(s3["local"], local)
    params = spectrogram_params("avid")
    ep = Dataset(local).episode(1)
    spectrograms.build(ep, params)
    frames.build(ep, 16)
    s3["fs"].put(str(local), f"{BUCKET}/cached", recursive=True)
    at_url = Dataset(f"s3://{BUCKET}/cached").episode(1)
    remote = spectrograms.EpisodeSpectrograms(at_url, params)
    assert spectrograms.cache_status(at_url, params) == "fresh"
    assert remote.provenance == "cache"
    want = spectrograms.EpisodeSpectrograms(ep, params).frames([0, 5, 5, 2])
    np.testing.assert_array_equal(remote.frames([0, 5, 5, 2]), want)
    assert frames.cache_status(at_url, 16) == "missing"


def test_a_packed_dataset_at_a_url_reads_as_the_local_copy(s3, cli, tmp_path):
    local = tmp_path / "ds"
    shutil.copytree(s3["local"], local)
    assert cli("pack", local, "1", "2").code == 0  # packed and unpacked episodes side by side
    s3["fs"].put(str(local), f"{BUCKET}/packed", recursive=True)
    url = f"s3://{BUCKET}/packed"
    for args in (("ls", "--json"), ("validate", "--json")):
        a, b = cli(args[0], local, *args[1:]), cli(args[0], url, *args[1:])
        assert a.code == b.code == 0, (a.err, b.err)
        assert json.loads(a.out) == json.loads(b.out)
    a = json.loads(cli("inspect", "2", "--dataset", local, "--json").out)
    b = json.loads(cli("inspect", f"{url}/episode_000002.zip", "--json").out)
    assert b.pop("path") == f"{url}/episode_000002.zip"
    a.pop("path")
    assert a == b
    ep, mine = Dataset(url).episode(1), Dataset(local).episode(1)
    assert np.array_equal(ep.read("camera/rgb"), mine.read("camera/rgb"))
