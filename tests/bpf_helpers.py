"""Helpers for tests on the real kernel with tagger's BPF programs loaded."""

from __future__ import annotations

import os

import pytest


def bpf_problem() -> str | None:
    """Why BPF tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to load BPF programs"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "kernel has no BTF (/sys/kernel/btf/vmlinux)"
    from tagger import native
    if native.lib is None:
        return f"native module not built: {native.IMPORT_ERROR}"
    return None


def require_bpf():
    problem = bpf_problem()
    if problem:
        pytest.skip(problem)


BUSY_LOOP = ["sh", "-c", "while :; do :; done"]


def _schedstats(pids):
    """Each thread's /proc/PID/task/TID/schedstat of ``pids``, as integers:
    on-CPU time, run_delay (the kernel's own run-queue wait) and pcount
    (its arrivals on a CPU, one per wait however short;
    Documentation/scheduler/sched-stats.rst)."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                yield [int(x) for x in f.read().split()]


def thread_run_delays(pids) -> int:
    """Sum of run_delay (ns) over every thread of ``pids``."""
    return sum(s[1] for s in _schedstats(pids))


def thread_arrivals(pids) -> int:
    """Sum of pcount over every thread of ``pids``."""
    return sum(s[2] for s in _schedstats(pids))


def is_stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    return state in ("T", "t")
