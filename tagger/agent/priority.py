"""The tick loop's scheduling class: SCHED_FIFO at a low priority, so that the
loop keeps its schedule beside the neighbours it demotes.

Why: with a neighbour demoted by ``cpu.idle`` or the lowest weight, tasks
outside its cgroup tree were measured not running for 0.7-10 s at a time on
this project's 6.18 host (docs/noisy_neighbor.md, "The agent's own ticks"):
CFS tasks at nice -20 too, SCHED_FIFO ones never.  A loop that stops ticking
neither verifies its steps nor gives a demotion back.  Priority 1 is the lowest
real-time one: every other real-time task still comes first, and the kernel's
real-time throttling (``kernel.sched_rt_runtime_us``) bounds a runaway tick.

Only the calling thread (the loop) changes, from the end of start-up (BPF's
verifier runs as SCHED_OTHER) through teardown (reverting runs at it too), and with SCHED_RESET_ON_FORK
whatever it starts -- a thread, a process -- runs as SCHED_OTHER again: the
socket's and Redis' threads and any child stay ordinary tasks.  Where the
kernel refuses (no CAP_SYS_NICE, or a cgroup with no real-time runtime under
RT group scheduling) the loop runs as SCHED_OTHER and says so."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: the default --rt-priority: the lowest real-time priority
DEFAULT = 1


def current() -> tuple[int, os.sched_param]:
    """The calling thread's policy and parameters, for :func:`restore`."""
    return os.sched_getscheduler(0), os.sched_getparam(0)


def restore(before: tuple[int, os.sched_param]) -> None:
    """Put the calling thread back as it was (an in-process caller of
    ``Daemon.run`` gets its thread back unchanged)."""
    if current() != before:
        os.sched_setscheduler(0, *before)


def run_tick_loop_at(priority: int) -> int:
    """Put the calling thread in SCHED_FIFO at ``priority`` (1-99; 0: leave it
    SCHED_OTHER).  Returns the priority it now runs at: 0 when left alone or
    refused (logged once, with why)."""
    if priority <= 0:
        return 0
    try:
        # pid 0: the calling thread (sched_setscheduler(2) acts on a thread).
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except OSError as err:
        log.warning("the tick loop stays SCHED_OTHER: SCHED_FIFO %d refused (%s); beside a demoted "
                    "neighbour its ticks may start late (tagger_tick_jitter_max_seconds)",
                    priority, err.strerror)
        return 0
    return priority
