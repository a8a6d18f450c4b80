"""The file rules every reader and writer of a dataset follows, in one place: containment (no symbolic link
below a dataset root is followed), lock files opened without following links, files replaced atomically
(a reader or a crash sees the old file or the new one, never a mix), and JSON written atomically and read
strictly. Errors a user or a damaged file can cause are DatasetErrors naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from htouch.dataset.location import StoredPath, UrlPath
from htouch.dataset.schema import check_strict_json
from htouch.errors import DatasetError


def contained(root: Path, path: Path) -> Path:
    """`path` (root or below it) after checking that neither it nor any folder between the root and it is a
    symbolic link; DatasetError otherwise. The one rule of containment: call it before reading, listing or
    writing a path of a dataset. The root itself may be a link (it is the directory the user named)."""
    if isinstance(root, UrlPath):  # no links in an object store: below the root is all there is to check
        try:
            rel = path.relative_to(root)
        except ValueError:
            raise DatasetError(f"{path} is not inside the dataset at {root}") from None
        if ".." in rel.parts:
            raise DatasetError(f"{path} leaves the dataset at {root}")
        return path
    root, path = Path(root), Path(path)
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise DatasetError(f"{path} is not inside the dataset at {root}") from None
    p = root
    for part in rel.parts:
        p = p / part
        if part == ".." or p.is_symlink():
            target = os.path.realpath(p)
            raise DatasetError(f"{p.relative_to(root)} in {root} is a symbolic link (to {target}); htouch does not "
                               "follow links inside a dataset, so that nothing outside it is read or written: "
                               "replace the link with the directory or file itself")
    return path


def open_lock(path: Path, create: bool = True) -> int:
    """A file descriptor of a lock file for flock: created if need be, never through a symbolic link
    (O_NOFOLLOW: a link planted in its place is refused, not followed). create=False opens it read-only
    (a read-only dataset) and raises FileNotFoundError when it is not there."""
    flags = (os.O_RDWR | os.O_CREAT if create else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DatasetError(f"lock file {path} is a symbolic link (to {os.path.realpath(path)}); htouch does "
                               "not follow links inside a dataset: remove the link") from None
        if isinstance(e, FileNotFoundError) and not create:
            raise
        raise DatasetError(f"cannot open the lock file {path} ({e.strerror})") from None


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` when the block ends without an error
    (and is removed otherwise), so a reader (or a crash) sees the old file or the new one, never a mix.
    A full disk or a read-only directory is a DatasetError naming the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{_REPLACING}{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)  # a link planted under the temporary name is removed, not followed
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise DatasetError(f"cannot write {path} ({e.strerror or e}); it is unchanged") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


_REPLACING = ".tmp"


def is_replacing_leftover(name: str) -> bool:
    """True for the name of a temporary file `replacing` leaves when a crash interrupts it (`.NAME.tmp<pid>`)."""
    head, sep, pid = name.rpartition(_REPLACING)
    return name.startswith(".") and bool(sep) and len(head) > 1 and pid.isdigit()


def write_json_atomic(path: Path, data: Any, strict: bool = False) -> None:
    """Replace `path` with `data` as JSON. strict=True (the dataset's own metadata): a NaN or infinite
    number is a DatasetError naming the file and the key, and nothing is written."""
    if strict:
        check_strict_json(data, str(path))
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=not strict)
    with replacing(path) as tmp, open(tmp, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"it contains {name}, which strict JSON does not allow")


def read_json(path: Path, what: str, strict: bool = False) -> dict[str, Any]:
    """A JSON object from `path`; DatasetError naming the file if it is missing, not JSON or not an object.
    strict=True also refuses NaN and Infinity (which Python's json accepts but strict parsers do not)."""
    try:
        if isinstance(path, StoredPath):
            data = json.loads(path.read_bytes(), parse_constant=_refuse_constant if strict else None)
        else:
            with open(path) as f:
                data = json.load(f, parse_constant=_refuse_constant if strict else None)
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {path}") from None
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise DatasetError(f"{what} is not valid JSON: {path} ({e})") from None
    except OSError as e:
        raise DatasetError(f"{what} cannot be read: {path} ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{what} is not a JSON object: {path}")
    return data
