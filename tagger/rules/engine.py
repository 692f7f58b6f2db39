"""The tag engine: one Snapshot in, tag change events and desired actions out.

Per rule and cgroup a small state machine runs, vectorised over all rows:

    idle --when--> pending --held for `for`--> firing (tags set)
    firing --release--> kept --held for `keep_for`--> idle (tags cleared)
    kept --release stops--> firing

where *release* is ``not when`` (or, with ``clear_when``, ``clear_when and not
when``: hysteresis).  A static rule (no ``when``) fires wherever it matches.

State is kept in numpy arrays aligned with the Snapshot's rows and keyed by
cgroup path: when the cgroup table changes, arrays are carried over through a
gather index (new row -> old row), new cgroups start idle, and vanished
cgroups' tags are dropped with "removed" events.

Rules run in load order and see tags as they stand: a tag key already decided
this tick by every rule that sets it reads its new value; otherwise rules that
have run this tick win and last tick's value fills in.  When two rules set one
key on a cgroup, the later rule wins.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from tagger.snapshot import Snapshot
from tagger.tags import ADDED, CHANGED, REMOVED, TagEvent, TagStore, make_event

from .model import Rule, RuleSet
from .selectors import PathSelector, SelectorCache
from .spec import ActionSet

#: Tolerance on `for`/`keep_for` comparisons, as a fraction of the tick: ticks
#: arrive with jitter, and a tick 0.5 ms early must not cost a whole tick.  A
#: quarter tick absorbs jitter while a `for` between two ticks still waits for
#: the later one (Prometheus's `for` is strict; ours is strict up to jitter).
_TICK_SLACK = 0.25
_EPS = 1e-9
_NONE = -1        # tag code: no tag
_UNKNOWN = -2     # tag code of a value no rule sets: never equal to a row's code


@dataclass
class TickResult:
    events: list[TagEvent]
    actions: dict[str, list[ActionSet]]
    t: float = 0.0
    firing: dict[str, int] = field(default_factory=dict)     # rule -> cgroups it fires on


def _stateless(rule: Rule) -> bool:
    """No timers and no hysteresis: the rule fires exactly where its condition holds."""
    return rule.for_ == 0 and rule.keep_for == 0 and rule.clear_when is None


class _RuleState:
    """One rule's state machine over the current rows."""
    __slots__ = ("pending", "firing", "release", "busy")

    def __init__(self, n: int):
        self.pending = np.full(n, np.nan)       # when `when` started holding (NaN: not)
        self.firing = np.zeros(n, bool)
        self.release = np.full(n, np.nan)       # when the release condition started holding
        # pending-but-not-firing or releasing: rows whose timers run even if `when`
        # does not change; every other row is settled while `when` == `firing`.
        self.busy = np.zeros(n, bool)

    def gather(self, g: np.ndarray, fresh: np.ndarray):
        src = np.maximum(g, 0)
        n = len(g)
        self.pending = self.pending[src] if len(self.pending) else np.full(n, np.nan)
        self.firing = self.firing[src] if len(self.firing) else np.zeros(n, bool)
        self.release = self.release[src] if len(self.release) else np.full(n, np.nan)
        self.busy = self.busy[src] if len(self.busy) else np.zeros(n, bool)
        self.pending[fresh] = np.nan
        self.firing[fresh] = False
        self.release[fresh] = np.nan
        self.busy[fresh] = False


class EvalContext:
    """What compiled expressions read during one tick (see expr.Compiler)."""

    def __init__(self, engine: "Engine", snap: Snapshot):
        self.engine = engine
        self.snap = snap
        self.n = len(snap)
        self._cols: dict[str, np.ndarray] = {}
        self._tag_cache: dict[tuple[str, str], np.ndarray] = {}
        self._pre = None
        self._cul = None

    def column(self, name: str) -> np.ndarray:
        col = self._cols.get(name)
        if col is None:
            col = self.snap.columns.get(name)
            if col is None or len(col) != self.n:
                col = np.full(self.n, np.nan)        # not measured by this source: unknown
            self._cols[name] = col
        return col

    def node(self, name: str) -> float:
        v = self.snap.node.get(name)
        try:
            return float(v) if v is not None else np.nan
        except (TypeError, ValueError):
            return np.nan

    def tag_is(self, key: str, value: str) -> np.ndarray:
        hit = self._tag_cache.get((key, value))
        if hit is not None:
            return hit
        codes = self.engine._view.get(key)
        if codes is None:
            hit = np.zeros(self.n, bool)
        elif value == "*":
            hit = codes >= 0
        else:
            hit = codes == self.engine._code.get(value, _UNKNOWN)
        self._tag_cache[(key, value)] = hit
        return hit

    def tag_changed(self, key: str):
        for k in [k for k in self._tag_cache if k[0] == key]:
            del self._tag_cache[k]

    def _valid_culprits(self):
        """(victim, culprit, wait s/s) rows of runq.wait.by that name two
        different known rows; once a tick."""
        if self._cul is None:
            cul = self.snap.culprits
            n = self.n
            victim = np.asarray(cul["victim"], np.int64) if len(cul) else np.zeros(0, np.int64)
            culprit = np.asarray(cul["culprit"], np.int64) if len(cul) else victim
            wait = np.asarray(cul["wait"], np.float64) if len(cul) else np.zeros(0)
            ok = (victim >= 0) & (victim < n) & (culprit >= 0) & (culprit < n) & \
                 (victim != culprit) & (wait > 0)
            self._cul = (victim[ok], culprit[ok], wait[ok])
        return self._cul

    def _culprits(self, key, value):
        victim, culprit, wait = self._valid_culprits()
        if self.n == 0 or len(victim) == 0:
            return None
        ok = self.tag_is(key, value)[victim]
        if not ok.any():
            return None
        return victim[ok], culprit[ok], wait[ok]

    def culprit_of_tagged(self, key: str, value: str) -> np.ndarray:
        """Per row: run-queue wait (s/s) of rows tagged key=value while this
        row's tasks held the CPU: the foreign wait charged to it."""
        got = self._culprits(key, value)
        if got is None:
            return np.zeros(self.n)
        _, culprit, wait = got
        return np.bincount(culprit, weights=wait, minlength=self.n)[: self.n]

    def culprit_most(self, key: str, value: str) -> np.ndarray:
        """Per row: is it the culprit charged with the most wait of at least
        one row tagged key=value?"""
        return self._top(self._culprits(key, value))

    def _top(self, got) -> np.ndarray:
        """Rows that are the largest contributor of at least one victim."""
        out = np.zeros(self.n, bool)
        if got is None:
            return out
        victim, other, amount = got
        # Sort by victim, then amount; ties go to the lowest row (deterministic).
        order = np.lexsort((-other, amount, victim))
        v = victim[order]
        last = np.ones(len(v), bool)
        last[:-1] = v[:-1] != v[1:]
        out[other[order][last]] = True
        return out

    def _valid_preemptions(self):
        """(victim, preemptor, count) rows that name two different known rows; once a tick."""
        if self._pre is None:
            pre = self.snap.preemptions
            n = self.n
            victim = np.asarray(pre["victim"], np.int64) if len(pre) else np.zeros(0, np.int64)
            preemptor = np.asarray(pre["preemptor"], np.int64) if len(pre) else victim
            count = np.asarray(pre["count"], np.float64) if len(pre) else np.zeros(0)
            ok = (victim >= 0) & (victim < n) & (preemptor >= 0) & (preemptor < n) & \
                 (victim != preemptor) & (count > 0)       # own tasks are not a neighbour
            self._pre = (victim[ok], preemptor[ok], count[ok])
        return self._pre

    def _preemptions(self, key, value):
        victim, preemptor, count = self._valid_preemptions()
        if self.n == 0 or len(victim) == 0:
            return None
        ok = self.tag_is(key, value)[victim]
        if not ok.any():
            return None
        return victim[ok], preemptor[ok], count[ok]

    def preempts_tagged(self, key: str, value: str) -> np.ndarray:
        """Per row: preemptions per second it caused in rows tagged key=value."""
        got = self._preemptions(key, value)
        if got is None:
            return np.zeros(self.n)
        _, preemptor, count = got
        dt = self.snap.dt if self.snap.dt and self.snap.dt > 0 else 1.0
        return np.bincount(preemptor, weights=count, minlength=self.n)[: self.n] / dt

    def preempts_most(self, key: str, value: str) -> np.ndarray:
        """Per row: is it the top preemptor of at least one row tagged key=value?
        Deprecated for culprit_most (wait time, not preemption counts)."""
        return self._top(self._preemptions(key, value))


class Engine:
    """Evaluates a RuleSet tick by tick and keeps ``store`` up to date."""

    def __init__(self, ruleset: RuleSet, store: TagStore | None = None):
        self.store = store if store is not None else TagStore()
        self._lock = threading.RLock()
        self._paths: list[str] | None = None
        self._index: dict[str, int] = {}
        self._codes: dict[str, np.ndarray] = {}      # key -> value code per row (final, last tick)
        self._owner: dict[str, np.ndarray] = {}      # key -> index of the owning rule per row
        self._view: dict[str, np.ndarray] = {}
        self._values: list[str] = []
        self._code: dict[str, int] = {}
        self._states: dict[str, _RuleState] = {}
        self._install(ruleset, previous=None)

    # --- rules ----------------------------------------------------------------------
    @property
    def ruleset(self) -> RuleSet:
        return self._ruleset

    def replace_rules(self, ruleset: RuleSet) -> None:
        """Swap in a new RuleSet (reload).  Rules whose definition did not change
        keep their timers; tags of rules that went away clear on the next tick."""
        with self._lock:
            self._install(ruleset, previous=self._ruleset)

    def _install(self, ruleset: RuleSet, previous: RuleSet | None):
        rules = ruleset.active
        n = len(self._paths) if self._paths is not None else 0
        keep = {}
        if previous is not None:
            old = {r.name: r.fingerprint for r in previous.active}
            keep = {r.name: self._states[r.name] for r in rules
                    if old.get(r.name) == r.fingerprint and r.name in self._states}
        states = {r.name: keep.get(r.name) or _RuleState(n) for r in rules}
        selectors = SelectorCache()
        sel_keys = [selectors.add(PathSelector(r.match)) for r in rules]
        key_rules: dict[str, int] = {}
        for r in rules:
            for k, v in r.tags.items():
                key_rules[k] = key_rules.get(k, 0) + 1
                self._intern(v)
        for r in rules:
            for v in r.match.tags.values():
                self._intern(v)
        # Owner arrays hold rule positions: map old positions to new by name.
        if previous is not None and self._owner:
            old_names = [r.name for r in previous.active]
            pos = {r.name: i for i, r in enumerate(rules)}
            remap = np.array([pos.get(name, -1) for name in old_names] + [-1], np.int32)
            self._owner = {k: remap[np.where(o >= 0, o, len(old_names))]
                           for k, o in self._owner.items()}
        self._ruleset = ruleset
        self._rules: list[Rule] = rules
        self._states = states
        self._selectors = selectors
        self._sel_keys = sel_keys
        self._key_rules = key_rules
        self._selectors_stale = True

    def _intern(self, value: str) -> int:
        code = self._code.get(value)
        if code is None:
            code = self._code[value] = len(self._values)
            self._values.append(value)
        return code

    # --- the tick ---------------------------------------------------------------------
    def evaluate(self, snap: Snapshot) -> TickResult:
        """Run every active rule over ``snap``; apply the tag changes to the store
        and return them with the actions the firing rules ask for."""
        with self._lock, np.errstate(all="ignore"):
            return self._evaluate(snap)

    def _evaluate(self, snap: Snapshot) -> TickResult:
        t = float(snap.t)
        self._slack = max(_EPS, _TICK_SLACK * float(snap.dt or 0.0))
        paths = snap.cgroups.paths
        n = len(paths)
        removed: list[TagEvent] = []
        if self._paths is None:
            removed = self._first_tick(paths, snap.cgroups.names, t)
        elif paths is not self._paths and paths != self._paths:
            removed = self._retable(paths, snap.cgroups.names, t)
        elif self._selectors_stale:
            self._selectors.retable(paths, snap.cgroups.names, None)
            self._selectors_stale = False
        for k in self._key_rules:
            if k not in self._codes:
                self._codes[k] = np.full(n, _NONE, np.int32)
                self._owner[k] = np.full(n, -1, np.int32)

        ctx = EvalContext(self, snap)
        self._view = dict(self._codes)
        new_codes = {k: np.full(n, _NONE, np.int32) for k in self._key_rules}
        new_owner = {k: np.full(n, -1, np.int32) for k in self._key_rules}
        remaining = dict(self._key_rules)
        actions: dict[str, list[ActionSet]] = {}
        firing_count: dict[str, int] = {}

        for pos, rule in enumerate(self._rules):
            mask = self._selectors.mask(self._sel_keys[pos])
            for k, v in rule.match.tags.items():
                mask = mask & ctx.tag_is(k, v)
            if rule.when is not None:
                w = rule.when.fn(ctx) if rule.when.fn is not None else rule.when.const
                mask = mask & np.broadcast_to(np.asarray(w, bool), (n,))
            firing = self._step(rule, self._states[rule.name], mask, ctx, t)
            rows = np.flatnonzero(firing)
            firing_count[rule.name] = len(rows)
            for k, v in rule.tags.items():
                new_codes[k][rows] = self._code[v]
                new_owner[k][rows] = pos
                remaining[k] -= 1
                nc = new_codes[k]
                self._view[k] = nc if remaining[k] == 0 else np.where(nc >= 0, nc, self._codes[k])
                ctx.tag_changed(k)
            if rule.actions is not None and len(rows):
                for r in rows.tolist():
                    actions.setdefault(paths[r], []).append(rule.actions)

        events = removed + self._diff(paths, new_codes, new_owner, t)
        self.store.apply(events)
        # Keys no rule sets any more were cleared by the diff; forget them.
        self._codes, self._owner = new_codes, new_owner
        self._view = {}
        return TickResult(events, actions, t, firing_count)

    def _step(self, rule: Rule, st: _RuleState, w: np.ndarray, ctx, t: float) -> np.ndarray:
        """Advance ``rule``'s state machine; returns the rows where it fires."""
        if _stateless(rule):
            return w
        idx = np.flatnonzero((w != st.firing) | st.busy)
        if idx.size == 0:
            return st.firing
        wi = w[idx]
        ps, f, rs = st.pending[idx], st.firing[idx], st.release[idx]
        ps = np.where(wi & np.isnan(ps), t, ps)          # start pending
        ps = np.where(~wi & ~f, np.nan, ps)              # `when` stopped before `for` elapsed
        f = f | (wi & (t - ps >= rule.for_ - self._slack))
        release = ~wi
        if rule.clear_when is not None and f.any():
            c = rule.clear_when.fn(ctx) if rule.clear_when.fn is not None else rule.clear_when.const
            release = release & np.broadcast_to(np.asarray(c, bool), (ctx.n,))[idx]
        elif rule.clear_when is not None:
            release = np.zeros_like(wi)
        rel = f & release
        rs = np.where(rel, np.where(np.isnan(rs), t, rs), np.nan)
        done = rel & (t - rs >= rule.keep_for - self._slack)
        f = f & ~done
        ps = np.where(done, np.nan, ps)
        rs = np.where(done, np.nan, rs)
        st.busy[idx] = (~np.isnan(ps) & ~f) | ~np.isnan(rs)
        st.pending[idx], st.firing[idx], st.release[idx] = ps, f, rs
        return st.firing

    def _diff(self, paths, new_codes, new_owner, t) -> list[TagEvent]:
        """Events for every row whose tag values changed, ordered by row, then key.

        Changed rows are found and gathered with numpy; Python only touches the
        rows that changed, once each."""
        n = len(paths)
        none = np.full(n, _NONE, np.int32)
        keys = sorted(set(new_codes) | set(self._codes))
        parts = []
        for ki, k in enumerate(keys):
            old = self._codes.get(k, none)
            new = new_codes.get(k, none)
            old_owner = self._owner.get(k, none)
            owner = new_owner.get(k, none)
            changed = np.flatnonzero(old != new)
            if changed.size:
                parts.append((changed, np.full(changed.size, ki), old[changed], new[changed],
                              old_owner[changed], owner[changed]))
            other = old_owner != owner
            if not other.any():
                continue
            moved = np.flatnonzero(other & (old == new) & (new >= 0))
            for r in moved.tolist():         # same value, now owned by another rule: no event
                self.store.retag(paths[r], k, self._rules[owner[r]].name)
        if not parts:
            return []
        rows, kis, olds, news, old_owners, owners = (np.concatenate(c) for c in zip(*parts))
        order = np.lexsort((kis, rows))
        values, rules = self._values, self._rules
        events = []
        append = events.append
        for r, ki, o, v, oo, no in zip(rows[order].tolist(), kis[order].tolist(),
                                       olds[order].tolist(), news[order].tolist(),
                                       old_owners[order].tolist(), owners[order].tolist()):
            if v == _NONE:
                if oo >= 0:
                    rule = rules[oo].name
                else:                        # owner unknown to this rule set (reload): ask the store
                    prev = self.store.tags_of(paths[r]).get(keys[ki])
                    rule = prev.rule if prev else ""
                append(make_event(t, paths[r], keys[ki], None, values[o], rule, REMOVED))
            elif o == _NONE:
                append(make_event(t, paths[r], keys[ki], values[v], None, rules[no].name, ADDED))
            else:
                append(make_event(t, paths[r], keys[ki], values[v], values[o], rules[no].name,
                                  CHANGED))
        return events

    # --- the cgroup table -----------------------------------------------------------------
    def _first_tick(self, paths, names, t) -> list[TagEvent]:
        """Adopt what the store already holds (an engine made over a live store)."""
        self._set_paths(paths)
        n = len(paths)
        for st in self._states.values():
            st.gather(np.full(n, -1, np.int64), np.arange(n))
        removed = []
        pos = {r.name: i for i, r in enumerate(self._rules)}
        for path in sorted(self.store.paths()):
            row = self._index.get(path)
            if row is None:
                removed.extend(self._drop_events(path, t))
                continue
            for k, tag in self.store.tags_of(path).items():
                if k in self._key_rules:
                    codes = self._codes.setdefault(k, np.full(n, _NONE, np.int32))
                    owner = self._owner.setdefault(k, np.full(n, -1, np.int32))
                    codes[row] = self._intern(tag.value)
                    owner[row] = pos.get(tag.rule, -1)
                    rule = self._rules[owner[row]] if owner[row] >= 0 else None
                    if rule is not None and rule.tags.get(k) == tag.value:
                        # The rule was firing here before this engine existed: keep it
                        # firing, so keep_for/clear_when decide when the tag goes.
                        st = self._states[rule.name]
                        st.firing[row] = True
                        st.pending[row] = tag.since
        self._selectors.retable(paths, names, None)
        self._selectors_stale = False
        return removed

    def _retable(self, paths, names, t) -> list[TagEvent]:
        old_paths = self._paths
        n = len(paths)
        index = self._index
        gather = np.fromiter((index.get(p, -1) for p in paths), np.int64, count=n)
        fresh = np.flatnonzero(gather < 0)
        kept = np.zeros(len(old_paths), bool)
        kept[gather[gather >= 0]] = True
        removed = []
        for r in np.flatnonzero(~kept).tolist():
            removed.extend(self._drop_events(old_paths[r], t))
        for rule in self._rules:
            if not _stateless(rule):         # a stateless rule's firing is recomputed each tick
                self._states[rule.name].gather(gather, fresh)
        src = np.maximum(gather, 0)
        for k in list(self._codes):
            codes = self._codes[k][src] if len(old_paths) else np.full(n, _NONE, np.int32)
            owner = self._owner[k][src] if len(old_paths) else np.full(n, -1, np.int32)
            codes[fresh] = _NONE
            owner[fresh] = -1
            self._codes[k], self._owner[k] = codes, owner
        self._set_paths(paths)
        self._selectors.retable(paths, names, None if self._selectors_stale
                                else gather)
        self._selectors_stale = False
        return removed

    def _drop_events(self, path, t) -> list[TagEvent]:
        tags = self.store.tags_of(path)
        return [make_event(t, path, k, None, tags[k].value, tags[k].rule, REMOVED)
                for k in sorted(tags)]

    def _set_paths(self, paths):
        self._paths = paths
        self._index = {p: i for i, p in enumerate(paths)}


def context_for(ruleset: RuleSet, snap: Snapshot, tags: dict[str, dict[str, str]]) -> EvalContext:
    """An EvalContext over ``snap`` with the tags given ({path: {key: value}}),
    as the rules saw them: to evaluate expressions after the fact (``tagger
    explain``) without running the rules' timers."""
    engine = Engine(ruleset)
    n = len(snap)
    view: dict[str, np.ndarray] = {}
    for row, path in enumerate(snap.cgroups.paths):
        for key, value in (tags.get(path) or {}).items():
            codes = view.setdefault(key, np.full(n, _NONE, np.int32))
            codes[row] = engine._intern(value)
    engine._view = view
    return EvalContext(engine, snap)
