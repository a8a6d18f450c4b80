"""DistributedDataParallel on the CPU: two torchrun processes (gloo) train one tiny policy, end to end and with
frozen encoders, and end with the same parameters on both ranks; rank 0 alone writes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from htouch.training.checkpoints import load_run_checkpoint
from htouch.training.data import DataSpec, PolicySamples
from htouch.training.model import ActionNormalization
from tests.training_helpers import copy_dataset

ROOT = Path(__file__).resolve().parents[1]
MODES = ("end-to-end", "frozen")


@pytest.fixture(scope="module")
def ranks(training_template, tmp_path_factory):
    """Start the two ranks once (each trains in both modes): {mode: [rank 0 report, rank 1 report]}."""
    base = tmp_path_factory.mktemp("ddp")
    ds = copy_dataset(training_template, base / "ds")
    out = base / "out"
    out.mkdir()
    # Prepend, not replace: $PYTHONPATH carries the network guard (tests/netguard.py) to the ranks.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "ddp_worker.py"), str(ds.root), str(base / "runs"), str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        _, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in 240 s: {err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    reports = {m: [json.loads((out / f"rank{r}-{m}.json").read_text()) for r in (0, 1)] for m in MODES}
    return ds, base / "runs", reports


@pytest.mark.parametrize("mode", MODES)
def test_two_cpu_processes_end_with_the_same_parameters(ranks, mode):
    ds, runs, reports = ranks
    r0, r1 = reports[mode]
    assert r0["world"] == r1["world"] == 2
    assert r0["digest"] == r1["digest"]
    # losses are reduced over the ranks, so both report the same numbers
    assert (r0["train_loss"], r0["val_loss"]) == (r1["train_loss"], r1["val_loss"])
    # each rank trained on its half of the epoch: together every training sample (padded to an even count)
    spec = DataSpec(image_size=64, horizon=8, audio_kind="avid", stride=4)  # as ddp_worker trains
    n = len(PolicySamples(ds, ds.metadata["split"]["train"], spec, ActionNormalization.identity(), preload_mb=0))
    assert r0["samples"] == n + n % 2
    # rank 0 wrote the run, and the model it saved is the one both ranks hold
    run = runs / mode
    assert json.loads((run / "run.json").read_text())["processes"] == 2
    model, _, _ = load_run_checkpoint(run)
    assert float(model.pos_embedding.detach().sum()) == pytest.approx(r0["pos_embedding_sum"], abs=1e-6)
