"""The BPF programs' ring-buffer records: cgroup lifecycle and latency outliers.

mkdir and rmdir events keep the :class:`~tagger.telemetry.slotmap.SlotMap`
(and the registry under it) up to date between walks of the tree; outlier
events (run-queue or block latency above the collector's ``outlier``) become
plain records for :attr:`BpfCollector.outliers`.
"""

from __future__ import annotations

import numpy as np

from ..cgroups import normalize
from ..names import from_kernel
from .slotmap import SlotMap


def c_string(raw: bytes) -> str:
    """A NUL-terminated C string from a fixed-size field: ring-buffer records
    are not zeroed, so whatever follows the first NUL is garbage.  Decoded as
    the cgroupfs walk decodes names (tagger.names), so a cgroup reported by a
    mkdir event has the path a scan gives it."""
    return from_kernel(bytes(raw).split(b"\0", 1)[0])


def handle_events(events: np.ndarray, slots: SlotMap) -> list[dict]:
    """Apply the lifecycle events to ``slots``; return the outliers, in order."""
    from ..native import lib

    outliers = []
    registry = slots.registry
    for ev in events:
        kind = int(ev["kind"])
        if kind in (lib.TG_EV_RUNQ, lib.TG_EV_IO):
            outliers.append({
                "kind": "runq" if kind == lib.TG_EV_RUNQ else "io",
                "cgroup": slots.slot_path.get(int(ev["slot"])),
                "latency": int(ev["latency_ns"]) * 1e-9, "pid": int(ev["pid"]),
                "comm": c_string(ev["comm"]), "cause": int(ev["cause"]),
            })
            continue
        raw_path = ev["path"].split(b"\0", 1)[0]
        path = normalize(c_string(raw_path) or "/")
        hid, cgid, slot = int(ev["hierarchy_id"]), int(ev["cgroup_id"]), int(ev["slot"])
        truncated = len(raw_path) >= lib.TG_PATH_MAX - 1
        if hid == 0:
            if truncated:
                path = registry.path_of(cgid, rescan=True) or path
            if kind == lib.TG_EV_MKDIR:
                registry.add(cgid, path)
                if slot:
                    slots.adopt(slot, path, cgid, blkcg_mapped=True)
                else:                                 # the queue was empty: ours may not be
                    slots.register(path, cgid)
            elif kind == lib.TG_EV_RMDIR:
                registry.remove(cgid, path)
                slots.forget(path, cgid=cgid)
        elif hid == slots.blkio_hid:
            if kind == lib.TG_EV_MKDIR:
                slots.blkio_made(path, cgid)
            else:
                slots.blkio_removed(path, cgid)
    return outliers
