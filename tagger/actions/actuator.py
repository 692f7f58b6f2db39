"""The actuator: turns the actions rules and policies want into kernel settings,
journals every original value first, and puts everything back.

    act = Actuator(layout, fs=HOST, state_dir="/var/lib/tagger", dry_run=False)
    act.recover()                      # after a crash: drop vanished cgroups' knobs
    act.apply(snapshot, desired)       # each tick; what is not desired any more is undone
    act.current()                      # what is changed now, and why
    act.revert_all()                   # SIGTERM/SIGINT: every knob back to its original

Guarantees a caller may rely on:

* An original value is in the journal, durably, before its knob is first written;
  when the journal cannot be written (a full disk, EIO) the knob is left alone,
  the failure counted (``journal.write_failures``) and logged once, and every
  other knob carries on as before.
* An action lives only while some rule or policy asks for it: a knob that is not
  in ``desired`` at a tick is restored at that tick.  Knobs found in the journal at
  start (a previous run crashed) are re-adopted if the first ``apply`` still wants
  them, restored otherwise; ``recover(restore=True)`` restores them at once.
* Protected cgroups are never touched: the root, ``/init.scope``, tagger's own
  cgroups and their ancestors (throttling an ancestor throttles tagger).
* ``dry_run`` computes the same actions and reports them, and writes nothing:
  neither kernel files nor the state directory.  What a crashed run left in the
  journal is read (:attr:`leftovers`) so the caller can say so.

The jobs live beside it: :mod:`.wants` merges what rules and policies ask for,
:mod:`.points` builds the control point a knob names, :mod:`.restore` puts
knobs back, :mod:`.protection` says which cgroups are never touched.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass

from tagger import errors
from tagger.cgroups import Layout
from tagger.kernelfs import HOST, KernelFS
from tagger.rules.spec import ActionSet

from .control import ControlPoint, Safety, Tightenings
from .journal import DEFAULT_STATE_DIR, Contents, Entry, Journal, JournalError, read_journal
from .points import ControlPoints, phase
from .protection import Protection
from .rdt import PRESENT, RESCTRL, Resctrl
from .refusal import ActionRefused, Notices
from .restore import Restorer
from .wants import Wanted, Wants

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppliedAction:
    """One knob tagger holds changed: on which cgroup ("" for node-wide RDT
    groups), its value now and before, which rule or policy wants it, since when
    (wall clock), and whether it was only computed (dry run)."""
    cgroup: str
    knob: str
    value: str
    original: str
    rule: str
    since: float
    dry_run: bool


class Actuator:
    """Applies desired actions to the kernel through ``fs``, journaled in
    ``state_dir``; see the module docstring for what a caller may rely on.
    Takes the state directory's lock (ConfigError if another agent holds it)
    and loads its journal; a dry run does neither."""

    def __init__(self, layout: Layout, fs: KernelFS = HOST, state_dir=DEFAULT_STATE_DIR,
                 dry_run: bool = False, safety: Safety = Safety(),
                 resctrl_root: str = RESCTRL, durable: bool = True, cpus: float | None = None):
        self.layout = layout
        self.fs = fs
        self.dry_run = dry_run
        self.safety = safety
        self.resctrl = Resctrl(fs, resctrl_root)
        self.cpus = cpus or float(fs.online_cpus())
        self.journal = Journal(state_dir, durable)
        self.points = ControlPoints(layout, fs, self.resctrl, self.cpus)
        self.notices = Notices(log)
        self.tightenings = Tightenings()
        self.wanted = Wanted(self.points, Protection(fs), self.notices)
        self.restorer = Restorer(self.journal, self.points, self.notices, self.tightenings, dry_run)
        # apply() runs on the daemon's tick; current() is read by publishers'
        # threads.  Re-entrant: a signal handler in the ticking thread may revert.
        self._lock = threading.RLock()
        #: dry run: what the journal on disk holds (a previous run's knobs still changed)
        self.leftovers = Contents()
        if not dry_run:
            self.journal.lock()
            # Load at once: a save before recover() must not overwrite a crashed run's originals.
            self.journal.load()
        else:
            try:
                self.leftovers = read_journal(self.journal.path)
            except OSError as err:
                log.warning("%s: cannot read the journal (%s)", self.journal.path, err)

    # --- context manager: revert on every exit path -----------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """revert_all() and release the state directory."""
        try:
            self.revert_all()
        finally:
            self.journal.unlock()

    @property
    def entries(self) -> dict[str, Entry]:
        return self.journal.entries

    def control_point(self, cgroup: str, knob: str) -> ControlPoint:
        """The control point a journal entry names."""
        return self.points.get(cgroup, knob)

    # --- doing it ---------------------------------------------------------------------------
    def apply(self, snapshot, desired: dict[str, list[ActionSet]]) -> list[AppliedAction]:
        """Make the kernel match ``desired`` (cgroup path -> the ActionSets of the
        rules and policies that match it now), paced by ``safety``; undo the rest.
        Refusals are logged once and reported by :meth:`refusals`; they never stop
        the other actions."""
        with self._lock:
            return self._apply(snapshot, desired)

    def _apply(self, snapshot, desired) -> list[AppliedAction]:
        now = snapshot.t if snapshot is not None else time.monotonic()
        wants = self.wanted(desired)
        dirty = False
        for key in self.restorer.undo_order():
            if key not in wants:
                dirty |= self.restorer.restore(key)
        # On v1 a child may not exceed its parent, so which of the two is written
        # first can make one write fail for a tick; a second pass settles it.
        order = sorted(wants, key=lambda k: (phase(wants[k][0].knob), wants[k][0].cgroup.count("/")))
        retry = []
        for key in order:
            dirty |= self._try_set(key, wants, now, retry)
        for key in retry:
            dirty |= self._try_set(key, wants, now, None)
        if dirty and not self.dry_run:
            # Values and dropped entries only: every original the kernel may
            # differ from is on disk already (put), so a failure here loses nothing.
            self.journal.try_save()
        return self.current()

    def _try_set(self, key, wants: Wants, now, retry: list | None) -> bool:
        """_set, with refusals reported; a hierarchy refusal goes to ``retry`` first."""
        cp, value, rule = wants[key]
        try:
            dirty = self._set(key, cp, value, rule, now)
            self.notices.refused.pop(key, None)
            return dirty
        except ActionRefused as err:
            if retry is not None and err.limit == "v1 child <= parent":
                retry.append(key)
                return False
            self.notices.refuse(key, err)
            entry = self.entries.get(key)
            if entry is not None and entry.value == entry.original:
                # Refused at the first write: nothing changed, nothing to put back.
                self.journal.drop(key, sync=False)
                return True
            return False
        except errors.Vanished:
            # The cgroup went away between two reads: its knobs went with it.
            self.journal.drop(key, sync=False)
            return True
        except JournalError as err:
            # The knob was not touched; the journal logged the outage once.
            self.notices.refused[key] = str(err)
            return False

    def _set(self, key, cp: ControlPoint, wanted: str, rule: str, now: float) -> bool:
        entry = self.entries.get(key)
        if entry is None:
            if not cp.present():
                raise ActionRefused(f"{cp.cgroup}: no such cgroup in the hierarchy holding "
                                    f"{cp.knob.split(' ')[0]} ({cp.dir})", "cgroup exists", cp.dir)
            original = cp.read()
            value = cp.paced(original, wanted, self.safety, None)
            if value == original and not cp.sync_each_tick:
                return False
            entry = Entry(cp.cgroup, cp.knob, original, original, rule,
                          made=cp.knob.startswith("rdt.group") and original != PRESENT)
            # The original is on disk before the knob is touched: a crash from
            # here on leaves enough to put it back.  JournalError: not on disk, not touched.
            self.journal.put(entry, sync=not self.dry_run)
        else:
            value = cp.paced(entry.value, wanted, self.safety, self.tightenings.held_for(key, now))
        changed = value != entry.value or entry.rule != rule
        drifted = False
        if not self.dry_run and not changed and not cp.sync_each_tick:
            # Someone else (an operator, another agent) wrote the knob while we
            # hold it: the rule still wants our value, so put it back, and say so.
            actual = cp.read()
            if actual != entry.value:
                drifted = True
                self.notices.warn_once(f"drift {key} {actual}", "%s %s: changed behind tagger's back to %r; "
                                       "setting %r again (rule %s)", cp.cgroup, cp.knob, actual, value, rule)
        if value != entry.value or drifted or cp.sync_each_tick:
            if not self.dry_run:
                cp.write(value)
            if cp.tighter(entry.value, value):
                self.tightenings.tightened(key, now)
            if value != entry.value:
                log.info("%s %s: %s -> %s (%s)", cp.cgroup or "resctrl", cp.knob, entry.value, value, rule)
        entry.value, entry.rule = value, rule
        return changed

    # --- putting back (tagger.actions.restore) ------------------------------------------------
    def recover(self, restore: bool = False) -> list[AppliedAction]:
        """Replay the journal a previous run left (it crashed, or was killed):
        knobs of cgroups that vanished are dropped; the others are restored now
        (``restore=True``) or re-adopted, to be kept by the first :meth:`apply`
        that still wants them and restored by the first that does not."""
        if self.dry_run:
            return []
        with self._lock:
            self.restorer.recover(restore)
            return self.current()

    def revert_all(self) -> list[str]:
        """Every knob back to its journaled original (SIGTERM/SIGINT path).
        Returns the keys that could not be restored (they stay journaled)."""
        with self._lock:
            return self.restorer.revert_all()

    # --- reporting ----------------------------------------------------------------------------
    def current(self) -> list[AppliedAction]:
        with self._lock:
            return [AppliedAction(e.cgroup, e.knob, e.value, e.original, e.rule, e.since, self.dry_run)
                    for e in self.entries.values()]

    def refusals(self) -> dict[str, str]:
        """What could not be applied at the last ticks: key -> message naming the limit."""
        return dict(self.notices.refused)


def raise_on_termination(signals=(signal.SIGTERM, signal.SIGINT)) -> None:
    """Turn SIGTERM/SIGINT into SystemExit in the main thread, so ``with
    Actuator(...)`` blocks and ``finally:`` clauses run and every knob is restored."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    for s in signals:
        signal.signal(s, handler)


__all__ = ["Actuator", "AppliedAction", "Safety", "DEFAULT_STATE_DIR", "raise_on_termination"]
