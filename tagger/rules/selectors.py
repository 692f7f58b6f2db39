"""Cgroup path globs and the path/name part of a ``match:`` selector.

Globs are over cgroup paths ("/" is the root): ``*`` and ``?`` stay inside one
path segment, ``**`` (a whole segment) spans any number of segments, including
none, so ``/kubepods/**`` matches ``/kubepods`` and everything below it, and
``/**`` matches every cgroup.  Display-name globs (``names:``) are plain
fnmatch patterns.  Tag conditions are checked by the engine, which owns tags.
"""

from __future__ import annotations

import fnmatch
import re

import numpy as np

from tagger.policies.spec import Selector


class GlobError(ValueError):
    pass


def glob_regex(glob: str) -> str:
    """Regex source (anchored by the caller) for one cgroup path glob."""
    if not isinstance(glob, str) or not glob:
        raise GlobError("a cgroup glob must be a non-empty string")
    if not glob.startswith("/"):
        raise GlobError(f'cgroup glob {glob!r} must start with "/" (paths are from the hierarchy root)')
    if glob == "/":
        return ""
    parts = glob[1:].split("/")
    out = []
    for part in parts:
        if part == "**":
            out.append("(?:/[^/]+)*")
            continue
        if "**" in part:
            raise GlobError(f'"**" must be a whole path segment in {glob!r}')
        if part == "":
            raise GlobError(f"empty path segment in {glob!r}")
        seg = "".join("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch) for ch in part)
        out.append("/" + seg)
    return "".join(out)


def literal_prefix(glob: str) -> str:
    """The part of a glob before its first wildcard: two globs whose prefixes are
    not prefixes of one another match disjoint sets (used for conflict warnings)."""
    cut = min((i for i, ch in enumerate(glob) if ch in "*?"), default=len(glob))
    return glob[:cut]


def _normal(path: str) -> str:
    # The root is "/" in tables but "" to the regexes, so "/**" can match it.
    return "" if path == "/" else path


class PathSelector:
    """The path/name part of a Selector, compiled: ``mask(paths, names)`` -> bool array."""

    def __init__(self, sel: Selector):
        self.selector = sel
        self.include = re.compile("|".join(f"(?:{glob_regex(g)})" for g in sel.cgroup) + r"\Z") \
            if sel.cgroup else None
        self.exclude = re.compile("|".join(f"(?:{glob_regex(g)})" for g in sel.exclude) + r"\Z") \
            if sel.exclude else None
        self.names = re.compile("|".join(f"(?:{fnmatch.translate(n)})" for n in sel.names)) \
            if sel.names else None
        self.matches_all = self.include is None and self.exclude is None and self.names is None

    @property
    def key(self) -> tuple:
        s = self.selector
        return (s.cgroup, s.exclude, s.names)

    def match_one(self, path: str, name: str) -> bool:
        p = _normal(path)
        if self.include is not None and not self.include.match(p):
            return False
        if self.exclude is not None and self.exclude.match(p):
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
