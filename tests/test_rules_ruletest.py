"""`tagger rules test` and `tagger rules check`: series syntax, the shipped
rules' own tests, failure output and exit codes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from tagger.cli.rules import rules as rules_cli
from tagger.default_rules import DIRECTORY as DEFAULT_RULES
from tagger.rules.ruletest import RuleTestError, parse_series, run_file

DEFAULT_TESTS = sorted((DEFAULT_RULES / "tests").glob("*.yaml"))
BAD = Path(__file__).parent / "rules" / "bad"


def test_series_syntax():
    s = parse_series("0.2 0.9x3 _ 1+1x3 2ms 5msx2 _x2 10-2x2")
    assert s[:4] == [0.2, 0.9, 0.9, 0.9]
    assert math.isnan(s[4])
    assert s[5:8] == [1.0, 2.0, 3.0]
    assert s[8:11] == [0.002, 0.005, 0.005]
    assert all(math.isnan(x) for x in s[11:13])
    assert s[13:] == [10.0, 8.0]
    assert parse_series(3) == [3.0]


@pytest.mark.parametrize("bad", ["", "abc", "1+1", "1x", "0.5xx2", "1+1 2+", "2parsecs"])
def test_bad_series_are_value_errors(bad):
    with pytest.raises(ValueError):
        parse_series(bad)


def test_every_default_rule_has_a_test_file():
    tested = {p.stem for p in DEFAULT_TESTS}
    for wanted in ("cpu-intensive", "io-bound", "memory-heavy", "runq-starved", "noisy-neighbour",
                   "throttled", "priority", "workload-type"):
        assert wanted in tested


@pytest.mark.parametrize("path", DEFAULT_TESTS, ids=lambda p: p.name)
def test_default_rule_tests_pass(path):
    results = run_file(path)
    assert results, "a test file with no tests proves nothing"
    assert [f for r in results for f in r.failures] == []


def _write_test(tmp_path, body: str) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "r.yaml").write_text("rules:\n  - name: hot\n    when: cpu.usage > 0.8\n"
                                  "    for: 2s\n    tags: {cpu: hot}\n")
    f = tmp_path / "t.yaml"
    f.write_text("rules: rules\ninterval: 1s\n" + body)
    return f


def test_a_failing_expectation_prints_the_difference(tmp_path):
    f = _write_test(tmp_path, """tests:
  - name: too early
    cgroups: {/a: {cpu.usage: 0.9x5}}
    expect:
      - at: 1s
        tags: {/a: {cpu: hot}}
      - at: 2s
        tags: {/a: {cpu: hot}}
""")
    (result,) = run_file(f)
    assert result.failures == [f'{f}:4:5: test "too early": at 1s: /a: expected {{cpu=hot}}, got {{}}']
    res = CliRunner().invoke(rules_cli, ["test", str(f)])
    assert res.exit_code == 1
    assert 'FAIL' in res.output and "expected {cpu=hot}, got {}" in res.output
    assert "0 passed, 1 failed" in res.output


def test_cli_passes_on_the_default_tests():
    res = CliRunner().invoke(rules_cli, ["test", *map(str, DEFAULT_TESTS)])
    assert res.exit_code == 0, res.output
    assert " 0 failed" in res.output


@pytest.mark.parametrize("body, where, message", [
    # where: file:line:col (_write_test puts two lines before the body: body line 1 is file line 3)
    ("tests:\n  - cgroups: {/a: {cpu.usge: 1}}\n", ":4:5:", "did you mean cpu.usage?"),
    ("tests:\n  - cgroups: {a: {cpu.usage: 1}}\n", ":4:5:", "must be a path"),
    ("tests:\n  - expect: [{at: 1.5s, tags: {}}]\n", ":4:5:", "not a multiple of the interval"),
    ("tests:\n  - bogus: 1\n", ":4:5:", "unknown key 'bogus'"),
    ("testz: []\n", ":3:1:", "unknown key 'testz'"),
    ("tests:\n  - cgroups: {/a: {cpu.usage: 1+}}\n", ":4:5:", "bad series term"),
    ("tests:\n  - name: a\n    bogus: 1\n", ":5:5:", "test #1: unknown key 'bogus'"),
    ("testz: []\n", ":3:1:", "the file: unknown key 'testz'"),
    ("tests:\n  - name: a\n    cgroups: {/a: {cpu.usge: 1}}\n", ":4:5:", 'test "a": /a: unknown metric'),
    ("tests: 5\n", ":3:1:", "tests must be a list"),
    ("tests:\n  - {name: [a\n", ":5:1:", "bad YAML:"),
])
def test_broken_test_files_say_what_is_wrong_and_where(tmp_path, body, where, message):
    f = _write_test(tmp_path, body)
    with pytest.raises(RuleTestError, match=message.replace("?", r"\?").replace(".", r"\.")) as err:
        run_file(f)
    assert f"{f}{where}" in str(err.value)
    res = CliRunner().invoke(rules_cli, ["test", str(f)])
    assert res.exit_code == 2


def test_rules_that_do_not_load_stop_the_test_file(tmp_path):
    f = _write_test(tmp_path, "tests: []\n")
    (tmp_path / "rules" / "r.yaml").write_text("rules:\n  - {name: x, when: nope > 1, tags: {a: b}}\n")
    with pytest.raises(RuleTestError, match="do not load"):
        run_file(f)


def test_check_exit_codes_and_output():
    runner = CliRunner()
    ok = runner.invoke(rules_cli, ["check", str(DEFAULT_RULES)])
    assert ok.exit_code == 0
    assert ": ok: " in ok.output
    bad = runner.invoke(rules_cli, ["check", str(BAD)])
    assert bad.exit_code == 1
    assert f"{BAD}/04-unknown-metric.yaml:3:31: rule \"unknown-metric\": unknown metric or macro " \
           "'runq.p999': did you mean runq.p99?" in bad.output


def test_check_prints_warnings_but_passes(tmp_path):
    (tmp_path / "r.yaml").write_text("rules:\n  - {name: a, match: {tags: {nobody: sets}}, tags: {x: y}}\n")
    res = CliRunner().invoke(rules_cli, ["check", str(tmp_path)])
    assert res.exit_code == 0
    assert 'warning: tag "nobody" is set by no rule' in res.output
    assert "(1 warning)" in res.output
    quiet = CliRunner().invoke(rules_cli, ["check", "-q", str(tmp_path)])
    assert quiet.output == ""


def test_help_teaches_the_formats():
    runner = CliRunner()
    assert "cpu.usage: 0.2 0.9x12 0.3" in runner.invoke(rules_cli, ["test", "--help"]).output
    assert "path:line:col" in runner.invoke(rules_cli, ["check", "--help"]).output
