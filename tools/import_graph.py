#!/usr/bin/env python
"""The import graph between htouch's packages, read from the code (every import statement, also those
inside functions), with the arrows that point up the layering marked.

The layers, lowest first: a package may import its own layer and those below it, never one above.

    .venv/bin/python tools/import_graph.py          # prints the graph; exit 1 if an arrow points up
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# package -> layer; top-level modules (htouch/errors.py, htouch/rigs.py, ...) are packages of their own name.
LAYERS = {
    "errors": 0,
    "dataset": 1,
    "collector": 2,  # devices, the recording loop, the real hardware backends
    "sim": 3,  # the simulated rig: implements the collector's device interfaces
    "rigs": 4,  # builds a rig of either kind: knows every backend
    "training": 5,
    "interop": 5,
    "cli": 6,
    "__main__": 7,
    "__init__": 0,
}


def _package(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return rel.parts[0].removesuffix(".py")


def package_edges(root: Path) -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> where ("htouch/dataset/x.py:12"), for every htouch import."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        importer = _package(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] != "htouch" or len(parts) < 2:
                    continue
                target = parts[1]
                if target != importer:
                    where = f"{root.name}/{path.relative_to(root).as_posix()}:{node.lineno}"
                    edges[(importer, target)].append(where)
    return dict(edges)


def upward_edges(edges: dict[tuple[str, str], list[str]]) -> list[tuple[str, str, list[str]]]:
    """The edges from a lower layer to a higher one (an unknown package counts as the top)."""
    top = max(LAYERS.values()) + 1
    return sorted((a, b, where) for (a, b), where in edges.items() if LAYERS.get(a, top) < LAYERS.get(b, top))


def main() -> None:
    edges = package_edges(ROOT / "htouch")
    up = {(a, b) for a, b, _ in upward_edges(edges)}
    for (a, b), where in sorted(edges.items(), key=lambda e: (LAYERS.get(e[0][0], 99), e[0])):
        mark = "  UPWARD" if (a, b) in up else ""
        print(f"{a:>10} -> {b:<10} {len(where):3d} import(s){mark}" + (f": {', '.join(where)}" if mark else ""))
    sys.exit(1 if up else 0)


if __name__ == "__main__":
    main()
