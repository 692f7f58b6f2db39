"""Cgroup path globs: the one dialect rules, the socket API, ``--export``, the
actuator's protected list and the fallback collector all use (docs/rules.md).

    g = CgroupGlob("/kubepods/**/*nginx*")   # GlobError if malformed
    g.match("/kubepods/pod1/c-nginx-1")      # True
    g.match_subtree("/kubepods/pod1/c-nginx-1/sub")   # it or an ancestor matches
    GlobSet(["/a/**", "/b/*"]).match(path)   # any of them

Paths are from the hierarchy root: ``/`` is the root (``""`` is read as the root
too, as node-wide records carry it).  ``*`` is any run of characters within one
path segment, ``?`` one character within a segment, ``**`` (a whole segment) any
number of segments, none included.  Every other character, ``[`` included, is
literal.

Matching never backtracks: within a segment the pieces between ``*``s are found
leftmost-first, and across segments the runs between ``**``s likewise.  Taking
the leftmost occurrence is never worse than a later one (whatever follows can
only start later), so one forward pass decides.  Each (glob segment, path
segment) pair is tried at most once, so a match costs at most
O(len(glob) x len(path)) and a fixed glob is linear in the path
(benchmarks/bench_glob.py: 24 ``*a`` pieces against a 64-character name).
A backtracking regex over the same glob is O(len(path) ** stars).
"""

from __future__ import annotations

import functools
import re


class GlobError(ValueError):
    """A malformed cgroup glob; the message names the glob and the mistake."""


def _piece_matcher(piece: str):
    """(match_at, find_from) for a star-free piece, which has a fixed length."""
    if "?" not in piece:
        return (lambda s, i: s.startswith(piece, i)), (lambda s, i: s.find(piece, i))
    # "?" is any one character; a segment holds no "/", so "." (with DOTALL) will do.
    # No quantifier: re's cost is at most len(piece) per start position.
    rx = re.compile("".join("." if ch == "?" else re.escape(ch) for ch in piece), re.DOTALL)

    def find(s, i):
        m = rx.search(s, i)
        return -1 if m is None else m.start()
    return (lambda s, i: rx.match(s, i) is not None), find


class _Segment:
    """One glob segment without ``**``: literal text, ``*`` and ``?``."""

    __slots__ = ("text", "literal", "lens", "at", "find")

    def __init__(self, text: str):
        self.text = text
        self.literal = "*" not in text and "?" not in text
        pieces = text.split("*")
        self.lens = [len(p) for p in pieces]
        ms = [_piece_matcher(p) for p in pieces]
        self.at = [m[0] for m in ms]
        self.find = [m[1] for m in ms]

    def match(self, s: str) -> bool:
        if self.literal:
            return s == self.text
        lens, at = self.lens, self.at
        last = len(lens) - 1
        if last == 0:                                   # "?" but no "*": length is fixed
            return len(s) == lens[0] and at[0](s, 0)
        if not at[0](s, 0):                             # before the first "*": anchored
            return False
        i = lens[0]
        for k in range(1, last):                        # between "*"s: leftmost wins
            if lens[k]:
                j = self.find[k](s, i)
                if j < 0:
                    return False
                i = j + lens[k]
        tail = len(s) - lens[last]                      # after the last "*": anchored at the end
        return tail >= i and at[last](s, tail)


_ANY = object()     # a "**" segment


def _runs_match(runs, segs) -> bool:
    """``runs``: lists of _Segment, one more than the ``**``s between them."""
    n = len(segs)
    first, last = runs[0], runs[-1]
    if len(runs) == 1:
        return n == len(first) and all(g.match(s) for g, s in zip(first, segs))
    if len(first) + len(last) > n:
        return False
    if not all(g.match(s) for g, s in zip(first, segs)):
        return False
    i = len(first)
    tail = n - len(last)
    for run in runs[1:-1]:                              # leftmost occurrence of each run
        k = len(run)
        if not k:
            continue
        start = i
        while start + k <= tail:
            if all(g.match(segs[start + j]) for j, g in enumerate(run)):
                break
            start += 1
        else:
            return False
        i = start + k
    return all(g.match(s) for g, s in zip(last, segs[tail:]))


def _split(path: str) -> list[str]:
    return [] if path in ("/", "") else path[1:].split("/")


class CgroupGlob:
    """One compiled cgroup path glob."""

    __slots__ = ("text", "_runs", "_subtree", "_literal", "_prefix")

    def __init__(self, text: str):
        if not isinstance(text, str) or not text:
            raise GlobError("a cgroup glob must be a non-empty string")
        if not text.startswith("/"):
            raise GlobError(f'cgroup glob {text!r} must start with "/" (paths are from the hierarchy root)')
        self.text = text
        parts = [] if text == "/" else text[1:].split("/")
        runs: list[list[_Segment]] = [[]]
        for part in parts:
            if part == "**":
                if runs[-1] or len(runs) == 1:          # "/**/**" is "/**"
                    runs.append([])
                continue
            if "**" in part:
                raise GlobError(f'"**" must be a whole path segment in {text!r}')
            if part == "":
                raise GlobError(f"empty path segment in {text!r}")
            runs[-1].append(_Segment(part))
        self._runs = runs
        self._subtree = None
        # The common shapes skip the segment walk: "/a/b" and "/a/b/**".
        literal = not any(ch in text for ch in "*?")
        self._literal = text if literal else None
        self._prefix = None
        if (len(runs) == 2 and not runs[1] and all(g.literal for g in runs[0])):
            self._prefix = "/" + "/".join(g.text for g in runs[0]) if runs[0] else ""

    def match(self, path: str) -> bool:
        """True if ``path`` (normalized, from the root) is one the glob names."""
        if self._literal is not None:
            return path == self._literal or (self._literal == "/" and path == "")
        if self._prefix is not None:
            p = self._prefix
            return not p or path == p or path.startswith(p + "/")
        return _runs_match(self._runs, _split(path))

    def match_subtree(self, path: str) -> bool:
        """True if ``path`` or one of its ancestors matches: the glob with "/**" added."""
        if self._subtree is None:
            self._subtree = compile_glob("/**" if self.text == "/" else self.text + "/**")
        return self._subtree.match(path)

    def __repr__(self):
        return f"CgroupGlob({self.text!r})"

    def __eq__(self, other):
        return isinstance(other, CgroupGlob) and other.text == self.text

    def __hash__(self):
        return hash(self.text)


def compile_glob(text: str) -> CgroupGlob:
    """A compiled glob, shared by every caller that names the same text."""
    if not isinstance(text, str):
        raise GlobError("a cgroup glob must be a non-empty string")
    return _compiled(text)


@functools.lru_cache(maxsize=1024)
def _compiled(text: str) -> CgroupGlob:
    return CgroupGlob(text)


class GlobSet:
    """Any of several globs; an empty set matches nothing."""

    __slots__ = ("globs",)

    def __init__(self, globs):
        if isinstance(globs, str):
            globs = (globs,)
        self.globs = tuple(compile_glob(g) if isinstance(g, str) else g for g in globs)

    def match(self, path: str) -> bool:
        return any(g.match(path) for g in self.globs)

    def match_subtree(self, path: str) -> bool:
        return any(g.match_subtree(path) for g in self.globs)

    def __bool__(self):
        return bool(self.globs)

    def __eq__(self, other):     # equal sets share one encoded frame (tagger.api)
        return isinstance(other, GlobSet) and other.globs == self.globs

    def __hash__(self):
        return hash(self.globs)

    def __repr__(self):
        return f"GlobSet({[g.text for g in self.globs]!r})"


def literal_prefix(glob: str) -> str:
    """The part of a glob before its first wildcard: two globs whose prefixes are
    not prefixes of one another match disjoint sets (used for conflict warnings)."""
    cut = min((i for i, ch in enumerate(glob) if ch in "*?"), default=len(glob))
    return glob[:cut]


__all__ = ["CgroupGlob", "GlobError", "GlobSet", "compile_glob", "literal_prefix"]
