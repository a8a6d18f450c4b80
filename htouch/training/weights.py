"""Where a user keeps pretrained encoder files, so that `htouch train` finds them without flags.

The directory is $HTOUCH_WEIGHTS, else ~/.cache/htouch/weights. It holds the files under the names below
(R3M's and AVID's released checkpoints renamed, or what `htouch pretrain av` / `htouch pretrain byol-a`
write). Nothing is downloaded: a file that is not there is reported missing. A run records the sha256 of each
file it started from, so a result can be traced to the exact weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

WEIGHTS_ENV = "HTOUCH_WEIGHTS"
DEFAULT_WEIGHTS_DIR = Path("~/.cache/htouch/weights")
WEIGHT_FILES = {"r3m": "r3m.pt", "avid": "avid.pt", "byol-a": "byol_a.safetensors"}  # kind -> file name


def weights_dir() -> Path:
    """$HTOUCH_WEIGHTS, else ~/.cache/htouch/weights (expanded; it need not exist)."""
    return Path(os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()


def find_weights() -> dict[str, Path | None]:
    """Per kind (r3m, avid, byol-a): the file in the weights directory, or None if it is not there."""
    root = weights_dir()
    return {kind: (root / name if (root / name).is_file() else None) for kind, name in WEIGHT_FILES.items()}


def file_sha256(path: Path) -> str:
    """The file's SHA-256 (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
