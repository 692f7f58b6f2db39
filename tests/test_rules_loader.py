"""The rules loader: every problem with its line and column, warnings, atomicity,
and what good files load into."""

from __future__ import annotations

from pathlib import Path

import pytest

from tagger.default_rules import DIRECTORY as DEFAULT_RULES
from tagger.errors import RulesError
from tagger.rules import RuleSet, RulesLoadError, load_directory, load_text
from tagger.rules.spec import ActionSet, CpuSpec, IoSpec, LatencySloSpec, RdtSpec, Selector

HERE = Path(__file__).parent
BAD = HERE / "rules" / "bad"
EXPECTED = HERE / "rules" / "bad_expected.txt"


def _expected_lines() -> list[str]:
    return [line for line in EXPECTED.read_text().splitlines() if line and not line.startswith("#")]


def _relative(problems, directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    return [str(p).replace(prefix, "") for p in problems]


def test_bad_directory_reports_every_expected_problem_in_order():
    with pytest.raises(RulesLoadError) as info:
        load_directory(BAD)
    assert _relative(info.value.problems, BAD) == _expected_lines()


def test_bad_directory_has_at_least_15_distinct_files_each_with_an_error():
    files = sorted(p.name for p in BAD.glob("*.yaml"))
    assert len(files) >= 15
    with_errors = {line.split(":", 1)[0] for line in _expected_lines()}
    assert with_errors == set(files)


@pytest.mark.parametrize("name", sorted(p.name for p in BAD.glob("*.yaml")))
def test_each_bad_file_alone_gives_its_own_lines(tmp_path, name):
    # The same file in a directory of its own: no problem leaks in from, or out
    # to, the other bad files.
    (tmp_path / name).write_text((BAD / name).read_text())
    with pytest.raises(RulesLoadError) as info:
        load_directory(tmp_path)
    want = [line for line in _expected_lines() if line.startswith(name + ":")]
    assert _relative(info.value.problems, tmp_path) == want


def test_load_error_is_a_rules_error_with_errors_listed_in_its_message():
    with pytest.raises(RulesError) as info:
        load_directory(BAD)
    err = info.value
    assert len(err.errors) == len(_expected_lines())
    assert str(err).startswith(f"{len(err.errors)} errors in rules:")
    assert 'runq.p999' in str(err)


def test_default_rules_load_clean():
    rs = load_directory(DEFAULT_RULES)
    assert rs.warnings == []
    names = {r.name for r in rs.rules}
    for wanted in ("cpu-intensive", "io-bound", "memory-heavy", "runq-starved", "noisy-neighbour",
                   "throttled", "qos-besteffort", "slice-system", "type-interactive", "type-batch"):
        assert wanted in names


def test_files_load_in_name_order_and_yml_counts(tmp_path):
    (tmp_path / "b.yml").write_text("rules:\n  - {name: from-b, tags: {k: b}}\n")
    (tmp_path / "a.yaml").write_text("rules:\n  - {name: from-a, tags: {k: a}}\n")
    (tmp_path / "notes.txt").write_text("rules: [oops\n")
    rs = load_directory(tmp_path)
    assert [r.name for r in rs.rules] == ["from-a", "from-b"]
    assert [r.index for r in rs.rules] == [0, 1]


def test_empty_directory_is_a_warning_not_an_error(tmp_path):
    rs = load_directory(tmp_path)
    assert rs.rules == []
    assert [w.message for w in rs.warnings] == ["no rule files (*.yaml, *.yml) in the directory"]


def test_missing_directory_is_a_rules_error(tmp_path):
    with pytest.raises(RulesLoadError) as info:
        load_directory(tmp_path / "nope")
    assert "cannot read rules directory" in str(info.value)


def test_unknown_selector_tag_and_overlapping_keys_warn():
    rs = load_text("""
rules:
  - name: a
    match: {cgroup: "/x/**"}
    tags: {tier: gold}
  - name: b
    match: {cgroup: "/x/y/**"}
    tags: {tier: silver}
  - name: c
    match: {tags: {colour: blue, tier: bronze}}
    tags: {seen: "yes"}
  - name: d
    match: {cgroup: "/elsewhere/**"}
    tags: {tier: gold}
""")
    got = sorted(str(w) for w in rs.warnings)
    assert got == sorted([
        '<rules>.yaml:6:5: rule "b": warning: sets tag "tier" like rule "a" on cgroups both may '
        'match; this later rule wins',
        '<rules>.yaml:10:20: rule "c": warning: tag "colour" is set by no rule',
        '<rules>.yaml:10:34: rule "c": warning: no rule sets tag tier=bronze',
    ])


def test_conditional_rules_of_one_file_may_share_a_key_but_not_across_files(tmp_path):
    # type-interactive / type-batch: one choice written side by side, no warning;
    # the same two rules in different files, or static ones in one, still warn.
    pair = ("  - name: {n}\n    match: {{cgroup: \"/**\"}}\n    when: cpu.usage {op} 0.5\n"
            "    tags: {{kind: {v}}}\n")
    low, high = pair.format(n="low", op="<", v="light"), pair.format(n="high", op=">", v="heavy")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "r.yaml").write_text("rules:\n" + low + high)
    assert load_directory(tmp_path / "one").warnings == []
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a.yaml").write_text("rules:\n" + low)
    (tmp_path / "two" / "b.yaml").write_text("rules:\n" + high)
    assert [w.message for w in load_directory(tmp_path / "two").warnings] == [
        'sets tag "kind" like rule "low" on cgroups both may match; this later rule wins']


def test_actions_and_policies_parse_into_their_specs():
    rs = load_text("""
rules:
  - name: low
    match: {cgroup: "/kubepods/besteffort/**"}
    tags: {priority: low}
  - name: cap
    match: {tags: {priority: low}}
    actions:
      cpu: {max: 0.5, period: 50ms}
      io: {device: "8:0", read_bps: 10MiB, write_iops: 100}
      rdt: {group: low, l3: "0x0f", mb: 30}
  - name: demote
    match: {tags: {priority: low}}
    actions:
      cpu: {idle: true}
policies:
  - name: web-slo
    kind: latency-slo
    protect: {tags: {priority: low}}
    slo: runq.p99 < 2ms
    throttle: {cgroup: ["/kubepods/besteffort/**"], exclude: "/kubepods/besteffort/keep"}
    alpha: 0.3
    demote: none
""")
    cap = rs.rule("cap")
    assert rs.rule("demote").actions == ActionSet("demote", CpuSpec(idle=True))
    assert cap.actions == ActionSet("cap", CpuSpec(max=0.5, period=0.05),
                                    IoSpec(device="8:0", read_bps=10 * 1024**2, write_iops=100),
                                    RdtSpec("low", "0x0f", 30))
    assert rs.policies == [LatencySloSpec(
        name="web-slo", protect=Selector(tags={"priority": "low"}),
        throttle=Selector(cgroup=("/kubepods/besteffort/**",), exclude=("/kubepods/besteffort/keep",)),
        metric="runq.p99", target=0.002, alpha=0.3, demote=())]


def test_disabled_rule_loads_but_is_not_active():
    rs = load_text("rules:\n  - {name: dormant, enabled: false, tags: {a: b}}\n"
                   "  - {name: live, tags: {a: c}}\n")
    assert [r.name for r in rs.rules] == ["dormant", "live"]
    assert [r.name for r in rs.active] == ["live"]


def test_yaml_booleans_are_not_names():
    # YAML 1.1 reads `off` as false: the loader says so instead of tagging "False".
    with pytest.raises(RulesLoadError) as info:
        load_text("rules:\n  - {name: off, tags: {a: b}}\n")
    assert [str(p) for p in info.value.problems] == ['<rules>.yaml:2:12: rule #1: name must be a string']


def test_macros_span_files_and_compile_in_dependency_order(tmp_path):
    (tmp_path / "b-rules.yaml").write_text("rules:\n  - {name: r, when: both, tags: {x: y}}\n")
    (tmp_path / "a-macros.yaml").write_text(
        "macros:\n  both: hot and slow\n  hot: cpu.usage > 1\n  slow: runq.p99 > 2ms\n")
    rs = load_directory(tmp_path)
    assert rs.rule("r").when.type == "bool"
    assert set(rs.macros) == {"both", "hot", "slow"}


def test_duplicate_macro_across_files(tmp_path):
    (tmp_path / "a.yaml").write_text("macros:\n  hot: cpu.usage > 1\n")
    (tmp_path / "b.yaml").write_text("macros:\n  hot: cpu.usage > 2\n")
    with pytest.raises(RulesLoadError) as info:
        load_directory(tmp_path)
    assert [str(p).replace(str(tmp_path) + "/", "") for p in info.value.problems] == [
        'b.yaml:2:3: macro "hot": duplicate macro (first defined in a.yaml)']


def test_a_rule_using_a_broken_macro_adds_no_second_error():
    with pytest.raises(RulesLoadError) as info:
        load_text("macros:\n  hot: cpu.usag > 1\nrules:\n  - {name: r, when: hot, tags: {x: y}}\n")
    assert [str(p) for p in info.value.problems] == [
        "<rules>.yaml:2:8: macro \"hot\": unknown metric or macro 'cpu.usag': did you mean cpu.usage?"]


def test_ruleset_empty_is_usable():
    assert RuleSet.empty().active == []


def test_loaded_policy_specs_are_hashable_and_their_tags_read_only():
    rs = load_text("""
rules:
  - {name: a, tags: {priority: low}}
policies:
  - {name: p, kind: latency-slo, protect: {tags: {priority: low}}, throttle: {cgroup: /x/**},
     slo: runq.p99 < 2ms}
""")
    spec = rs.policies[0]
    assert {spec: 1}[spec] == 1            # the daemon keys controllers by spec
    assert spec.protect.tags == {"priority": "low"}
    with pytest.raises(TypeError):
        spec.protect.tags["priority"] = "high"


def test_policy_demote_and_window_are_checked():
    policy = """
  - name: {name}
    kind: latency-slo
    protect: {{tags: {{priority: high}}}}
    slo: runq.p99 < 1ms
    throttle: {{tags: {{priority: low}}}}
    demote: {demote}"""
    with pytest.raises(RulesError) as err:
        load_text("policies:" + policy.format(name="p", demote="nope") + "\n    window: 0"
                  + policy.format(name="q", demote="[weight, idle]")
                  + policy.format(name="r", demote="[none, cpuset]") + """
rules:
  - name: s
    match: {cgroup: /a}
    actions: {cpu: {cpuset: "1-0"}}
  - name: s2
    match: {cgroup: /a}
    actions: {cpu: {cpuset: "2-x"}}
  - name: t
    match: {cgroup: /a}
    actions: {cpu: {idle: true, weight: 5}}
""")
    text = str(err.value)
    assert "unknown demote 'nope' (known: weight, idle, cpuset, none)" in text
    assert "window" in text
    assert "demote: weight and idle exclude each other" in text
    assert 'demote "none" cannot be listed with others' in text
    assert "cpu.cpuset: bad CPU range '1-0'" in text
    assert "cpu.cpuset: bad CPU range '2-x' in '2-x'" in text
    assert "cpu.idle and a weight exclude each other" in text


def test_demote_list_and_cpuset_action_load():
    rs = load_text("""
rules:
  - name: suppress
    match: {cgroup: /batch}
    actions: {cpu: {cpuset: 3, weight: 1}}
  - name: pin
    match: {cgroup: /batch2}
    actions: {cpu: {cpuset: "6-7,2"}}
policies:
  - name: p
    kind: latency-slo
    protect: {tags: {priority: high}}
    slo: runq.p99 < 1ms
    throttle: {tags: {priority: low}}
    demote: [weight, cpuset]
""")
    assert rs.rule("suppress").actions.cpu == CpuSpec(weight=1, cpuset="3")
    assert rs.rule("pin").actions.cpu == CpuSpec(cpuset="2,6-7")
    assert rs.policies[0].demote == ("weight", "cpuset")


def test_policy_ladder_and_verification_keys_load():
    rs = load_text("""
policies:
  - name: p
    kind: latency-slo
    protect: {tags: {priority: high}}
    slo: runq.p99 < 1ms
    throttle: {tags: {priority: low}}
    ladder: [weight, [idle, cpuset], quota]
    judge: 5
    gain: 30%
    cooldown: 2m
  - name: q
    kind: latency-slo
    protect: {tags: {priority: high}}
    slo: runq.p99 < 1ms
    throttle: {tags: {priority: low}}
    gain: 0.1
""")
    p, q = rs.policies
    assert p.rungs() == (("weight",), ("idle", "cpuset"), ("quota",))
    assert (p.judge, p.gain, p.cooldown) == (5, pytest.approx(0.3), 120.0)
    assert q.rungs() == (("idle",), ("weight",), ("quota",), ("cpuset",))      # the default ladder
    assert (q.judge, q.gain, q.cooldown) == (3, 0.1, 60.0)


def test_policy_ladder_is_checked():
    policy = """
  - name: {name}
    kind: latency-slo
    protect: {{tags: {{priority: high}}}}
    slo: runq.p99 < 1ms
    throttle: {{tags: {{priority: low}}}}
    {extra}"""
    bad = {"a": "ladder: [idle, nope]", "b": "ladder: [idle, idle]", "c": "ladder: [[weight, idle]]",
           "d": "ladder: [[quota, cpuset]]", "e": "ladder: []", "f": "ladder: [idle]\n    demote: weight",
           "g": "gain: 1", "h": "gain: 150%", "i": "judge: 0", "j": "cooldown: soon"}
    with pytest.raises(RulesError) as err:
        load_text("policies:" + "".join(policy.format(name=n, extra=e) for n, e in bad.items()))
    text = str(err.value)
    for message in ("unknown lever 'nope' (known: idle, weight, quota, cpuset)",
                    "ladder: idle twice", "ladder: weight and idle exclude each other in one rung",
                    "ladder: quota is a rung of its own", "ladder must be a list of levers",
                    "ladder and demote exclude each other", "gain must lie between 0 and 1",
                    "judge must be greater than 0", "cooldown: bad duration"):
        assert message in text, message
    assert text.count("gain must lie") == 2
