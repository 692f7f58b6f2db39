"""The BPF collector: kernel counters -> one Snapshot per tick.

:class:`BpfCollector` owns the loaded BPF programs (:mod:`tagger.native`).
Each tick it applies the ring buffer's lifecycle events to the slot map
(:mod:`.slotmap`, :mod:`.events`), reads every slot's counters in one call,
and turns the deltas into the Snapshot's columns (:mod:`.derive`: rates,
means, percentiles interpolated in the log2 histograms' deltas).  No Python
runs per kernel event.

Figures are per cgroup, not per subtree (a cgroup's own tasks), as the BPF
programs count them; the fallback collector (:mod:`.fallback`) makes its
cgroupfs figures exclusive to match.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Iterable

from .. import errors
from ..cgroups import Layout, Registry, WorkloadNames
from ..clock import cede
from ..kernelfs import HOST, KernelFS
from ..procstat import CpuRates
from ..snapshot import CULPRIT_DTYPE, PREEMPTION_DTYPE, Snapshot, derive, hist_edges
from . import derive as counters
from .base import Collector
from .cgroupfs import CgroupfsReader, PeriodicReader
from .events import handle_events
from .slotmap import SlotMap

log = logging.getLogger(__name__)

#: cgroupfs figures the BPF collector adds (the kernel keeps them already).
CGROUPFS_EXTRAS = ("cpu.throttled", "cpu.periods", "cpu.throttled_periods", "cpu.weight", "mem.current",
                   "psi.cpu.some", "psi.io.some", "psi.mem.some")


class BpfCollector(Collector):
    """Snapshots from tagger's BPF programs.  A context manager: ``close()``
    detaches the programs on every exit path.

    ``outlier``: run-queue or block latency (seconds) that makes a ring-buffer
    event (see :attr:`outliers`); 0 for none.  ``cgroupfs_metrics``: which
    cgroupfs figures to add (every ``cgroupfs_every`` ticks).  ``bpf_stats``:
    keep the kernel's BPF run-time statistics on while open, so
    :meth:`health` reports ns per event (they cost every BPF program on the
    host a little, hence off by default).  ``workload_names``: pod and
    container names for the cgroup table's labels (tagger.kubelet), read
    again every tick."""

    source = "bpf"

    def __init__(self, fs: KernelFS = HOST, layout: Layout | None = None, max_slots: int | None = None,
                 outlier: float = 0.0, cgroupfs_metrics: Iterable[str] = CGROUPFS_EXTRAS,
                 cgroupfs_every: int = 1, bpf_stats: bool = False, features_off: int = 0,
                 workload_names: WorkloadNames | None = None):
        from ..native.probes import Probes   # needs the compiled module: import late
        from ..native.variants import below_minimum, describe

        self.fs = fs
        self.layout = layout or Layout.detect(fs)
        if self.layout.v2_root is None:
            raise errors.BpfUnavailable(0, "cgroup v2 is not mounted: BPF sees v2 cgroup ids only")
        too_old = below_minimum()
        if too_old:
            raise errors.BpfUnavailable(0, too_old)
        # On a hybrid or v1 host the bio's blkcg is a v1 blkio cgroup: keep its ids too.
        io_on_v1 = self.layout.controller_version("io") == 1
        self.registry = Registry(self.layout, fs, v1_ids=("io",) if io_on_v1 else (),
                                 workload_names=workload_names)
        self.ncpus = fs.online_cpus()
        self.max_slots = max_slots or _default_slots(self.ncpus)
        self.probes = None
        self.slotmap: SlotMap | None = None
        self.variant = ""
        self._closed = False
        self._stats_fd = None
        self._prog_prev: dict[str, tuple[int, int]] = {}
        try:
            self.probes = Probes(max_slots=self.max_slots, outlier_ns=int(outlier * 1e9),
                                 features_off=features_off)
            #: The program variants loaded for this kernel (``tagger doctor`` names them too).
            self.variant = describe(self.probes.features)
            self._setup(cgroupfs_metrics, cgroupfs_every)
            if bpf_stats:
                from ..native import check, lib
                self._stats_fd = check(lib.tg_enable_stats(), "enabling BPF run-time statistics")
        except BaseException:
            self.close()
            raise

    def _setup(self, cgroupfs_metrics, cgroupfs_every):
        from ..native import lib

        p = self.probes
        self.buckets = int(lib.TG_HIST_BUCKETS)
        self.edges = hist_edges(self.buckets, int(lib.TG_HIST_SHIFT))
        self.causes = counters.Causes(int(lib.TG_CAUSE_WAKEUP), int(lib.TG_CAUSE_NEW),
                                      int(lib.TG_CAUSE_PREEMPT))
        self.outliers: list[dict] = []
        self.slotmap = SlotMap(p, self.registry, self.fs, self.layout, self.max_slots)
        self.slotmap.start()

        self._cur = p.new_stats(self.max_slots)
        self._prev = p.new_stats(self.max_slots)
        self._cgroupfs = PeriodicReader(CgroupfsReader(self.layout, tuple(cgroupfs_metrics), self.fs,
                                                       ncpus=self.ncpus), cgroupfs_every) \
            if cgroupfs_metrics else None
        self.seq = 0
        self._globals_prev = p.read_globals()
        p.read_pairs(self.slotmap.high_water)            # start pairs from now
        p.read_culprits(self.slotmap.high_water)
        self._procstat = CpuRates(self.fs)
        p.checkpoint()
        p.read_stats(self._prev, self.slotmap.high_water)
        self._t_prev = time.monotonic()
        self._last_tick_s = math.nan

    # The slot map's figures, where callers and benchmarks have always read them.
    path_slot = property(lambda self: self.slotmap.path_slot)
    high_water = property(lambda self: self.slotmap.high_water)
    slots = property(lambda self: self.slotmap.slots)
    slots_reclaimed = property(lambda self: self.slotmap.slots_reclaimed)
    reconciles = property(lambda self: self.slotmap.reconciles)

    # --- one tick -------------------------------------------------------------------------
    def tick(self) -> Snapshot:
        """A Snapshot of everything since the previous tick."""
        started = time.perf_counter()
        p, slotmap = self.probes, self.slotmap
        self.outliers = handle_events(p.drain().copy(), slotmap)
        slotmap.maybe_reconcile(self.seq)
        cede()                         # between steps: a task waiting for this CPU runs (tagger.clock)
        n = slotmap.high_water
        p.checkpoint()                 # running tasks' time so far, so no tick shows a spike
        p.read_stats(self._cur, n)
        t = time.monotonic()
        dt = max(t - self._t_prev, 1e-9)
        pairs = p.read_pairs(n)
        culprit_pairs = p.read_culprits(n)
        glob = p.read_globals()
        cede()

        slots, table = slotmap.rows()
        changed = counters.changed_slots(self._cur[:n], self._prev[:n])
        columns, hists, node = counters.bpf_columns(
            self._cur[changed], self._prev[changed], slotmap.slot_row[changed], len(slots), dt,
            self.ncpus, self.edges, self.causes)
        node["drops"] = counters.drops(glob, self._globals_prev, dt)
        self._globals_prev = glob
        cede()
        row = slotmap.slot_row
        # Per-CPU pairs merged into rows: preemptions per second, and
        # runq.wait.by (the victim's wait, s/s, while the culprit held the CPU).
        preemptions = counters.merge_pairs(pairs, row, "preemptor", "count", PREEMPTION_DTYPE, 1 / dt)
        culprits = counters.merge_pairs(culprit_pairs, row, "culprit", "wait_ns", CULPRIT_DTYPE, 1e-9 / dt)
        node.update({f"cpu.{k}": v for k, v in self._procstat.rates(dt).items()})
        cede()

        # The slots of cgroups removed this tick start again from zero.
        self._cur, self._prev = self._prev, self._cur
        slotmap.recycle(self._prev)
        self._t_prev = t

        if self._cgroupfs is not None:
            columns.update(self._cgroupfs.columns(table, self.seq))
            cede()
        derive(columns)
        self.seq += 1
        self._last_tick_s = time.perf_counter() - started
        return Snapshot(t=t, dt=dt, cgroups=table, columns=columns, node=node, histograms=hists,
                        hist_edges=self.edges, preemptions=preemptions, culprits=culprits,
                        source=self.source, seq=self.seq)

    # --- health and lifetime -----------------------------------------------------------------
    def _ns_per_event(self) -> float:
        """Mean ns per BPF program invocation since the previous call (NaN
        without ``bpf_stats``)."""
        if self._stats_fd is None or self.probes is None:
            return math.nan
        now = self.probes.prog_stats()
        prev, self._prog_prev = self._prog_prev, now
        ns = sum(t - prev.get(name, (0, 0))[0] for name, (t, _) in now.items())
        calls = sum(c - prev.get(name, (0, 0))[1] for name, (_, c) in now.items())
        return ns / calls if calls else math.nan

    def health(self) -> dict:
        glob = self.probes.read_globals() if self.probes else {}
        slotmap = self.slotmap
        return {
            "bpf_ns_per_event": self._ns_per_event(),
            "source": self.source,
            "bpf_variant": self.variant,
            "ticks": self.seq,
            "cgroups": len(slotmap.path_slot),
            "max_slots": self.max_slots,
            "slots_high_water": slotmap.high_water,
            "tick_seconds": self._last_tick_s,
            # cgroup mkdir/rmdir events the ring buffer dropped (the kernel's
            # count), and the slots reconciling gave back because of them.
            "lost_lifecycle_events": self.probes.lifecycle_drops() if self.probes else slotmap.lost_lifecycle,
            "slots_reclaimed": slotmap.slots_reclaimed,
            "reconciles": slotmap.reconciles,
            **{f"kernel.{k}": v for k, v in glob.items()},
        }

    def refresh(self, paths) -> None:
        if self._cgroupfs is not None:
            self._cgroupfs.refresh(paths)

    def close(self):
        """Detach and unload the BPF programs; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._stats_fd is not None:
            os.close(self._stats_fd)        # statistics off again
            self._stats_fd = None
        if self.probes is not None:
            self.probes.close()


def _default_slots(ncpus: int) -> int:
    # Counters are per CPU and slot (744 bytes): cap them at 256 MiB.
    return int(max(1024, min(16384, (256 << 20) // (744 * max(ncpus, 1)))))
