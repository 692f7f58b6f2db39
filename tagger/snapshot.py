"""The Snapshot: everything tagger knows about the machine at one tick.

One Snapshot per tick: a cgroup table (slot -> id, path, display name, labels)
and one float64 column per metric, aligned by row.  A metric that cannot be
known for a cgroup is NaN, never 0.  Node-level values live in ``node`` (keys
without the ``node.`` prefix).  Units are SI: seconds, bytes, fractions.

Producers: :mod:`tagger.telemetry` (live), :mod:`tagger.publish.trace` (replay).
Consumers: rules, tags, actions, policies, publishers, the live view.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str      # "cpus", "fraction", "s", "s/s", "1/s", "bytes/s", "bytes", "ratio"
    help: str
    source: str    # "bpf" or "cgroupfs": where the live value comes from


def _m(name, unit, help, source="bpf"):
    return name, Metric(name, unit, help, source)


_PCT = ("avg", "p50", "p95", "p99", "max")

#: The per-cgroup metric catalogue (DESIGN.md "Data: the Snapshot").
METRICS: dict[str, Metric] = dict([
    _m("cpu.usage", "cpus", "CPUs busy on average over the tick (1.0 = one whole CPU)"),
    _m("cpu.share", "fraction", "fraction of all CPU time on the node used by this cgroup (Retro load)"),
    _m("runq.wait", "s/s", "seconds spent runnable-but-waiting per second (sum over tasks)"),
    _m("runq.wait.self", "s/s", "part of runq.wait while a task of this same cgroup held the CPU"),
    _m("runq.wait.foreign", "s/s", "part of runq.wait while another cgroup's task held the CPU (culprits: runq.wait.by)"),
    _m("runq.wait.throttled", "s/s", "part of runq.wait while this cgroup was throttled by its own CPU quota"),
    _m("runq.wait.other", "s/s", "the rest of runq.wait: waking an idle CPU, before a migration, not seen"),
    _m("cpu.demand", "cpus", "CPUs wanted: running + runnable (cpu.usage + runq.wait)"),
    *[_m(f"runq.{p}", "s", f"run-queue latency {p}, runnable to running, per event") for p in _PCT],
    _m("runq.wakeup.p99", "s", "run-queue latency p99 of wakeups (and new tasks)"),
    _m("runq.preempt.p99", "s", "run-queue latency p99 of tasks preempted while runnable"),
    _m("runq.events", "1/s", "run-queue latency events per second: every switch-in after being queued (schedstat pcount), 0 ns waits included"),
    _m("runq.slowdown", "ratio", "(wait + run) / run over the tick (Retro slowdown of the CPU)"),
    _m("sched.switches", "1/s", "voluntary switch-outs (task blocked) per second"),
    _m("sched.preempted", "1/s", "involuntary switch-outs (preempted while runnable) per second"),
    _m("sched.preempts", "1/s", "preemptions this cgroup's tasks caused in other cgroups per second"),
    _m("io.ops", "1/s", "block requests completed per second"),
    _m("io.read_bytes", "bytes/s", "bytes read from block devices per second"),
    _m("io.write_bytes", "bytes/s", "bytes written to block devices per second"),
    *[_m(f"io.lat.{p}", "s", f"block request latency {p}, queue + device") for p in _PCT],
    _m("io.queue.avg", "s", "block request time from insert to issue, mean"),
    _m("io.device.avg", "s", "block request time from issue to complete, mean"),
    _m("io.slowdown", "ratio", "(queue + device) / device (Retro slowdown of the disk)"),
    _m("cpu.throttled", "fraction", "fraction of CFS periods throttled (cpu.stat)", "cgroupfs"),
    _m("cpu.weight", "weight", "CPU weight in cgroup v2 units, 1..10000, 100 the default (cpu.weight; "
       "v1 cpu.shares x 100 / 1024)", "cgroupfs"),
    _m("cpu.periods", "1/s", "CFS quota periods that ran per second (cpu.stat nr_periods; 0 without a quota)",
       "cgroupfs"),
    _m("cpu.throttled_periods", "1/s", "CFS quota periods throttled per second (cpu.stat nr_throttled)",
       "cgroupfs"),
    _m("mem.current", "bytes", "memory charged to the cgroup", "cgroupfs"),
    _m("psi.cpu.some", "fraction", "share of time some task stalled on CPU since the previous read (PSI total), at least its avg10", "cgroupfs"),
    _m("psi.io.some", "fraction", "share of time some task stalled on I/O since the previous read (PSI total), at least its avg10", "cgroupfs"),
    _m("psi.mem.some", "fraction", "share of time some task stalled on memory since the previous read (PSI total), at least its avg10", "cgroupfs"),
])

#: Node-level values (``node.<name>`` in rules).  Per-cgroup metrics summed or
#: merged over the node appear under the same names.
NODE_METRICS: dict[str, Metric] = dict([
    _m("cpus", "cpus", "online CPUs", "cgroupfs"),
    _m("cpu.usage", "cpus", "CPUs busy on the node", "cgroupfs"),
    _m("cpu.steal", "cpus", "CPUs taken by the hypervisor from this guest (/proc/stat steal)", "cgroupfs"),
    _m("runq.wait", "s/s", "run-queue wait over all cgroups"),
    _m("runq.p99", "s", "node run-queue latency p99 (all cgroups' events merged)"),
    _m("io.ops", "1/s", "block requests completed per second, node"),
    _m("io.lat.p99", "s", "node block latency p99"),
    _m("events", "1/s", "scheduler and block events counted in the kernel per second"),
    _m("drops", "1/s", "events lost per second (ring buffer full, map full, cgroup unknown)"),
    _m("cgroups", "count", "cgroups in the table", "cgroupfs"),
])

#: Histograms carried per tick, (n_cgroups, n_buckets) counts; edges in ``hist_edges``.
HISTOGRAMS = ("runq.wakeup", "runq.new", "runq.preempt", "io.lat")


def hist_edges(buckets: int, shift: int = 10) -> np.ndarray:
    """Bucket edges in seconds of the kernel's log2 histograms, whose unit is
    2^shift ns: bucket 0 holds [0, 2) units, bucket k >= 1 [2^k, 2^(k+1))."""
    return np.concatenate([[0.0], 2.0 ** np.arange(1, buckets + 1)]) * (2 ** shift) * 1e-9


def hist_percentiles(hist: np.ndarray, edges: np.ndarray, qs: Iterable[float],
                     cap: np.ndarray | None = None) -> np.ndarray:
    """Percentiles per row of ``hist`` (n, B) counts, interpolating linearly
    inside the bucket that holds each rank; NaN for rows with no events.
    ``cap`` (n,) bounds each row by its observed maximum.  Returns (n, len(qs))."""
    qs = list(qs)
    hist = np.asarray(hist)
    n = hist.shape[0]
    out = np.full((n, len(qs)), np.nan)
    if n == 0:
        return out
    # Only rows with events: on a large host most cgroups are idle each tick.
    rows = np.nonzero(hist.any(axis=1))[0]
    if rows.size == 0:
        return out
    h = hist[rows].astype(np.float64)
    cum = np.cumsum(h, axis=1)
    total = cum[:, -1]
    for j, q in enumerate(qs):
        rank = q * total
        idx = np.minimum((cum < rank[:, None]).sum(axis=1), h.shape[1] - 1)
        before = np.where(idx > 0, cum[np.arange(len(rows)), idx - 1], 0.0)
        inside = h[np.arange(len(rows)), idx]
        frac = np.clip((rank - before) / np.where(inside > 0, inside, 1.0), 0.0, 1.0)
        out[rows, j] = edges[idx] + frac * (edges[idx + 1] - edges[idx])
    if cap is not None:
        with np.errstate(invalid="ignore"):
            out = np.fmin(out, np.asarray(cap, dtype=np.float64)[:, None])
    return out


def suggest(name: str, known=None) -> str | None:
    """The closest known metric name, for "did you mean ...?" messages."""
    known = list(known if known is not None else METRICS)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


@dataclass
class CgroupTable:
    """Rows of the Snapshot.  ``paths`` are relative to the hierarchy root ("/"
    is the root); on a hybrid host one path names the workload in every
    hierarchy.  ``ids`` are cgroup v2 ids (0 where unknown)."""

    ids: np.ndarray                       # uint64
    paths: list[str]
    names: list[str]
    labels: list[dict[str, str]]
    _index: dict[str, int] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.paths)

    def index(self, path: str) -> int | None:
        """Row of ``path``, or None."""
        if self._index is None:
            self._index = {p: i for i, p in enumerate(self.paths)}
        return self._index.get(path)

    @classmethod
    def empty(cls) -> "CgroupTable":
        return cls(np.zeros(0, np.uint64), [], [], [])

    @classmethod
    def from_paths(cls, paths, names=None, labels=None, ids=None) -> "CgroupTable":
        paths = list(paths)
        n = len(paths)
        return cls(
            np.asarray(ids if ids is not None else np.zeros(n), dtype=np.uint64),
            paths,
            list(names) if names is not None else [p.rsplit("/", 1)[-1] or "/" for p in paths],
            list(labels) if labels is not None else [{} for _ in paths],
        )


PREEMPTION_DTYPE = np.dtype([("victim", np.int32), ("preemptor", np.int32), ("count", np.float64)])
#: ``runq.wait.by``: rows (victim, culprit) and the victim's run-queue wait,
#: in s/s like runq.wait, while the culprit's tasks held the CPU.  Per
#: victim they sum to at most runq.wait.foreign (the kernel keeps the top
#: few culprits per cgroup and CPU; cgroups without a row are left out).
CULPRIT_DTYPE = np.dtype([("victim", np.int32), ("culprit", np.int32), ("wait", np.float64)])


def derive(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Columns defined by other columns, added in place where their inputs
    are there (NaN in an input gives NaN): every collector and trace replay
    goes through here, so each is defined once.

    - ``cpu.demand`` = cpu.usage + runq.wait: CPUs running plus CPUs'
      worth of runnable tasks waiting, what the cgroup wants whether or not
      it gets it."""
    usage, wait = columns.get("cpu.usage"), columns.get("runq.wait")
    if "cpu.demand" not in columns and usage is not None and wait is not None:
        columns["cpu.demand"] = np.asarray(usage, dtype=np.float64) + np.asarray(wait, dtype=np.float64)
    return columns


@dataclass
class Snapshot:
    """What tagger knows at one tick.  Columns are float64 arrays of len(cgroups)."""

    t: float                                   # monotonic seconds
    dt: float                                  # seconds covered by rates
    cgroups: CgroupTable
    columns: dict[str, np.ndarray]
    node: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, np.ndarray] = field(default_factory=dict)
    hist_edges: np.ndarray = field(default_factory=lambda: np.zeros(0))   # seconds, n_buckets + 1
    preemptions: np.ndarray = field(default_factory=lambda: np.zeros(0, PREEMPTION_DTYPE))
    culprits: np.ndarray = field(default_factory=lambda: np.zeros(0, CULPRIT_DTYPE))   # runq.wait.by
    source: str = "bpf"                        # "bpf", "cgroupfs" (fallback) or "synthetic"
    seq: int = 0

    def __len__(self) -> int:
        return len(self.cgroups)

    def column(self, metric: str) -> np.ndarray:
        """The column for ``metric``; all-NaN if the catalogue knows it but this
        source could not measure it; KeyError (with a suggestion) otherwise."""
        col = self.columns.get(metric)
        if col is not None:
            return col
        if metric in METRICS:
            return np.full(len(self), np.nan)
        hint = suggest(metric)
        raise KeyError(f"unknown metric {metric!r}" + (f" (did you mean {hint}?)" if hint else ""))

    def value(self, path: str, metric: str) -> float:
        i = self.cgroups.index(path)
        return float("nan") if i is None else float(self.column(metric)[i])

    def preempted_by(self) -> np.ndarray:
        """Per row: the row of the cgroup that preempted it most this tick, or -1."""
        out = np.full(len(self), -1, np.int64)
        best = np.zeros(len(self))
        for victim, preemptor, count in self.preemptions:
            if count > best[victim]:
                best[victim], out[victim] = count, preemptor
        return out

    def culprit_of(self) -> np.ndarray:
        """Per row: the row of the cgroup whose tasks held the CPU longest while
        this one's waited this tick (runq.wait.by), or -1."""
        out = np.full(len(self), -1, np.int64)
        best = np.zeros(len(self))
        for victim, culprit, wait in self.culprits:
            if wait > best[victim]:
                best[victim], out[victim] = wait, culprit
        return out

    @classmethod
    def synthetic(cls, paths, columns: dict | None = None, t=0.0, dt=1.0, node=None) -> "Snapshot":
        """A Snapshot from plain values ({"cpu.usage": [..]}), for tests and rule tests."""
        table = CgroupTable.from_paths(paths)
        cols = {k: np.asarray(v, dtype=np.float64) for k, v in (columns or {}).items()}
        return cls(t=t, dt=dt, cgroups=table, columns=cols, node=dict(node or {}),
                   source="synthetic")
