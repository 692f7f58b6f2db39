"""Telemetry: kernel counters -> one Snapshot per tick.

:class:`BpfCollector` owns the loaded BPF programs (:mod:`tagger.native`) and
the slot bookkeeping: each cgroup the programs count has a slot, given by the
kernel at mkdir (or by us at start for cgroups that already exist) and
recycled by us after rmdir.  Each tick it reads every slot's counters in one
call, takes deltas against the previous tick, and turns them into the
Snapshot's columns with numpy: rates, means, and percentiles interpolated in
the log2 histograms' deltas.  No Python runs per kernel event.

Figures are per cgroup, not per subtree (a cgroup's own tasks), as the BPF
programs count them; the fallback collector (:mod:`tagger.fallback`) makes
its cgroupfs figures exclusive to match.

    with open_collector() as coll:        # BPF, or the cgroupfs fallback with one warning
        for snap in coll.stream(interval=1.0, count=10): ...
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
from typing import Iterable, Iterator

import numpy as np

from . import errors
from .cgroupfs import CgroupfsReader
from .clock import Ticker
from .cgroups import Layout, Registry, WorkloadNames, names_workload, normalize
from .kernelfs import HOST, KernelFS
from .names import from_kernel
from .slots import SlotLedger
from .procstat import CpuRates
from .snapshot import CULPRIT_DTYPE, PREEMPTION_DTYPE, CgroupTable, Snapshot, derive, hist_edges, hist_percentiles

log = logging.getLogger(__name__)

#: cgroupfs figures the BPF collector adds (the kernel keeps them already).
CGROUPFS_EXTRAS = ("cpu.throttled", "cpu.periods", "cpu.throttled_periods", "mem.current",
                   "psi.cpu.some", "psi.io.some", "psi.mem.some")
#: Reconcile slots with the cgroup tree this often (ticks), besides after any
#: lost lifecycle event (see BpfCollector._reconcile).
RESCAN_EVERY = 30



def _safe_div(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.asarray(num, dtype=np.float64) / np.asarray(den, dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


def stream_ticks(collector, interval: float, count: int | None) -> Iterator[Snapshot]:
    """A Snapshot every ``interval`` seconds on a fixed schedule (tagger.clock.Ticker:
    no drift; a late tick does not make the next ones burst to catch up).  The
    first comes one interval after the call: a tick's rates need that long."""
    if not interval > 0:
        raise errors.ConfigError(f"interval must be positive, not {interval}")
    ticker = Ticker(interval, first=time.monotonic() + interval)
    done = 0
    while count is None or done < count:
        ticker.sleep()
        ticker.begin()
        yield collector.tick()
        ticker.end()
        done += 1


class Collector:
    """What every collector offers: ``tick()`` (a Snapshot since the previous
    one), ``stream()``, ``health()``, and ``close()`` on every exit path (a
    context manager; also at garbage collection)."""

    source = "none"

    def tick(self) -> Snapshot:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def stream(self, interval: float = 1.0, count: int | None = None) -> Iterator[Snapshot]:
        """A Snapshot every ``interval`` seconds (on a fixed schedule, no drift)."""
        return stream_ticks(self, interval, count)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


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
        from .native.probes import Probes   # needs the compiled module: import late
        from .native.variants import below_minimum, describe

        self.fs = fs
        self.layout = layout or Layout.detect(fs)
        if self.layout.v2_root is None:
            raise errors.BpfUnavailable(0, "cgroup v2 is not mounted: BPF sees v2 cgroup ids only")
        too_old = below_minimum()
        if too_old:
            raise errors.BpfUnavailable(0, too_old)
        # On a hybrid or v1 host the bio's blkcg is a v1 blkio cgroup: keep its ids too.
        self._io_on_v1 = self.layout.controller_version("io") == 1
        self.registry = Registry(self.layout, fs, v1_ids=("io",) if self._io_on_v1 else (),
                                 workload_names=workload_names)
        self.ncpus = os.cpu_count() or 1
        self.max_slots = max_slots or _default_slots(self.ncpus)
        self.probes = None
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
                from .native import check, lib
                self._stats_fd = check(lib.tg_enable_stats(), "enabling BPF run-time statistics")
        except BaseException:
            self.close()
            raise

    # --- set-up --------------------------------------------------------------------
    def _setup(self, cgroupfs_metrics, cgroupfs_every):
        from .native import lib

        p = self.probes
        self.buckets = int(lib.TG_HIST_BUCKETS)
        self.edges = hist_edges(self.buckets, int(lib.TG_HIST_SHIFT))
        # Indexes of runq[] by cause (enum tg_cause in bpf/tagger.h).
        self._wakeup, self._new, self._preempt = (int(lib.TG_CAUSE_WAKEUP), int(lib.TG_CAUSE_NEW),
                                                  int(lib.TG_CAUSE_PREEMPT))
        self.slot_path: dict[int, str] = {}
        self.path_slot: dict[str, int] = {}
        self.slot_id = np.zeros(self.max_slots, np.uint64)
        self.high_water = 1
        self._blkio_hid = _hierarchy_id(self.fs, "blkio") if self._io_on_v1 else None
        self._blkio_ids: dict[str, int] = {}        # v1 blkio path -> its cgroup id
        self._to_recycle: list[int] = []
        self._names: dict[str, tuple[str, dict]] = {}
        self._rows_dirty = True
        self.outliers: list[dict] = []
        self.slots = SlotLedger(p, self.max_slots)
        self.lost_lifecycle = 0             # the kernel's lifecycle_drops at the last reconcile
        self.slots_reclaimed = 0
        self.reconciles = 0
        self._register_errors = 0           # registrations refused for another reason than a vanished cgroup
        self._unslotted = False             # a cgroup found no free slot: try again next tick
        self._warned_full = False

        # Every slot but 0 starts free; the kernel's mkdir handler takes from the queue.
        for slot in range(1, self.max_slots):
            self.slots.push(slot)
        # Attach before walking the tree, so no cgroup made meanwhile is missed.
        p.attach()
        self.registry.scan()
        for cgid, path in self.registry.items():
            self._register(path, cgid)
        self._map_blkio_tree()

        self._cur = p.new_stats(self.max_slots)
        self._prev = p.new_stats(self.max_slots)
        self._cgroupfs = CgroupfsReader(self.layout, tuple(cgroupfs_metrics), self.fs, ncpus=self.ncpus) \
            if cgroupfs_metrics else None
        self._cgroupfs_every = max(1, int(cgroupfs_every))
        self._cgroupfs_cols: dict[str, np.ndarray] = {}
        self._cgroupfs_paths: list[str] | None = None
        self._cgroupfs_young: dict[str, int] = {}        # path -> reads left at every tick
        self.seq = 0
        self._globals_prev = p.read_globals()
        p.read_pairs(self.high_water)                    # start pairs from now
        p.read_culprits(self.high_water)
        self._procstat = CpuRates(self.fs)
        p.checkpoint()
        p.read_stats(self._prev, self.high_water)
        self._t_prev = time.monotonic()
        self._last_tick_s = math.nan

    def _register(self, path: str, cgid: int) -> int | None:
        """Give an existing v2 cgroup a slot; None if it vanished or no slot is free."""
        path = normalize(path)
        if path in self.path_slot:
            return self.path_slot[path]
        slot = self.slots.pop()
        if slot is None:
            self._unslotted = True
            if not self._warned_full:       # once per exhaustion, not once per cgroup
                self._warned_full = True
                log.warning("no free slot for %s: all %d are in use (figures of cgroups without "
                            "one count in slot 0)", path, self.max_slots - 1)
            return None
        self._warned_full = False
        try:
            got = self.probes.register_cgroup(str(self.fs.path(self.layout.v2_dir(path))), slot)
        except (FileNotFoundError, errors.BpfError) as err:
            if getattr(err, "errno", None) != errno.ENOENT:
                self._register_errors += 1      # its slot unknown: reconciling returns none this time
            log.debug("cgroup %s not registered (vanished?): %s", path, err)
            self.slots.push(slot)
            return None
        if got != slot:                        # the kernel's mkdir handler was first
            self.slots.push(slot)
        self._adopt(got, path, cgid, blkcg_mapped=False)
        return got

    def _adopt(self, slot: int, path: str, cgid: int, blkcg_mapped: bool):
        """``path`` (v2 id ``cgid``) holds ``slot``.  ``blkcg_mapped``: the
        kernel's mkdir handler mapped its blkcg id already (pure v2)."""
        old = self.path_slot.get(path)
        if old is not None and old != slot:
            self._forget(path, old)            # an older cgroup at this path, its rmdir lost
        self.slot_path[slot] = path
        self.path_slot[path] = slot
        self.slot_id[slot] = cgid
        self.high_water = max(self.high_water, slot + 1)
        self._rows_dirty = True
        if self.layout.controller_version("io") == 2:
            # Pure v2: the bio's blkcg is this very cgroup.  Not again from
            # an event: the cgroup may be gone, and its entry with it.
            if not blkcg_mapped:
                self._map_blkcg(cgid, slot)
        elif path in self._blkio_ids:
            self._map_blkcg(self._blkio_ids[path], slot)

    def _map_blkcg(self, cgroup_id: int, slot: int):
        try:
            self.probes.map_blkcg(cgroup_id, slot)
        except errors.BpfError as err:        # the map full: its I/O counts in slot 0
            log.debug("cannot map blkcg %d to slot %d: %s", cgroup_id, slot, err)

    def _map_blkio_tree(self):
        """Hybrid/v1 hosts: each v1 blkio cgroup counts its I/O into the slot of
        the v2 cgroup at the same path (the bio carries the blkio cgroup)."""
        if not self._io_on_v1:
            return
        for cgid, path in self.registry.items(controller="io"):
            self._blkio_ids[path] = cgid
            slot = self.path_slot.get(path)
            if slot:
                self._map_blkcg(cgid, slot)

    # --- lifecycle events -------------------------------------------------------------
    def _handle_events(self, events: np.ndarray):
        from .native import lib

        for ev in events:
            kind = int(ev["kind"])
            if kind in (lib.TG_EV_RUNQ, lib.TG_EV_IO):
                self.outliers.append({
                    "kind": "runq" if kind == lib.TG_EV_RUNQ else "io",
                    "cgroup": self.slot_path.get(int(ev["slot"])),
                    "latency": int(ev["latency_ns"]) * 1e-9, "pid": int(ev["pid"]),
                    "comm": _c_string(ev["comm"]), "cause": int(ev["cause"]),
                })
                continue
            raw_path = ev["path"].split(b"\0", 1)[0]
            path = normalize(_c_string(raw_path) or "/")
            hid, cgid, slot = int(ev["hierarchy_id"]), int(ev["cgroup_id"]), int(ev["slot"])
            truncated = len(raw_path) >= lib.TG_PATH_MAX - 1
            if hid == 0:
                if truncated:
                    path = self.registry.path_of(cgid, rescan=True) or path
                if kind == lib.TG_EV_MKDIR:
                    self.registry.add(cgid, path)
                    if slot:
                        self._adopt(slot, path, cgid, blkcg_mapped=True)
                    else:                                 # the queue was empty: ours may not be
                        self._register(path, cgid)
                elif kind == lib.TG_EV_RMDIR:
                    self.registry.remove(cgid, path)
                    self._forget(path, cgid=cgid)
            elif hid == self._blkio_hid:
                if kind == lib.TG_EV_MKDIR:
                    self._blkio_ids[path] = cgid
                    if path in self.path_slot:
                        self._map_blkcg(cgid, self.path_slot[path])
                else:
                    self._blkio_ids.pop(path, None)
                    self._map_blkcg(cgid, 0)

    def _forget(self, path: str, slot: int | None = None, cgid: int = 0):
        """``path`` no longer holds its slot, which goes back to the queue
        after this tick's read.  With ``cgid``, only if the slot is that
        cgroup's: an rmdir event of an older cgroup at the same path changes
        nothing.  Slots we never knew the holder of are left to _reconcile."""
        known = self.path_slot.get(path)
        if known is None or (slot is not None and slot != known):
            return
        if cgid and int(self.slot_id[known]) != cgid:
            return
        del self.path_slot[path]
        self._names.pop(path, None)
        if self.slot_path.get(known) == path:
            del self.slot_path[known]
            self._to_recycle.append(known)
        self._rows_dirty = True

    def _rescan(self):
        """Heal missed lifecycle events against the tree itself.  Compared by
        cgroup id, not path: a path removed and made again is a new cgroup,
        and its mkdir event may already have given it its slot (which
        _register then adopts)."""
        self.registry.scan()
        for path, slot in list(self.path_slot.items()):
            if self.registry.id_of(path) != int(self.slot_id[slot]):
                self._forget(path, slot)
        for slot, path in list(self.slot_path.items()):
            if self.path_slot.get(path) != slot:    # an orphan: nothing holds it
                del self.slot_path[slot]
                self._to_recycle.append(slot)
        for cgid, path in self.registry.items():
            if path not in self.path_slot:
                self._register(path, cgid)

    def _reconcile(self):
        """The kernel's slot table against the cgroups that exist, by id: run
        on a schedule, after any lost lifecycle event and until nothing is
        in doubt.  Every live v2 cgroup gets (or keeps) its slot, and a slot
        neither free nor held by a live cgroup (its mkdir and rmdir events
        both lost) goes back to the queue (see tagger.slots)."""
        self.reconciles += 1
        self._unslotted = False
        self.slots.mark()                   # before the walk finds the holders
        errors_before = self._register_errors
        self._rescan()
        if self._register_errors != errors_before:
            return                          # a live cgroup's slot unknown: return nothing on doubt
        leaked = self.slots.leaked(self.slot_path.keys() | set(self._to_recycle))
        if leaked:
            log.debug("%d slots held by no cgroup go back to the queue", len(leaked))
            self._to_recycle.extend(leaked)
            self.slots_reclaimed += len(leaked)

    # --- rows ---------------------------------------------------------------------------
    def _rows(self):
        if self._rows_dirty:
            paths = sorted(self.path_slot, key=lambda p: p.split("/"))
            self._row_slots = np.array([self.path_slot[p] for p in paths], dtype=np.int64)
            self._slot_row = np.full(self.max_slots, -1, np.int64)
            self._slot_row[self._row_slots] = np.arange(len(paths))
            described = [self._describe(p) for p in paths]
            self._table = CgroupTable(self.slot_id[self._row_slots].copy(), paths,
                                      [d[0] for d in described], [d[1] for d in described])
            self._rows_dirty = False
        return self._row_slots, self._table

    def _describe(self, path: str) -> tuple[str, dict]:
        """(display name, labels), worked out once per path."""
        got = self._names.get(path)
        if got is None:
            name, labels = self.registry.describe(path)
            got = self._names[path] = (name, dict(labels))
        return got

    # --- one tick -------------------------------------------------------------------------
    def tick(self) -> Snapshot:
        """A Snapshot of everything since the previous tick."""
        started = time.perf_counter()
        p = self.probes
        self.outliers = []
        self._handle_events(p.drain().copy())
        drops = p.lifecycle_drops()
        if (drops != self.lost_lifecycle or self.slots.pending or self._unslotted
                or self.seq % RESCAN_EVERY == RESCAN_EVERY - 1):
            self.lost_lifecycle = drops
            self._reconcile()
        n = self.high_water
        p.checkpoint()                 # running tasks' time so far, so no tick shows a spike
        p.read_stats(self._cur, n)
        t = time.monotonic()
        dt = max(t - self._t_prev, 1e-9)
        pairs = p.read_pairs(n)
        culprit_pairs = p.read_culprits(n)
        glob = p.read_globals()

        if self.registry.refresh_names():   # a pod's names came (or went): label its rows again
            self._names = {p: d for p, d in self._names.items() if not names_workload(d[1])}
            self._rows_dirty = True
        slots, table = self._rows()
        columns, hists, node = self._columns(n, slots, dt)
        node.update(self._node_health(glob, dt))
        preemptions = self._preemptions(pairs, dt)
        culprits = self._culprits(culprit_pairs, dt)
        node.update({f"cpu.{k}": v for k, v in self._procstat.rates(dt).items()})

        # The slots of cgroups removed this tick start again from zero.
        self._cur, self._prev = self._prev, self._cur
        for slot in self._to_recycle:
            self._prev[slot] = 0
            self.slot_id[slot] = 0
            self.slots.push(slot)
        self._to_recycle = []
        self._t_prev = t

        if self._cgroupfs is not None:
            columns.update(self._cgroupfs_columns(table))
        derive(columns)
        self.seq += 1
        self._last_tick_s = time.perf_counter() - started
        return Snapshot(t=t, dt=dt, cgroups=table, columns=columns, node=node, histograms=hists,
                        hist_edges=self.edges, preemptions=preemptions, culprits=culprits,
                        source=self.source, seq=self.seq)

    def _columns(self, n, slots, dt):
        """Columns for the rows (``slots``), computed only for slots whose
        counters changed since the last tick; idle rows are 0 (rates) or NaN
        (latencies: no event, nothing to know)."""
        words = self.probes.stats_dtype.itemsize // 8
        cur_w = self._cur[:n].view(np.uint64).reshape(n, words)
        prev_w = self._prev[:n].view(np.uint64).reshape(n, words)
        changed = np.nonzero((cur_w != prev_w).any(axis=1))[0]
        cur, prev = self._cur[changed], self._prev[changed]

        def delta(field):
            return (cur[field] - prev[field]).astype(np.float64)   # unsigned: wraps like the kernel's

        d_cpu = delta("cpu_ns")
        d_count = (cur["runq"]["count"] - prev["runq"]["count"]).astype(np.float64)           # (m, causes)
        d_sum = (cur["runq"]["sum_ns"] - prev["runq"]["sum_ns"]).astype(np.float64)     # (m, causes)
        d_hist = (cur["runq"]["hist"] - prev["runq"]["hist"]).astype(np.uint32)          # (m, causes, B), mod 2^32
        rq_max = cur["runq"]["max_ns"].astype(np.float64) * 1e-9                       # since the last read
        d_io_hist = (cur["io_hist"] - prev["io_hist"]).astype(np.uint32)
        io_ops, io_q, io_d = delta("io_ops"), delta("io_queue_ns"), delta("io_device_ns")
        io_max = cur["io_max_ns"].astype(np.float64) * 1e-9

        # Rows among the changed slots (slot 0 and slots not adopted yet count for the node only).
        rows = self._slot_row[changed]
        mine = rows >= 0
        at = rows[mine]
        nrows = len(slots)
        cols: dict[str, np.ndarray] = {}

        def put(name, values, idle=0.0):
            col = np.full(nrows, idle)
            col[at] = values[mine]
            cols[name] = col

        cpu_s = d_cpu * 1e-9
        wait_s = d_sum.sum(axis=1) * 1e-9
        events = d_count.sum(axis=1)
        put("cpu.usage", cpu_s / dt)
        put("cpu.share", cpu_s / (dt * self.ncpus))
        put("runq.wait", wait_s / dt)
        for cause in ("self", "foreign", "throttled", "other"):
            put(f"runq.wait.{cause}", delta(f"wait_{cause}_ns") * 1e-9 / dt)
        put("runq.events", events / dt)
        put("runq.avg", _safe_div(wait_s, events), np.nan)
        some = events > 0
        rmax = np.where(some, rq_max.max(axis=1, initial=0.0), np.nan)
        pct = hist_percentiles(d_hist.sum(axis=1), self.edges, (0.5, 0.95, 0.99), cap=rmax)
        for j, name in enumerate(("runq.p50", "runq.p95", "runq.p99")):
            put(name, pct[:, j], np.nan)
        put("runq.max", rmax, np.nan)
        wake, new, preempt = self._wakeup, self._new, self._preempt
        wake_hist = d_hist[:, wake] + d_hist[:, new]
        wake_max = np.maximum(rq_max[:, wake], rq_max[:, new])
        put("runq.wakeup.p99", hist_percentiles(wake_hist, self.edges, (0.99,), cap=wake_max)[:, 0], np.nan)
        put("runq.preempt.p99", hist_percentiles(d_hist[:, preempt], self.edges, (0.99,),
                                                 cap=rq_max[:, preempt])[:, 0], np.nan)
        put("runq.slowdown", _safe_div(wait_s + cpu_s, cpu_s), np.nan)
        put("sched.switches", delta("switches") / dt)
        put("sched.preempted", delta("preempted") / dt)
        put("sched.preempts", delta("preempts") / dt)

        lat = io_q + io_d
        io_max = np.where(io_ops > 0, io_max, np.nan)
        put("io.ops", io_ops / dt)
        put("io.read_bytes", delta("io_read_bytes") / dt)
        put("io.write_bytes", delta("io_write_bytes") / dt)
        put("io.lat.avg", _safe_div(lat * 1e-9, io_ops), np.nan)
        pct = hist_percentiles(d_io_hist, self.edges, (0.5, 0.95, 0.99), cap=io_max)
        for j, name in enumerate(("io.lat.p50", "io.lat.p95", "io.lat.p99")):
            put(name, pct[:, j], np.nan)
        put("io.lat.max", io_max, np.nan)
        put("io.queue.avg", _safe_div(io_q * 1e-9, io_ops), np.nan)
        put("io.device.avg", _safe_div(io_d * 1e-9, io_ops), np.nan)
        put("io.slowdown", _safe_div(lat, io_d), np.nan)

        hists = {}
        for name, values in (("runq.wakeup", d_hist[:, wake]), ("runq.new", d_hist[:, new]),
                             ("runq.preempt", d_hist[:, preempt]), ("io.lat", d_io_hist)):
            full = np.zeros((nrows, self.buckets), np.uint32)
            full[at] = values[mine]
            hists[name] = full

        # The node: every changed slot, slot 0 (cgroups not known yet) included.
        runq_events, ops = d_count.sum(), io_ops.sum()
        node_rq_max = [rq_max.max(initial=0.0) if runq_events else np.nan]
        node_io_max = [np.nanmax(io_max) if ops else np.nan]
        node = {
            "cpus": float(self.ncpus),
            "cpu.usage": float(d_cpu.sum()) * 1e-9 / dt,
            "runq.wait": float(d_sum.sum()) * 1e-9 / dt,
            "runq.p99": float(hist_percentiles(d_hist.sum(axis=(0, 1))[None, :], self.edges, (0.99,),
                                               cap=node_rq_max)[0, 0]),
            "io.ops": float(ops) / dt,
            "io.lat.p99": float(hist_percentiles(d_io_hist.sum(axis=0)[None, :], self.edges, (0.99,),
                                                 cap=node_io_max)[0, 0]),
            "cgroups": float(nrows),
            # Switches and run-queue waits ended: the kernel events the programs counted.
            "events": float(delta("switches").sum() + delta("preempted").sum() + runq_events) / dt,
        }
        return cols, hists, node

    def _node_health(self, glob, dt):
        """Events lost per second: ring buffer or a map full, no slot, no task
        storage, or a cgroup not known yet (those are counted in slot 0)."""
        old = self._globals_prev
        self._globals_prev = glob
        d = {k: glob[k] - old.get(k, 0) for k in glob}
        lost = (d["ringbuf_drops"] + d["rq_full"] + d["slots_exhausted"]
                + d["task_storage_fail"] + d["unknown_cgroup"])
        return {"drops": lost / dt}

    def _preemptions(self, pairs, dt):
        """Pairs of rows (victim, preemptor) with preemptions per second, merged over CPUs."""
        return self._merge_pairs(pairs, "preemptor", "count", PREEMPTION_DTYPE, 1 / dt)

    def _culprits(self, pairs, dt):
        """runq.wait.by: pairs of rows (victim, culprit) with the victim's wait
        (s/s) while the culprit held the CPU, merged over CPUs."""
        return self._merge_pairs(pairs, "culprit", "wait_ns", CULPRIT_DTYPE, 1e-9 / dt)

    def _merge_pairs(self, pairs, other: str, value: str, dtype: np.dtype, scale: float) -> np.ndarray:
        """Per-CPU (victim slot, ``other`` slot, ``value``) entries as rows of
        the table, summed per pair (a cgroup is never its own), times ``scale``,
        in ``dtype`` (victim, other, value)."""
        if len(pairs) == 0:
            return np.zeros(0, dtype)
        victim = self._slot_row[np.minimum(pairs["victim"], self.max_slots - 1)]
        them = self._slot_row[np.minimum(pairs[other], self.max_slots - 1)]
        keep = (victim >= 0) & (them >= 0) & (victim != them)
        keys, where = np.unique(np.stack([victim[keep], them[keep]], axis=1), axis=0, return_inverse=True)
        sums = np.bincount(where.ravel(), weights=pairs[value][keep].astype(np.float64), minlength=len(keys))
        out = np.zeros(len(keys), dtype)
        names = dtype.names
        out[names[0]], out[names[1]] = keys[:, 0], keys[:, 1]
        out[names[2]] = sums * scale
        return out

    def _cgroupfs_columns(self, table: CgroupTable) -> dict[str, np.ndarray]:
        """cgroupfs figures, read every ``cgroupfs_every`` ticks (the first tick
        included) and carried over by path in between.

        A cgroup seen since the last full read is read at once and every tick
        for its first ``cgroupfs_every`` ticks (a rate needs two reads, and its
        workload may start a moment after the mkdir): what it does when it
        starts is known within a tick or two, not at the next full read.  Each
        cgroup costs at most that many extra reads in its life, so the cost per
        tick follows the rate of new cgroups, not their number."""
        every = self._cgroupfs_every
        if self._cgroupfs_paths is None or self.seq % every == 0:
            if self._cgroupfs_paths is not None and self._cgroupfs_paths is not table.paths:
                before = set(self._cgroupfs_paths)
                for p in table.paths:
                    if p not in before:
                        self._cgroupfs_young.setdefault(p, every)
            self._cgroupfs_cols = self._cgroupfs.read(table.paths)
            self._cgroupfs_paths = table.paths
            self._cgroupfs_young = {p: n - 1 for p, n in self._cgroupfs_young.items()
                                    if n > 1 and table.index(p) is not None}
            return dict(self._cgroupfs_cols)
        if self._cgroupfs_paths is table.paths and not self._cgroupfs_young:
            return dict(self._cgroupfs_cols)
        # Rows changed since the last read: values follow their path; new rows
        # and young ones are read now.
        index = {p: i for i, p in enumerate(self._cgroupfs_paths)}
        take = np.array([index.get(p, -1) for p in table.paths], dtype=np.int64)
        for i in np.flatnonzero(take < 0).tolist():
            self._cgroupfs_young.setdefault(table.paths[i], every)
        young = [(i, p) for i, p in enumerate(table.paths) if p in self._cgroupfs_young]
        fresh = self._cgroupfs.read([p for _, p in young], partial=True) if young else {}
        rows = np.array([i for i, _ in young], dtype=np.int64)
        known = take >= 0
        out = {}
        for metric, col in self._cgroupfs_cols.items():
            values = np.full(len(table), np.nan)
            values[known] = col[take[known]]
            if young:
                values[rows] = fresh[metric]
            out[metric] = values
        for _, p in young:
            left = self._cgroupfs_young[p] - 1
            if left > 0:
                self._cgroupfs_young[p] = left
            else:
                del self._cgroupfs_young[p]
        return out

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
        return {
            "bpf_ns_per_event": self._ns_per_event(),
            "source": self.source,
            "bpf_variant": self.variant,
            "ticks": self.seq,
            "cgroups": len(self.path_slot),
            "max_slots": self.max_slots,
            "slots_high_water": self.high_water,
            "tick_seconds": self._last_tick_s,
            # cgroup mkdir/rmdir events the ring buffer dropped (the kernel's
            # count), and the slots reconciling gave back because of them.
            "lost_lifecycle_events": self.probes.lifecycle_drops() if self.probes else self.lost_lifecycle,
            "slots_reclaimed": self.slots_reclaimed,
            "reconciles": self.reconciles,
            **{f"kernel.{k}": v for k, v in glob.items()},
        }

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


def _c_string(raw: bytes) -> str:
    """A NUL-terminated C string from a fixed-size field: ring-buffer records
    are not zeroed, so whatever follows the first NUL is garbage.  Decoded as
    the cgroupfs walk decodes names (tagger.names), so a cgroup reported by a
    mkdir event has the path a scan gives it."""
    return from_kernel(bytes(raw).split(b"\0", 1)[0])


def _default_slots(ncpus: int) -> int:
    # Counters are per CPU and slot (744 bytes): cap them at 256 MiB.
    return int(max(1024, min(16384, (256 << 20) // (744 * max(ncpus, 1)))))


def _hierarchy_id(fs: KernelFS, controller: str) -> int | None:
    """The v1 hierarchy id of ``controller`` from /proc/cgroups (0 = on v2)."""
    text = fs.read_optional("/proc/cgroups") or ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == controller and parts[1].isdigit():
            return int(parts[1]) or None
    return None


def open_collector(prefer_bpf: bool = True, fs: KernelFS = HOST, workload_names: WorkloadNames | None = None,
                   **kwargs):
    """The BPF collector, or, when BPF cannot run here, the cgroupfs fallback
    with one warning saying why and what will be NaN.  ``workload_names``
    (tagger.kubelet) labels pods and containers in either."""
    from .fallback import FallbackCollector

    names = {} if workload_names is None else {"workload_names": workload_names}
    if prefer_bpf:
        try:
            return BpfCollector(fs=fs, **names, **kwargs)
        except (errors.BpfError, ImportError, PermissionError) as err:
            reason = str(err)
    else:
        reason = "BPF not requested"
    return FallbackCollector(fs=fs, reason=reason, **names)
