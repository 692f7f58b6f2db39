"""The collector used when the BPF programs cannot load (no BTF, no CAP_BPF, an
old kernel): the same Snapshot, filled from what the kernel already counts.

* cgroupfs (:mod:`tagger.telemetry.cgroupfs`): cpu.usage, cpu.share, cpu.throttled (and its periods),
  mem.current, psi.*, io.ops, io.read_bytes, io.write_bytes;
* per-process run delay (:mod:`tagger.taskstats`, taskstats over netlink or
  /proc/PID/task/*/schedstat), summed over each cgroup's ``cgroup.procs``:
  runq.wait, runq.slowdown, cpu.demand, and with taskstats
  sched.switches/sched.preempted;
* /proc/stat: the node's cpu.usage and cpu.steal.

Everything else (run-queue and block latency percentiles, who preempted whom,
run-queue wait by cause and its culprits)
needs the kernel programs and stays NaN, never 0.  One warning says so when the
collector opens.

Like the BPF programs, the figures are per cgroup, not per subtree: the
cumulative cgroupfs counters have their children's share subtracted
(``exclusive``), and a cgroup's run delay is that of its own processes.  A
process that exits within a tick loses the wait of its last tick (taskstats
keeps exited *threads*, not exited processes).

    with FallbackCollector(reason="no BTF") as coll:
        for snap in coll.stream(interval=1.0, count=5): ...
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import numpy as np

from .. import errors
from ..cgroupglob import GlobSet
from ..cgroups import Layout, Registry, WorkloadNames
from ..kernelfs import HOST, KernelFS
from ..procstat import CpuRates
from ..snapshot import METRICS, Snapshot, derive
from ..taskstats import DelayAcctSwitch, open_delay_source
from .base import Collector
from .cgroupfs import CGROUPFS_METRICS, CgroupfsReader
from .derive import slowdown

log = logging.getLogger(__name__)

#: Filled from per-process run delay (taskstats or schedstat).
RUNDELAY_METRICS = ("runq.wait", "runq.slowdown")
#: Filled only when the run-delay source is taskstats (it carries nvcsw/nivcsw).
SWITCH_METRICS = ("sched.switches", "sched.preempted")


class FallbackCollector(Collector):
    """A collector with the BPF collector's interface (``tick``, ``stream``,
    ``health``, ``close``, context manager), reading cgroupfs and per-process
    run delay.  The first :meth:`tick` covers the time since the collector opened.

    ``include``: a glob on cgroup paths ("/kubepods/**") or a predicate; rows
    outside it are neither read nor reported.  ``rundelay``: "auto",
    "taskstats", "schedstat" or None (no run-queue figures).
    ``enable_delayacct``: switch kernel.task_delayacct on while open (not needed
    for run delay on Linux >= 5.14; the old value is put back on close).
    ``workload_names``: pod and container names for the labels (tagger.kubelet)."""

    source = "cgroupfs"

    def __init__(self, fs: KernelFS = HOST, layout: Layout | None = None, registry: Registry | None = None,
                 reason: str | None = None, include: str | Callable[[str], bool] | None = None,
                 rundelay: str | None = "auto", enable_delayacct: bool = False, warn: bool = True,
                 workload_names: WorkloadNames | None = None):
        self.fs = fs
        self.layout = layout or Layout.detect(fs)
        self.registry = registry or Registry(self.layout, fs, workload_names=workload_names)
        self.reason = reason
        self._include = _as_predicate(include)
        self._closed = False
        self._delayacct = None
        self._rundelay = None
        try:
            if enable_delayacct:
                self._delayacct = DelayAcctSwitch(fs)
            if rundelay is not None:
                self._rundelay = open_delay_source(fs, rundelay)
            self.ncpus = fs.online_cpus()
            self._cgroupfs = CgroupfsReader(self.layout, CGROUPFS_METRICS, fs, ncpus=self.ncpus, exclusive=True)
            self.filled = self._filled_metrics()
            self.missing = [m for m in METRICS if m not in self.filled]
            self.seq = 0
            self._t_prev: float | None = None
            self._delays_prev: dict[int, tuple] = {}
            self._procstat: CpuRates | None = None
            self._last_read_s = math.nan
            self._started = time.monotonic()
            self._prime()
        except BaseException:
            self.close()
            raise
        if warn:
            log.warning("%s", self.warning())

    # --- what it can and cannot fill ---------------------------------------------
    def _filled_metrics(self) -> list[str]:
        filled = [m for m in CGROUPFS_METRICS if m not in self._cgroupfs.unavailable]
        if self._rundelay is not None:
            filled += [m for m in RUNDELAY_METRICS if m != "runq.slowdown" or "cpu.usage" in filled]
            if self._rundelay.name == "taskstats":
                filled += list(SWITCH_METRICS)
        if "runq.wait" in filled and "cpu.usage" in filled:
            filled.append("cpu.demand")          # snapshot.derive
        return filled

    def warning(self) -> str:
        """The one warning: why BPF is not used, and which metrics will be NaN."""
        why = f"BPF telemetry unavailable ({self.reason})" if self.reason else "BPF telemetry not used"
        runq = f"run delay from {self._rundelay.name}" if self._rundelay else "no run-queue figures"
        return (f"{why}: using the cgroupfs fallback ({runq}). No data (NaN) for: "
                f"{_compact(self.missing)}. Run `tagger doctor` to see what BPF needs here.")

    # --- ticks ---------------------------------------------------------------------------
    def _paths(self) -> list[str]:
        self.registry.scan()
        self.registry.refresh_names()       # the table is described anew each tick from the registry
        paths = self.registry.paths()
        if self._include is not None:
            paths = [p for p in paths if self._include(p)]
        return paths

    def _prime(self):
        t = time.monotonic()
        paths = self._paths()
        self._cgroupfs.read(paths, t)
        if self._rundelay is not None:
            procs = self._procs(paths)
            self._delays_prev = self._read_delays(procs)
        self._procstat = CpuRates(self.fs)
        self._t_prev = t

    def tick(self) -> Snapshot:
        """A Snapshot covering the time since the previous tick (or since open)."""
        if self._closed:
            raise errors.TaggerError("the fallback collector is closed")
        t0 = time.perf_counter()
        t = time.monotonic()
        paths = self._paths()
        dt = t - self._t_prev
        n = len(paths)
        columns = self._cgroupfs.read(paths, t)
        if self._rundelay is not None:
            self._rundelay_columns(paths, columns, dt)
        derive(columns)
        for m in METRICS:
            columns.setdefault(m, np.full(n, np.nan))
        node = self._node(columns, dt, full_tree=self._include is None)
        self._t_prev = t
        self.seq += 1
        snap = Snapshot(t=t, dt=dt, cgroups=self.registry.table(paths), columns=columns, node=node,
                        source=self.source, seq=self.seq)
        self._last_read_s = time.perf_counter() - t0
        return snap

    def health(self) -> dict:
        return {
            "source": self.source,
            "reason": self.reason,
            "ticks": self.seq,
            "cgroups": len(self.registry),
            "rundelay_source": self._rundelay.name if self._rundelay else None,
            "filled": list(self.filled),
            "missing": list(self.missing),
            "files_per_cgroup": self._cgroupfs.files,
            "read_seconds": self._last_read_s,
            "events_per_s": math.nan,
            "drops": 0,
            "delayacct_changed": bool(self._delayacct and self._delayacct.changed),
        }

    def close(self):
        """Release the netlink socket and put back any sysctl changed; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._rundelay is not None:
                self._rundelay.close()
        finally:
            if self._delayacct is not None:
                self._delayacct.restore()


    # --- run delay --------------------------------------------------------------------------
    def _procs(self, paths: list[str]) -> list[list[int]]:
        """Each cgroup's own processes (cgroup.procs lists tgids, not descendants')."""
        base = self.layout.walk_root.rstrip("/")
        texts = self.fs.read_small_many([f"{base}{'' if p == '/' else p}/cgroup.procs" for p in paths])
        # None: the cgroup vanished since the scan.
        return [[int(x) for x in text.split()] if text is not None else [] for text in texts]

    def _read_delays(self, procs: list[list[int]]) -> dict[int, tuple]:
        tgids = {pid for ps in procs for pid in ps}
        got = self._rundelay.read(sorted(tgids))
        return {pid: (d.run_delay_ns, d.nvcsw, d.nivcsw, d.age_s) for pid, d in got.items()}

    def _rundelay_columns(self, paths, columns, dt):
        procs = self._procs(paths)
        now = self._read_delays(procs)
        prev = self._delays_prev
        n = len(paths)
        wait = np.zeros(n)
        vol = np.zeros(n)
        invol = np.zeros(n)
        for i, pids in enumerate(procs):
            for pid in pids:
                cur = now.get(pid)
                if cur is None:
                    continue                # exited between cgroup.procs and the read
                old = prev.get(pid)
                if old is None or cur[0] < old[0]:
                    # Not seen at the last tick (or the pid was reused).  Born since
                    # then: all of its wait is new.  Older (moved in from a cgroup we
                    # do not cover): its history is not this tick's; start from now.
                    age = cur[3] if not math.isnan(cur[3]) else self._rundelay.age_of(pid)
                    if not age <= dt + 0.05:
                        continue
                    old = (0, 0, 0, 0.0)
                wait[i] += cur[0] - old[0]
                vol[i] += max(cur[1] - old[1], 0)
                invol[i] += max(cur[2] - old[2], 0)
        self._delays_prev = now
        if dt <= 0:
            return
        columns["runq.wait"] = wait / 1e9 / dt
        usage = columns.get("cpu.usage")
        if usage is not None:
            columns["runq.slowdown"] = slowdown(columns["runq.wait"], usage)
        if self._rundelay.name == "taskstats":
            columns["sched.switches"] = vol / dt
            columns["sched.preempted"] = invol / dt

    # --- node ------------------------------------------------------------------------------
    def _node(self, columns, dt, full_tree: bool) -> dict[str, float]:
        node = {"cpus": float(self.ncpus), "cgroups": float(len(columns["cpu.usage"]))}
        rates = self._procstat.rates(dt, ("busy", "steal"))
        node["cpu.usage"], node["cpu.steal"] = rates["busy"], rates["steal"]
        if full_tree and "runq.wait" in self.filled:
            node["runq.wait"] = float(np.nansum(columns["runq.wait"]))
        for m in ("runq.p99", "io.lat.p99", "events"):
            node[m] = math.nan
        if "io.ops" in self.filled and full_tree:
            node["io.ops"] = float(np.nansum(columns["io.ops"]))
        node["drops"] = 0.0
        return node


def _as_predicate(include):
    """A cgroup glob (tagger.cgroupglob: "*" within a segment, "/a/**" is /a and
    everything below), a list of them, or a predicate, as a predicate."""
    if include is None or callable(include):
        return include
    return GlobSet(include).match


def _compact(names: list[str]) -> str:
    """"runq.p50, runq.p95, runq.p99" -> "runq.{p50,p95,p99}"."""
    groups: dict[str, list[str]] = {}
    for name in names:
        head, _, tail = name.rpartition(".")
        groups.setdefault(head, []).append(tail)
    parts = []
    for head, tails in groups.items():
        if not head:
            parts.extend(tails)
        elif len(tails) == 1:
            parts.append(f"{head}.{tails[0]}")
        else:
            parts.append(f"{head}.{{{','.join(tails)}}}")
    return ", ".join(parts)
