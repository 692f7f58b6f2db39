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


def thread_run_delays(pids) -> int:
    """Sum of run_delay (ns) over every thread of ``pids``: /proc/PID/task/TID/schedstat
    field 2, the kernel's own run-queue wait (Documentation/scheduler/sched-stats.rst)."""
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
    return total


def is_stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    return state in ("T", "t")
