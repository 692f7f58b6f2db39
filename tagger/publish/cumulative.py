"""Per-cgroup cumulative figures for the Prometheus exposition: counters and
latency histograms summed over ticks, so a scraper every 15 s can ``rate()``
what the tick loop measured every second.

The Snapshot carries per-tick rates (``cpu.usage`` CPUs, ``io.ops`` 1/s...) and
per-tick histogram deltas; here each tick adds rate x dt, and the tick's bucket
counts, to running totals kept per cgroup.  A cgroup is keyed by (path, id):
one removed and made again under the same path is a new cgroup whose totals
start at 0 (a counter reset, which ``rate()`` handles), and a removed cgroup's
totals are dropped with it.  Updated from the tick loop only; every update
makes new arrays, so a render holding the previous :class:`Totals` never sees
them change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

#: Snapshot rate metric -> (counter name, help).  Each tick adds value x dt.
COUNTERS = {
    "cpu.usage": ("tagger_cgroup_cpu_seconds_total", "CPU time used by the cgroup's tasks, seconds"),
    "runq.wait": ("tagger_cgroup_runq_wait_seconds_total",
                  "Time the cgroup's tasks spent runnable but waiting for a CPU, seconds (summed over tasks)"),
    "sched.switches": ("tagger_cgroup_switches_total", "Voluntary switch-outs (task blocked)"),
    "sched.preempted": ("tagger_cgroup_preemptions_total", "Involuntary switch-outs (preempted while runnable)"),
    "io.ops": ("tagger_cgroup_io_ops_total", "Block requests completed"),
    "io.read_bytes": ("tagger_cgroup_io_read_bytes_total", "Bytes read from block devices"),
    "io.write_bytes": ("tagger_cgroup_io_write_bytes_total", "Bytes written to block devices"),
    # cAdvisor's container_cpu_cfs_{periods,throttled_periods}_total.
    "cpu.periods": ("tagger_cgroup_cpu_periods_total", "CFS quota periods that ran (cpu.stat nr_periods)"),
    "cpu.throttled_periods": ("tagger_cgroup_cpu_throttled_periods_total",
                              "CFS quota periods in which the cgroup was throttled (cpu.stat nr_throttled)"),
}
#: Counters present only once they have counted something, and counters
#: present exactly where another is: a cgroup without a CPU quota runs no CFS
#: period, and 0 periods on every such cgroup would be most of the series.
SPARSE = frozenset({"tagger_cgroup_cpu_periods_total"})
PRESENT_WITH = {"tagger_cgroup_cpu_throttled_periods_total": "tagger_cgroup_cpu_periods_total"}

#: Histogram name -> (help, snapshot histograms summed, how to get the tick's sum of
#: observations in seconds from the snapshot's columns: (rate metric, mean metric or None)).
HISTOGRAMS = {
    "tagger_cgroup_runq_latency_seconds": (
        "Run-queue latency, runnable to running, per event (the kernel's log2 buckets)",
        ("runq.wakeup", "runq.new", "runq.preempt"), ("runq.wait", None)),
    "tagger_cgroup_io_latency_seconds": (
        "Block request latency, queue + device, per request (the kernel's log2 buckets)",
        ("io.lat",), ("io.ops", "io.lat.avg")),
}


@dataclass(frozen=True)
class Totals:
    """Running totals aligned with one snapshot's cgroup table."""

    keys: tuple                                   # (path, id) per row
    counters: dict = field(default_factory=dict)  # counter name -> float64 (n,); absent: never measured
    seen: dict = field(default_factory=dict)      # counter name -> bool (n,): measured at least once
    buckets: dict = field(default_factory=dict)   # histogram name -> int64 (n, B), per bucket (not cumulative)
    sums: dict = field(default_factory=dict)      # histogram name -> float64 (n,), seconds
    edges: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: wall-clock (epoch) seconds the totals were measured at; None when the
    #: snapshot's time is not this host's monotonic clock (tests, replay)
    wall: float | None = None


def wall_time(t: float, horizon: float = 60.0) -> float | None:
    """Epoch seconds of monotonic time ``t`` (a snapshot's), if it lies within
    ``horizon`` seconds before now; None otherwise (a synthetic clock).

    A live snapshot is added as its tick publishes it, seconds after it was
    read whatever the interval.  The horizon is short because a synthetic
    clock's small times (a test's t=1.0, a replayed trace) pass for this
    host's on a machine booted less than a horizon ago: with an hour, a
    fresh CI machine stamped a test's t=1.0."""
    mono = time.monotonic()
    if not 0.0 <= mono - t <= horizon:
        return None
    return time.time() - (mono - t)


class Accumulator:
    """Adds each published snapshot to the running totals (:attr:`totals`)."""

    def __init__(self):
        self.totals = Totals(keys=())

    def add(self, snapshot) -> Totals:
        table = snapshot.cgroups
        ids = np.asarray(table.ids).tolist() if len(table.ids) == len(table.paths) else [0] * len(table.paths)
        keys = tuple(zip(table.paths, ids))
        old = self.totals
        if keys == old.keys:
            carry = None                          # same rows: add in place of a remap
        else:
            where = {k: i for i, k in enumerate(old.keys)}
            rows = np.asarray([where.get(k, -1) for k in keys], dtype=np.intp)
            carry = (rows >= 0, rows[rows >= 0])

        def carried(prev: np.ndarray | None, shape, dtype):
            out = np.zeros(shape, dtype)
            if prev is None:
                return out
            if carry is None:
                return prev.copy()
            out[carry[0]] = prev[carry[1]]
            return out

        n, dt = len(keys), float(snapshot.dt)
        counters, seen = {}, {}
        for metric, (name, _help) in COUNTERS.items():
            col = snapshot.columns.get(metric)
            if col is None and name not in old.counters:
                continue
            total = carried(old.counters.get(name), n, np.float64)
            known = carried(old.seen.get(name), n, bool)
            if col is not None:
                inc = np.asarray(col, dtype=np.float64) * dt
                ok = ~np.isnan(inc)               # unknown adds nothing (and is not 0 until once known)
                total[ok] += np.maximum(inc[ok], 0.0)
                known |= (ok & (total > 0)) if name in SPARSE else ok
            counters[name], seen[name] = total, known
        for name, other in PRESENT_WITH.items():
            if name in seen and other in seen:
                seen[name] = seen[name] & seen[other]

        buckets, sums = dict(), dict()
        edges = np.asarray(snapshot.hist_edges, dtype=np.float64)
        nb = len(edges) - 1
        if nb > 0:
            for name, (_help, parts, (rate, mean)) in HISTOGRAMS.items():
                if not all(p in snapshot.histograms for p in parts):
                    continue
                count = carried(old.buckets.get(name) if old.edges.shape == edges.shape else None,
                                (n, nb), np.int64)
                tick = sum(np.asarray(snapshot.histograms[p], dtype=np.int64) for p in parts)
                count += tick
                total = carried(old.sums.get(name), n, np.float64)
                col = np.asarray(snapshot.columns.get(rate, np.zeros(n)), dtype=np.float64) * dt
                if mean is not None:
                    col = col * np.asarray(snapshot.columns.get(mean, np.zeros(n)), dtype=np.float64)
                total += np.where(np.isnan(col), 0.0, col)
                buckets[name], sums[name] = count, total
        self.totals = Totals(keys, counters, seen, buckets, sums, edges if nb > 0 else old.edges,
                             wall_time(float(snapshot.t)))
        return self.totals
