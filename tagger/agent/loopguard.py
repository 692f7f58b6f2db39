"""A guard that keeps the tick loop on schedule when the scheduler starves it:
a small process at SCHED_FIFO that watches the loop's progress and, when a
tick is more than ``grace`` seconds late (or stuck that long), runs the loop's
thread as SCHED_FIFO until that tick is done.

Why: with a neighbour demoted by ``cpu.idle`` or the lowest weight, ordinary
tasks outside its cgroup tree were measured not running for 0.7-10 s at a
time on this project's 6.18 host, CFS tasks at nice -20 too, SCHED_FIFO ones
never (benchmarks/bench_starvation.py; docs/noisy_neighbor.md, "The agent's
own ticks").  A loop that stops ticking neither verifies its steps nor gives
a demotion back.  Why not run the loop as SCHED_FIFO all the time: a
real-time tick is never preempted by the tasks it protects, so its few ms a
second land on their run-queue latency (the noisy-neighbour benchmark's web
missed its 1 ms p99 in more quiet seconds so).  The guard itself wakes every
``poll`` seconds for a few µs; the loop runs as an ordinary task unless it
is starved.

A process, not a thread: a thread of the agent would need the GIL, which a
starved thread may hold.  The loop and the guard share four numbers (a memfd
mapped by both): when the next tick is due, when the last one began and
ended (CLOCK_MONOTONIC), and the guard's state and boost count.  The guard
dies with the agent (PR_SET_PDEATHSIG, and it checks its parent).  Where the
kernel refuses SCHED_FIFO (no CAP_SYS_NICE, or a cgroup with no real-time
runtime under RT group scheduling) the guard says so and exits: the loop runs
unguarded."""

from __future__ import annotations

import logging
import math
import mmap
import os
import signal
import struct
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

#: the default --rt-priority: the lowest real-time priority
DEFAULT_PRIORITY = 1
#: a tick this late to begin, or this long in progress, is starved
GRACE = 0.25
#: the shared numbers, 8 bytes each: due, begun, ended (monotonic seconds);
#: state (STARTING, WATCHING or -errno); boosts
FIELDS = ("due", "begun", "ended", "state", "boosts")
LAYOUT = struct.Struct("<dddqq")
STARTING, WATCHING = 0, 1
PR_SET_PDEATHSIG = 1


def _put(m: mmap.mmap, field: str, value) -> None:
    """One shared number, written in place (the other side reads the whole layout)."""
    i = FIELDS.index(field)
    struct.pack_into("<" + LAYOUT.format[1 + i], m, 8 * i, value)


class LoopGuard:
    """The loop's side.  ``priority`` 0: no guard (every call is a no-op)."""

    def __init__(self, priority: int = DEFAULT_PRIORITY, grace: float = GRACE, tid: int | None = None):
        self.priority = priority
        # The calling thread's class, put back by close() (it may be boosted then).
        self._before = os.sched_getscheduler(0), os.sched_getparam(0)
        self._proc: subprocess.Popen | None = None
        self._map: mmap.mmap | None = None
        self._said = False
        if priority <= 0:
            return
        fd = os.memfd_create("tagger-loopguard", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, LAYOUT.size)
            self._map = mmap.mmap(fd, LAYOUT.size)
            # No tick is due until the loop says so (waiting): a guard that starts
            # slowly must not find the loop late for a tick it never asked for.
            LAYOUT.pack_into(self._map, 0, math.inf, 0.0, 0.0, STARTING, 0)
            argv = [sys.executable, "-m", "tagger.agent.loopguard", str(fd),
                    str(tid if tid is not None else threading.get_native_id()), str(priority), repr(float(grace))]
            try:
                self._proc = subprocess.Popen(argv, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
            except OSError as err:
                self._said = True
                log.warning("the tick loop is unguarded: its guard did not start (%s)", err)
        finally:
            os.close(fd)

    # --- the loop's progress ------------------------------------------------------
    def waiting(self, due: float) -> None:
        """The loop waits for the tick due at ``due``."""
        if self._map is not None:
            _put(self._map, "due", due)

    def begun(self, now: float) -> None:
        if self._map is not None:
            _put(self._map, "begun", now)

    def ended(self, now: float, due: float) -> None:
        """A tick ended at ``now``; the next is due at ``due``."""
        if self._map is not None:
            _put(self._map, "ended", now)
            _put(self._map, "due", due)

    # --- what it did ----------------------------------------------------------------
    @property
    def boosts(self) -> int:
        """Ticks the guard found starved and ran as SCHED_FIFO."""
        return 0 if self._map is None else LAYOUT.unpack_from(self._map)[4]

    @property
    def watching(self) -> int:
        """The priority the guard boosts a starved loop to; 0 while it is not
        watching (none asked for, refused, or not started yet).  Logs a
        refusal once."""
        if self._map is None:
            return 0
        state = LAYOUT.unpack_from(self._map)[3]
        if state == WATCHING:
            return self.priority
        if not self._said and (state < 0 or (self._proc is not None and self._proc.poll() is not None)):
            self._said = True
            why = os.strerror(-state) if state < 0 else f"the guard exited ({self._proc.returncode})"
            log.warning("the tick loop is unguarded: SCHED_FIFO %d refused (%s); beside a demoted neighbour "
                        "its ticks may start late (tagger_tick_jitter_max_seconds)", self.priority, why)
        return 0

    def close(self) -> None:
        """Stop the guard (by its pid) and put the loop's thread back (call it
        from the thread the guard was made on)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=5)
            self._proc = None
        if self._map is not None:
            self._map.close()
            self._map = None
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != self._before:
            os.sched_setscheduler(0, *self._before)


# --- the guard's side (python -m tagger.agent.loopguard FD TID PRIORITY GRACE) ---------
def _die_with_parent() -> None:
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (ImportError, OSError, AttributeError):
        pass            # the parent check below still ends it


def guard(fd: int, tid: int, priority: int, grace: float) -> int:
    """Watch the loop's thread ``tid`` until the parent goes (or SIGTERM)."""
    parent = os.getppid()
    _die_with_parent()
    m = mmap.mmap(fd, LAYOUT.size)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as err:
        _put(m, "state", -err.errno)
        return 3
    _put(m, "state", WATCHING)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    poll = min(grace / 2, 0.1)
    boosted_for, before = None, None
    while os.getppid() == parent:
        due, begun, ended, _, boosts = LAYOUT.unpack_from(m)
        now = time.monotonic()
        try:
            if boosted_for is None:
                # Due, and no sign of the loop for `grace`: not begun, or stuck.
                if now > due + grace and now - max(begun, ended) > grace:
                    before = os.sched_getscheduler(tid), os.sched_getparam(tid)
                    # Only while boosted; what it starts then is ordinary.
                    os.sched_setscheduler(tid, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
                    boosted_for = due
                    _put(m, "boosts", boosts + 1)
            elif begun >= boosted_for and ended >= begun:
                os.sched_setscheduler(tid, *before)     # that tick is done
                boosted_for = None
        except ProcessLookupError:
            return 0        # the loop's thread is gone
        time.sleep(poll)
    return 0


if __name__ == "__main__":
    fd_, tid_, prio_, grace_ = sys.argv[1:5]
    sys.exit(guard(int(fd_), int(tid_), int(prio_), float(grace_)))
