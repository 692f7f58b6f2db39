"""The kernel's queue of free slots, seen from user space, and what leaks from it.

Slots change hands in three places: user space pushes free slots into the BPF
queue map (at start, and after a cgroup's rmdir), the kernel's mkdir handler
pops one for each new v2 cgroup, and user space pops one to register a cgroup
the handler missed.  The handler's pops are told only by a MKDIR event, which
the ring buffer drops under churn: a slot handed out to a cgroup whose events
were lost is held by nothing, and would never come back.

:class:`SlotLedger` keeps the order of user space's pushes.  The queue is FIFO
and holds each slot at most once, so the queue's head (peeked, not popped:
the mkdir handler keeps taking from it meanwhile) tells exactly which pushed
slots have been taken since.  A slot taken that no live cgroup holds has
leaked, and goes back.  Taken from the kernel's queue before the walk of the
tree that finds its holder, a slot is handed out to a cgroup that exists; a
slot the kernel stores a few nanoseconds after popping it is caught by asking
twice: a slot is returned only when it is held by nothing on two reconciles
in a row (the caller drains the ring buffer in between, so no event about the
slot's last holder is still on its way).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Collection


class SlotLedger:
    """Free-slot bookkeeping over a :class:`tagger.native.probes.Probes`'
    queue: every push and user-space pop goes through it."""

    def __init__(self, probes, max_slots: int):
        self._probes = probes
        self._all = frozenset(range(1, max_slots))
        # Slots pushed, in push order, that may still be in the queue.
        self._queued: OrderedDict[int, None] = OrderedDict()
        self._suspects: frozenset[int] = frozenset()

    def push(self, slot: int) -> None:
        """Zero ``slot``'s counters and return it to the queue's tail."""
        self._probes.push_slot(slot)
        self._queued.pop(slot, None)
        self._queued[slot] = None

    def pop(self) -> int | None:
        """A free slot from the queue's head, or None when there is none."""
        slot = self._probes.pop_slot()
        if slot is not None:
            self._queued.pop(slot, None)
        return slot

    def mark(self) -> None:
        """Forget the slots taken from the queue since the last mark.  Call
        before walking the tree for the slots' holders."""
        head = self._probes.peek_slot()
        if head is not None and head not in self._queued:
            return                      # not a slot we pushed: keep believing all are free
        while self._queued:
            first = next(iter(self._queued))
            if first == head:
                break
            self._queued.popitem(last=False)

    def leaked(self, held: Collection[int]) -> list[int]:
        """Slots out of the queue and not in ``held`` (the slots of live
        cgroups, and those already on their way back) now and at the
        previous call: the caller returns them."""
        out = self._all - self._queued.keys() - set(held)
        leaked = out & self._suspects
        self._suspects = frozenset(out - leaked)
        return sorted(leaked)

    @property
    def pending(self) -> bool:
        """Slots seen held by nothing once: the next reconcile decides."""
        return bool(self._suspects)

    @property
    def free(self) -> int:
        """Slots in the queue as of the last mark (an upper bound)."""
        return len(self._queued)
