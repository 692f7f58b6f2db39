"""Telemetry: kernel counters -> one Snapshot per tick.

Where each part lives:

- :mod:`.base` -- :class:`Collector` (what every collector offers) and the
  fixed-rate :func:`stream_ticks` (tagger.clock.Ticker);
- :mod:`.bpf` -- :class:`BpfCollector`, the BPF programs' counters;
- :mod:`.slotmap` -- the only slot <-> path map, kept against the tree
  (registration, rescan, reconcile), and the table's rows;
- :mod:`.events` -- the ring buffer's lifecycle and outlier records;
- :mod:`.derive` -- the pure step counters -> columns; Retro's slowdown and
  load are defined there, once;
- :mod:`.cgroupfs` -- figures the kernel keeps in cgroupfs (cpu.stat,
  memory.current, PSI, io.stat);
- :mod:`.fallback` -- :class:`FallbackCollector`, the same Snapshot from
  cgroupfs and per-process run delay when BPF cannot load.

    with open_collector() as coll:        # BPF, or the cgroupfs fallback with one warning
        for snap in coll.stream(interval=1.0, count=10): ...
"""

from __future__ import annotations

from .. import errors
from ..cgroups import WorkloadNames
from ..kernelfs import HOST, KernelFS
from .base import Collector, stream_ticks
from .bpf import CGROUPFS_EXTRAS, BpfCollector
from .cgroupfs import CGROUPFS_METRICS, CgroupfsReader
from .fallback import FallbackCollector
from .slotmap import RESCAN_EVERY

__all__ = ["BpfCollector", "CGROUPFS_EXTRAS", "CGROUPFS_METRICS", "CgroupfsReader", "Collector",
           "FallbackCollector", "RESCAN_EVERY", "open_collector", "stream_ticks"]


def open_collector(prefer_bpf: bool = True, fs: KernelFS = HOST, workload_names: WorkloadNames | None = None,
                   **kwargs):
    """The BPF collector, or, when BPF cannot run here, the cgroupfs fallback
    with one warning saying why and what will be NaN.  ``workload_names``
    (tagger.kubelet) labels pods and containers in either."""
    names = {} if workload_names is None else {"workload_names": workload_names}
    if prefer_bpf:
        try:
            return BpfCollector(fs=fs, **names, **kwargs)
        except (errors.BpfError, ImportError, PermissionError) as err:
            reason = str(err)
    else:
        reason = "BPF not requested"
    return FallbackCollector(fs=fs, reason=reason, **names)
