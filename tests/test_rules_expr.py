"""Rule expressions: grammar, units, types, NaN, errors that point at the spot,
and that nothing is ever evaluated as Python."""

from __future__ import annotations

import numpy as np
import pytest

from tagger.rules import expr as ex


class Ctx:
    def __init__(self, **cols):
        self.cols = {k.replace("_", "."): np.asarray(v, float) for k, v in cols.items()}
        self.n = len(next(iter(self.cols.values()))) if self.cols else 1
        self.nodev = {}

    def column(self, name):
        return self.cols.get(name, np.full(self.n, np.nan))

    def node(self, name):
        return self.nodev.get(name, np.nan)


def ev(src, **cols):
    c = ex.compile_expr(src)
    with np.errstate(all="ignore"):    # as the engine evaluates: x/0 is inf, 0/0 NaN
        out = c.fn(Ctx(**cols)) if c.fn is not None else c.const
    return np.asarray(out).tolist()


def test_precedence_and_associativity():
    assert ex.compile_expr("1 + 2 * 3 - 4 / 2").const == 5.0
    assert ex.compile_expr("10 - 4 - 3").const == 3.0            # left-assoc
    assert ex.compile_expr("-2 * -3").const == 6.0
    assert ex.compile_expr("not 1 > 2 and 3 > 2").const is True   # not binds tighter than and
    assert ex.compile_expr("true or false and false").const is True   # and before or


@pytest.mark.parametrize("src, value", [
    ("2ms", 0.002), ("500us", 0.0005), ("3ns", 3e-9), ("1.5s", 1.5), ("80%", 0.8),
    ("2KiB", 2048.0), ("1MiB", 1048576.0), ("1GiB", 2.0**30), ("1e3", 1000.0), (".5", 0.5),
])
def test_numbers_with_units_are_si(src, value):
    assert ex.compile_expr(src).const == pytest.approx(value)


def test_vectorised_comparison_and_nan_is_false_even_for_not_equal():
    assert ev("cpu.usage > 0.5", cpu_usage=[0.1, 0.9, np.nan]) == [False, True, False]
    assert ev("cpu.usage != 1", cpu_usage=[1, 2, np.nan]) == [False, True, False]
    assert ev("cpu.usage == 1", cpu_usage=[1, 2, np.nan]) == [True, False, False]
    # `not` of a false comparison is true: documented, and why rules write `not x > y`
    assert ev("not cpu.usage > 0.5", cpu_usage=[np.nan]) == [True]


def test_functions_and_arithmetic_propagate_unknowns():
    assert ev("max(cpu.usage, 1) > 0", cpu_usage=[np.nan, 2]) == [False, True]
    assert ev("min(cpu.usage, 1, 0.5)", cpu_usage=[0.2, 2]) == [0.2, 0.5]
    assert ev("abs(cpu.usage - 1)", cpu_usage=[0.25, 3]) == [0.75, 2.0]
    assert ev("io.ops / cpu.usage > 1", io_ops=[1, 1], cpu_usage=[0, 2]) == [True, False]


def test_unmeasured_metric_reads_as_nan_not_zero():
    assert ev("mem.current < 1GiB", cpu_usage=[1, 1]) == [False, False]


@pytest.mark.parametrize("src, message, offset", [
    ("runq.p999 > 1", "did you mean runq.p99?", 0),
    ("node.cpux > 1", "did you mean node.cpus?", 0),
    ("cpu.usage > 2xs", "unknown unit 'xs'", 13),
    ("cpu.usage > 1 && io.ops > 1", "write 'and'", 14),
    ("cpu.usage = 1", "write '=='", 10),
    ("1 < cpu.usage < 2", "chained comparison", 14),
    ("cpu.usage >", "expected a value, found end of expression", 11),
    ("(cpu.usage > 1", "expected ')'", 14),
    ("cpu.usage + (1 > 2)", "'+' needs a number, got a condition", 13),
    ("cpu.usage and true", "'and' needs a condition, got a number", 0),
    ('tag("a") > "b"', "compared with == or !=", 9),
    ('cpu.usage == "b"', "a string can only be compared", 10),
    ("tag(1) == \"x\"", "needs a quoted string", 4),
    ("abs(1, 2) > 0", "takes 1 argument, got 2", 0),
    ("min > 1", "min is a function", 0),
    ('__import__("os")', "unknown function '__import__'", 0),
    ("", "empty expression", 0),
    ('"unterminated', "unterminated string", 0),
    ("cpu.usage > 1 )", "unexpected ')' after a complete expression", 14),
])
def test_errors_name_the_problem_and_point_at_it(src, message, offset):
    with pytest.raises(ex.ExprError) as info:
        tree = ex.parse(src)
        problems = ex.static_problems(tree, {})
        if problems:
            raise problems[0]
        ex.Compiler().compile(tree)
    assert message in info.value.message
    assert info.value.offset == offset


def test_nesting_limit_is_an_expr_error():
    with pytest.raises(ex.ExprError, match="nested deeper"):
        ex.parse("(" * 200 + "1" + ")" * 200)
    with pytest.raises(ex.ExprError, match="nested deeper"):
        ex.parse("-" * 200 + "1")


def test_macros_inline_their_compiled_body():
    busy = ex.compile_expr("cpu.usage > 0.8")
    c = ex.compile_expr("busy and io.ops > 1", {"busy": busy})
    assert c.fn(Ctx(cpu_usage=[0.9, 0.9], io_ops=[2, 0])).tolist() == [True, False]


def test_static_problems_reports_all_unknown_names():
    tree = ex.parse("foo > 1 and bar(1) > 2 and node.nope > 3")
    msgs = [e.message for e in ex.static_problems(tree, {})]
    assert len(msgs) == 3
    assert "foo" in msgs[0] and "'bar'" in msgs[1] and "node.nope" in msgs[2]
