"""Empty BPF programs on the hooks tagger traces: the cost baseline the
benchmarks divide by (bench_bpf, bench_overhead, noisy_neighbor).

They live in an extension of the benchmarks' own (benchmarks/baseline/build.py),
not in tagger's production extension; it is built on first use when missing.
"""

from __future__ import annotations

import importlib
import weakref

from tagger.native import check, require
from tagger.native.probes import prog_stats_of


def _ext():
    try:
        return importlib.import_module("benchmarks.baseline._empty")
    except ImportError:
        from benchmarks.baseline import build
        build.build()
        importlib.invalidate_caches()
        return importlib.import_module("benchmarks.baseline._empty")


class EmptyPrograms:
    """Empty programs on sched_switch and (``wakeup=True``) sched_wakeup: the cost baseline."""

    def __init__(self, wakeup: bool = True):
        require()
        ext = _ext()
        self._ffi, self._lib = ext.ffi, ext.lib
        out = self._ffi.new("struct bench_empty **")
        hooks = self._lib.BENCH_EMPTY_SWITCH | (self._lib.BENCH_EMPTY_WAKEUP if wakeup else 0)
        check(self._lib.bench_empty_open(out, hooks), "loading the empty baseline programs")
        self._handle = out[0]
        self._finalizer = weakref.finalize(self, self._lib.bench_empty_close, self._handle)

    def prog_stats(self) -> dict[str, tuple[int, int]]:
        return prog_stats_of(self._ffi, lambda out, cap: self._lib.bench_empty_prog_stats(self._handle, out, cap))

    def close(self):
        if self._finalizer.alive:
            self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
