"""Python imports this at start-up when tests/netguard_site is on $PYTHONPATH (tests/conftest.py puts it
there for every child process a test starts): it installs the network guard of tests/netguard.py, so a
`python -m htouch ...` or tools/*.py run by a test may reach loopback only."""

import importlib.util
import os

_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "netguard.py")
_spec = importlib.util.spec_from_file_location("_htouch_netguard", _path)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
_module.install()
