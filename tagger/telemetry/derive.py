"""Counters -> Snapshot columns: the one pure step between the kernel's
counters and the figures rules read.  No BPF, no files: numpy over arrays,
so every figure here is tested with plain arithmetic (tests/test_derive.py).

Retro's two figures are defined once, here, for every collector:

- :func:`slowdown` -- (wait + run) / run over the tick: 1.0 is never waiting,
  2.0 is waiting as long as running.  The CPU's (``runq.slowdown``: run-queue
  wait over CPU time) and the disk's (``io.slowdown``: queue over device
  time) alike; NaN where nothing ran (no run time: undefined, not 0).
- :func:`load` -- a cgroup's share of all the node's CPU time
  (``cpu.share`` = cpu.usage / online CPUs).

:func:`bpf_columns` turns two reads of the BPF programs' counters (the
``struct tg_cg_stats`` records, summed over CPUs) into columns, histograms
and node figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..snapshot import hist_percentiles


def safe_div(num, den) -> np.ndarray:
    """``num / den`` element-wise, NaN wherever it is not finite (0/0, x/0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.asarray(num, dtype=np.float64) / np.asarray(den, dtype=np.float64)
    out = np.atleast_1d(out)
    out[~np.isfinite(out)] = np.nan
    return out


def slowdown(wait, run) -> np.ndarray:
    """Retro slowdown: (wait + run) / run; NaN where nothing ran."""
    return safe_div(np.asarray(wait, dtype=np.float64) + run, run)


def load(usage, ncpus: int) -> np.ndarray:
    """Retro load: CPUs busy (cpu.usage) as a share of the node's ``ncpus``."""
    return np.asarray(usage, dtype=np.float64) / ncpus


@dataclass(frozen=True)
class Causes:
    """Indexes of the counters' ``runq[]`` by cause (enum tg_cause in bpf/tagger.h)."""
    wakeup: int = 0
    new: int = 1
    preempt: int = 2


def changed_slots(cur: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """Indexes of the records that differ between two reads: only those are
    worked out (on a large host most cgroups are idle each tick)."""
    words = cur.dtype.itemsize // 8
    cur_w = cur.view(np.uint64).reshape(len(cur), words)
    prev_w = prev.view(np.uint64).reshape(len(prev), words)
    return np.nonzero((cur_w != prev_w).any(axis=1))[0]


def bpf_columns(cur: np.ndarray, prev: np.ndarray, rows: np.ndarray, nrows: int, dt: float,
                ncpus: int, edges: np.ndarray, causes: Causes = Causes()):
    """Columns, histograms and node figures from two reads of the changed
    slots' counters (``cur``, ``prev``: records of the same slots).

    ``rows``: each record's row in the table, -1 for a slot no row shows
    (slot 0, a cgroup not adopted yet): those count for the node only.
    Rows without a record are idle: 0 for rates, NaN for latencies (no
    event, nothing to know).  Returns (columns, histograms, node)."""

    def delta(field):
        return (cur[field] - prev[field]).astype(np.float64)   # unsigned: wraps like the kernel's

    d_cpu = delta("cpu_ns")
    d_count = (cur["runq"]["count"] - prev["runq"]["count"]).astype(np.float64)     # (m, causes)
    d_sum = (cur["runq"]["sum_ns"] - prev["runq"]["sum_ns"]).astype(np.float64)     # (m, causes)
    d_hist = (cur["runq"]["hist"] - prev["runq"]["hist"]).astype(np.uint32)         # (m, causes, B), mod 2^32
    rq_max = cur["runq"]["max_ns"].astype(np.float64) * 1e-9                        # since the last read
    d_io_hist = (cur["io_hist"] - prev["io_hist"]).astype(np.uint32)
    io_ops, io_q, io_d = delta("io_ops"), delta("io_queue_ns"), delta("io_device_ns")
    io_max = cur["io_max_ns"].astype(np.float64) * 1e-9

    mine = rows >= 0
    at = rows[mine]
    cols: dict[str, np.ndarray] = {}

    def put(name, values, idle=0.0):
        col = np.full(nrows, idle)
        col[at] = values[mine]
        cols[name] = col

    cpu_s = d_cpu * 1e-9
    wait_s = d_sum.sum(axis=1) * 1e-9
    events = d_count.sum(axis=1)
    put("cpu.usage", cpu_s / dt)
    put("cpu.share", load(cpu_s / dt, ncpus))
    put("runq.wait", wait_s / dt)
    for cause in ("self", "foreign", "throttled", "other"):
        put(f"runq.wait.{cause}", delta(f"wait_{cause}_ns") * 1e-9 / dt)
    put("runq.events", events / dt)
    put("runq.avg", safe_div(wait_s, events), np.nan)
    rmax = np.where(events > 0, rq_max.max(axis=1, initial=0.0), np.nan)
    pct = hist_percentiles(d_hist.sum(axis=1), edges, (0.5, 0.95, 0.99), cap=rmax)
    for j, name in enumerate(("runq.p50", "runq.p95", "runq.p99")):
        put(name, pct[:, j], np.nan)
    put("runq.max", rmax, np.nan)
    wake, new, preempt = causes.wakeup, causes.new, causes.preempt
    wake_hist = d_hist[:, wake] + d_hist[:, new]
    wake_max = np.maximum(rq_max[:, wake], rq_max[:, new])
    put("runq.wakeup.p99", hist_percentiles(wake_hist, edges, (0.99,), cap=wake_max)[:, 0], np.nan)
    put("runq.preempt.p99", hist_percentiles(d_hist[:, preempt], edges, (0.99,),
                                             cap=rq_max[:, preempt])[:, 0], np.nan)
    put("runq.slowdown", slowdown(wait_s, cpu_s), np.nan)
    put("sched.switches", delta("switches") / dt)
    put("sched.preempted", delta("preempted") / dt)
    put("sched.preempts", delta("preempts") / dt)

    io_max = np.where(io_ops > 0, io_max, np.nan)
    put("io.ops", io_ops / dt)
    put("io.read_bytes", delta("io_read_bytes") / dt)
    put("io.write_bytes", delta("io_write_bytes") / dt)
    put("io.lat.avg", safe_div((io_q + io_d) * 1e-9, io_ops), np.nan)
    pct = hist_percentiles(d_io_hist, edges, (0.5, 0.95, 0.99), cap=io_max)
    for j, name in enumerate(("io.lat.p50", "io.lat.p95", "io.lat.p99")):
        put(name, pct[:, j], np.nan)
    put("io.lat.max", io_max, np.nan)
    put("io.queue.avg", safe_div(io_q * 1e-9, io_ops), np.nan)
    put("io.device.avg", safe_div(io_d * 1e-9, io_ops), np.nan)
    put("io.slowdown", slowdown(io_q, io_d), np.nan)

    buckets = len(edges) - 1
    hists = {}
    for name, values in (("runq.wakeup", d_hist[:, wake]), ("runq.new", d_hist[:, new]),
                         ("runq.preempt", d_hist[:, preempt]), ("io.lat", d_io_hist)):
        full = np.zeros((nrows, buckets), np.uint32)
        full[at] = values[mine]
        hists[name] = full

    # The node: every changed slot, slot 0 (cgroups not known yet) included.
    runq_events, ops = d_count.sum(), io_ops.sum()
    node_rq_max = [rq_max.max(initial=0.0) if runq_events else np.nan]
    node_io_max = [np.nanmax(io_max) if ops else np.nan]
    node = {
        "cpus": float(ncpus),
        "cpu.usage": float(d_cpu.sum()) * 1e-9 / dt,
        "runq.wait": float(d_sum.sum()) * 1e-9 / dt,
        "runq.p99": float(hist_percentiles(d_hist.sum(axis=(0, 1))[None, :], edges, (0.99,),
                                           cap=node_rq_max)[0, 0]),
        "io.ops": float(ops) / dt,
        "io.lat.p99": float(hist_percentiles(d_io_hist.sum(axis=0)[None, :], edges, (0.99,),
                                             cap=node_io_max)[0, 0]),
        "cgroups": float(nrows),
        # Switches and run-queue waits ended: the kernel events the programs counted.
        "events": float(delta("switches").sum() + delta("preempted").sum() + runq_events) / dt,
    }
    return cols, hists, node


def drops(glob: dict, old: dict, dt: float) -> float:
    """Events lost per second between two reads of the programs' global
    counters: ring buffer or a map full, no slot, or a cgroup not known yet
    (those are counted in slot 0)."""
    d = {k: glob[k] - old.get(k, 0) for k in glob}
    return (d["ringbuf_drops"] + d["rq_full"] + d["slots_exhausted"]
            + d["unknown_cgroup"]) / dt


def merge_pairs(pairs: np.ndarray, slot_row: np.ndarray, other: str, value: str,
                dtype: np.dtype, scale: float) -> np.ndarray:
    """Per-CPU (victim slot, ``other`` slot, ``value``) entries as rows of the
    table (``slot_row``: slot -> row, -1 for none), summed per pair (a cgroup
    is never its own), times ``scale``, in ``dtype`` (victim, other, value)."""
    if len(pairs) == 0:
        return np.zeros(0, dtype)
    top = len(slot_row) - 1
    victim = slot_row[np.minimum(pairs["victim"], top)]
    them = slot_row[np.minimum(pairs[other], top)]
    keep = (victim >= 0) & (them >= 0) & (victim != them)
    keys, where = np.unique(np.stack([victim[keep], them[keep]], axis=1), axis=0, return_inverse=True)
    sums = np.bincount(where.ravel(), weights=pairs[value][keep].astype(np.float64), minlength=len(keys))
    out = np.zeros(len(keys), dtype)
    names = dtype.names
    out[names[0]], out[names[1]] = keys[:, 0], keys[:, 1]
    out[names[2]] = sums * scale
    return out
