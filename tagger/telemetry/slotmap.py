"""The only slot <-> path map: which cgroup each BPF counter slot counts.

Each cgroup the programs count has a slot, given by the kernel's mkdir
handler (or by us at start and for cgroups the handler missed) and recycled
by us after rmdir.  :class:`SlotMap` owns that map beside the
:class:`tagger.cgroups.Registry` it keeps up to date (ids, paths, display
names), and heals what lost lifecycle events leave behind: ``rescan`` walks
the tree, ``reconcile`` also returns slots held by no live cgroup (see
:mod:`tagger.slots`).  The rows of each tick's table come from here too.
"""

from __future__ import annotations

import errno
import logging

import numpy as np

from .. import errors
from ..cgroups import Layout, Registry, normalize
from ..kernelfs import KernelFS
from ..slots import SlotLedger
from ..snapshot import CgroupTable

log = logging.getLogger(__name__)

#: Reconcile slots with the cgroup tree this often (ticks), besides after any
#: lost lifecycle event (see SlotMap.reconcile).
RESCAN_EVERY = 30


class SlotMap:
    """Slots of the cgroups ``probes`` count: ``path_slot``, ``slot_path``,
    ``slot_id`` (the v2 id each slot was given for), ``high_water`` (slots in
    use are below it)."""

    def __init__(self, probes, registry: Registry, fs: KernelFS, layout: Layout, max_slots: int):
        self.probes = probes
        self.registry = registry
        self.fs = fs
        self.layout = layout
        self.max_slots = max_slots
        self.slot_path: dict[int, str] = {}
        self.path_slot: dict[str, int] = {}
        self.slot_id = np.zeros(max_slots, np.uint64)
        self.high_water = 1
        self.io_on_v1 = layout.controller_version("io") == 1
        self.blkio_hid = _hierarchy_id(fs, "blkio") if self.io_on_v1 else None
        self._blkio_ids: dict[str, int] = {}        # v1 blkio path -> its cgroup id
        self.to_recycle: list[int] = []             # freed this tick: back to the queue after the read
        self.slots = SlotLedger(probes, max_slots)
        self.lost_lifecycle = 0             # the kernel's lifecycle_drops at the last reconcile
        self.slots_reclaimed = 0
        self.reconciles = 0
        self._register_errors = 0           # registrations refused for another reason than a vanished cgroup
        self._unslotted = False             # a cgroup found no free slot: try again next tick
        self._warned_full = False
        self._dirty = True
        self._table: CgroupTable | None = None
        self.slot_row = np.full(max_slots, -1, np.int64)

    def start(self):
        """Every slot but 0 free, the programs attached, then every existing cgroup registered."""
        for slot in range(1, self.max_slots):
            self.slots.push(slot)
        # Attach before walking the tree, so no cgroup made meanwhile is missed.
        self.probes.attach()
        self.registry.scan()
        for cgid, path in self.registry.items():
            self.register(path, cgid)
        self._map_blkio_tree()

    # --- registration ---------------------------------------------------------------
    def register(self, path: str, cgid: int) -> int | None:
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
        self.adopt(got, path, cgid, blkcg_mapped=False)
        return got

    def adopt(self, slot: int, path: str, cgid: int, blkcg_mapped: bool):
        """``path`` (v2 id ``cgid``) holds ``slot``.  ``blkcg_mapped``: the
        kernel's mkdir handler mapped its blkcg id already (pure v2)."""
        old = self.path_slot.get(path)
        if old is not None and old != slot:
            self.forget(path, old)             # an older cgroup at this path, its rmdir lost
        self.slot_path[slot] = path
        self.path_slot[path] = slot
        self.slot_id[slot] = cgid
        self.high_water = max(self.high_water, slot + 1)
        self._dirty = True
        if self.layout.controller_version("io") == 2:
            # Pure v2: the bio's blkcg is this very cgroup.  Not again from
            # an event: the cgroup may be gone, and its entry with it.
            if not blkcg_mapped:
                self._map_blkcg(cgid, slot)
        elif path in self._blkio_ids:
            self._map_blkcg(self._blkio_ids[path], slot)

    def forget(self, path: str, slot: int | None = None, cgid: int = 0):
        """``path`` no longer holds its slot, which goes back to the queue
        after this tick's read.  With ``cgid``, only if the slot is that
        cgroup's: an rmdir event of an older cgroup at the same path changes
        nothing.  Slots we never knew the holder of are left to reconcile."""
        known = self.path_slot.get(path)
        if known is None or (slot is not None and slot != known):
            return
        if cgid and int(self.slot_id[known]) != cgid:
            return
        del self.path_slot[path]
        if self.slot_path.get(known) == path:
            del self.slot_path[known]
            self.to_recycle.append(known)
        self._dirty = True

    # --- v1 blkio (hybrid hosts) -------------------------------------------------------
    def _map_blkcg(self, cgroup_id: int, slot: int):
        try:
            self.probes.map_blkcg(cgroup_id, slot)
        except errors.BpfError as err:        # the map full: its I/O counts in slot 0
            log.debug("cannot map blkcg %d to slot %d: %s", cgroup_id, slot, err)

    def _map_blkio_tree(self):
        """Hybrid/v1 hosts: each v1 blkio cgroup counts its I/O into the slot of
        the v2 cgroup at the same path (the bio carries the blkio cgroup)."""
        if not self.io_on_v1:
            return
        for cgid, path in self.registry.items(controller="io"):
            self._blkio_ids[path] = cgid
            slot = self.path_slot.get(path)
            if slot:
                self._map_blkcg(cgid, slot)

    def blkio_made(self, path: str, cgid: int):
        self._blkio_ids[path] = cgid
        if path in self.path_slot:
            self._map_blkcg(cgid, self.path_slot[path])

    def blkio_removed(self, path: str, cgid: int):
        self._blkio_ids.pop(path, None)
        self._map_blkcg(cgid, 0)

    # --- healing -------------------------------------------------------------------------
    def rescan(self):
        """Heal missed lifecycle events against the tree itself.  Compared by
        cgroup id, not path: a path removed and made again is a new cgroup,
        and its mkdir event may already have given it its slot (which
        register then adopts)."""
        self.registry.scan()
        for path, slot in list(self.path_slot.items()):
            if self.registry.id_of(path) != int(self.slot_id[slot]):
                self.forget(path, slot)
        for slot, path in list(self.slot_path.items()):
            if self.path_slot.get(path) != slot:    # an orphan: nothing holds it
                del self.slot_path[slot]
                self.to_recycle.append(slot)
        for cgid, path in self.registry.items():
            if path not in self.path_slot:
                self.register(path, cgid)

    def reconcile(self):
        """The kernel's slot table against the cgroups that exist, by id: run
        on a schedule, after any lost lifecycle event and until nothing is
        in doubt.  Every live v2 cgroup gets (or keeps) its slot, and a slot
        neither free nor held by a live cgroup (its mkdir and rmdir events
        both lost) goes back to the queue (see tagger.slots)."""
        self.reconciles += 1
        self._unslotted = False
        self.slots.mark()                   # before the walk finds the holders
        errors_before = self._register_errors
        self.rescan()
        if self._register_errors != errors_before:
            return                          # a live cgroup's slot unknown: return nothing on doubt
        leaked = self.slots.leaked(self.slot_path.keys() | set(self.to_recycle))
        if leaked:
            log.debug("%d slots held by no cgroup go back to the queue", len(leaked))
            self.to_recycle.extend(leaked)
            self.slots_reclaimed += len(leaked)

    def maybe_reconcile(self, seq: int):
        """Reconcile if a lifecycle event was lost, a slot is in doubt or
        none was free, or on the schedule (tick ``seq``)."""
        drops = self.probes.lifecycle_drops()
        if (drops != self.lost_lifecycle or self.slots.pending or self._unslotted
                or seq % RESCAN_EVERY == RESCAN_EVERY - 1):
            self.lost_lifecycle = drops
            self.reconcile()

    def recycle(self, prev: np.ndarray):
        """After the tick's read: the slots freed start again from zero."""
        for slot in self.to_recycle:
            prev[slot] = 0
            self.slot_id[slot] = 0
            self.slots.push(slot)
        self.to_recycle = []

    # --- rows ------------------------------------------------------------------------------
    def rows(self) -> tuple[np.ndarray, CgroupTable]:
        """The table's rows (paths in tree order) and each row's slot;
        ``slot_row`` maps back.  Names and labels are the registry's."""
        last = self._table
        if self.registry.refresh_names():   # a pod's names came (or went): label its rows again
            self._dirty, last = True, None
        if self._dirty:
            paths = sorted(self.path_slot, key=lambda p: p.split("/"))
            self._row_slots = np.array([self.path_slot[p] for p in paths], dtype=np.int64)
            self.slot_row = np.full(self.max_slots, -1, np.int64)
            self.slot_row[self._row_slots] = np.arange(len(paths))
            names, labels = [], []
            for p in paths:
                # A row of the last table keeps its name and labels: under churn
                # the rows change every tick, and asking the registry again for
                # thousands of paths would cost more than the rest of the tick.
                i = last.index(p) if last is not None else None
                if i is not None:
                    names.append(last.names[i])
                    labels.append(last.labels[i])
                else:
                    name, got = self.registry.describe(p)
                    names.append(name)
                    labels.append(dict(got))      # the table's own
            self._table = CgroupTable(self.slot_id[self._row_slots].copy(), paths, names, labels)
            self._dirty = False
        return self._row_slots, self._table


def _hierarchy_id(fs: KernelFS, controller: str) -> int | None:
    """The v1 hierarchy id of ``controller`` from /proc/cgroups (0 = on v2)."""
    text = fs.read_optional("/proc/cgroups") or ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == controller and parts[1].isdigit():
            return int(parts[1]) or None
    return None
