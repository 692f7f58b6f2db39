"""tagger's loaded BPF programs, seen from Python.

:class:`Probes` owns one native handle: it loads and attaches the programs,
reads every counter in one call per tick into caller-owned numpy arrays,
drains the ring buffer into a preallocated array, and detaches on close (also
when garbage-collected, and at interpreter exit).
"""

from __future__ import annotations

import errno
import os
import weakref
from contextlib import contextmanager

import numpy as np

from tagger.errors import BpfError, BpfUnavailable

from . import check, dtype_of, ffi, lib, require

#: Ring-buffer records drained per tick at most; the rest waits for the next.
DRAIN_CAPACITY = 4096
#: Preemption (and culprit) pairs read per tick at most.
PAIR_CAPACITY = 65536


def _close_handle(handle):
    lib.tg_close(handle)


class Probes:
    """Loaded and attached BPF programs.  Use as a context manager."""

    def __init__(self, max_slots: int = 16384, outlier_ns: int = 0,
                 outlier_interval_ns: int = 1_000_000_000, features_off: int = 0):
        require()
        self.stats_dtype = dtype_of("struct tg_cg_stats")
        self.global_dtype = dtype_of("struct tg_global")
        self.event_dtype = dtype_of("struct tg_event")
        self.pair_dtype = dtype_of("struct tg_pair")
        self.culprit_dtype = dtype_of("struct tg_culprit")
        cfg = ffi.new("struct tg_config *", {"max_slots": max_slots, "outlier_ns": outlier_ns,
                                            "outlier_interval_ns": outlier_interval_ns,
                                            "features_off": features_off})
        out = ffi.new("struct tg_handle **")
        ret = lib.tg_open(cfg, out)
        if ret < 0:
            if -ret in (errno.EPERM, errno.EACCES):
                raise BpfUnavailable(-ret, "loading BPF programs (needs root or CAP_BPF+CAP_PERFMON)")
            raise BpfError(-ret, "loading BPF programs")
        self._handle = out[0]
        self._finalizer = weakref.finalize(self, _close_handle, self._handle)
        #: TG_FEAT_* of the program variants loaded (see tagger.native.variants).
        self.features = int(lib.tg_features(self._handle))
        self.nr_cpus = lib.tg_nr_cpus(self._handle)
        self.max_slots = int(lib.tg_max_slots(self._handle))
        self._events = np.zeros(DRAIN_CAPACITY, self.event_dtype)
        self._pairs = np.zeros(PAIR_CAPACITY, self.pair_dtype)
        self._culprits = np.zeros(PAIR_CAPACITY, self.culprit_dtype)
        self._globals = np.zeros(1, self.global_dtype)
        self._u32 = ffi.new("uint32_t *")
        self.attached = False

    # --- lifecycle -----------------------------------------------------------
    def attach(self) -> None:
        check(lib.tg_attach(self._h), "attaching BPF programs")
        self.attached = True

    def detach(self) -> None:
        """Detach the programs, keeping maps and counters; :meth:`attach` again
        to resume (what a benchmark alternating conditions does)."""
        lib.tg_detach(self._h)
        self.attached = False

    def close(self) -> None:
        """Detach and free everything; safe to call twice."""
        if self._finalizer.alive:
            self._finalizer()
        self.attached = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def _h(self):
        if not self._finalizer.alive:
            raise BpfError(errno.EBADF, "BPF programs already closed")
        return self._handle

    # --- per tick --------------------------------------------------------------
    def new_stats(self, nslots: int | None = None) -> np.ndarray:
        """A zeroed array to read counters into."""
        return np.zeros(nslots or self.max_slots, self.stats_dtype)

    def checkpoint(self) -> int:
        """Credit each CPU's running task with its CPU time so far (one IPI per
        CPU); returns the CPUs done."""
        return check(lib.tg_checkpoint(self._h), "checkpointing running tasks")

    def read_stats(self, out: np.ndarray, nslots: int) -> int:
        """Counters of slots [0, nslots), summed over CPUs, into ``out``."""
        assert out.dtype == self.stats_dtype and len(out) >= nslots
        buf = ffi.cast("struct tg_cg_stats *", ffi.from_buffer(out))
        return check(lib.tg_read_stats(self._h, buf, nslots), "reading counters")

    def read_globals(self) -> dict[str, int]:
        buf = ffi.cast("struct tg_global *", ffi.from_buffer(self._globals))
        check(lib.tg_read_globals(self._h, buf), "reading health counters")
        return {name: int(self._globals[0][name]) for name in self.global_dtype.names
                if not name.startswith("_")}

    def drain(self) -> np.ndarray:
        """Ring-buffer records since the last drain (a view, valid until the next)."""
        buf = ffi.cast("struct tg_event *", ffi.from_buffer(self._events))
        n = check(lib.tg_drain(self._h, buf, len(self._events)), "draining the ring buffer")
        return self._events[:n]

    def read_pairs(self, nslots: int) -> np.ndarray:
        """(victim, preemptor, count) since the last call, per CPU (a pair may
        repeat); a view valid until the next call."""
        out = ffi.cast("struct tg_pair *", ffi.from_buffer(self._pairs))
        n = check(lib.tg_read_pairs(self._h, out, nslots, len(self._pairs)), "reading preemption pairs")
        return self._pairs[:n]

    def read_culprits(self, nslots: int) -> np.ndarray:
        """(victim, culprit, wait_ns) since the last call, per CPU (a pair may
        repeat): how long each culprit held a CPU while the victim waited on
        it; a view valid until the next call."""
        out = ffi.cast("struct tg_culprit *", ffi.from_buffer(self._culprits))
        n = check(lib.tg_read_culprits(self._h, out, nslots, len(self._culprits)), "reading wait culprits")
        return self._culprits[:n]

    # --- slots -------------------------------------------------------------------
    def push_slot(self, slot: int) -> None:
        """Zero a slot's counters and return it to the kernel's free list."""
        check(lib.tg_slot_push(self._h, slot), f"freeing slot {slot}")

    def pop_slot(self) -> int | None:
        """Take the free queue's head (None: the queue is empty)."""
        return self._queued_slot(lib.tg_slot_pop(self._h, self._u32), "taking a free slot")

    def peek_slot(self) -> int | None:
        """The free queue's head, left in place (None: the queue is empty)."""
        return self._queued_slot(lib.tg_slot_peek(self._h, self._u32), "reading the free queue's head")

    def _queued_slot(self, ret: int, what: str) -> int | None:
        if ret == -errno.ENOENT:
            return None               # the queue is empty
        check(ret, what)
        return int(self._u32[0])

    def lifecycle_drops(self) -> int:
        """cgroup mkdir/rmdir events the ring buffer had no room for, since load."""
        return int(lib.tg_lifecycle_drops(self._h))

    def register_cgroup(self, real_dir: str, slot: int) -> int:
        """Give the cgroup at ``real_dir`` (a v2 directory) ``slot``; returns the
        slot it ends up with (the kernel's, if its mkdir handler was first)."""
        fd = os.open(real_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ret = lib.tg_register_cgroup(self._h, fd, slot, self._u32)
        finally:
            os.close(fd)
        if ret == -errno.EEXIST:
            return int(self._u32[0])
        check(ret, f"registering {real_dir}")
        return slot

    def map_blkcg(self, cgroup_id: int, slot: int) -> None:
        """Attribute I/O of the blkcg cgroup ``cgroup_id`` to ``slot`` (0 forgets it)."""
        check(lib.tg_map_blkcg(self._h, cgroup_id, slot), f"mapping blkcg {cgroup_id}")

    # --- self-measurement ---------------------------------------------------------
    def prog_stats(self) -> dict[str, tuple[int, int]]:
        """program name -> (run_time_ns, run_cnt); counts only while stats are on."""
        return prog_stats_of(ffi, lambda out, cap: lib.tg_prog_stats(self._h, out, cap))


def prog_stats_of(ffi_, fill) -> dict[str, tuple[int, int]]:
    """program name -> (run_time_ns, run_cnt) from ``fill(out, cap)`` over the
    struct tg_prog_stat array of ``ffi_`` (this extension's, or the
    benchmarks' baseline extension's)."""
    out = ffi_.new("struct tg_prog_stat[]", 32)
    n = check(fill(out, 32), "reading program statistics")
    return {ffi_.string(out[i].name).decode(): (out[i].run_time_ns, out[i].run_cnt) for i in range(n)}


@contextmanager
def bpf_stats_enabled():
    """kernel.bpf_stats_enabled on for the block: run_time_ns/run_cnt count.
    Held as a file descriptor, so it is turned off again on every exit path,
    even if the process is killed."""
    require()
    fd = check(lib.tg_enable_stats(), "enabling BPF run-time statistics")
    try:
        yield
    finally:
        os.close(fd)
