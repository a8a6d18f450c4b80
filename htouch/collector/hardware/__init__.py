"""Hardware backends for the real rig. Each imports its device library lazily, so htouch runs without
the optional `htouch[hardware]` extra until a real device is asked for."""

from __future__ import annotations

import importlib
from types import ModuleType

from htouch.collector.devices import DeviceError

INSTALL_HINT = "pip install 'htouch[hardware]'"


def import_device_library(module: str, package: str, native: str | None = None) -> ModuleType:
    """Import an optional device library (`module`, shipped by the pip package `package`), or raise a
    DeviceError that says how to install it: the package, or (`native`) the system package with the C
    library it loads."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DeviceError(f"{package} is not installed ({e}); install it with {INSTALL_HINT}") from None
    except OSError as e:  # the package is there, the C library it loads is not
        hint = f"; install the {native} package" if native else ""
        raise DeviceError(f"{package} cannot load its native library ({e}){hint}") from None
