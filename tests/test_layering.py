"""The packages depend one way: dataset <- collector <- sim <- (rigs) <- training, interop <- cli.

Read from the source (every import, also those inside functions), so a lazy import cannot hide an upward
arrow. `python tools/import_graph.py` prints the same graph."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from import_graph import LAYERS, package_edges, upward_edges  # noqa: E402


def test_no_package_imports_a_package_above_it():
    edges = package_edges(ROOT / "htouch")
    assert set(LAYERS) >= {package for package, _ in edges}, "a new package: give it a layer in LAYERS"
    assert upward_edges(edges) == []


def test_the_check_sees_an_upward_import(tmp_path):
    """A dataset module that imports the collector (even inside a function) is reported."""
    package = tmp_path / "htouch"
    for name in ("dataset", "collector"):
        (package / name).mkdir(parents=True)
        (package / name / "__init__.py").write_text("")
    (package / "dataset" / "bad.py").write_text("def f():\n    from htouch.collector.loop import Recorder\n")
    edges = package_edges(package)
    assert upward_edges(edges) == [("dataset", "collector", ["htouch/dataset/bad.py:2"])]
