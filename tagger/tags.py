"""The tag store: the current tags on each cgroup and a bounded history of changes.

Tags are ``key=value`` labels on cgroups (by path).  Each current tag remembers
the rule that set it and ``since`` (the tick time it took its present value).
Every change is a :class:`TagEvent`; the store keeps the newest ``history`` of
them for publishers and ``tagger tags``.

The rules engine (:mod:`tagger.rules`) is the writer; publishers, actions,
policies and the live view read.  A lock makes reads from other threads (API
socket, Prometheus scrape) see whole ticks' worth of changes or none.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

ADDED, CHANGED, REMOVED = "added", "changed", "removed"


@dataclass(frozen=True)
class Tag:
    key: str
    value: str
    rule: str          # the rule that set it ("" when set by hand)
    since: float       # tick time (monotonic seconds) the tag took this value


@dataclass(frozen=True)
class TagEvent:
    t: float
    cgroup: str        # path, "/" is the root
    key: str
    value: str | None  # new value; None when removed
    old: str | None    # previous value; None when added
    rule: str          # rule that set (or last set, for "removed") the tag
    kind: str          # "added" | "changed" | "removed"

    def as_dict(self) -> dict:
        return {"t": self.t, "cgroup": self.cgroup, "key": self.key, "value": self.value,
                "old": self.old, "rule": self.rule, "kind": self.kind}


_new = object.__new__


def make_event(t, cgroup, key, value, old, rule, kind) -> TagEvent:
    """``TagEvent(...)`` without the frozen-dataclass ``__setattr__`` per field:
    a third of the cost, for the engine's thousands of events on busy ticks.
    The result is an ordinary, equal, still-frozen TagEvent."""
    ev = _new(TagEvent)
    d = ev.__dict__
    d["t"], d["cgroup"], d["key"], d["value"], d["old"], d["rule"], d["kind"] = \
        t, cgroup, key, value, old, rule, kind
    return ev


def _make_tag(key, value, rule, since) -> Tag:
    tag = _new(Tag)
    d = tag.__dict__
    d["key"], d["value"], d["rule"], d["since"] = key, value, rule, since
    return tag


class TagStore:
    """Current tags per cgroup plus the newest ``history`` change events."""

    def __init__(self, history: int = 10000):
        if history < 0:
            raise ValueError("history must be >= 0")
        self._tags: dict[str, dict[str, Tag]] = {}
        self._history: deque[TagEvent] = deque(maxlen=history)
        self._lock = threading.Lock()

    # --- reads ------------------------------------------------------------
    def current(self) -> dict[str, dict[str, Tag]]:
        """A copy: path -> key -> Tag, for every cgroup with at least one tag."""
        with self._lock:
            return {path: dict(tags) for path, tags in self._tags.items()}

    def tags_of(self, path: str) -> dict[str, Tag]:
        """A copy of ``path``'s tags (empty when it has none)."""
        with self._lock:
            return dict(self._tags.get(path, {}))

    def paths(self) -> list[str]:
        with self._lock:
            return list(self._tags)

    def history(self, since: float | None = None, limit: int | None = None,
                cgroup: Callable[[str], bool] | None = None) -> list[TagEvent]:
        """Events oldest first; only those with ``t > since`` when given, only
        those whose cgroup path ``cgroup(path)`` accepts when given (e.g. a
        cgroup glob's match), and of those only the newest ``limit``."""
        with self._lock:
            events = list(self._history)
        if since is not None:
            events = [e for e in events if e.t > since]
        if cgroup is not None:
            events = [e for e in events if cgroup(e.cgroup)]
        if limit is not None:
            events = events[-limit:] if limit > 0 else []
        return events

    # --- writes -------------------------------------------------------------
    def apply(self, events: Iterable[TagEvent]) -> None:
        """Apply change events in order (the engine computed them) and record them."""
        events = list(events)
        with self._lock:
            tags_by_path = self._tags
            for ev in events:     # _apply_one, inlined: thousands of events a tick on big hosts
                if ev.kind == REMOVED:
                    tags = tags_by_path.get(ev.cgroup)
                    if tags is not None:
                        tags.pop(ev.key, None)
                        if not tags:
                            del tags_by_path[ev.cgroup]
                else:
                    tags = tags_by_path.get(ev.cgroup)
                    if tags is None:
                        tags = tags_by_path[ev.cgroup] = {}
                    tags[ev.key] = _make_tag(ev.key, ev.value, ev.rule, ev.t)
            self._history.extend(events)

    def set(self, path: str, key: str, value: str, rule: str, t: float) -> TagEvent | None:
        """Set one tag; returns the event, or None when nothing changed."""
        with self._lock:
            old = self._tags.get(path, {}).get(key)
            if old is not None and old.value == value:
                if old.rule != rule:    # same value, new owner: no event, keep `since`
                    self._tags[path][key] = Tag(key, value, rule, old.since)
                return None
            ev = TagEvent(t, path, key, value, old.value if old else None, rule,
                          CHANGED if old else ADDED)
            self._apply_one(ev)
            return ev

    def remove(self, path: str, key: str, t: float) -> TagEvent | None:
        with self._lock:
            old = self._tags.get(path, {}).get(key)
            if old is None:
                return None
            ev = TagEvent(t, path, key, None, old.value, old.rule, REMOVED)
            self._apply_one(ev)
            return ev

    def drop(self, path: str, t: float) -> list[TagEvent]:
        """Remove every tag of ``path`` (its cgroup vanished); one event per tag, by key."""
        with self._lock:
            tags = self._tags.get(path, {})
            events = [TagEvent(t, path, k, None, tags[k].value, tags[k].rule, REMOVED)
                      for k in sorted(tags)]
            for ev in events:
                self._apply_one(ev)
            return events

    def retag(self, path: str, key: str, rule: str) -> None:
        """Record a new owning rule for an unchanged value (no event)."""
        with self._lock:
            old = self._tags.get(path, {}).get(key)
            if old is not None and old.rule != rule:
                self._tags[path][key] = Tag(key, old.value, rule, old.since)

    def _apply_one(self, ev: TagEvent) -> None:
        if ev.kind == REMOVED:
            tags = self._tags.get(ev.cgroup)
            if tags is not None:
                tags.pop(ev.key, None)
                if not tags:
                    del self._tags[ev.cgroup]
        else:
            self._tags.setdefault(ev.cgroup, {})[ev.key] = Tag(ev.key, ev.value, ev.rule, ev.t)
        self._history.append(ev)
