"""One rank of the DDP test (started by torchrun): trains tiny for an epoch end to end, then again with frozen
encoders, and after each writes a digest of its parameters and buffers, and its metrics, to
OUT/rank<R>-<mode>.json."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from htouch.training.train import TrainConfig, train


def main(dataset: str, runs: str, out: str) -> None:
    # One process group for both trainings (a torchrun job's store cannot be joined twice); train() uses it.
    dist.init_process_group("gloo")
    try:
        for mode in ("end-to-end", "frozen"):
            run(Path(dataset), Path(runs) / mode, Path(out), mode)
    finally:
        dist.destroy_process_group()


def run(dataset: Path, run_dir: Path, out: Path, mode: str) -> None:
    result = train(TrainConfig(dataset=dataset, run_dir=run_dir, method="ours", preset="tiny", epochs=1,
                               batch_size=16, allow_random_init=True, seed=0, frozen_encoders=mode == "frozen",
                               stride=4))
    h = hashlib.sha256()
    for name, tensor in sorted(result.model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    rank = int(os.environ["RANK"])
    m = result.history[0]
    Path(out, f"rank{rank}-{mode}.json").write_text(json.dumps({
        "digest": h.hexdigest(), "world": int(os.environ["WORLD_SIZE"]), "train_loss": m.train_loss,
        "val_loss": m.val_loss, "samples": m.train_samples,
        "pos_embedding_sum": float(result.model.pos_embedding.detach().sum())}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
