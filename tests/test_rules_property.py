"""Property tests: the loader raises only its own error type whatever it is fed,
and the vectorised compiler agrees with the row-by-row reference evaluator."""

from __future__ import annotations

import math

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagger.rules import RuleSet, RulesLoadError, load_directory, load_text
from tagger.rules import expr as ex

METRIC_NAMES = ["cpu.usage", "runq.p99", "io.ops", "mem.current", "psi.io.some"]
NODE_NAMES = ["cpus", "cpu.usage"]
TOKENS = (METRIC_NAMES + ["node." + n for n in NODE_NAMES]
          + ["runq.p999", "node.nope", "busy", "hot", "1", "0.5", "2ms", "80%", "10MiB", "3xs",
             "1e3", ".5", "<", "<=", ">", ">=", "==", "!=", "+", "-", "*", "/", "(", ")", ",",
             "and", "or", "not", "true", "false", "min", "max", "abs", "tag", '"k"', "'v'",
             "preempts_tagged", "preempts_most", "culprit_of_tagged", "culprit_most", "&&", "!", "=", "$", '"open', "__import__"])

LOAD = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load(doc_text: str):
    try:
        rs = load_text(doc_text)
    except RulesLoadError as err:
        assert err.errors, "a RulesLoadError always carries at least one error"
        for p in err.problems:
            str(p)     # every problem renders
        return None
    assert isinstance(rs, RuleSet)
    return rs


@LOAD
@given(st.lists(st.sampled_from(TOKENS), max_size=14))
def test_token_soup_expressions_raise_only_rules_errors(tokens):
    src = " ".join(tokens)
    doc = yaml.safe_dump({"macros": {"hot": "cpu.usage > 1"},
                          "rules": [{"name": "r", "when": src, "clear_when": src, "tags": {"k": "v"}}]})
    _load(doc)


KEYS = ["macros", "rules", "policies", "name", "description", "match", "when", "for", "keep_for",
        "clear_when", "tags", "actions", "enabled", "cgroup", "exclude", "names", "cpu", "io", "rdt",
        "max", "period", "weight", "group", "l3", "mb", "read_bps", "device", "kind", "protect",
        "throttle", "slo", "alpha", "resources", "bogus"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["/a/**", "**", "/", "10s", "-1s", "2ms", "0x0", "0x0f", "25%",
                                     "latency-slo", "runq.p99 < 2ms", "cpu.usage > 0.5", "x y",
                                     "", "a", "10MiB", "nan", "1e999s"]),
                    st.text(max_size=12))
TREES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)), max_leaves=25)


@LOAD
@given(st.dictionaries(st.sampled_from(["macros", "rules", "policies", "bogus"]),
                       st.one_of(TREES, st.lists(st.dictionaries(st.sampled_from(KEYS), TREES,
                                                                 max_size=8), max_size=3)),
                       max_size=3))
def test_generated_rule_files_raise_only_rules_errors(doc):
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return
    _load(text)


@LOAD
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_rules_errors(text):
    _load(text)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_in_a_directory_raise_only_rules_errors(data):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "x.yaml").write_bytes(data)
        try:
            load_directory(d)
        except RulesLoadError:
            pass


def test_deep_nesting_is_an_error_not_a_crash():
    _load("rules:\n  - {name: r, tags: {k: v}, when: '" + "(" * 500 + "cpu.usage > 1" + ")" * 500 + "'}\n")
    _load("rules: " + "[" * 5000 + "]" * 5000 + "\n")
    _load("rules:\n  - {name: r, tags: {k: v}, when: '" + "not " * 500 + "cpu.usage > 1'}\n")


# --- vectorised == reference ------------------------------------------------------------

N = 7


class _Ctx:
    """The evaluation context for a fixed set of rows (what EvalContext provides)."""

    def __init__(self, cols, node, tags):
        self.cols, self.nodev, self.tags, self.n = cols, node, tags, N

    def column(self, name):
        return self.cols[name]

    def node(self, name):
        return self.nodev[name]

    def tag_is(self, key, value):
        return np.array([t.get(key) == value for t in self.tags])

    def preempts_tagged(self, key, value):
        return np.zeros(N)

    def preempts_most(self, key, value):
        return np.zeros(N, bool)

    def culprit_of_tagged(self, key, value):
        return np.zeros(N)

    def culprit_most(self, key, value):
        return np.zeros(N, bool)


VALUES = st.one_of(st.floats(-1e6, 1e6), st.just(math.nan), st.just(0.0), st.just(math.inf))


def _num(depth):
    leaf = st.one_of(st.sampled_from(METRIC_NAMES), st.sampled_from(["node." + n for n in NODE_NAMES]),
                     st.sampled_from(["0", "1", "0.5", "2ms", "80%", "3", "1e3"]))
    if depth <= 0:
        return leaf
    sub = _num(depth - 1)
    return st.one_of(
        leaf,
        st.builds(lambda a, op, b: f"({a} {op} {b})", sub, st.sampled_from("+-*/"), sub),
        st.builds(lambda a: f"-{a}", sub),
        st.builds(lambda f, a, b: f"{f}({a}, {b})", st.sampled_from(["min", "max"]), sub, sub),
        st.builds(lambda a: f"abs({a})", sub))


def _cond(depth):
    cmp = st.builds(lambda a, op, b: f"{a} {op} {b}", _num(2),
                    st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), _num(2))
    tag = st.builds(lambda k, op, v: f'tag("{k}") {op} "{v}"', st.sampled_from("ab"),
                    st.sampled_from(["==", "!="]), st.sampled_from("xy"))
    leaf = st.one_of(cmp, tag, st.sampled_from(["true", "false"]))
    if depth <= 0:
        return leaf
    sub = _cond(depth - 1)
    return st.one_of(leaf,
                     st.builds(lambda a, op, b: f"({a}) {op} ({b})", sub, st.sampled_from(["and", "or"]), sub),
                     st.builds(lambda a: f"not ({a})", sub))


@settings(max_examples=300, deadline=None)
@given(src=_cond(2),
       cols=st.fixed_dictionaries({m: st.lists(VALUES, min_size=N, max_size=N) for m in METRIC_NAMES}),
       node=st.fixed_dictionaries({n: VALUES for n in NODE_NAMES}),
       tags=st.lists(st.fixed_dictionaries({}, optional={"a": st.sampled_from("xy"),
                                                         "b": st.sampled_from("xy")}),
                     min_size=N, max_size=N))
def test_vectorised_evaluation_matches_the_reference(src, cols, node, tags):
    tree = ex.parse(src)
    compiled = ex.Compiler().compile(tree)
    assert compiled.type == "bool"
    ctx = _Ctx({k: np.array(v) for k, v in cols.items()}, node, tags)
    with np.errstate(all="ignore"):
        got = compiled.fn(ctx) if compiled.fn is not None else compiled.const
    got = np.broadcast_to(np.asarray(got, bool), (N,))
    want = [ex.evaluate_row(tree, {"metrics": {k: v[i] for k, v in cols.items()}, "node": node,
                                   "tags": tags[i], "preempts": {}, "preempts_most": set()})
            for i in range(N)]
    assert got.tolist() == want, src
