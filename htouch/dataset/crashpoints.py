"""Named points between the steps of a commit, a repair and a pack, where a test can simulate a kill.

The writer's `commit`, repair's salvage and `htouch pack` (packed.py) call `reached(name)` between steps that
change the disk. It does nothing unless a test has set `hook`; tests/test_commit_crash.py sets one that ends a
child process right there (os._exit, as a kill would) and then checks that `htouch validate --repair` commits
the episode with its label, or quarantines it only when no data had been flushed; tests/test_pack.py checks that
the episode being packed is always there and reads the same. The names, in the order each operation reaches them:
"""

from __future__ import annotations

from collections.abc import Callable

COMMIT = (
    "commit.labelled",  # the success label and info are in the episode attributes; the final flush comes next
    "commit.flushed",  # every row is on disk and counted in .flushed.json
    "commit.attributes",  # the attributes say "committed", with the final lengths
    "commit.progress_removed",  # .flushed.json is gone (the attributes hold the lengths now)
    "commit.manifest",  # manifest.json is written
    "commit.renamed",  # the episode is in place (its lock is released next)
)
REPAIR = (
    "repair.resized",  # the arrays are cut to what is salvaged
    "repair.attributes",  # the attributes say "salvaged", with the lengths kept
    "repair.progress_removed",  # .flushed.json is gone
    "repair.manifest",  # manifest.json is written
    "repair.renamed",  # the episode is in place
)

PACK = (
    "pack.written",  # the packed file is complete under its temporary name (fsynced), not yet checked
    "pack.verified",  # it reads back and every member matches the manifest
    "pack.renamed",  # it is in place beside the directory: readers use it from now on
    "pack.moved",  # the directory is moved aside into .incoming/.deleting-NAME
    "pack.removed",  # the directory is deleted
)

hook: Callable[[str], None] | None = None


def reached(name: str) -> None:
    """Mark that the operation got to `name` (one of COMMIT, REPAIR or PACK); calls `hook` if a test set one."""
    if hook is not None:
        if name not in COMMIT + REPAIR + PACK:
            raise ValueError(f"unknown crash point {name!r}")
        hook(name)
