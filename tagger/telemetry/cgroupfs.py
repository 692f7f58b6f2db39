"""Per-cgroup figures the kernel already keeps in cgroupfs, as Snapshot columns.

Used by the BPF collector (cpu.throttled, mem.current, psi.*: a
:class:`PeriodicReader`) and by the fallback collector (all of :data:`CGROUPFS_METRICS`).  Only the files the
requested metrics need are read, once per cgroup per tick, each with one
open/read/close.  A file that is absent (controller not there, v2 root without
io.stat, kernel without PSI) or a cgroup that vanished between the scan and the
read gives NaN, never 0.

    reader = CgroupfsReader(layout, metrics=("cpu.usage", "mem.current"))
    cols = reader.read(paths)          # {"cpu.usage": array, "mem.current": array}
    raw = read_raw(layout, paths, metrics=("mem.current",))   # stateless, cumulative

Where each figure comes from (v2 first where the controller is on v2):

=============  =======================================  ===================================
metric         cgroup v2                                cgroup v1
=============  =======================================  ===================================
cpu.usage      cpu.stat usage_usec (any v2 cgroup)      cpuacct.usage (ns)
cpu.throttled  cpu.stat nr_throttled / nr_periods       cpu/cpu.stat (same keys)
cpu.periods    cpu.stat nr_periods (rate)               cpu/cpu.stat (same key)
cpu.throttled_ cpu.stat nr_throttled (rate)             cpu/cpu.stat (same key)
  periods
cpu.weight     cpu.weight                               cpu/cpu.shares x 100 / 1024
mem.current    memory.current                           memory.usage_in_bytes
psi.*.some     {cpu,io,memory}.pressure "some total"    (v2 only)
                 rate, at least avg10
io.*           io.stat rbytes wbytes rios wios dios     blkio.throttle.io_service{_bytes,d}_recursive
=============  =======================================  ===================================

The kernel's figures are hierarchical (a cgroup's count includes its
descendants).  ``exclusive=True`` turns the cumulative counters (cpu.usage, io.*)
into the cgroup's own share by subtracting its direct children's deltas, which
matches what the BPF programs count per cgroup; gauges (mem.current), psi.* and
the cpu.throttled figures stay hierarchical, as the kernel defines them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from ..cgroups import Layout, normalize
from ..kernelfs import KernelFS
from ..knobs import SHARES_DEFAULT, WEIGHT_DEFAULT
from .derive import load

#: The Snapshot metrics this module can fill.
CGROUPFS_METRICS = (
    "cpu.usage", "cpu.share", "cpu.throttled", "cpu.periods", "cpu.throttled_periods", "cpu.weight", "mem.current",
    "psi.cpu.some", "psi.io.some", "psi.mem.some",
    "io.ops", "io.read_bytes", "io.write_bytes",
)

#: metric -> raw fields it is computed from (cumulative counters or gauges).
_NEEDS = {
    "cpu.usage": ("cpu.usage_s",),
    "cpu.share": ("cpu.usage_s",),
    "cpu.throttled": ("cpu.nr_periods", "cpu.nr_throttled"),
    "cpu.periods": ("cpu.nr_periods",),
    "cpu.throttled_periods": ("cpu.nr_throttled",),
    "cpu.weight": ("cpu.weight",),
    "mem.current": ("mem.current",),
    "psi.cpu.some": ("psi.cpu.some", "psi.cpu.some_total"),
    "psi.io.some": ("psi.io.some", "psi.io.some_total"),
    "psi.mem.some": ("psi.mem.some", "psi.mem.some_total"),
    "io.ops": ("io.ops_total",),
    "io.read_bytes": ("io.read_bytes_total",),
    "io.write_bytes": ("io.write_bytes_total",),
}
#: Raw fields that are cumulative counters (rates come from their deltas).
COUNTERS = frozenset({"cpu.usage_s", "cpu.nr_periods", "cpu.nr_throttled",
                      "io.ops_total", "io.read_bytes_total", "io.write_bytes_total",
                      "psi.cpu.some_total", "psi.io.some_total", "psi.mem.some_total"})
#: Counters whose own-cgroup share ``exclusive`` computes.
_EXCLUSIVE = frozenset({"cpu.usage_s", "io.ops_total", "io.read_bytes_total", "io.write_bytes_total"})


# --- parsers: bytes of one file -> {raw field: value} --------------------------

def _parse_keyed(text: bytes, keys: dict[bytes, tuple[str, float]]) -> dict[str, float]:
    out = {}
    for line in text.split(b"\n"):
        k, _, v = line.partition(b" ")
        hit = keys.get(k)
        if hit is not None:
            out[hit[0]] = int(v) * hit[1]
    return out


_CPUSTAT_USAGE = {b"usage_usec": ("cpu.usage_s", 1e-6)}
_CPUSTAT_THROTTLE = {b"nr_periods": ("cpu.nr_periods", 1.0), b"nr_throttled": ("cpu.nr_throttled", 1.0)}


def parse_cpu_stat(keys):
    return lambda text: _parse_keyed(text, keys)


def parse_int(field_name: str, scale: float = 1.0):
    return lambda text: {field_name: int(text.split()[0]) * scale}


def parse_pressure_some(field_name: str):
    """PSI "some avg10=1.23 ... total=N" -> the avg10 fraction and the total
    stall time in seconds, a counter (Documentation/accounting/psi.rst)."""
    def parse(text: bytes):
        out = {}
        for line in text.split(b"\n"):
            if line.startswith(b"some "):
                for kv in line.split()[1:]:
                    if kv.startswith(b"avg10="):
                        out[field_name] = float(kv[6:]) / 100.0
                    elif kv.startswith(b"total="):
                        out[field_name + "_total"] = int(kv[6:]) * 1e-6
                break
        return out
    return parse


def parse_io_stat(text: bytes) -> dict[str, float]:
    """v2 io.stat: "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..", summed over devices."""
    rb = wb = ops = 0
    for line in text.split(b"\n"):
        for kv in line.split()[1:]:
            k, _, v = kv.partition(b"=")
            if k == b"rbytes":
                rb += int(v)
            elif k == b"wbytes":
                wb += int(v)
            elif k in (b"rios", b"wios", b"dios"):
                ops += int(v)
    return {"io.read_bytes_total": float(rb), "io.write_bytes_total": float(wb), "io.ops_total": float(ops)}


def _blkio_sum(text: bytes) -> tuple[int, int, int]:
    """v1 blkio.throttle.*: "MAJ:MIN Read N" lines per device (+ a final "Total N")."""
    r = w = d = 0
    for line in text.split(b"\n"):
        parts = line.split()
        if len(parts) != 3:
            continue                    # the trailing "Total N" line, blank lines
        if parts[1] == b"Read":
            r += int(parts[2])
        elif parts[1] == b"Write":
            w += int(parts[2])
        elif parts[1] == b"Discard":
            d += int(parts[2])
    return r, w, d


def parse_blkio_bytes(text: bytes):
    r, w, _ = _blkio_sum(text)
    return {"io.read_bytes_total": float(r), "io.write_bytes_total": float(w)}


def parse_blkio_ops(text: bytes):
    r, w, d = _blkio_sum(text)
    return {"io.ops_total": float(r + w + d)}


# --- the plan: which file in which hierarchy gives which raw field -------------

@dataclass(frozen=True)
class FileRead:
    """One file read per cgroup per tick."""
    root: str                                   # kernel path of the hierarchy root
    name: str                                   # file name, e.g. "cpu.stat"
    fields: tuple[str, ...]                     # raw fields it gives
    parse: Callable[[bytes], dict[str, float]] = None


def plan(layout: Layout, metrics: Iterable[str]) -> tuple[list[FileRead], set[str]]:
    """The files to read for ``metrics`` on this layout, and the raw fields no
    file can give here (their metrics will be NaN)."""
    wanted: set[str] = set()
    for m in metrics:
        if m not in _NEEDS:
            raise KeyError(f"{m!r} is not a cgroupfs metric (have: {', '.join(CGROUPFS_METRICS)})")
        wanted.update(_NEEDS[m])
    cpu_v = layout.controller_version("cpu")
    mem_v = layout.controller_version("memory")
    io_v = layout.controller_version("io")
    v2 = layout.v2_root
    reads: dict[tuple[str, str], tuple[set[str], dict]] = {}   # (root, file) -> (fields, cpu.stat keys)
    missing: set[str] = set()

    def want(root, name, fields):
        entry = reads.setdefault((root, name), (set(), {}))
        entry[0].update(fields)

    if "cpu.usage_s" in wanted:
        # usage_usec is in every v2 cgroup's cpu.stat, cpu controller or not
        # (Documentation/admin-guide/cgroup-v2.rst, "Core Interface Files").
        if v2 is not None:
            want(v2, "cpu.stat", ["cpu.usage_s"])
        elif layout.controller_version("cpuacct") == 1:
            want(layout.controller_root("cpuacct"), "cpuacct.usage", ["cpu.usage_s"])
        else:
            missing.add("cpu.usage_s")
    for f in ("cpu.nr_periods", "cpu.nr_throttled"):
        if f in wanted:
            if cpu_v is None:
                missing.add(f)
            else:
                want(layout.controller_root("cpu"), "cpu.stat", [f])
    if "cpu.weight" in wanted:
        if cpu_v == 2:
            want(v2, "cpu.weight", ["cpu.weight"])
        elif cpu_v == 1:
            want(layout.controller_root("cpu"), "cpu.shares", ["cpu.weight"])
        else:
            missing.add("cpu.weight")
    if "mem.current" in wanted:
        if mem_v == 2:
            want(v2, "memory.current", ["mem.current"])
        elif mem_v == 1:
            want(layout.controller_root("memory"), "memory.usage_in_bytes", ["mem.current"])
        else:
            missing.add("mem.current")
    for res, fname in (("cpu", "cpu.pressure"), ("io", "io.pressure"), ("mem", "memory.pressure")):
        f = f"psi.{res}.some"
        if f in wanted:
            if v2 is not None:
                want(v2, fname, [f, f + "_total"])
            else:
                missing.update((f, f + "_total"))
    io_fields = {"io.ops_total", "io.read_bytes_total", "io.write_bytes_total"} & wanted
    if io_fields:
        if io_v == 2:
            want(v2, "io.stat", io_fields)
        elif io_v == 1:
            root = layout.controller_root("io")
            # The _recursive files: hierarchical like every other cgroupfs figure here.
            if io_fields & {"io.read_bytes_total", "io.write_bytes_total"}:
                want(root, "blkio.throttle.io_service_bytes_recursive",
                     io_fields & {"io.read_bytes_total", "io.write_bytes_total"})
            if "io.ops_total" in io_fields:
                want(root, "blkio.throttle.io_serviced_recursive", ["io.ops_total"])
        else:
            missing.update(io_fields)

    out = []
    for (root, name), (fields, _) in reads.items():
        if name == "cpu.stat":
            keys = {}
            if "cpu.usage_s" in fields:
                keys.update(_CPUSTAT_USAGE)
            if fields & {"cpu.nr_periods", "cpu.nr_throttled"}:
                keys.update(_CPUSTAT_THROTTLE)
            parse = parse_cpu_stat(keys)
        elif name == "cpuacct.usage":
            parse = parse_int("cpu.usage_s", 1e-9)
        elif name == "cpu.weight":
            parse = parse_int("cpu.weight")
        elif name == "cpu.shares":
            # v1 shares in v2 weight units (the kernel's own scale: 1024 shares = weight 100).
            parse = parse_int("cpu.weight", WEIGHT_DEFAULT / SHARES_DEFAULT)
        elif name == "memory.current" or name == "memory.usage_in_bytes":
            parse = parse_int("mem.current")
        elif name.endswith(".pressure"):
            parse = parse_pressure_some(min(fields))      # "psi.io.some", not its "_total"
        elif name == "io.stat":
            parse = parse_io_stat
        elif name.endswith("io_service_bytes_recursive"):
            parse = parse_blkio_bytes
        else:
            parse = parse_blkio_ops
        out.append(FileRead(root, name, tuple(sorted(fields)), parse))
    return out, missing


def read_raw(layout: Layout, paths: Sequence[str], metrics: Iterable[str] = CGROUPFS_METRICS,
             fs: KernelFS | None = None, _plan=None) -> dict[str, np.ndarray]:
    """Raw per-cgroup values (cumulative counters and gauges) for ``metrics``,
    one float64 array per raw field, NaN where unknown.  Stateless."""
    fs = fs if fs is not None else layout.fs
    reads, missing = _plan if _plan is not None else plan(layout, metrics)
    n = len(paths)
    raw = {f: np.full(n, np.nan) for r in reads for f in r.fields}
    for f in missing:
        raw[f] = np.full(n, np.nan)
    rels = ["" if p == "/" else p for p in (normalize(p) for p in paths)]
    for r in reads:
        base = r.root.rstrip("/")
        cols = [raw[f] for f in r.fields]
        # One open/read/close per file; None when it or its cgroup is gone.
        texts = fs.read_small_many([f"{base}{rel}/{r.name}" for rel in rels])
        for i, text in enumerate(texts):
            if text is None:
                continue
            try:
                got = r.parse(text)
            except (ValueError, IndexError):
                continue        # a half-written or unexpected file: unknown, not an error
            for f, col in zip(r.fields, cols):
                v = got.get(f)
                if v is not None:
                    col[i] = v
    return raw


class CgroupfsReader:
    """Snapshot columns from cgroupfs, rates over the time since the previous
    :meth:`read` of the same path (NaN on a path's first read and after a
    counter went backwards, i.e. the cgroup was made again)."""

    def __init__(self, layout: Layout, metrics: Iterable[str] = CGROUPFS_METRICS,
                 fs: KernelFS | None = None, ncpus: int | None = None, exclusive: bool = False):
        self.layout = layout
        self.fs = fs if fs is not None else layout.fs
        self.metrics = tuple(metrics)
        self.plan = plan(layout, self.metrics)
        self.ncpus = ncpus or self.fs.online_cpus()
        self.exclusive = exclusive
        self._prev: dict[str, dict[str, float]] = {}      # path -> raw counters
        self._prev_t: dict[str, float] = {}               # path -> when they were read

    @property
    def unavailable(self) -> list[str]:
        """Requested metrics this layout cannot give (always NaN)."""
        missing = self.plan[1]
        return [m for m in self.metrics if any(f in missing for f in _NEEDS[m])]

    @property
    def files(self) -> list[str]:
        """Files read per cgroup per tick, e.g. ["/sys/fs/cgroup/unified/.../cpu.stat"]."""
        return [f"{r.root}/<cgroup>/{r.name}" for r in self.plan[0]]

    def read(self, paths: Sequence[str], t: float | None = None,
             partial: bool = False) -> dict[str, np.ndarray]:
        """Columns for ``paths``; rates over each path's time since its own
        previous read.  ``partial``: ``paths`` are some of the cgroups (new
        ones, read at once rather than at the next full read): the state of the
        others is kept.  A full read forgets paths it was not given."""
        if partial and self.exclusive:
            raise ValueError("a partial read cannot make exclusive figures: a parent's share "
                             "needs its children read alongside")
        t = time.monotonic() if t is None else t
        paths = [normalize(p) for p in paths]
        raw = read_raw(self.layout, paths, self.metrics, self.fs, _plan=self.plan)
        prev_t = np.array([self._prev_t.get(p, math.nan) for p in paths])
        dt = t - prev_t                          # NaN on a path's first read
        dt[~(dt > 0)] = np.nan
        deltas: dict[str, np.ndarray] = {}
        for f in COUNTERS & raw.keys():
            prev = np.array([self._prev.get(p, {}).get(f, math.nan) for p in paths])
            d = raw[f] - prev
            d[d < 0] = np.nan                    # counter went backwards: a new cgroup
            deltas[f] = d
        if self.exclusive:
            self._subtract_children(paths, deltas)
        # remember this read
        counter_fields = [f for f in COUNTERS if f in raw]
        if not partial:
            self._prev, self._prev_t = {}, {}
        for i, p in enumerate(paths):
            self._prev[p] = {f: raw[f][i] for f in counter_fields}
            self._prev_t[p] = t

        cols: dict[str, np.ndarray] = {}

        def rate(f):
            return deltas[f] / dt
        for m in self.metrics:
            if m == "cpu.usage":
                cols[m] = rate("cpu.usage_s")
            elif m == "cpu.share":
                cols[m] = load(rate("cpu.usage_s"), self.ncpus)
            elif m == "cpu.throttled":
                periods, throttled = deltas["cpu.nr_periods"], deltas["cpu.nr_throttled"]
                with np.errstate(invalid="ignore", divide="ignore"):
                    frac = throttled / periods
                # No period ran (no quota set, or idle): nothing was throttled.
                frac[(periods == 0) & ~np.isnan(throttled)] = 0.0
                cols[m] = frac
            elif m == "cpu.periods":
                cols[m] = rate("cpu.nr_periods")
            elif m == "cpu.throttled_periods":
                cols[m] = rate("cpu.nr_throttled")
            elif m == "io.ops":
                cols[m] = rate("io.ops_total")
            elif m == "io.read_bytes":
                cols[m] = rate("io.read_bytes_total")
            elif m == "io.write_bytes":
                cols[m] = rate("io.write_bytes_total")
            elif m.startswith("psi."):
                # The share of the time since the previous read that some task
                # stalled (the total's rate): a new cgroup's stall shows within
                # a tick, where avg10, a 10 s average the kernel updates every
                # 2 s, takes seconds to rise.  Never below avg10: over one tick
                # the rate swings (0.56, 0.12, 0.23, 0.0 for a writer stalled
                # steadily), and a tick that caught none must not erase a stall
                # the 10 s average still shows.  avg10 until there are two reads.
                share = np.clip(rate(m + "_total"), 0.0, 1.0)
                cols[m] = np.where(np.isnan(share), raw[m], np.fmax(share, raw[m]))
            else:                                # gauges: cpu.weight, mem.current
                cols[m] = raw[_NEEDS[m][0]].copy()
        return cols

    @staticmethod
    def _subtract_children(paths: list[str], deltas: dict[str, np.ndarray]) -> None:
        index = {p: i for i, p in enumerate(paths)}
        pairs = []
        for i, p in enumerate(paths):
            if p != "/":
                parent = index.get(p.rsplit("/", 1)[0] or "/")
                if parent is not None:
                    pairs.append((parent, i))
        if not pairs:
            return
        parent_idx = np.array([a for a, _ in pairs])
        child_idx = np.array([b for _, b in pairs])
        for f in _EXCLUSIVE & deltas.keys():
            d = deltas[f]
            child = np.nan_to_num(d[child_idx], nan=0.0)   # a brand-new child had nothing to subtract
            own = d.copy()
            np.subtract.at(own, parent_idx, child)
            # Rounding between a parent's and its children's counters (cpu.stat is in
            # usec, each read a moment apart) must not make a negative share.
            own[own < 0] = 0.0
            deltas[f] = own


class PeriodicReader:
    """A :class:`CgroupfsReader` read every ``every`` ticks (the first tick
    included), its figures carried over by path in between: what the BPF
    collector adds to its own columns.

    A cgroup seen since the last full read is read at once and every tick
    for its first ``every`` ticks (a rate needs two reads, and its workload
    may start a moment after the mkdir): what it does when it starts is
    known within a tick or two, not at the next full read.  Each cgroup
    costs at most that many extra reads in its life, so the cost per tick
    follows the rate of new cgroups, not their number."""

    def __init__(self, reader: CgroupfsReader, every: int = 1):
        self.reader = reader
        self.every = max(1, int(every))
        self._cols: dict[str, np.ndarray] = {}
        self._paths: list[str] | None = None
        self._young: dict[str, int] = {}        # path -> reads left at every tick

    def refresh(self, paths) -> None:
        """Read ``paths`` again at the next tick, not at the next full read:
        the agent changed their knobs (a weight it demoted and gave back
        must not read as the demoted one for up to ``every`` ticks)."""
        for p in paths:
            self._young.setdefault(normalize(p), 1)

    def columns(self, table, seq: int) -> dict[str, np.ndarray]:
        """Columns for ``table``'s rows (a CgroupTable) at tick ``seq``."""
        every = self.every
        if self._paths is None or seq % every == 0:
            if self._paths is not None and self._paths is not table.paths:
                before = set(self._paths)
                for p in table.paths:
                    if p not in before:
                        self._young.setdefault(p, every)
            self._cols = self.reader.read(table.paths)
            self._paths = table.paths
            self._young = {p: n - 1 for p, n in self._young.items() if n > 1 and table.index(p) is not None}
            return dict(self._cols)
        if self._paths is table.paths and not self._young:
            return dict(self._cols)
        # Rows changed since the last read: values follow their path; new rows
        # and young ones are read now.
        index = {p: i for i, p in enumerate(self._paths)}
        take = np.array([index.get(p, -1) for p in table.paths], dtype=np.int64)
        for i in np.flatnonzero(take < 0).tolist():
            self._young.setdefault(table.paths[i], every)
        young = [(i, p) for i, p in enumerate(table.paths) if p in self._young]
        fresh = self.reader.read([p for _, p in young], partial=True) if young else {}
        rows = np.array([i for i, _ in young], dtype=np.int64)
        known = take >= 0
        out = {}
        for metric, col in self._cols.items():
            values = np.full(len(table), np.nan)
            values[known] = col[take[known]]
            if young:
                values[rows] = fresh[metric]
                # Kept for the ticks until the next full read (a refreshed
                # row must not fall back to what the last full read saw); a
                # copy, as earlier snapshots hold the cached array.
                cached = take[rows] >= 0
                if cached.any():
                    col = self._cols[metric] = col.copy()
                    col[take[rows][cached]] = fresh[metric][cached]
            out[metric] = values
        for _, p in young:
            left = self._young[p] - 1
            if left > 0:
                self._young[p] = left
            else:
                del self._young[p]
        return out


def read_columns(layout: Layout, paths: Sequence[str], metrics: Iterable[str] = CGROUPFS_METRICS,
                 fs: KernelFS | None = None, interval: float = 0.0) -> dict[str, np.ndarray]:
    """One-shot columns: gauges at once; rates only with ``interval`` > 0 (two
    reads that far apart), else NaN.  Long-running callers keep a
    :class:`CgroupfsReader` instead."""
    reader = CgroupfsReader(layout, metrics, fs)
    cols = reader.read(paths)
    if interval > 0:
        time.sleep(interval)
        cols = reader.read(paths)
    return cols
