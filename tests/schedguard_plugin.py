"""Keep the test process on normal scheduling. Native libraries put threads on the highest real-time priority
(SCHED_FIFO 99: SVT-AV1 does it to its caller when run as root, libfranka to a control loop's thread), and threads
inherit it from the thread that starts them: one such thread left behind in the pytest process would starve every
later test (and the machine, on 2 cores).

After each test, any thread of this process found on a real-time policy goes back to SCHED_OTHER, and the
session's summary names the tests after which that happened, so the cause can be found."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REALTIME = {os.SCHED_FIFO, os.SCHED_RR}
_found: list[str] = []


def _realtime_threads() -> list[int]:
    """Thread ids of this process on a real-time policy (those that ended meanwhile are skipped)."""
    tids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            if os.sched_getscheduler(int(task.name)) in _REALTIME:
                tids.append(int(task.name))
        except OSError:  # the thread ended
            continue
    return tids


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem) -> None:
    tids = _realtime_threads()
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            continue
    if tids:
        _found.append(f"{item.nodeid}: {len(tids)} thread(s) on a real-time policy, set back to SCHED_OTHER")


def pytest_terminal_summary(terminalreporter) -> None:
    if _found:
        terminalreporter.section("real-time scheduling left behind")
        for line in _found:
            terminalreporter.write_line(line)
