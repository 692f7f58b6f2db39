"""benchmarks/bench_overhead_paired.py's windows: the long pipe run it counts
ops in, and that it leaves no process behind.  A real perf bench, briefly."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from benchmarks.bench_overhead_paired import PipeRun, window_rate

pytestmark = pytest.mark.skipif(shutil.which("perf") is None, reason="perf not installed (make deps)")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _pcount(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[2])


def test_a_window_counts_the_pipes_round_trips_and_close_leaves_nothing():
    run = PipeRun(cpu="0", nice=0)
    try:
        deadline = time.monotonic() + 30
        while not _children(run.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        (child,) = _children(run.proc.pid)
        # Each op is one write and one blocking read at each end: the parent's
        # switch-ins (what a window counts) and the child's move together.
        p0, c0 = run.count(), _pcount(child)
        rate = window_rate(run, 0.3)
        p1, c1 = run.count(), _pcount(child)
        assert rate > 1000
        assert p1 - p0 > 300
        assert abs((p1 - p0) - (c1 - c0)) <= 0.02 * (p1 - p0) + 2
    finally:
        run.close()
    assert run.proc.poll() is not None
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    with pytest.raises(RuntimeError, match="exited"):
        run.count()
