"""Figures derived from a Snapshot's metrics that more than one view shows
(``tagger stat``, ``tagger top``): one definition each, so the same cgroup
reads the same in both."""

from __future__ import annotations

import numpy as np


def wait_fraction(wait, usage):
    """WAIT%: the share of runnable time spent waiting on the run queue,
    ``wait / (wait + run)``, both in seconds per second.  0..1 whatever the
    number of threads (``runq.wait`` alone, in CPUs, is not: 8 threads waiting
    all second are 8.0).  NaN when the cgroup neither ran nor waited (idle is
    not 0% waiting, it is unknown)."""
    wait = np.asarray(wait, dtype=np.float64)
    usage = np.asarray(usage, dtype=np.float64)
    total = wait + usage
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, wait / np.where(total > 0, total, 1.0), np.nan)
