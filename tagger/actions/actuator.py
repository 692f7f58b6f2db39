"""The actuator: turns the actions rules and policies want into kernel settings,
journals every original value first, and puts everything back.

    act = Actuator(layout, fs=HOST, state_dir="/var/lib/tagger", dry_run=False, protected=())
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
  cgroups and their ancestors (throttling an ancestor throttles tagger), and the
  ``protected`` globs.
* ``dry_run`` computes the same actions and reports them, and writes nothing:
  neither kernel files nor the state directory.  What a crashed run left in the
  journal is read (:attr:`leftovers`) so the caller can say so.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

from tagger import errors
from tagger.cgroupglob import GlobSet
from tagger.cgroups import Layout, normalize
from tagger.kernelfs import HOST, KernelFS
from tagger.knobs import CpuMax, format_io_limits, parse_cpulist

from .control import ControlPoint, Safety
from .cpu import CpuIdle, CpuQuota, CpuWeight
from .cpuset import CpuSet
from .io import IoLimit, resolve_devices, spec_limits
from .journal import DEFAULT_STATE_DIR, Contents, Entry, Journal, JournalError, entry_key, read_journal
from .rdt import PRESENT, RESCTRL, Resctrl, RdtGroup, RdtSchemata, RdtTasks
from .refusal import ActionRefused
from .spec import ActionSet

log = logging.getLogger(__name__)

#: Set before, undone after: an RDT group exists before its schemata is written
#: and before tasks move in; tasks leave before the group is removed.
_PHASE = {"rdt.group": 0, "rdt.schemata": 1, "rdt.tasks": 2}


def _phase(knob: str) -> int:
    return _PHASE.get(knob.split(" ", 1)[0], 3)


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


class Protection:
    """Cgroups tagger never touches."""

    ALWAYS = ("/", "/init.scope")

    def __init__(self, fs: KernelFS = HOST, globs=()):
        self.exact = set(self.ALWAYS) | own_cgroups(fs)
        self.globs = GlobSet(globs)

    def protects(self, path: str) -> bool:
        # A protected glob covers what it matches and everything below (a limit on a
        # descendant is a limit on part of the protected cgroup's work), so
        # "/system.slice/*" is the whole subtree, as it was when these were fnmatch.
        return path in self.exact or self.globs.match_subtree(path)


def own_cgroups(fs: KernelFS = HOST) -> set[str]:
    """tagger's own cgroups in every hierarchy (/proc/self/cgroup), and their ancestors."""
    out = set()
    text = fs.read_optional("/proc/self/cgroup") or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = normalize(parts[2].strip() or "/")
        while True:
            out.add(path)
            if path == "/":
                break
            path = path.rsplit("/", 1)[0] or "/"
    return out


def node_cpus(fs: KernelFS = HOST) -> float:
    """Online CPUs, from /sys/devices/system/cpu/online ("0-1,4")."""
    text = fs.read_optional("/sys/devices/system/cpu/online")
    if not text:
        return float(os.cpu_count() or 1)
    n = 0
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return float(n)


class Actuator:
    """Applies desired actions to the kernel through ``fs``, journaled in
    ``state_dir``; see the module docstring for what a caller may rely on.
    Takes the state directory's lock (ConfigError if another agent holds it)
    and loads its journal; a dry run does neither."""

    def __init__(self, layout: Layout, fs: KernelFS = HOST, state_dir=DEFAULT_STATE_DIR,
                 dry_run: bool = False, protected=(), safety: Safety = Safety(),
                 resctrl_root: str = RESCTRL, durable: bool = True, cpus: float | None = None):
        self.layout = layout
        self.fs = fs
        self.dry_run = dry_run
        self.safety = safety
        self.protection = Protection(fs, protected)
        self.resctrl = Resctrl(fs, resctrl_root)
        self.cpus = cpus or node_cpus(fs)
        self.journal = Journal(state_dir, durable)
        self._tightened_at: dict[str, float] = {}
        self._refused: dict[str, str] = {}
        self._warned: set[str] = set()
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

    # --- control points -------------------------------------------------------------
    def control_point(self, cgroup: str, knob: str) -> ControlPoint:
        """The control point a journal entry names."""
        kind, _, arg = knob.partition(" ")
        if kind == "cpu.max":
            return CpuQuota(self.fs, cgroup, self.layout.controller_dir("cpu", cgroup),
                            self.layout.controller_version("cpu"), self.cpus)
        if kind == "cpu.weight":
            return CpuWeight(self.fs, cgroup, self.layout.controller_dir("cpu", cgroup),
                             self.layout.controller_version("cpu"))
        if kind == "cpu.idle":
            return CpuIdle(self.fs, cgroup, self.layout.controller_dir("cpu", cgroup),
                           self.layout.controller_version("cpu"))
        if kind == "cpuset.cpus":
            return CpuSet(self.fs, cgroup, self.layout.controller_dir("cpuset", cgroup),
                          self.layout.controller_version("cpuset"))
        if kind == "io.max":
            return IoLimit(self.fs, cgroup, self.layout.controller_dir("io", cgroup),
                           self.layout.controller_version("io"), arg)
        if kind == "rdt.group":
            return RdtGroup(self.resctrl, arg)
        if kind == "rdt.schemata":
            return RdtSchemata(self.resctrl, arg)
        if kind == "rdt.tasks":
            return RdtTasks(self.resctrl, arg, cgroup, self._threads_file(cgroup))
        raise ValueError(f"unknown knob {knob!r}")

    def _threads_file(self, cgroup: str) -> str:
        # Thread ids, not process ids: resctrl places threads one by one.
        if self.layout.v2_root is not None:
            return self.layout.v2_dir(cgroup) + "/cgroup.threads"
        return self.layout.controller_dir("cpu", cgroup) + "/tasks"

    # --- what is wanted -----------------------------------------------------------------
    def _wants(self, desired: dict[str, list[ActionSet]]):
        """key -> (control point, value text, rule), most restrictive rule winning."""
        wants: dict[str, tuple[ControlPoint, str, str]] = {}
        rdt_info = None
        for raw_path, sets in desired.items():
            path = normalize(raw_path)
            if self.protection.protects(path):
                self._warn_once(f"protected {path}", "%s is protected: not acting on it (rules %s)",
                                path, ", ".join(s.rule for s in sets))
                continue
            rdt_sets = [s for s in sets if s.rdt is not None]
            # One refusal (a bad device, no resctrl) must not cost the other control points.
            for what in ("cpu", "io", "rdt"):
                try:
                    if what == "cpu":
                        self._want_cpu(wants, path, sets)
                    elif what == "io":
                        self._want_io(wants, path, sets)
                    elif rdt_sets:
                        rdt_info = rdt_info or self.resctrl.info()
                        self._want_rdt(wants, path, rdt_sets, rdt_info)
                except (ActionRefused, errors.NotFound) as err:
                    self._refuse(f"{path}\t{what}", err)
        return wants

    def _want_cpu(self, wants, path, sets):
        quota = [s for s in sets if s.cpu is not None and s.cpu.max is not None]
        if quota:
            best = min(quota, key=lambda s: s.cpu.max)
            cp = self.control_point(path, "cpu.max")
            wants[entry_key(path, cp.knob)] = (cp, CpuMax.from_cpus(best.cpu.max, best.cpu.period).text(), best.rule)
        weight = [s for s in sets if s.cpu is not None and s.cpu.weight is not None]
        if weight:
            best = min(weight, key=lambda s: s.cpu.weight)
            cp = self.control_point(path, "cpu.weight")
            wants[entry_key(path, cp.knob)] = (cp, cp.native(best.cpu.weight), best.rule)
        idle = [s for s in sets if s.cpu is not None and s.cpu.idle is not None]
        if idle:
            best = max(idle, key=lambda s: s.cpu.idle)      # idle is the more restrictive
            cp = self.control_point(path, "cpu.idle")
            wants[entry_key(path, cp.knob)] = (cp, cp.native(best.cpu.idle), best.rule)
        cpuset = [s for s in sets if s.cpu is not None and s.cpu.cpuset is not None]
        if cpuset:
            cp = self.control_point(path, "cpuset.cpus")
            lists = [(cp.native(s.cpu.cpuset), s.rule) for s in cpuset]
            # The fewest CPUs win, as the smallest quota does.
            value, rule = min(lists, key=lambda x: len(parse_cpulist(x[0])))
            wants[entry_key(path, cp.knob)] = (cp, value, rule)

    def _want_io(self, wants, path, sets):
        per_device: dict[str, tuple[dict, str]] = {}
        for s in sets:
            if s.io is None:
                continue
            limits = spec_limits(s.io)
            for dev in resolve_devices(self.fs, s.io.device):
                have, rule = per_device.get(dev, ({}, s.rule))
                merged = {k: min((v for v in (have.get(k), limits[k]) if v is not None), default=None)
                          for k in limits}
                per_device[dev] = (merged, rule)
        for dev, (limits, rule) in per_device.items():
            cp = self.control_point(path, f"io.max {dev}")
            wants[entry_key(path, cp.knob)] = (cp, format_io_limits(limits), rule)

    def _want_rdt(self, wants, path, sets, info):
        s = sets[0]
        if len({x.rdt for x in sets}) > 1:
            self._warn_once(f"rdt {path}", "%s: rules %s ask for different RDT groups; %s wins",
                            path, ", ".join(x.rule for x in sets), s.rule)
        group = s.rdt.group
        text = self.resctrl.schemata_text(s.rdt, info)
        gkey, skey = entry_key("", f"rdt.group {group}"), entry_key("", f"rdt.schemata {group}")
        if skey in wants and wants[skey][1] != text:
            self._warn_once(f"rdt {group} {s.rule}", "RDT group %s: rule %s asks for other "
                            "schemata than rule %s; the first wins", group, s.rule, wants[skey][2])
        else:
            wants[gkey] = (self.control_point("", f"rdt.group {group}"), PRESENT, s.rule)
            wants[skey] = (self.control_point("", f"rdt.schemata {group}"), text, s.rule)
        cp = self.control_point(path, f"rdt.tasks {group}")
        wants[entry_key(path, cp.knob)] = (cp, group, s.rule)

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
        wants = self._wants(desired)
        dirty = False
        for key in sorted((k for k in self.entries if k not in wants),
                          key=lambda k: -_phase(self.entries[k].knob)):
            dirty |= self._restore(key)
        # On v1 a child may not exceed its parent, so which of the two is written
        # first can make one write fail for a tick; a second pass settles it.
        order = sorted(wants, key=lambda k: (_phase(wants[k][0].knob), wants[k][0].cgroup.count("/")))
        retry = []
        for key in order:
            dirty |= self._try_set(key, wants[key], now, retry)
        for key in retry:
            dirty |= self._try_set(key, wants[key], now, None)
        if dirty and not self.dry_run:
            # Values and dropped entries only: every original the kernel may
            # differ from is on disk already (put), so a failure here loses nothing.
            self.journal.try_save()
        return self.current()

    def _try_set(self, key, want, now, retry: list | None) -> bool:
        """_set, with refusals reported; a hierarchy refusal goes to ``retry`` first."""
        cp, value, rule = want
        try:
            dirty = self._set(key, cp, value, rule, now)
            self._refused.pop(key, None)
            return dirty
        except ActionRefused as err:
            if retry is not None and err.limit == "v1 child <= parent":
                retry.append(key)
                return False
            self._refuse(key, err)
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
            self._refused[key] = str(err)
            return False

    def _set(self, key, cp: ControlPoint, wanted: str, rule: str, now: float) -> bool:
        entry = self.entries.get(key)
        if entry is None:
            if not cp.present():
                raise ActionRefused(f"{cp.cgroup}: no such cgroup in the hierarchy holding "
                                    f"{cp.knob.split(' ')[0]} ({cp.dir})", "cgroup exists", cp.dir)
            original = cp.read()
            value = cp.paced(original, wanted, self.safety, None)
            if value == original and not getattr(cp, "sync_each_tick", False):
                return False
            entry = Entry(cp.cgroup, cp.knob, original, original, rule,
                          made=cp.knob.startswith("rdt.group") and original != PRESENT)
            # The original is on disk before the knob is touched: a crash from
            # here on leaves enough to put it back.  JournalError: not on disk, not touched.
            self.journal.put(entry, sync=not self.dry_run)
        else:
            held = now - self._tightened_at[key] if key in self._tightened_at else None
            value = cp.paced(entry.value, wanted, self.safety, held)
        changed = value != entry.value or entry.rule != rule
        drifted = False
        if not self.dry_run and not changed and not getattr(cp, "sync_each_tick", False):
            # Someone else (an operator, another agent) wrote the knob while we
            # hold it: the rule still wants our value, so put it back, and say so.
            actual = cp.read()
            if actual != entry.value:
                drifted = True
                self._warn_once(f"drift {key} {actual}", "%s %s: changed behind tagger's back to %r; "
                                "setting %r again (rule %s)", cp.cgroup, cp.knob, actual, value, rule)
        if value != entry.value or drifted or getattr(cp, "sync_each_tick", False):
            if not self.dry_run:
                cp.write(value)
            if cp.tighter(entry.value, value):
                self._tightened_at[key] = now
            if value != entry.value:
                log.info("%s %s: %s -> %s (%s)", cp.cgroup or "resctrl", cp.knob, entry.value, value, rule)
        entry.value, entry.rule = value, rule
        return changed

    def _restore(self, key: str) -> bool:
        """Put one knob back; True if the journal changed.  A knob the kernel
        will not take back stays journaled (and is retried next time)."""
        entry = self.entries[key]
        try:
            cp = self.control_point(entry.cgroup, entry.knob)
            if cp.present() and not self.dry_run:
                cp.write(entry.original)
            log.info("%s %s: restored %s", entry.cgroup or "resctrl", entry.knob, entry.original)
        except errors.Vanished:
            pass
        except (ActionRefused, errors.TaggerError, OSError, ValueError) as err:
            # ValueError: an original that is not the knob's text (a hand-edited journal).
            self._warn_once(f"restore {key} {err}", "%s %s: could not restore %r: %s",
                            entry.cgroup, entry.knob, entry.original, err)
            return False
        self.journal.drop(key, sync=False)
        self._tightened_at.pop(key, None)
        return True

    def recover(self, restore: bool = False) -> list[AppliedAction]:
        """Replay the journal a previous run left (it crashed, or was killed):
        knobs of cgroups that vanished are dropped; the others are restored now
        (``restore=True``) or re-adopted, to be kept by the first :meth:`apply`
        that still wants them and restored by the first that does not."""
        if self.dry_run:
            return []
        with self._lock:
            return self._recover(restore)

    def _recover(self, restore: bool) -> list[AppliedAction]:
        dirty = False
        for key in sorted(self.entries, key=lambda k: -_phase(self.entries[k].knob)):
            entry = self.entries[key]
            try:
                cp = self.control_point(entry.cgroup, entry.knob)
                gone = not cp.present() or (entry.made and cp.read() != PRESENT)
                if entry.knob.startswith("rdt."):
                    # Every RDT knob lives in its group: gone with it.
                    gone = gone or not self.resctrl.has_group(entry.knob.split(" ", 1)[1])
            except (errors.NotFound, ValueError):
                gone = True
            if gone:
                log.info("journal: %s %s vanished; dropping it", entry.cgroup, entry.knob)
                self.journal.drop(key, sync=False)
                dirty = True
            elif restore:
                dirty |= self._restore(key)
            else:
                entry.value = cp.read()     # a crash may have come between write and journal update
        if dirty:
            self.journal.try_save()
        return self.current()

    def revert_all(self) -> list[str]:
        """Every knob back to its journaled original (SIGTERM/SIGINT path).
        Returns the keys that could not be restored (they stay journaled)."""
        with self._lock:
            return self._revert_all()

    def _revert_all(self) -> list[str]:
        # Two passes: on v1 a parent's original may have to come back before its child's.
        for _ in range(2):
            for key in sorted(self.entries, key=lambda k: -_phase(self.entries[k].knob)):
                self._restore(key)
        if not self.dry_run:
            if self.entries:
                self.journal.try_save()
            else:
                self.journal.clear()
        return list(self.entries)

    # --- reporting ----------------------------------------------------------------------------
    def current(self) -> list[AppliedAction]:
        with self._lock:
            return [AppliedAction(e.cgroup, e.knob, e.value, e.original, e.rule, e.since, self.dry_run)
                    for e in self.entries.values()]

    def refusals(self) -> dict[str, str]:
        """What could not be applied at the last ticks: key -> message naming the limit."""
        return dict(self._refused)

    def _refuse(self, key: str, err: Exception) -> None:
        msg = str(err)
        if self._refused.get(key) != msg:
            log.warning("action refused: %s", msg)
        self._refused[key] = msg

    def _warn_once(self, key, fmt, *args):
        if key not in self._warned:
            self._warned.add(key)
            log.warning(fmt, *args)


def raise_on_termination(signals=(signal.SIGTERM, signal.SIGINT)) -> None:
    """Turn SIGTERM/SIGINT into SystemExit in the main thread, so ``with
    Actuator(...)`` blocks and ``finally:`` clauses run and every knob is restored."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    for s in signals:
        signal.signal(s, handler)


__all__ = ["Actuator", "AppliedAction", "Protection", "Safety", "DEFAULT_STATE_DIR",
           "raise_on_termination", "own_cgroups", "node_cpus"]
