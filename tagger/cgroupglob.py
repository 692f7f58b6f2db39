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

Matching never backtracks over a choice it made.  Within a segment the pieces
between ``*``s are found leftmost-first, and across segments the runs between
``**``s likewise: the leftmost occurrence is never worse than a later one
(whatever follows can only start later), so one forward pass decides.  The glob
becomes one regex in which every such choice is an atomic group and every
whole-segment skip is possessive, so ``re`` tries each (piece, start) pair once:
a match costs O(len(glob) x len(path)) in C, linear in the path for a fixed glob
(benchmarks/bench_glob.py).  The plain translation (``[^/]*`` per ``*``) is a
backtracking regex whose cost grows as len(path) ** stars: issue 13's 50 s tick.
"""

from __future__ import annotations

import functools
import re


class GlobError(ValueError):
    """A malformed cgroup glob; the message names the glob and the mistake."""


#: A segment ends at the next "/" or at the end of the path.
_END = r"(?=/|\Z)"
#: Any one whole segment.  Possessive: it always runs to the next "/", so a loop
#: over it has one way to cover each number of segments.
_ANY_SEGMENT = "/[^/]*+"


def _piece(text: str) -> str:
    # "?" is one character of a segment; everything else is literal ("[" too).
    return "".join("[^/]" if ch == "?" else re.escape(ch) for ch in text)


def _segment(part: str) -> str:
    """Regex for one glob segment (no "**"): every choice inside is committed."""
    pieces = part.split("*")
    if len(pieces) == 1:
        return "/" + _piece(part) + _END
    out = ["/", _piece(pieces[0])]
    for p in pieces[1:-1]:
        # Leftmost occurrence, committed: whatever follows can only start later.
        out.append(f"(?>[^/]*?{_piece(p)})")
    last = pieces[-1]
    if last:
        # The rest of the segment, then a look back for the last piece (fixed width),
        # which must not reach into what the pieces before it took.
        out.append(f"(?=[^/]{{{len(last)}}})[^/]*+(?<={_piece(last)})")
    else:
        out.append("[^/]*+")
    return "(?>" + "".join(out) + ")"


def _translate(runs: list[list[str]]) -> str:
    """``runs``: segment regexes, split at each ``**``."""
    first = "".join(runs[0])
    if len(runs) == 1:
        return first + r"\Z"
    # Between "**"s: the leftmost place the run matches, committed (atomic group).
    middle = "".join(f"(?>(?:{_ANY_SEGMENT})*?{''.join(run)})" for run in runs[1:-1])
    return first + middle + f"(?:{_ANY_SEGMENT})*?" + "".join(runs[-1]) + r"\Z"


class CgroupGlob:
    """One compiled cgroup path glob."""

    __slots__ = ("text", "regex", "_literal", "_subtree")

    def __init__(self, text: str):
        if not isinstance(text, str) or not text:
            raise GlobError("a cgroup glob must be a non-empty string")
        if not text.startswith("/"):
            raise GlobError(f'cgroup glob {text!r} must start with "/" (paths are from the hierarchy root)')
        self.text = text
        runs: list[list[str]] = [[]]
        for part in [] if text == "/" else text[1:].split("/"):
            if part == "**":
                if runs[-1] or len(runs) == 1:          # "/**/**" is "/**"
                    runs.append([])
                continue
            if "**" in part:
                raise GlobError(f'"**" must be a whole path segment in {text!r}')
            if part == "":
                raise GlobError(f"empty path segment in {text!r}")
            runs[-1].append(_segment(part))
        self.regex = re.compile(_translate(runs))
        # A glob without wildcards names one cgroup ("exclude: [/]", a protected unit).
        self._literal = None if any(ch in text for ch in "*?") else ("" if text == "/" else text)
        self._subtree = None

    def match(self, path: str) -> bool:
        """True if ``path`` (normalized, from the root) is one the glob names."""
        # The root is "" to the regex, so "/**" (zero segments) matches it.
        if path == "/":
            path = ""
        if self._literal is not None:
            return path == self._literal
        return self.regex.match(path) is not None

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
        self.globs = tuple(g if isinstance(g, CgroupGlob) else compile_glob(g) for g in globs)

    def match(self, path: str) -> bool:
        return any(g.match(path) for g in self.globs)

    def match_subtree(self, path: str) -> bool:
        return any(g.match_subtree(path) for g in self.globs)

    def __bool__(self):
        return bool(self.globs)

    def __eq__(self, other):     # equal sets share one encoded frame (the socket API)
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
