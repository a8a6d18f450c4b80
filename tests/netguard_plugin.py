"""pytest side of the network guard (tests/netguard.py): install it for the session, guard every child
process through $PYTHONPATH, and fail the test during which anything reached for a non-loopback address,
whether the refusal happened in this process or in a child (even if the code under test caught the error).

Loaded by tests/conftest.py; `pytest -p tests.netguard_plugin` loads it into another session."""

from __future__ import annotations

import os
import tempfile

import pytest

from tests import netguard

_state: dict = {}


def pytest_configure(config) -> None:
    netguard.install()
    fd, log = tempfile.mkstemp(prefix="htouch-netguard-", suffix=".log")
    os.close(fd)
    _state.update(log=log, offset=0, saved={k: os.environ.get(k) for k in (netguard.LOG_ENV, "PYTHONPATH")})
    os.environ[netguard.LOG_ENV] = log  # a session of its own: an inner pytest does not report to the outer
    os.environ["PYTHONPATH"] = os.pathsep.join([netguard.SITE_DIR, *filter(None, [os.environ.get("PYTHONPATH")])])


def pytest_unconfigure(config) -> None:
    if not _state:
        return
    for key, value in _state["saved"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        os.unlink(_state["log"])
    except OSError:
        pass
    _state.clear()


def _children_refusals() -> list[str]:
    """Lines child processes appended to the log since the last look (this process's own are in memory)."""
    try:
        with open(_state["log"]) as f:
            f.seek(_state["offset"])
            text = f.read()
            _state["offset"] = f.tell()
    except OSError:
        return []
    own = f"in pid {os.getpid()}"
    return [line for line in text.splitlines() if line and not line.endswith(own)]


def _check() -> None:
    found = netguard.take_violations() + _children_refusals()
    if found:
        pytest.fail("the test reached for a non-loopback address:\n" + "\n".join(found), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    try:
        return (yield)
    finally:
        _check()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    finally:
        _check()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        _check()
