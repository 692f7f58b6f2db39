"""The tick loop's scheduling class (tagger.agent.priority), on the real
kernel: SCHED_FIFO for the loop's thread only, never for what it starts, put
back when the daemon returns, and an ordinary loop (said why) where the
kernel refuses."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from tagger.agent import priority

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs CAP_SYS_NICE (root)")

POLICY = "import os; print(os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK)"


def in_thread(fn):
    """fn's result, run on a fresh thread (the test's own thread never changes)."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(timeout=30)
    return out[0]


def policy() -> int:
    return os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK


def test_the_loop_runs_fifo_and_what_it_starts_runs_ordinary():
    def loop():
        before = priority.current()
        got = priority.run_tick_loop_at(3)
        mine = (policy(), os.sched_getparam(0).sched_priority)
        started = in_thread(policy)        # a thread the loop starts (the socket's, Redis')
        child = int(subprocess.run([sys.executable, "-c", POLICY], capture_output=True, text=True,
                                   check=True).stdout)
        priority.restore(before)
        return got, mine, started, child, policy()

    got, mine, started, child, after = loop_result = in_thread(loop)
    assert got == 3 and mine == (os.SCHED_FIFO, 3), loop_result
    assert started == os.SCHED_OTHER and child == os.SCHED_OTHER, loop_result
    assert after == os.SCHED_OTHER, loop_result
    assert policy() == os.SCHED_OTHER        # the caller's thread was never touched


def test_priority_0_leaves_the_loop_ordinary():
    assert in_thread(lambda: (priority.run_tick_loop_at(0), policy())) == (0, os.SCHED_OTHER)


def test_a_refused_priority_leaves_the_loop_ordinary_and_says_why():
    """As an unprivileged user with no real-time allowance (RLIMIT_RTPRIO 0) the
    kernel refuses: the loop goes on as SCHED_OTHER, with a warning."""
    code = ("import logging, os, resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "logging.basicConfig(stream=sys.stdout, format='%(levelname)s %(message)s')\n"
            "from tagger.agent import priority\n"
            "print(priority.run_tick_loop_at(1), os.sched_getscheduler(0))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert "WARNING the tick loop stays SCHED_OTHER: SCHED_FIFO 1 refused" in out.stdout, out.stdout
    assert out.stdout.strip().splitlines()[-1] == f"0 {os.SCHED_OTHER}", out.stdout
