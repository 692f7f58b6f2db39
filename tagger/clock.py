"""One time base for everything that leaves the agent.

Inside, tick times, tag ``since`` and tag-event ``t`` are monotonic seconds
(rule durations must not jump when the wall clock is stepped).  Everything
that leaves the agent -- socket replies and pushes, Redis, every ``--json`` --
carries epoch seconds (Unix time, like the action journal's ``since``), so a
consumer can compare them with its own clock and with each other.

:class:`Ticker` is the one fixed-rate schedule: the daemon's loop and every
collector's ``stream()`` tick by it; :func:`cede` is how a tick shares its CPU.
"""

from __future__ import annotations

import math
import threading
import time

# Taken once: the same tick time is the same epoch time in every reply (a tag's
# ``since`` does not wobble by microseconds between two requests).  A wall
# clock stepped after start shifts the agent's epoch times by the step until
# it restarts; intervals between them stay exact.
_OFFSET = time.time() - time.monotonic()


def epoch(t_monotonic: float) -> float:
    """A ``time.monotonic()`` time as epoch seconds."""
    return float(t_monotonic) + _OFFSET


class Ticker:
    """The one fixed-rate loop: when the next tick is due, how late each tick
    started (jitter), and what to skip after an overrun.

    Ticks fall on ``first + k * interval`` (no drift).  A tick that overruns
    its slot skips the slots it missed rather than bursting to catch up, and
    counts one overrun.  The caller sleeps (``time.sleep`` or a ``select`` it
    can wake) and does the work; the ticker only keeps the schedule::

        ticker = Ticker(1.0)                      # first tick due now
        while running:
            wait = ticker.due_in()
            if wait > 0:
                sleep(wait); continue             # or select(), then re-check
            ticker.begin()                        # records the jitter
            work()
            ticker.end()                          # next slot; overrun skip

    ``first``: when the first tick is due (default: now).  ``clock``: the
    time source, ``time.monotonic`` unless a test steps its own.
    Counters: ``ticks`` (begun), ``overruns``, ``last_jitter`` and
    ``max_jitter`` (seconds between a tick's due time and its start)."""

    def __init__(self, interval: float, first: float | None = None, clock=time.monotonic):
        if not interval > 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self.interval = float(interval)
        self.clock = clock
        self.next = clock() if first is None else float(first)   # when the next tick is due
        self.ticks = 0
        self.overruns = 0
        self.last_jitter = 0.0
        self.max_jitter = 0.0

    def due_in(self) -> float:
        """Seconds until the next tick is due (<= 0: due now)."""
        return self.next - self.clock()

    def begin(self) -> float:
        """A tick starts now: record how late it is; returns the time."""
        now = self.clock()
        self.last_jitter = max(now - self.next, 0.0)
        self.max_jitter = max(self.max_jitter, self.last_jitter)
        self.ticks += 1
        return now

    def end(self) -> None:
        """A tick is done: the next is due one interval after this one was, or,
        if that slot has passed (an overrun), at the first slot still ahead."""
        self.next += self.interval
        after = self.clock()
        if after >= self.next:
            self.overruns += 1
            self.next += (math.floor((after - self.next) / self.interval) + 1) * self.interval

    def sleep(self, sleep=time.sleep) -> None:
        """Sleep until the next tick is due (at once if it is)."""
        wait = self.due_in()
        if wait > 0:
            sleep(wait)


#: A thread that calls :func:`cede` steps off its CPU at most this often ...
CEDE_AFTER = 0.0002
#: ... for this long (plus the thread's timer slack, 50 us by default).
CEDE_NAP = 0.00005

_ceded = threading.local()


def cede() -> None:
    """Step off this CPU for a moment (``CEDE_NAP``), so that a task waiting
    for it runs now, if this thread has not done so for ``CEDE_AFTER``.

    A tick is a few milliseconds of Python a second, and the scheduler lets a
    task it has just picked run on rather than switch at once (EEVDF's
    run-to-parity slice, CFS's wake-up granularity): a latency-critical task
    waking beside the tick waited for the rest of it, 1.5-3 ms on this
    project's 6.18 host, and in a quiet second (200 run-queue events) one
    such wait is its p99.  Beside a demoted batch, the agent's tick and the
    benchmark's sampler were where web's waits over 1 ms began more often
    than batch.  So the loop and the collector call this between their
    steps: a task waiting for the CPU waits for one step, not the tick.

    A nap, not ``sched_yield``: a yield only reorders this task among its
    own cgroup's, and the scheduler picks our cgroup again unless the
    waiting task's own cgroup is due; a web sharing a parent with the batch
    that keeps both CPUs busy is not (measured: a yield left the agent and
    sampler at the start of 37 of web's 68 waits over 1 ms, a nap at 4 of
    38; docs/noisy_neighbor.md).  Sleeping takes this thread off the run
    queue, whatever the hierarchy.  It costs the tick about 100 us of wall
    time a nap, no CPU (benchmarks/bench_cede.py)."""
    now = time.perf_counter()
    if now - getattr(_ceded, "at", 0.0) >= CEDE_AFTER:
        time.sleep(CEDE_NAP)
        _ceded.at = time.perf_counter()
