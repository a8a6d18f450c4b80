"""Shared fixtures: small synthetic datasets (64x48 frames, a few seconds) and an in-process CLI runner.
Every test runs under the network guard (tests/netguard.py): reaching for any address but loopback, here or
in a child process, fails the test."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# The network code first, as every `htouch` command that runs a policy loads it before it renders: torch's CUDA
# build imports triton (through torchvision -> torch._dynamo), and triton's LLVM crashes the process when
# Mesa's offscreen renderer was loaded before it (docs/sim.md, Limits).
import htouch.training.model  # noqa: F401, E402
from htouch.dataset.schema import CameraSpec, StreamSpecs
from htouch.dataset.store import Dataset
from htouch.dataset.synthetic import SyntheticEpisode, write_synthetic_episode

pytest_plugins = ["tests.netguard_plugin", "tests.schedguard_plugin", "pytester"]

TINY_RIG = StreamSpecs(name="synthetic", camera=CameraSpec(width=64, height=48))


def wait_until(condition, timeout: float = 5.0) -> None:
    """Poll until condition() holds; a thread under test gets its time, a hang fails the test."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.002)


def tiny_dataset(root: Path, n: int = 2, seconds: float = 4.0, **episode_kw) -> Dataset:
    ds = Dataset.create(root, "zip", TINY_RIG)
    for i in range(n):
        cfg = SyntheticEpisode(duration_s=seconds, seed=i, success=(i % 4 != 3), **episode_kw)
        write_synthetic_episode(ds, cfg)
    return ds


@pytest.fixture(scope="session")
def _tiny_dataset_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template") / "ds"
    tiny_dataset(root, n=2)
    return root


@pytest.fixture
def tiny_ds(_tiny_dataset_template, tmp_path) -> Dataset:
    """A fresh copy of a 2-episode, 4-second tiny synthetic dataset (safe to modify)."""
    root = tmp_path / "ds"
    shutil.copytree(_tiny_dataset_template, root)
    return Dataset(root)


@pytest.fixture(scope="session")
def training_template(tmp_path_factory) -> Path:
    """The training tests' dataset, built once: 4 synthetic 4-second episodes, split, AVID statistics
    (tests/training_helpers.make_training_dataset). Never modified: copy it (training_helpers.copy_dataset)."""
    from tests.training_helpers import make_training_dataset

    root = tmp_path_factory.mktemp("training-template") / "ds"
    make_training_dataset(root, n=4, seconds=4.0, kinds=("avid",))
    return root


@pytest.fixture(scope="session")
def tiny_run(training_template, tmp_path_factory) -> Path:
    """RUN/run: a tiny `ours` policy trained for one epoch on RUN/demos (tests/training_helpers.train_tiny_run),
    trained once and shared by the tests that roll it out or evaluate it. They read it and must not write into
    RUN (a test that moves RUN/demos away puts it back)."""
    from tests.training_helpers import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("tiny-run"), training_template)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `htouch ARGS...` in this process; returns exit code, stdout and stderr."""
    from htouch.cli import main

    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
