"""The tick loop's guard (tagger.agent.loopguard), on the real kernel: a
process at SCHED_FIFO that runs a starved loop's thread as SCHED_FIFO until
its tick is done and puts it back after; nothing without it; it says so where
the kernel refuses, and it dies with the agent."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from tagger.agent.loopguard import GRACE, LoopGuard
from tests.cgroup_fixture import wait_for

# root: also in the kernel matrix (6.1's CFS, 6.12's EEVDF), where users run.
pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs CAP_SYS_NICE (root)")]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def policy(tid: int = 0) -> int:
    return os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK


def test_a_starved_tick_runs_fifo_until_it_is_done_then_the_loop_is_ordinary_again():
    """The loop says a tick was due a second ago and has not begun (what a
    starved loop looks like to the guard): its thread becomes SCHED_FIFO;
    once that tick has begun and ended, SCHED_OTHER again.  A loop on time
    is left alone."""
    tid, seen, errors = [], {}, []
    go, ticked, done = threading.Event(), threading.Event(), threading.Event()

    def loop():
        try:
            tid.append(threading.get_native_id())
            guard = LoopGuard(priority=2)
            wait_for(lambda: guard.watching, timeout=30, what="the guard watching")
            now = time.monotonic()
            guard.waiting(now + 30)                   # on time: not touched
            time.sleep(GRACE * 3)
            seen["on time"] = policy()
            guard.waiting(time.monotonic() - 1.0)     # due a second ago, not begun
            go.wait(30)
            guard.begun(time.monotonic())
            guard.ended(time.monotonic(), time.monotonic() + 30)
            ticked.set()
            done.wait(30)
            seen["boosts"] = guard.boosts
            guard.close()
        except BaseException as err:
            errors.append(err)

    t = threading.Thread(target=loop)
    t.start()
    try:
        wait_for(lambda: tid or errors, timeout=30, what="the loop thread")
        wait_for(lambda: errors or policy(tid[0]) == os.SCHED_FIFO, timeout=30, what="the starved loop boosted")
        assert os.sched_getparam(tid[0]).sched_priority == 2
        go.set()
        ticked.wait(30)
        wait_for(lambda: policy(tid[0]) == os.SCHED_OTHER, timeout=30, what="the loop back to SCHED_OTHER")
    finally:
        go.set()
        done.set()
        t.join(timeout=30)
    assert not errors, errors
    assert seen == {"on time": os.SCHED_OTHER, "boosts": 1}
    assert policy() == os.SCHED_OTHER           # the test's own thread was never touched


def test_close_puts_a_boosted_loop_back_and_stops_the_guard():
    guard = None

    def loop(out):
        nonlocal guard
        guard = LoopGuard(priority=1)
        wait_for(lambda: guard.watching, timeout=30, what="the guard watching")
        guard.waiting(time.monotonic() - 1.0)
        wait_for(lambda: policy() == os.SCHED_FIFO, timeout=30, what="boosted")
        pid = guard._proc.pid
        guard.close()
        out.extend([policy(), pid])

    out = []
    t = threading.Thread(target=loop, args=(out,))
    t.start()
    t.join(timeout=60)
    assert out[0] == os.SCHED_OTHER
    assert not os.path.exists(f"/proc/{out[1]}") or open(f"/proc/{out[1]}/stat").read().split()[2] == "Z"


def test_priority_0_is_no_guard():
    guard = LoopGuard(priority=0)
    guard.waiting(time.monotonic() - 10)
    assert guard.watching == 0 and guard.boosts == 0 and guard._proc is None
    guard.close()


def test_a_refused_guard_leaves_the_loop_unguarded_and_says_why():
    """Without CAP_SYS_NICE and with no real-time allowance (RLIMIT_RTPRIO 0)
    the kernel refuses the guard SCHED_FIFO; the loop runs on, unguarded,
    with a warning (once)."""
    if not shutil.which("setpriv"):
        pytest.skip("no setpriv (util-linux)")
    code = ("import logging, os, resource, sys, time\n"
            "resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))\n"
            "logging.basicConfig(stream=sys.stdout, format='%(levelname)s %(message)s')\n"
            "from tagger.agent.loopguard import LoopGuard\n"
            "g = LoopGuard(1)\n"
            "g._proc.wait(timeout=60)\n"
            "print(g.watching, g.watching, g._proc.returncode)\n"
            "g.close()\n")
    out = subprocess.run(["setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice", "--",
                          sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("WARNING the tick loop is unguarded: SCHED_FIFO 1 refused") == 1, out.stdout
    assert "(Operation not permitted)" in out.stdout, out.stdout
    assert out.stdout.strip().splitlines()[-1] == "0 0 3", out.stdout


def test_the_guard_dies_with_the_agent():
    """An agent killed without closing its guard (SIGKILL) takes it along."""
    code = ("import sys, time\n"
            "from tagger.agent.loopguard import LoopGuard\n"
            "g = LoopGuard(1)\n"
            "print(g._proc.pid, flush=True)\n"
            "time.sleep(600)\n")
    agent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        pid = int(agent.stdout.readline())
        wait_for(lambda: policy(pid) == os.SCHED_FIFO, timeout=30, what="the guard at SCHED_FIFO")
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=30)

    def gone():
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True
    wait_for(gone, timeout=30, what="the guard gone with its agent")
