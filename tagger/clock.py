"""One time base for everything that leaves the agent.

Inside, tick times, tag ``since`` and tag-event ``t`` are monotonic seconds
(rule durations must not jump when the wall clock is stepped).  Everything
that leaves the agent -- socket replies and pushes, Redis, every ``--json`` --
carries epoch seconds (Unix time, like the action journal's ``since``), so a
consumer can compare them with its own clock and with each other.
"""

from __future__ import annotations

import time

# Taken once: the same tick time is the same epoch time in every reply (a tag's
# ``since`` does not wobble by microseconds between two requests).  A wall
# clock stepped after start shifts the agent's epoch times by the step until
# it restarts; intervals between them stay exact.
_OFFSET = time.time() - time.monotonic()


def epoch(t_monotonic: float) -> float:
    """A ``time.monotonic()`` time as epoch seconds."""
    return float(t_monotonic) + _OFFSET
