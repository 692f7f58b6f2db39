"""Unit tests for rules, in the manner of ``promtool test rules``.

A test file names a rules directory, a tick ``interval``, input series per
cgroup and the tags expected at given times::

    rules: ..                 # relative to this file
    interval: 1s
    tests:
      - name: a busy cgroup is tagged after 10s
        cgroups:
          /kubepods/burstable/pod1/web:
            cpu.usage: 0.2 0.9x12 0.3
        node: {cpus: 4x20}
        culprits:             # runq.wait.by: /a's wait (s/s) while /b held the CPU
          - {victim: /a, culprit: /b, wait: 0 300msx10}
        preemptions:          # (deprecated functions preempts_*)
          - {victim: /a, preemptor: /b, count: 0 200x10}
        expect:
          - at: 11s
            tags:
              /kubepods/burstable/pod1/web: {resource: cpu-intensive}

Series: values separated by spaces, units allowed (``2ms``); ``VxN`` is V
repeated N times; ``A+BxN`` is N values from A in steps of B; ``_`` is a
missing value (NaN).  Tick k is at ``k * interval``; ``expect.tags`` lists the
complete tags of each cgroup named (``{}``: none).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from tagger.errors import RulesError
from tagger.snapshot import CULPRIT_DTYPE, METRICS, NODE_METRICS, PREEMPTION_DTYPE, Snapshot, suggest
from tagger.tags import TagStore
from tagger.units import parse_duration, parse_quantity

from .engine import Engine
from .loader import load_directory
from .model import RuleSet

FILE_KEYS = ("rules", "interval", "tests")
TEST_KEYS = ("name", "cgroups", "node", "culprits", "preemptions", "expect")
EXPECT_KEYS = ("at", "tags")
PREEMPTION_KEYS = ("victim", "preemptor", "count")
CULPRIT_KEYS = ("victim", "culprit", "wait")
#: Pair inputs: test key -> (the other cgroup's key, the series' key, Snapshot field, dtype).
PAIRS = {"culprits": ("culprit", "wait", "culprits", CULPRIT_DTYPE),
         "preemptions": ("preemptor", "count", "preemptions", PREEMPTION_DTYPE)}

_TERM = re.compile(r"^(?P<base>[^x]+?|_)(?:x(?P<n>\d+))?$")
_STEP = re.compile(r"^(?P<a>[-+]?[0-9.]+(?:[eE][-+]?\d+)?[A-Za-zµ%]*)"
                   r"(?P<b>[-+][0-9.]+(?:[eE][-+]?\d+)?[A-Za-zµ%]*)?$")


class RuleTestError(RulesError):
    """A rule test file that cannot be run (bad format, or its rules do not load)."""


def parse_series(text) -> list[float]:
    """``"0.2 0.9x3 _ 1+1x3"`` -> [0.2, 0.9, 0.9, 0.9, nan, 1, 2, 3]."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return [float(text)]
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a series is values separated by spaces, got {text!r}")
    out: list[float] = []
    for term in text.split():
        m = _TERM.match(term)
        if not m:
            raise ValueError(f"bad series term {term!r}")
        count = int(m.group("n")) if m.group("n") else 1
        base = m.group("base")
        if base == "_":
            out.extend([math.nan] * count)
            continue
        s = _STEP.match(base)
        if not s:
            raise ValueError(f"bad series term {term!r}")
        start = parse_quantity(s.group("a"))
        step = parse_quantity(s.group("b")) if s.group("b") else 0.0
        if s.group("b") and not m.group("n"):
            raise ValueError(f"{term!r}: a step needs a count, like 0+1x10")
        out.extend(start + i * step for i in range(count))
    return out


@dataclass
class TestResult:
    file: str
    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _fmt(tags: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(tags.items())) + "}"


class _Mapping(dict):
    """A YAML mapping that remembers where it and each of its keys start, so
    an error can name the line and column, as ``tagger rules check`` does."""
    mark = None
    key_marks: dict = {}


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node):
    m = _Mapping(loader.construct_mapping(node, deep=True))
    m.mark = node.start_mark
    m.key_marks = {str(k.value): k.start_mark for k, _ in node.value}
    return m


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _at(path, mark) -> str:
    """``path:line:col`` (1-based, as editors count) or ``path`` with no mark."""
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


class _Problem(ValueError):
    """A problem in a test file, with where it starts when known."""

    def __init__(self, message: str, mark=None):
        super().__init__(message)
        self.mark = mark


def _keys(d, allowed, what):
    """``what`` ("the file", "test #2", "expect") must be a mapping of ``allowed`` keys."""
    if not isinstance(d, dict):
        raise _Problem(f"{what} must be a mapping")
    unknown = sorted(set(map(str, d)) - set(allowed))
    if unknown:
        mark = d.key_marks.get(unknown[0], d.mark) if isinstance(d, _Mapping) else None
        raise _Problem(f"{what}: unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})", mark)


def run_file(path: str | Path, ruleset: RuleSet | None = None) -> list[TestResult]:
    """Run every test in one file; raises RuleTestError when it cannot run at all."""
    path = Path(path)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except OSError as err:
        raise RuleTestError(f"{path}: {err.strerror}") from None
    except yaml.MarkedYAMLError as err:
        raise RuleTestError(f"{_at(path, err.problem_mark)}: bad YAML: {err.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RuleTestError(f"{path}: bad YAML: {err}") from None
    try:
        _keys(doc, FILE_KEYS, "the file")
    except _Problem as err:
        raise RuleTestError(f"{_at(path, err.mark)}: {err}") from None
    try:
        interval = parse_duration(doc.get("interval", "1s"))
    except ValueError as err:
        raise RuleTestError(f"{path}: interval: {err}") from None
    if interval <= 0:
        raise RuleTestError(f"{path}: interval must be greater than 0")
    if ruleset is None:
        rules_dir = (path.parent / str(doc.get("rules", ".."))).resolve()
        try:
            ruleset = load_directory(rules_dir)
        except RulesError as err:
            raise RuleTestError(f"{path}: rules {rules_dir} do not load:\n{err}") from None
    tests = doc.get("tests") or []
    if not isinstance(tests, list):
        raise RuleTestError(f"{_at(path, doc.key_marks.get('tests'))}: tests must be a list")
    return [_run_one(path, i, t, ruleset, interval) for i, t in enumerate(tests)]


def _run_one(path, i, test, ruleset, interval) -> TestResult:
    mark = getattr(test, "mark", None)
    try:
        _keys(test, TEST_KEYS, f"test #{i + 1}")
    except _Problem as err:
        raise RuleTestError(f"{_at(path, err.mark or mark)}: {err}") from None
    name = str(test.get("name", f"#{i + 1}"))
    where = f'{_at(path, mark)}: test "{name}"'
    result = TestResult(str(path), name)
    try:
        series, node, pairs, expects = _inputs(test, interval)
    except (ValueError, TypeError) as err:
        raise RuleTestError(f'{_at(path, getattr(err, "mark", None) or mark)}: test "{name}": {err}') from None
    paths = list(series)
    for kind, rows in pairs.items():
        other = PAIRS[kind][0]
        for e in rows:
            for p in (e["victim"], e[other]):
                if p not in paths:
                    paths.append(p)
    index = {p: i for i, p in enumerate(paths)}
    length = max([len(v) for s in series.values() for v in s.values()]
                 + [len(v) for v in node.values()]
                 + [len(e[PAIRS[kind][1]]) for kind, rows in pairs.items() for e in rows]
                 + [k + 1 for k, _ in expects] + [1])
    by_tick: dict[int, list[dict]] = {}
    for k, tags in expects:
        by_tick.setdefault(k, []).append(tags)
    engine = Engine(ruleset, TagStore(history=0))
    metrics = sorted({m for s in series.values() for m in s})

    def at(values, k):
        return values[k] if k < len(values) else math.nan

    for k in range(length):
        cols = {m: [at(series[p].get(m, []), k) for p in paths] for m in metrics}
        snap = Snapshot.synthetic(paths, cols, t=k * interval, dt=interval,
                                  node={n: at(v, k) for n, v in node.items()})
        for kind, (other, value, attr, dtype) in PAIRS.items():
            rows = [(index[e["victim"]], index[e[other]], at(e[value], k)) for e in pairs[kind]]
            setattr(snap, attr, np.array([r for r in rows if not math.isnan(r[2])], dtype))
        engine.evaluate(snap)
        for want in by_tick.get(k, []):
            for cg, tags in want.items():
                got = {key: tag.value for key, tag in engine.store.tags_of(cg).items()}
                if got != tags:
                    result.failures.append(
                        f"{where}: at {_fmt_t(k * interval)}: {cg}: expected {_fmt(tags)}, "
                        f"got {_fmt(got)}")
    return result


def _fmt_t(t: float) -> str:
    return f"{t:g}s"


def _inputs(test, interval):
    series: dict[str, dict[str, list[float]]] = {}
    for cg, metrics in (test.get("cgroups") or {}).items():
        cg = str(cg)
        if not cg.startswith("/"):
            raise ValueError(f"cgroup {cg!r} must be a path from the root, like /a/b")
        if not isinstance(metrics, dict):
            raise ValueError(f"{cg}: expected metric: series")
        series[cg] = {}
        for m, s in metrics.items():
            if m not in METRICS:
                hint = suggest(str(m))
                raise ValueError(f"{cg}: unknown metric {m!r}" + (f": did you mean {hint}?" if hint else ""))
            series[cg][m] = parse_series(s)
    node = {}
    for m, s in (test.get("node") or {}).items():
        if m not in NODE_METRICS:
            hint = suggest(str(m), NODE_METRICS)
            raise ValueError(f"node: unknown metric {m!r}" + (f": did you mean {hint}?" if hint else ""))
        node[m] = parse_series(s)
    pairs = {}
    for kind, keys in (("culprits", CULPRIT_KEYS), ("preemptions", PREEMPTION_KEYS)):
        other, value = PAIRS[kind][:2]
        pairs[kind] = []
        for e in test.get(kind) or []:
            _keys(e, keys, kind)
            for key in keys:
                if key not in e:
                    raise ValueError(f"{kind}: missing {key!r}")
            pairs[kind].append({"victim": str(e["victim"]), other: str(e[other]),
                                value: parse_series(e[value])})
    expects = []
    for e in test.get("expect") or []:
        _keys(e, EXPECT_KEYS, "expect")
        if "at" not in e:
            raise ValueError("expect: missing 'at'")
        k = parse_duration(e["at"]) / interval
        if abs(k - round(k)) > 1e-6:
            raise ValueError(f"expect at {e['at']}: not a multiple of the interval")
        tags = {}
        for cg, want in (e.get("tags") or {}).items():
            if want is None:
                want = {}
            if not isinstance(want, dict):
                raise ValueError(f"expect {cg}: tags must be a mapping")
            tags[str(cg)] = {str(k2): _scalar(v) for k2, v in want.items()}
        expects.append((int(round(k)), tags))
    return series, node, pairs, expects


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
