"""Rule expressions: tokenize, parse, type-check, compile to numpy closures.

The language (docs/rules.md)::

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/") unary)*
    unary   := "-" unary | atom
    atom    := NUMBER[UNIT] | STRING | "true" | "false" | NAME | NAME "(" args ")" | "(" expr ")"

A NAME is a metric from the catalogue (``runq.p99``), ``node.<metric>`` or a
macro.  Nothing is ever handed to ``eval``: the parser builds a small tree,
:func:`compile_expr` checks types and turns it into a tree of closures that take
an evaluation context and return one value per cgroup row (numpy arrays), so a
rule is evaluated for every cgroup at once.

NaN (a metric that could not be measured) makes every comparison false,
including ``!=``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tagger.snapshot import METRICS, NODE_METRICS, suggest
from tagger.units import UNIT_FACTORS

#: Deepest nesting the parser accepts; deeper input is an error, never a RecursionError.
MAX_DEPTH = 64
MAX_LENGTH = 4000

KEYWORDS = {"and", "or", "not", "true", "false"}
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")

#: name -> (argument kinds, result type); "num" args are expressions, "str" are literals.
FUNCTIONS = {
    "min": ("num+", "num"),
    "max": ("num+", "num"),
    "abs": (("num",), "num"),
    "tag": (("str",), "tag"),
    # Over the wait attribution (Snapshot.culprits, runq.wait.by): who held the
    # CPU while cgroups carrying a tag waited for it.
    "culprit_of_tagged": (("str", "str"), "num"),
    "culprit_most": (("str", "str"), "bool"),
    # Deprecated (preemption counts): a task that wakes often preempts often yet
    # may hold the CPU for microseconds.  Kept so user rules still load.
    "preempts_tagged": (("str", "str"), "num"),
    "preempts_most": (("str", "str"), "bool"),
}

#: Functions whose first two arguments name a tag key and value the rule reads.
TAG_FUNCTIONS = ("tag", "culprit_of_tagged", "culprit_most", "preempts_tagged", "preempts_most")


class ExprError(Exception):
    """A problem in one expression; ``offset`` is the character it points at."""

    def __init__(self, message: str, offset: int = 0):
        super().__init__(message)
        self.message = message
        self.offset = offset


# --- tokens -------------------------------------------------------------------

_TOKEN = re.compile(r"""
  (?P<ws>\s+)
| (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?P<unit>[A-Za-zµ%]+)?
| (?P<str>"[^"\\\n]*"|'[^'\\\n]*')
| (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
| (?P<op><=|>=|==|!=|<|>|\+|-|\*|/|\(|\)|,)
""", re.X)

#: What people type from other languages, and what to write instead.
_FOREIGN = {"&&": "and", "||": "or", "!": "not", "=": "==", "&": "and", "|": "or"}


@dataclass(frozen=True)
class Token:
    kind: str       # "num", "str", "name", "op", "end"
    text: str
    pos: int
    value: object = None


def tokenize(src: str) -> list[Token]:
    if len(src) > MAX_LENGTH:
        raise ExprError(f"expression longer than {MAX_LENGTH} characters", 0)
    out, pos = [], 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None:
            for bad, good in _FOREIGN.items():
                if src.startswith(bad, pos):
                    raise ExprError(f"unexpected {bad!r}: write {good!r}", pos)
            if src[pos] in "\"'":
                raise ExprError("unterminated string", pos)
            raise ExprError(f"unexpected character {src[pos]!r}", pos)
        kind = m.lastgroup if m.lastgroup != "unit" else "num"
        if kind == "ws":
            pos = m.end()
            continue
        text = m.group(0)
        if kind == "num":
            value = float(m.group("num"))
            unit = m.group("unit")
            if unit:
                if unit not in UNIT_FACTORS:
                    raise ExprError(f"unknown unit {unit!r} (use one of: ns us ms s % KiB MiB GiB)",
                                    m.start("unit"))
                value *= UNIT_FACTORS[unit]
            out.append(Token("num", text, pos, value))
        elif kind == "str":
            out.append(Token("str", text, pos, text[1:-1]))
        else:
            out.append(Token(kind, text, pos))
        pos = m.end()
    out.append(Token("end", "", len(src)))
    return out


# --- syntax tree ----------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    kind: str          # num str bool metric node macro call neg arith cmp and or not
    pos: int
    value: object = None       # number, string, name, operator or function name
    args: tuple = ()


class _Parser:
    def __init__(self, src: str):
        self.src = src
        self.toks = tokenize(src)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def take(self) -> Token:
        t = self.toks[self.i]
        self.i += 1
        return t

    def at(self, *texts) -> bool:
        t = self.tok
        return t.kind in ("op", "name") and t.text in texts

    def expect(self, text: str) -> Token:
        if not self.at(text):
            raise ExprError(f"expected {text!r}, found {self._found()}", self.tok.pos)
        return self.take()

    def _found(self) -> str:
        t = self.tok
        return "end of expression" if t.kind == "end" else repr(t.text)

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise ExprError("empty expression", 0)
        node = self.expr()
        if self.tok.kind != "end":
            if self.at(*COMPARISONS):
                raise ExprError("chained comparison: join the parts with 'and'", self.tok.pos)
            raise ExprError(f"unexpected {self._found()} after a complete expression", self.tok.pos)
        return node

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"expression nested deeper than {MAX_DEPTH}", self.tok.pos)
        try:
            return self.or_()
        finally:
            self.depth -= 1

    def or_(self) -> Node:
        node = self.and_()
        while self.at("or"):
            pos = self.take().pos
            node = Node("or", pos, "or", (node, self.and_()))
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.at("and"):
            pos = self.take().pos
            node = Node("and", pos, "and", (node, self.not_()))
        return node

    def not_(self) -> Node:
        if self.at("not"):
            pos = self.take().pos
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExprError(f"expression nested deeper than {MAX_DEPTH}", pos)
            try:
                return Node("not", pos, "not", (self.not_(),))
            finally:
                self.depth -= 1
        return self.compare()

    def compare(self) -> Node:
        node = self.sum()
        if self.at(*COMPARISONS):
            op = self.take()
            node = Node("cmp", op.pos, op.text, (node, self.sum()))
        return node

    def sum(self) -> Node:
        node = self.product()
        while self.at("+", "-"):
            op = self.take()
            node = Node("arith", op.pos, op.text, (node, self.product()))
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.at("*", "/"):
            op = self.take()
            node = Node("arith", op.pos, op.text, (node, self.unary()))
        return node

    def unary(self) -> Node:
        if self.at("-"):
            pos = self.take().pos
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExprError(f"expression nested deeper than {MAX_DEPTH}", pos)
            try:
                return Node("neg", pos, "-", (self.unary(),))
            finally:
                self.depth -= 1
        return self.atom()

    def atom(self) -> Node:
        t = self.tok
        if t.kind == "num":
            self.take()
            return Node("num", t.pos, t.value)
        if t.kind == "str":
            self.take()
            return Node("str", t.pos, t.value)
        if self.at("("):
            self.take()
            node = self.expr()
            self.expect(")")
            return node
        if t.kind == "name":
            if t.text in ("true", "false"):
                self.take()
                return Node("bool", t.pos, t.text == "true")
            if t.text in KEYWORDS:
                raise ExprError(f"expected a value, found {t.text!r}", t.pos)
            self.take()
            if self.at("("):
                self.take()
                args = []
                if not self.at(")"):
                    args.append(self.expr())
                    while self.at(","):
                        self.take()
                        args.append(self.expr())
                self.expect(")")
                return Node("call", t.pos, t.text, tuple(args))
            if t.text.startswith("node."):
                return Node("node", t.pos, t.text[5:])
            return Node("name", t.pos, t.text)
        raise ExprError(f"expected a value, found {self._found()}", t.pos)


def parse(src: str) -> Node:
    """Parse ``src`` into a tree; raises ExprError with the offending offset."""
    if not isinstance(src, str):
        raise ExprError("an expression must be a string", 0)
    return _Parser(src).parse()


def names_in(node: Node) -> set[str]:
    """Bare names (metrics or macros) used in a tree: for macro dependency checks."""
    out = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n.kind == "name":
            out.add(n.value)
        stack.extend(n.args)
    return out


def tag_refs(node: Node) -> list[tuple[str, str | None, int]]:
    """(key, value or None, pos) for every tag key an expression reads."""
    out = []
    stack = [node]
    while stack:
        n = stack.pop()
        if n.kind == "call" and n.value in TAG_FUNCTIONS:
            strs = [a.value for a in n.args if a.kind == "str"]
            if strs:
                out.append((strs[0], strs[1] if len(strs) > 1 else None, n.pos))
        if n.kind == "cmp" and n.value in ("==", "!="):
            a, b = n.args
            for call, lit in ((a, b), (b, a)):
                if call.kind == "call" and call.value == "tag" and lit.kind == "str" and call.args \
                        and call.args[0].kind == "str":
                    out.append((call.args[0].value, lit.value, n.pos))
        stack.extend(n.args)
    return out


#: Functions that still work but have a better replacement: name -> the replacement.
DEPRECATED = {"preempts_tagged": "culprit_of_tagged", "preempts_most": "culprit_most"}


def deprecated_calls(node: Node) -> list[ExprError]:
    """A warning per call of a DEPRECATED function (the rule still loads)."""
    out = []
    stack = [node]
    while stack:
        n = stack.pop()
        if n.kind == "call" and n.value in DEPRECATED:
            out.append(ExprError(
                f"{n.value}() is deprecated: it counts preemptions, and a task that wakes often "
                f"preempts often yet may hold the CPU for microseconds; {DEPRECATED[n.value]}() "
                f"charges run-queue wait to whoever held the CPU", n.pos))
        stack.extend(n.args)
    return sorted(out, key=lambda e: e.offset)


def static_problems(node: Node, macros) -> list[ExprError]:
    """Every problem findable without types: unknown metrics, node metrics,
    macros and functions, wrong argument counts.  Lets the loader report all of
    them at once; the compiler then stops at the first type error."""
    out: list[ExprError] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if n.kind == "name" and n.value not in macros and n.value not in METRICS:
            try:
                Compiler({m: None for m in macros})._name(n)
            except ExprError as err:
                out.append(err)
        elif n.kind == "node" and n.value not in NODE_METRICS:
            try:
                Compiler()._c(n)
            except ExprError as err:
                out.append(err)
        elif n.kind == "call":
            err = _call_shape(n)
            if err is not None:
                out.append(err)
        stack.extend(reversed(n.args))
    return sorted(out, key=lambda e: e.offset)


def _call_shape(n: Node) -> ExprError | None:
    name = n.value
    if name not in FUNCTIONS:   # the list is short: show it rather than guess
        return ExprError(f"unknown function {name!r} (functions: {', '.join(FUNCTIONS)})", n.pos)
    kinds, _ = FUNCTIONS[name]
    if kinds == "num+":
        return ExprError(f"{name}() needs at least one argument", n.pos) if not n.args else None
    if len(n.args) != len(kinds):
        return ExprError(f"{name}() takes {len(kinds)} argument{'s' if len(kinds) != 1 else ''},"
                         f" got {len(n.args)}", n.pos)
    for arg, kind in zip(n.args, kinds):
        if kind == "str" and arg.kind != "str":
            return ExprError(f"{name}() needs a quoted string here", arg.pos)
    return None


# --- type check and compile -------------------------------------------------------

Fn = Callable[["object"], object]


@dataclass
class Compiled:
    """A checked expression: ``type`` is "num", "bool", "str" or "tag";
    ``fn(ctx)`` returns a scalar or an array with one value per row;
    ``const`` holds the value when it is known at load time."""
    type: str
    fn: Fn | None = None
    const: object = None
    tree: Node | None = None

    @property
    def is_const(self) -> bool:
        return self.fn is None


def _const(type_, value, tree=None) -> Compiled:
    return Compiled(type_, None, value, tree)


def _as_fn(c: Compiled) -> Fn:
    if c.fn is not None:
        return c.fn
    v = c.const
    return lambda ctx: v


_ARITH = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}
_CMP = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
        "==": np.equal}

_TYPE_WORD = {"num": "a number", "bool": "a condition", "str": "a string", "tag": 'tag("...")'}


def _start(node: Node) -> int:
    """Offset of the leftmost token of a subtree (operators sit in the middle)."""
    return min([node.pos] + [_start(a) for a in node.args])


def _want(c: Compiled, type_: str, node: Node, what: str):
    if c.type != type_:
        raise ExprError(f"{what} needs {_TYPE_WORD[type_]}, got {_TYPE_WORD[c.type]}",
                        _start(node))


def _ne(a, b):
    # Not (a == b): but NaN on either side must stay false, so spell it as < or >.
    return np.logical_or(np.less(a, b), np.greater(a, b))


class Compiler:
    """Checks and compiles trees.  ``macros`` maps a name to its compiled body
    (the loader compiles macros first, in dependency order)."""

    def __init__(self, macros: dict[str, Compiled] | None = None):
        self.macros = macros or {}

    def compile(self, node: Node) -> Compiled:
        with np.errstate(all="ignore"):
            return self._c(node)

    def _c(self, n: Node) -> Compiled:
        k = n.kind
        if k == "num":
            return _const("num", n.value, n)
        if k == "str":
            return _const("str", n.value, n)
        if k == "bool":
            return _const("bool", n.value, n)
        if k == "name":
            return self._name(n)
        if k == "node":
            name = n.value
            if name not in NODE_METRICS:
                hint = suggest(name, NODE_METRICS)
                raise ExprError(f"unknown node metric 'node.{name}'"
                                + (f": did you mean node.{hint}?" if hint else ""), n.pos)
            return Compiled("num", lambda ctx, name=name: ctx.node(name), tree=n)
        if k == "neg":
            x = self._c(n.args[0])
            _want(x, "num", n, "'-'")
            if x.is_const:
                return _const("num", -x.const, n)
            f = x.fn
            return Compiled("num", lambda ctx: np.negative(f(ctx)), tree=n)
        if k == "arith":
            a, b = self._c(n.args[0]), self._c(n.args[1])
            _want(a, "num", n.args[0], f"{n.value!r}")
            _want(b, "num", n.args[1], f"{n.value!r}")
            op = _ARITH[n.value]
            if a.is_const and b.is_const:
                return _const("num", float(op(np.float64(a.const), np.float64(b.const))), n)
            fa, fb = _as_fn(a), _as_fn(b)
            return Compiled("num", lambda ctx: op(fa(ctx), fb(ctx)), tree=n)
        if k == "cmp":
            return self._cmp(n)
        if k in ("and", "or"):
            a, b = self._c(n.args[0]), self._c(n.args[1])
            _want(a, "bool", n.args[0], f"'{k}'")
            _want(b, "bool", n.args[1], f"'{k}'")
            op = np.logical_and if k == "and" else np.logical_or
            if a.is_const and b.is_const:
                return _const("bool", bool(op(a.const, b.const)), n)
            fa, fb = _as_fn(a), _as_fn(b)
            return Compiled("bool", lambda ctx: op(fa(ctx), fb(ctx)), tree=n)
        if k == "not":
            x = self._c(n.args[0])
            _want(x, "bool", n.args[0], "'not'")
            if x.is_const:
                return _const("bool", not x.const, n)
            f = x.fn
            return Compiled("bool", lambda ctx: np.logical_not(f(ctx)), tree=n)
        if k == "call":
            return self._call(n)
        raise ExprError(f"cannot compile {k}", n.pos)   # unreachable: the parser makes no other kinds

    def _name(self, n: Node) -> Compiled:
        name = n.value
        if name in self.macros:
            return self.macros[name]
        if name in METRICS:
            return Compiled("num", lambda ctx, name=name: ctx.column(name), tree=n)
        if name in FUNCTIONS:
            raise ExprError(f"{name} is a function: write {name}(...)", n.pos)
        hint = suggest(name, list(METRICS) + list(self.macros))
        raise ExprError(f"unknown metric or macro {name!r}"
                        + (f": did you mean {hint}?" if hint else ""), n.pos)

    def _cmp(self, n: Node) -> Compiled:
        a, b = self._c(n.args[0]), self._c(n.args[1])
        op = n.value
        if "tag" in (a.type, b.type):
            tag, lit = (a, b) if a.type == "tag" else (b, a)
            if op not in ("==", "!=") or lit.type != "str":
                raise ExprError('tag("...") can only be compared with == or != to a string',
                                n.pos)
            key, value = tag.const, lit.const
            if op == "==":
                fn = lambda ctx: ctx.tag_is(key, value)
            else:
                fn = lambda ctx: np.logical_not(ctx.tag_is(key, value))
            return Compiled("bool", fn, tree=n)
        if "str" in (a.type, b.type):
            raise ExprError('a string can only be compared with tag("...")', n.pos)
        _want(a, "num", n.args[0], f"{op!r}")
        _want(b, "num", n.args[1], f"{op!r}")
        f = _ne if op == "!=" else _CMP[op]
        if a.is_const and b.is_const:
            return _const("bool", bool(f(a.const, b.const)), n)
        fa, fb = _as_fn(a), _as_fn(b)
        return Compiled("bool", lambda ctx: f(fa(ctx), fb(ctx)), tree=n)

    def _call(self, n: Node) -> Compiled:
        name = n.value
        err = _call_shape(n)
        if err is not None:
            raise err
        kinds, result = FUNCTIONS[name]
        if kinds == "num+":
            kinds = ("num",) * len(n.args)
        args = []
        for arg, kind in zip(n.args, kinds):
            if kind == "str":
                if arg.kind != "str":
                    raise ExprError(f"{name}() needs a quoted string here", arg.pos)
                args.append(arg.value)
            else:
                c = self._c(arg)
                _want(c, "num", arg, f"{name}()")
                args.append(c)
        if name == "tag":
            return _const("tag", args[0], n)
        if name in TAG_FUNCTIONS:
            # Over the attribution of tagged cgroups: the context's method of that name.
            key, value = args
            method = name
            return Compiled(FUNCTIONS[name][1], lambda ctx: getattr(ctx, method)(key, value), tree=n)
        if name == "abs":
            (x,) = args
            if x.is_const:
                return _const("num", abs(x.const), n)
            f = x.fn
            return Compiled("num", lambda ctx: np.abs(f(ctx)), tree=n)
        # min / max: NaN in any argument propagates (unknown stays unknown).
        op = np.minimum if name == "min" else np.maximum
        if all(a.is_const for a in args):
            v = args[0].const
            for a in args[1:]:
                v = float(op(v, a.const))
            return _const("num", v, n)
        fns = [_as_fn(a) for a in args]

        def fold(ctx):
            v = fns[0](ctx)
            for f in fns[1:]:
                v = op(v, f(ctx))
            return v
        return Compiled("num", fold, tree=n)


def compile_expr(src: str, macros: dict[str, Compiled] | None = None) -> Compiled:
    """Parse and compile one expression (macros already compiled)."""
    return Compiler(macros).compile(parse(src))


# --- reference evaluator ------------------------------------------------------------

def evaluate_row(node: Node, row: dict, macros: dict[str, Node] | None = None):
    """Evaluate a tree for one cgroup with plain Python floats.

    The slow, obvious definition of the language: the benchmark's baseline and the
    tests' oracle for the vectorised compiler.  ``row`` holds ``metrics`` (name ->
    float), ``node`` (name -> float), ``tags`` (key -> value), ``preempts``
    ((key, value) -> float), ``preempts_most`` (set of (key, value)), and
    optionally ``culprits`` ((key, value) -> float, s/s) and ``culprit_most``
    (set of (key, value)).
    """
    macros = macros or {}
    k = node.kind
    if k in ("num", "str", "bool"):
        return node.value
    if k == "name":
        if node.value in macros:
            return evaluate_row(macros[node.value], row, macros)
        return row["metrics"].get(node.value, math.nan)
    if k == "node":
        return row["node"].get(node.value, math.nan)
    args = [evaluate_row(a, row, macros) for a in node.args] if k != "call" else None
    if k == "neg":
        return -args[0]
    if k == "arith":
        a, b = args
        if node.value == "/":
            if b == 0:   # numpy's answer: +-inf, or NaN for 0/0
                return math.nan if (a == 0 or math.isnan(a)) else math.copysign(math.inf, a) \
                    * math.copysign(1, b)
            return a / b
        return a + b if node.value == "+" else a - b if node.value == "-" else a * b
    if k == "cmp":
        a, b = args
        if isinstance(a, tuple) or isinstance(b, tuple):
            key = (a if isinstance(a, tuple) else b)[1]
            lit = b if isinstance(a, tuple) else a
            eq = row["tags"].get(key) == lit
            return eq if node.value == "==" else not eq
        if math.isnan(a) or math.isnan(b):
            return False
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b,
                "!=": a != b}[node.value]
    if k == "and":
        return bool(args[0]) and bool(args[1])
    if k == "or":
        return bool(args[0]) or bool(args[1])
    if k == "not":
        return not args[0]
    if k == "call":
        name = node.value
        if name == "tag":
            return ("tag", node.args[0].value)
        if name == "culprit_of_tagged":
            return row.get("culprits", {}).get((node.args[0].value, node.args[1].value), 0.0)
        if name == "culprit_most":
            return (node.args[0].value, node.args[1].value) in row.get("culprit_most", set())
        if name == "preempts_tagged":
            return row["preempts"].get((node.args[0].value, node.args[1].value), 0.0)
        if name == "preempts_most":
            return (node.args[0].value, node.args[1].value) in row["preempts_most"]
        vals = [evaluate_row(a, row, macros) for a in node.args]
        if name == "abs":
            return abs(vals[0])
        if any(math.isnan(v) for v in vals):
            return math.nan
        return min(vals) if name == "min" else max(vals)
    raise ValueError(k)
