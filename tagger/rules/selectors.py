"""Cgroup path globs and the path/name part of a ``match:`` selector.

Path globs are the one cgroup glob of :mod:`tagger.cgroupglob` (``*`` and ``?``
within a segment, ``**`` any depth; ``/kubepods/**`` is ``/kubepods`` and
everything below it).  Display-name globs (``names:``) are plain fnmatch
patterns.  Tag conditions are checked by the engine, which owns tags.
"""

from __future__ import annotations

import fnmatch
import re

import numpy as np

from tagger.cgroupglob import GlobSet

from .spec import Selector


class PathSelector:
    """The path/name part of a Selector, compiled: ``mask(paths, names)`` -> bool array."""

    def __init__(self, sel: Selector):
        self.selector = sel
        self.include = GlobSet(sel.cgroup) if sel.cgroup else None
        self.exclude = GlobSet(sel.exclude) if sel.exclude else None
        self.names = re.compile("|".join(f"(?:{fnmatch.translate(n)})" for n in sel.names)) \
            if sel.names else None
        self.matches_all = self.include is None and self.exclude is None and self.names is None

    @property
    def key(self) -> tuple:
        s = self.selector
        return (s.cgroup, s.exclude, s.names)

    def match_one(self, path: str, name: str) -> bool:
        if self.include is not None and not self.include.match(path):
            return False
        if self.exclude is not None and self.exclude.match(path):
            return False
        if self.names is not None and not self.names.match(name):
            return False
        return True

    def mask(self, paths, names, rows=None) -> np.ndarray:
        """Bool mask over all rows, or over ``rows`` (indices) only."""
        idx = range(len(paths)) if rows is None else rows
        return np.fromiter((self.match_one(paths[i], names[i]) for i in idx), bool,
                           count=len(idx))


class SelectorCache:
    """Path/name masks per distinct selector, kept across ticks.

    When the cgroup table changes, rows that survive keep their mask bits (the
    engine passes ``gather``: for each new row its old row, or -1) and only new
    rows are matched, so cgroup churn costs per new cgroup, not per cgroup.
    """

    def __init__(self):
        self._selectors: dict[tuple, PathSelector] = {}
        self._masks: dict[tuple, np.ndarray] = {}

    def add(self, sel: PathSelector) -> tuple:
        self._selectors.setdefault(sel.key, sel)
        return sel.key

    def retable(self, paths, names, gather: np.ndarray | None) -> None:
        """The table changed: carry masks over through ``gather`` and match new rows."""
        n = len(paths)
        fresh = None if gather is None else np.flatnonzero(gather < 0)
        for key, sel in self._selectors.items():
            if sel.matches_all:
                self._masks[key] = np.ones(n, bool)
                continue
            old = self._masks.get(key)
            if old is None or gather is None:
                self._masks[key] = sel.mask(paths, names)
                continue
            m = old[np.maximum(gather, 0)] if len(old) else np.zeros(n, bool)
            if len(fresh):
                m[fresh] = sel.mask(paths, names, fresh)
            self._masks[key] = m

    def mask(self, key: tuple) -> np.ndarray:
        return self._masks[key]
