"""benchmarks/bench_overhead_paired.py: the windows' long pipe run (a real
perf bench, briefly: it counts the ops and leaves no process behind), and
--pool over saved rounds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from benchmarks.bench_overhead_paired import PipeRun, children_of, main, proc_state, window_rate

needs_perf = pytest.mark.skipif(shutil.which("perf") is None, reason="perf not installed (make deps)")


def _pcount(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[2])


def _stopped(pid: int) -> bool:
    return proc_state(pid) in ("t", "T")


def _paused(run, child: int, read):
    """``read()`` with the pipe run's process group stopped (SIGSTOP), then resumed."""
    pgid = os.getpgid(run.proc.pid)
    os.killpg(pgid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 30
        while not (_stopped(run.proc.pid) and _stopped(child)) and time.monotonic() < deadline:
            time.sleep(0.01)
        return read()
    finally:
        os.killpg(pgid, signal.SIGCONT)


@needs_perf
def test_a_window_counts_the_pipes_round_trips_and_close_leaves_nothing():
    run = PipeRun(cpu="0", nice=0)
    try:
        deadline = time.monotonic() + 30
        while not children_of(run.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        (child,) = children_of(run.proc.pid)
        # Each op is one write and one blocking read at each end: the parent's
        # switch-ins (what a window counts) and the child's move together.
        # Each pair is read with the pipe stopped: at 100k ops/s, the test
        # descheduled between the two reads would see them apart.
        p0, c0 = _paused(run, child, lambda: (run.count(), _pcount(child)))
        rate = window_rate(run, 0.3)
        p1, c1 = _paused(run, child, lambda: (run.count(), _pcount(child)))
        assert rate > 1000
        assert p1 - p0 > 300
        assert abs((p1 - p0) - (c1 - c0)) <= 0.02 * (p1 - p0) + 2
    finally:
        run.close()
    assert run.proc.poll() is not None
    assert proc_state(child) in (None, "Z")             # gone, or gone but for its exit status
    with pytest.raises(RuntimeError, match="exited"):
        run.count()


def _raw(path: Path, n: int, empty: float, tagger: float) -> Path:
    path.write_text(json.dumps({"started": path.stem, "pipe": [{"none": 100.0, "empty": empty, "tagger": tagger}] * n}))
    return path


def test_pool_judges_the_rounds_of_several_runs_together(tmp_path, capsys):
    # tagger's share above the empty program: 1 point in 10 rounds, 3 in 30.
    a = _raw(tmp_path / "a.json", 10, empty=99.0, tagger=98.0)
    b = _raw(tmp_path / "b.json", 30, empty=99.0, tagger=96.0)
    assert main(["--pool", str(a)]) == 0                 # alone, within the 2-point bar
    capsys.readouterr()
    assert main(["--pool", str(a), str(b)]) == 1         # together, over it
    share = next(line for line in capsys.readouterr().out.splitlines() if "share above" in line)
    assert "| +3.0 pt |" in share and "| 40 |" in share and "NOT MET" in share


def test_pool_of_a_file_that_is_not_there_says_which(tmp_path):
    with pytest.raises(SystemExit, match="nope.json"):
        main(["--pool", str(tmp_path / "nope.json")])
