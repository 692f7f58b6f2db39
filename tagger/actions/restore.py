"""Putting knobs back: one at a time when no rule wants them any more, every
one on exit (SIGTERM/SIGINT), and a crashed run's journal on the next start."""

from __future__ import annotations

import logging

from tagger import errors

from .control import Tightenings
from .journal import Journal
from .points import ControlPoints, phase
from .rdt import PRESENT
from .refusal import ActionRefused, Notices

log = logging.getLogger(__name__)


class Restorer:
    """Writes journaled originals back through ``points``; a dry run only drops
    them from the (in-memory) journal."""

    def __init__(self, journal: Journal, points: ControlPoints, notices: Notices,
                 tightenings: Tightenings, dry_run: bool):
        self.journal = journal
        self.points = points
        self.notices = notices
        self.tightenings = tightenings
        self.dry_run = dry_run

    def undo_order(self) -> list[str]:
        """Journal keys in the order they are undone: RDT tasks before schemata before groups."""
        entries = self.journal.entries
        return sorted(entries, key=lambda k: -phase(entries[k].knob))

    def restore(self, key: str) -> bool:
        """Put one knob back; True if the journal changed.  A knob the kernel
        will not take back stays journaled (and is retried next time)."""
        entry = self.journal.entries[key]
        try:
            cp = self.points.get(entry.cgroup, entry.knob)
            if cp.present() and not self.dry_run:
                cp.write(entry.original)
            log.info("%s %s: restored %s", entry.cgroup or "resctrl", entry.knob, entry.original)
        except errors.Vanished:
            pass
        except (ActionRefused, errors.TaggerError, OSError, ValueError) as err:
            # ValueError: an original that is not the knob's text (a hand-edited journal).
            self.notices.warn_once(f"restore {key} {err}", "%s %s: could not restore %r: %s",
                                   entry.cgroup, entry.knob, entry.original, err)
            return False
        self.journal.drop(key, sync=False)
        self.tightenings.forget(key)
        return True

    def recover(self, restore: bool) -> None:
        """A previous run's journal: knobs of vanished cgroups dropped, the
        others restored (``restore``) or re-adopted at their current value."""
        dirty = False
        for key in self.undo_order():
            entry = self.journal.entries[key]
            try:
                cp = self.points.get(entry.cgroup, entry.knob)
                gone = not cp.present() or (entry.made and cp.read() != PRESENT)
                if entry.knob.startswith("rdt."):
                    # Every RDT knob lives in its group: gone with it.
                    gone = gone or not self.points.resctrl.has_group(entry.knob.split(" ", 1)[1])
            except (errors.NotFound, ValueError):
                gone = True
            if gone:
                log.info("journal: %s %s vanished; dropping it", entry.cgroup, entry.knob)
                self.journal.drop(key, sync=False)
                dirty = True
            elif restore:
                dirty |= self.restore(key)
            else:
                entry.value = cp.read()     # a crash may have come between write and journal update
        if dirty:
            self.journal.try_save()

    def revert_all(self) -> list[str]:
        """Every knob back to its original; the keys that could not be (still journaled)."""
        # Two passes: on v1 a parent's original may have to come back before its child's.
        for _ in range(2):
            for key in self.undo_order():
                self.restore(key)
        if not self.dry_run:
            if self.journal.entries:
                self.journal.try_save()
            else:
                self.journal.clear()
        return list(self.journal.entries)
