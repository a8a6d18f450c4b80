"""A training run's directory, as `Dataset` is a dataset's: the one place that knows its file names.

    model.safetensors, config.json   the best-validation policy and what it needs (checkpoints.py)
    last.pt                          the state after the last finished epoch, for --resume
                                     (tensors, numbers and lists only: read with weights_only=True)
    run.json                         the training settings, where the encoders came from, progress and status
    metrics.csv, tensorboard/        per-epoch losses, learning rate and throughput
    loss_curves.png                  training and validation loss per epoch
    eval-TASK-VARIATION[-AUDIO].json what `htouch eval` measured (evaluate.py)
    probe-DATASET.json / .png        what `htouch probe` found (diagnostics.py)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from htouch.errors import HtouchError

WEIGHTS_NAME = "model"  # model.safetensors; checkpoints may be saved under other names too
FINISHED = ("max epochs", "early stopping", "already finished")  # run.json statuses of a training at its end


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def weights(self, name: str = WEIGHTS_NAME) -> Path:
        return self.path / f"{name}.safetensors"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def record(self) -> Path:
        return self.path / "run.json"

    @property
    def state(self) -> Path:
        return self.path / "last.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def plot(self) -> Path:
        return self.path / "loss_curves.png"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def evaluation(self, task: str, variation: str, audio: str = "real") -> Path:
        """eval-TASK-VARIATION.json; an audio ablation adds its condition (eval-zip-train-silent.json)."""
        return self.path / f"eval-{task}-{variation}{'' if audio == 'real' else '-' + audio}.json"

    def probe(self, dataset: str | Path) -> Path:
        return self.path / f"probe-{Path(dataset).name}.json"

    def read_record(self) -> dict[str, Any]:
        """run.json, or HtouchError naming it when it cannot be read."""
        try:
            doc = json.loads(self.record.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HtouchError(f"{self.record}: unreadable ({e})") from None
        if not isinstance(doc, dict):
            raise HtouchError(f"{self.record}: not a training record (a JSON object expected)")
        return doc
