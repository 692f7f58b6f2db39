"""The tag engine: the per-rule state machine, cgroup churn, precedence between
rules, tag() and preemption functions, reload."""

from __future__ import annotations

import numpy as np
import pytest

from tagger.rules import Engine, load_text
from tagger.snapshot import CULPRIT_DTYPE, PREEMPTION_DTYPE, Snapshot
from tagger.tags import TagStore


def snap(t, paths, **cols):
    return Snapshot.synthetic(paths, {k.replace("_", "."): v for k, v in cols.items()}, t=float(t))


def run(rules_text, ticks, paths):
    """ticks: list of cpu.usage lists (one value per path); returns tags per tick."""
    engine = Engine(load_text(rules_text))
    out = []
    for t, usage in enumerate(ticks):
        engine.evaluate(snap(t, paths, cpu_usage=usage))
        out.append({p: {k: tag.value for k, tag in engine.store.tags_of(p).items()} for p in paths})
    return engine, out


HOT = """
rules:
  - name: hot
    when: cpu.usage > 0.8
    for: 3s
    keep_for: 2s
    tags: {cpu: hot}
"""


def test_for_delays_the_tag_until_the_condition_has_held_that_long():
    _, out = run(HOT, [[0.9]] * 5, ["/a"])
    assert [o["/a"] for o in out] == [{}, {}, {}, {"cpu": "hot"}, {"cpu": "hot"}]


def test_a_dip_before_for_elapses_restarts_the_wait():
    _, out = run(HOT, [[0.9], [0.9], [0.1], [0.9], [0.9], [0.9], [0.9]], ["/a"])
    assert [bool(o["/a"]) for o in out] == [False, False, False, False, False, False, True]


def test_keep_for_holds_the_tag_after_the_condition_stops():
    _, out = run(HOT, [[0.9]] * 4 + [[0.1]] * 4, ["/a"])
    # fires at t=3; release starts t=4; cleared when 2s of release have passed (t=6)
    assert [bool(o["/a"]) for o in out] == [False, False, False, True, True, True, False, False]


def test_condition_returning_during_keep_for_keeps_firing_without_new_wait():
    _, out = run(HOT, [[0.9]] * 4 + [[0.1], [0.9], [0.1], [0.1], [0.1]], ["/a"])
    assert [bool(o["/a"]) for o in out] == [False, False, False, True, True, True, True, True, False]


def test_clear_when_gives_hysteresis():
    rules = """
rules:
  - name: hot
    when: cpu.usage > 0.8
    clear_when: cpu.usage < 0.5
    tags: {cpu: hot}
"""
    _, out = run(rules, [[0.9], [0.7], [0.6], [0.4], [0.7]], ["/a"])
    assert [bool(o["/a"]) for o in out] == [True, True, True, False, False]


def test_nan_never_fires_and_never_clears_through_a_comparison():
    rules = """
rules:
  - name: hot
    when: cpu.usage > 0.8
    clear_when: cpu.usage < 0.5
    tags: {cpu: hot}
  - name: not-equal
    when: cpu.usage != 1
    tags: {ne: "yes"}
"""
    _, out = run(rules, [[np.nan], [0.9], [np.nan], [0.1]], ["/a"])
    assert [o["/a"] for o in out] == [{}, {"cpu": "hot", "ne": "yes"}, {"cpu": "hot"}, {"ne": "yes"}]


def test_static_rules_tag_matches_at_once_and_untag_when_they_stop_matching():
    rules = """
rules:
  - name: low
    match: {cgroup: "/kubepods/besteffort/**", exclude: ["/kubepods/besteffort/keep"]}
    tags: {priority: low}
  - name: named
    match: {names: ["web-*"]}
    tags: {app: web}
"""
    engine = Engine(load_text(rules))
    paths = ["/", "/kubepods/besteffort", "/kubepods/besteffort/p1/c", "/kubepods/besteffort/keep",
             "/kubepods/burstable/web-1"]
    engine.evaluate(snap(0, paths))
    cur = {p: {k: t.value for k, t in tags.items()} for p, tags in engine.store.current().items()}
    assert cur == {"/kubepods/besteffort": {"priority": "low"},
                   "/kubepods/besteffort/p1/c": {"priority": "low"},
                   "/kubepods/burstable/web-1": {"app": "web"}}


def test_vanished_cgroups_lose_their_tags_with_removed_events():
    engine = Engine(load_text(HOT))
    for t in range(4):
        engine.evaluate(snap(t, ["/a", "/b"], cpu_usage=[0.9, 0.9]))
    assert engine.store.tags_of("/b")
    result = engine.evaluate(snap(4, ["/a"], cpu_usage=[0.9]))
    assert [(e.cgroup, e.key, e.old, e.kind, e.rule) for e in result.events] == [
        ("/b", "cpu", "hot", "removed", "hot")]
    assert engine.store.tags_of("/b") == {}
    # /b comes back: it starts from idle, not from its old timer
    for t in range(5, 7):
        engine.evaluate(snap(t, ["/a", "/b"], cpu_usage=[0.9, 0.9]))
    assert engine.store.tags_of("/b") == {}


def test_state_follows_the_path_when_rows_are_reordered_and_cgroups_come_and_go():
    engine = Engine(load_text(HOT))
    engine.evaluate(snap(0, ["/a", "/b"], cpu_usage=[0.9, 0.1]))
    engine.evaluate(snap(1, ["/new", "/b", "/a"], cpu_usage=[0.9, 0.1, 0.9]))
    engine.evaluate(snap(2, ["/b", "/a", "/new"], cpu_usage=[0.1, 0.9, 0.9]))
    result = engine.evaluate(snap(3, ["/a", "/new", "/b"], cpu_usage=[0.9, 0.9, 0.1]))
    assert [(e.cgroup, e.kind) for e in result.events] == [("/a", "added")]
    result = engine.evaluate(snap(4, ["/b", "/new", "/a"], cpu_usage=[0.1, 0.9, 0.9]))
    assert [(e.cgroup, e.kind) for e in result.events] == [("/new", "added")]


def test_later_rule_wins_a_key_and_the_earlier_value_returns_when_it_stops():
    rules = """
rules:
  - name: base
    tags: {class: normal}
  - name: hot
    when: cpu.usage > 0.8
    tags: {class: hot}
"""
    engine = Engine(load_text(rules))
    kinds = []
    for t, u in enumerate([0.1, 0.9, 0.1]):
        r = engine.evaluate(snap(t, ["/a"], cpu_usage=[u]))
        kinds.append([(e.kind, e.value, e.old, e.rule) for e in r.events])
    assert kinds == [[("added", "normal", None, "base")],
                     [("changed", "hot", "normal", "hot")],
                     [("changed", "normal", "hot", "base")]]
    assert engine.store.tags_of("/a")["class"].rule == "base"


def test_tag_expressions_see_tags_set_earlier_in_the_same_tick():
    rules = """
rules:
  - name: low
    match: {cgroup: "/be/**"}
    tags: {priority: low}
  - name: low-and-busy
    when: tag("priority") == "low" and cpu.usage > 0.5
    tags: {victim: "no"}
  - name: not-low
    when: tag("priority") != "low"
    tags: {other: "yes"}
"""
    engine = Engine(load_text(rules))
    engine.evaluate(snap(0, ["/be/x", "/be/y", "/fg"], cpu_usage=[0.9, 0.1, 0.9]))
    cur = {p: {k: t.value for k, t in tags.items()} for p, tags in engine.store.current().items()}
    assert cur == {"/be/x": {"priority": "low", "victim": "no"}, "/be/y": {"priority": "low"},
                   "/fg": {"other": "yes"}}


def test_match_by_tags_gates_actions_and_actions_name_their_rule():
    rules = """
rules:
  - name: low
    match: {cgroup: "/be/**"}
    tags: {priority: low}
  - name: hot
    when: cpu.usage > 0.8
    tags: {cpu: hot}
  - name: cap
    match: {tags: {priority: low, cpu: hot}}
    actions:
      cpu: {max: 0.5}
"""
    engine = Engine(load_text(rules))
    r = engine.evaluate(snap(0, ["/be/x", "/be/y", "/fg"], cpu_usage=[0.9, 0.1, 0.9]))
    assert list(r.actions) == ["/be/x"]
    assert [a.rule for a in r.actions["/be/x"]] == ["cap"]
    assert r.actions["/be/x"][0].cpu.max == 0.5
    r = engine.evaluate(snap(1, ["/be/x", "/be/y", "/fg"], cpu_usage=[0.1, 0.1, 0.9]))
    assert r.actions == {}


def _preempt_snap(t, paths, rows, **cols):
    s = snap(t, paths, **cols)
    s.preemptions = np.array(rows, PREEMPTION_DTYPE)
    return s


def test_preempts_functions_agree_with_snapshot_preempted_by():
    rules = """
rules:
  - name: starved
    match: {cgroup: "/v*"}
    tags: {runq: starved}
  - name: noisy
    when: preempts_most("runq", "starved")
    tags: {neighbour: noisy}
  - name: rate
    when: preempts_tagged("runq", "starved") > 25
    tags: {preempts: many}
"""
    paths = ["/v1", "/v2", "/p1", "/p2", "/p3", "/other"]
    rows = [(0, 2, 30), (0, 3, 10), (1, 3, 50), (1, 4, 20), (5, 4, 500), (1, 1, 900)]
    engine = Engine(load_text(rules))
    s = _preempt_snap(0, paths, rows)
    s.dt = 2.0
    engine.evaluate(s)
    # Snapshot.preempted_by() counts a cgroup preempting itself; the rule function
    # does not (its own tasks are not a neighbour), so compare without those rows.
    s.preemptions = s.preemptions[s.preemptions["victim"] != s.preemptions["preemptor"]]
    top = s.preempted_by()
    expected_noisy = {paths[top[i]] for i in (0, 1)}
    noisy = {p for p, tags in engine.store.current().items() if "neighbour" in tags}
    assert noisy == expected_noisy == {"/p1", "/p2"}
    # rates per second over dt=2: p1 15/s, p2 30/s, p3 10/s (the 500 hit an untagged row,
    # and a cgroup preempting itself is not counted)
    many = {p for p, tags in engine.store.current().items() if "preempts" in tags}
    assert many == {"/p2"}


def test_culprit_functions_charge_the_starved_cgroups_wait_to_who_held_the_cpu():
    """culprit_most is Snapshot.culprit_of() restricted to tagged victims;
    culprit_of_tagged sums the wait (s/s) charged by tagged victims only."""
    rules = """
rules:
  - name: starved
    match: {cgroup: "/v*"}
    tags: {runq: starved}
  - name: noisy
    when: culprit_most("runq", "starved")
    tags: {neighbour: noisy}
  - name: charged
    when: culprit_of_tagged("runq", "starved") > 250ms
    tags: {charged: much}
"""
    paths = ["/v1", "/v2", "/c1", "/c2", "/c3", "/other"]
    # (victim, culprit, wait s/s): /c3 holds the CPU longest for /other, which is
    # not starved; /v2 waiting behind itself is not a neighbour's doing.
    rows = [(0, 2, 0.20), (0, 3, 0.05), (1, 3, 0.30), (1, 4, 0.10), (5, 4, 0.90), (1, 1, 2.0)]
    engine = Engine(load_text(rules))
    s = snap(0, paths)
    s.culprits = np.array(rows, CULPRIT_DTYPE)
    engine.evaluate(s)
    own = s.culprits["victim"] == s.culprits["culprit"]
    s.culprits = s.culprits[~own]
    top = s.culprit_of()
    noisy = {p for p, tags in engine.store.current().items() if "neighbour" in tags}
    assert noisy == {paths[top[i]] for i in (0, 1)} == {"/c1", "/c2"}
    # charged by starved victims: c1 0.20, c2 0.05 + 0.30, c3 0.10 (its 0.90 is /other's)
    much = {p for p, tags in engine.store.current().items() if "charged" in tags}
    assert much == {"/c2"}


def test_preempts_functions_still_load_with_a_deprecation_warning():
    rs = load_text("""
rules:
  - name: old-noisy
    when: preempts_most("runq", "starved") and preempts_tagged("runq", "starved") > 20
    tags: {neighbour: noisy}
""")
    assert [r.name for r in rs.rules] == ["old-noisy"]
    msgs = [w.message for w in rs.warnings if "deprecated" in w.message]
    assert len(msgs) == 2 and all("deprecated" in m for m in msgs)
    assert "culprit_most()" in msgs[0] and "culprit_of_tagged()" in msgs[1]


def test_replace_rules_keeps_timers_of_unchanged_rules_and_drops_removed_rules_tags():
    other = """
rules:
  - name: other
    tags: {x: y}
"""
    engine = Engine(load_text(HOT))
    for t in range(2):
        engine.evaluate(snap(t, ["/a"], cpu_usage=[0.9]))
    engine.replace_rules(load_text(HOT + other.replace("rules:\n", "")))
    r = engine.evaluate(snap(3, ["/a"], cpu_usage=[0.9]))
    assert sorted((e.key, e.kind) for e in r.events) == [("cpu", "added"), ("x", "added")]
    engine.replace_rules(load_text(other))
    r = engine.evaluate(snap(4, ["/a"], cpu_usage=[0.9]))
    assert [(e.key, e.kind) for e in r.events] == [("cpu", "removed")]


def test_changed_rule_starts_its_timer_again():
    engine = Engine(load_text(HOT))
    for t in range(2):
        engine.evaluate(snap(t, ["/a"], cpu_usage=[0.9]))
    engine.replace_rules(load_text(HOT.replace("for: 3s", "for: 2s")))
    engine.evaluate(snap(2, ["/a"], cpu_usage=[0.9]))
    assert engine.store.tags_of("/a") == {}
    engine.evaluate(snap(4, ["/a"], cpu_usage=[0.9]))
    assert engine.store.tags_of("/a")["cpu"].value == "hot"


def test_engine_over_a_store_with_tags_adopts_them_and_drops_gone_cgroups():
    store = TagStore()
    store.set("/a", "cpu", "hot", "hot", 0.0)
    store.set("/gone", "cpu", "hot", "hot", 0.0)
    engine = Engine(load_text(HOT), store)
    r = engine.evaluate(snap(10, ["/a"], cpu_usage=[0.1]))
    # /gone vanished at once; /a's tag was set by `hot`, which counts as firing, so
    # it stays for keep_for (2s) after its condition stopped.
    assert [(e.cgroup, e.kind) for e in r.events] == [("/gone", "removed")]
    assert engine.evaluate(snap(11, ["/a"], cpu_usage=[0.1])).events == []
    r = engine.evaluate(snap(12, ["/a"], cpu_usage=[0.1]))
    assert [(e.cgroup, e.kind) for e in r.events] == [("/a", "removed")]


def test_node_metrics_broadcast_over_rows():
    rules = """
rules:
  - name: node-busy
    when: node.cpu.usage / node.cpus > 90%
    tags: {node: busy}
"""
    engine = Engine(load_text(rules))
    s = snap(0, ["/a", "/b"])
    s.node = {"cpu.usage": 3.9, "cpus": 4}
    engine.evaluate(s)
    assert set(engine.store.current()) == {"/a", "/b"}
    s = snap(1, ["/a", "/b"])           # node figures unknown: NaN, condition false
    engine.evaluate(s)
    assert engine.store.current() == {}


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_tables(n):
    engine = Engine(load_text(HOT))
    engine.evaluate(snap(0, ["/a"][:n], cpu_usage=[0.9][:n]))


# --- the vectorised state machine against a one-row-at-a-time reference ---------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_EPS = 1e-9


def _reference(values, t_list, for_, keep, clear, slack=_EPS):
    """The state machine of docs/rules.md for one row, with plain floats;
    ``slack`` is the engine's jitter tolerance (a quarter tick)."""
    pending, firing, release = float("nan"), False, float("nan")
    out = []
    for t, v in zip(t_list, values):
        w = v > 0.5                    # NaN compares false
        c = v < 0.2
        if w and pending != pending:
            pending = t
        if not w and not firing:
            pending = float("nan")
        if w and t - pending >= for_ - slack:
            firing = True
        rel = (not w) and (c if clear else True)
        if firing and rel:
            if release != release:
                release = t
            if t - release >= keep - slack:
                firing, pending, release = False, float("nan"), float("nan")
        else:
            release = float("nan")
        out.append(firing)
    return out


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(st.sampled_from([0.1, 0.3, 0.7, float("nan")]), min_size=12,
                              max_size=12), min_size=1, max_size=5),
       for_=st.sampled_from([0, 1, 2.5, 3]), keep=st.sampled_from([0, 1, 2, 4]),
       clear=st.booleans(), step=st.sampled_from([0.5, 1.0]))
def test_state_machine_matches_the_reference(rows, for_, keep, clear, step):
    text = f"""
rules:
  - name: r
    when: cpu.usage > 0.5
    for: {for_}
    keep_for: {keep}
    {"clear_when: cpu.usage < 0.2" if clear else ""}
    tags: {{hit: "yes"}}
"""
    paths = [f"/c{i}" for i in range(len(rows))]
    engine = Engine(load_text(text))
    times = [k * step for k in range(12)]
    got = {p: [] for p in paths}
    for k, t in enumerate(times):
        engine.evaluate(Snapshot.synthetic(paths, {"cpu.usage": [r[k] for r in rows]}, t=t, dt=step))
        for p in paths:
            got[p].append("hit" in engine.store.tags_of(p))
    for p, values in zip(paths, rows):
        assert got[p] == _reference(values, times, for_, keep, clear, slack=0.25 * step), (p, values)


def test_a_tick_slightly_early_does_not_cost_a_whole_tick():
    """Real ticks jitter: `for: 2s` at a 1 s tick fires on the tick 2 s after
    the condition began, even when that tick is read 0.5 ms early."""
    engine = Engine(load_text("""
rules:
  - name: r
    when: cpu.usage > 0.5
    for: 2s
    keep_for: 2s
    tags: {hit: "yes"}
"""))
    seen = []
    times = [0.0, 1.0, 1.9995, 3.0, 4.0, 4.9995, 6.0]
    values = [0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1]
    for t, v in zip(times, values):
        engine.evaluate(Snapshot.synthetic(["/a"], {"cpu.usage": [v]}, t=t, dt=1.0))
        seen.append("hit" in engine.store.tags_of("/a"))
    assert seen == [False, False, True, True, True, True, False]
