"""Typed reads out of YAML nodes, every problem kept with its line and column.

The rules loader composes each file into nodes (``yaml.compose``) rather than
Python objects, so a value's position survives to the message.  A
:class:`Reader` reads one kind of value out of a node - a string, a number with
units, a duration, a mapping with a fixed set of keys - or records why it
cannot in the one :class:`Problems` collector of the load and raises
:class:`Invalid`, which the section reading the item catches to go on with the
next one.  A reader is bound to one file and one subject (``rule "x"``,
``macro "y"``): the context every message carries is passed in, never
recovered from an earlier message.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, replace
from typing import NoReturn

import yaml

from tagger.units import parse_duration, parse_quantity

from .expr import ExprError
from .model import Problem

STR = "tag:yaml.org,2002:str"
NULL = "tag:yaml.org,2002:null"
BOOL = "tag:yaml.org,2002:bool"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"


class Invalid(Exception):
    """A problem was recorded; abandon the item being read."""


def is_null(node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL


def is_str(node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == STR


def position(path: str, node) -> str:
    """``path:line:col`` of a node (1-based), as messages and Rule.source give it."""
    m = node.start_mark
    return f"{path}:{m.line + 1}:{m.column + 1}"


class Problems:
    """Every error and warning of one load, in the order found."""

    def __init__(self):
        self.found: list[Problem] = []

    def add(self, path: str, node, message: str, subject: str = "", severity: str = "error",
            offset: int | None = None) -> None:
        """A finding at ``node`` (its column moved right by ``offset``), or about
        the whole file or directory at ``path`` when ``node`` is None."""
        line, col = 0, 0
        if node is not None:
            line, col = node.start_mark.line + 1, node.start_mark.column + 1
            if offset is not None:
                col += offset
        self.found.append(Problem(path, line, col, message, subject, severity))

    def add_problem(self, problem: Problem) -> None:
        self.found.append(problem)

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.found)


@dataclass(frozen=True)
class Source:
    """One rule file: its path (in messages) and text (for expression columns)."""
    path: str
    text: str


@dataclass(frozen=True)
class Reader:
    """Reads typed values out of the nodes of ``source`` on behalf of ``subject``
    (``rule "x"``, ``policy #2``, or "" for the file itself)."""
    problems: Problems
    source: Source
    subject: str = ""

    def about(self, subject: str) -> "Reader":
        return replace(self, subject=subject)

    # --- findings --------------------------------------------------------------
    def error(self, node, message: str, offset: int | None = None, severity: str = "error") -> None:
        self.problems.add(self.source.path, node, message, self.subject, severity, offset)

    def warn(self, node, message: str, offset: int | None = None) -> None:
        self.error(node, message, offset, "warning")

    def fail(self, node, message: str, offset: int | None = None) -> NoReturn:
        """Record an error and abandon the item."""
        self.error(node, message, offset)
        raise Invalid

    # --- structure ---------------------------------------------------------------
    def mapping(self, node, allowed, what) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Keys of a mapping node -> (key node, value node); unknown and repeated keys
        are errors (YAML itself would silently keep the last)."""
        out = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                self.error(knode, f"a {what} must be a plain name")
                continue
            key = knode.value
            if key in out:
                self.error(knode, f'duplicate key "{key}"')
                continue
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                self.error(knode, f'unknown {what} "{key}"'
                           + (f' (did you mean "{hint[0]}"?)' if hint else
                              f" (allowed: {', '.join(allowed)})"))
                continue
            out[key] = (knode, vnode)
        return out

    # --- scalars -------------------------------------------------------------------
    def string(self, node, what) -> str:
        if not is_str(node):
            self.fail(node, f"{what} must be a string")
        return node.value

    def strings(self, node, what) -> tuple[str, ...]:
        """A string or a list of strings."""
        if isinstance(node, yaml.SequenceNode):
            return tuple(self.string(item, what) for item in node.value)
        return (self.string(node, what),)

    def scalar_text(self, node, what) -> str:
        """A scalar of any YAML type, as written (tag values: `1`, `true` stay text)."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == NULL:
            self.fail(node, f"{what} must be a single value")
        return node.value

    def one_of(self, node, what, known) -> str:
        value = self.string(node, what)
        if value not in known:
            self.fail(node, f"unknown {what} {value!r} (known: {', '.join(known)})")
        return value

    def boolean(self, node, what) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != BOOL:
            self.fail(node, f"{what} must be true or false")
        return self.construct(node)

    def number(self, node, what, allowed_units=(), positive=False, integer=False) -> float:
        """A finite number; a string may carry one of ``allowed_units`` ("10MiB")."""
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (INT, FLOAT, STR):
            self.fail(node, f"{what} must be a number")
        raw = self.construct(node) if node.tag != STR else node.value
        if node.tag == STR and not allowed_units:
            try:
                raw = float(raw)
            except ValueError:
                self.fail(node, f"{what} must be a plain number")
        try:
            value = parse_quantity(raw, allowed_units) if node.tag == STR else float(raw)
        except ValueError as err:
            self.fail(node, f"{what}: {err}")
        if math.isnan(value) or math.isinf(value):
            self.fail(node, f"{what} must be a finite number")
        if positive and value <= 0:
            self.fail(node, f"{what} must be greater than 0")
        if integer and value != int(value):
            self.fail(node, f"{what} must be a whole number")
        return value

    def fraction(self, node, what) -> float:
        """0 < x < 1, as 0.2 or "20%"."""
        text = node.value if isinstance(node, yaml.ScalarNode) else ""
        if node.tag == STR and text.endswith("%"):
            try:
                value = float(text[:-1]) / 100
            except ValueError:
                self.fail(node, f"{what} must be a fraction like 0.2 or 20%")
        else:
            value = self.number(node, what)
        if not 0 < value < 1:
            self.fail(node, f"{what} must lie between 0 and 1 (or 0% and 100%), not both ends")
        return value

    def duration(self, node, what) -> float:
        """Seconds, from 10s, 500ms, 1m or a bare number of seconds."""
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (INT, FLOAT, STR):
            self.fail(node, f"{what} must be a duration like 10s or 500ms")
        raw = node.value if node.tag == STR else self.construct(node)
        try:
            value = parse_duration(raw)
        except ValueError as err:
            self.fail(node, f"{what}: bad duration: {err}")
        if math.isinf(value):
            self.fail(node, f"{what} must be finite")
        return value

    def construct(self, node):
        """The Python value of a scalar node, as yaml.safe_load would give it."""
        try:
            return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as err:
            self.fail(node, f"bad value: {err}")

    # --- expressions ------------------------------------------------------------------
    def expr_offset(self, node) -> int | None:
        """Where an expression's first character sits relative to the node's mark,
        or None when YAML folding/escapes make offsets meaningless (point at the node)."""
        start, end = node.start_mark.index, node.end_mark.index
        raw = self.source.text[start:end]
        if not node.style and raw == node.value:     # plain: None (PyYAML) or "" (libyaml)
            return 0
        if node.style in ("'", '"') and raw[1:-1] == node.value:
            return 1
        return None

    def expr_error(self, node, err: ExprError, severity: str = "error") -> None:
        """An expression's problem, at its character when the YAML keeps columns."""
        base = self.expr_offset(node)
        self.error(node, err.message, None if base is None else base + err.offset, severity)
