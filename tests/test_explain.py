"""``tagger explain CGROUP`` against a real socket server: the packaged rules
run over synthetic ticks (a service waiting behind a batch job), the server
holds the tags they set and the last Snapshot, and explain shows for each tag
the rule, the figures its condition reads, since when, and what clears it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tagger.publish.socket import ApiServer
from tagger.cli.explain import explain
from tagger.agent.rules_state import rules_summary
from tagger.rules import Engine, load_directory
from tagger.snapshot import CULPRIT_DTYPE, Snapshot
from tagger.publish.report import Health, TickReport
from tests.cgroup_fixture import wait_for

RULES = Path(__file__).resolve().parent.parent / "rules"
WEB, BATCH = "/work/web", "/work/batch"


def _tick(t):
    snap = Snapshot.synthetic([WEB, BATCH], {
        "sched.switches": [500, 0], "cpu.usage": [0.1, 1.9], "runq.wait": [0.35, 0.1],
        "runq.wait.foreign": [0.3, 0.05], "runq.wakeup.p99": [0.012, np.nan],
    }, t=t, node={"cpus": 2, "cpu.steal": 0.0})
    snap.culprits = np.array([(0, 1, 0.3), (1, 0, 0.05)], CULPRIT_DTYPE)
    snap.seq = int(t)
    return snap


@pytest.fixture
def agent(tmp_path):
    """A socket server holding what the agent would after 12 ticks of the packaged rules."""
    ruleset = load_directory(RULES)
    engine = Engine(ruleset)
    for t in range(12):
        snap = _tick(float(t))
        engine.evaluate(snap)
    srv = ApiServer(str(tmp_path / "tagger.sock")).start()
    srv.set_rules(rules_summary(ruleset, str(RULES)))
    srv.publish(TickReport(snap, engine.store.current(), [], [], Health.from_plain({"ticks": 12})))
    try:
        yield srv
    finally:
        srv.close()


def _explain(srv, *args):
    runner = CliRunner()
    # The server applies a published tick on its own thread: wait until it holds one.
    wait_for(lambda: runner.invoke(explain, ["--socket", srv.path, "--json", WEB]).exit_code == 0,
             what="the server to hold the tick")
    return runner.invoke(explain, ["--socket", srv.path, *args])


def test_a_victim_shows_its_rule_figures_and_what_clears_it(agent):
    res = _explain(agent, "--json", WEB)
    assert res.exit_code == 0, res.output
    tags = json.loads(res.output)["tags"]
    assert set(tags) == {"runq", "type"}
    s = tags["runq"]
    assert s["value"] == "starved" and s["rule"] == "runq-starved"
    assert "rules/30-contention.yaml:" in s["source"]
    assert isinstance(s["since"], float)
    assert s["when"]["now"] is True
    assert s["when"]["figures"]["runq.wait.foreign"] == pytest.approx(0.3)
    assert s["when"]["figures"]["node.cpu.steal"] == 0.0
    names = [m["name"] for m in s["when"]["macros"]]
    assert {"latency_sensitive", "wakes_often", "short_bursts", "slowed_by_others", "foreign_wait"} <= set(names)
    assert s["clear_when"]["now"] is False
    assert "clear_when" in s["clears"] and "10s" in s["clears"] and s["clears"].endswith("not now")


def test_a_culprit_shows_the_wait_charged_to_it(agent):
    res = _explain(agent, "--json", BATCH)
    assert res.exit_code == 0, res.output
    noisy = json.loads(res.output)["tags"]["neighbour"]
    assert noisy["rule"] == "noisy-neighbour"
    assert noisy["when"]["figures"]['culprit_of_tagged(\'runq\', \'starved\')'] == pytest.approx(0.3)
    assert noisy["when"]["figures"]['culprit_most(\'runq\', \'starved\')'] is True
    assert noisy["charged_by"] == [{"victim": WEB, "tag": "runq=starved", "wait": pytest.approx(0.3)}]


def test_text_output_and_errors(agent):
    res = _explain(agent, BATCH)
    assert res.exit_code == 0, res.output
    for line in ("neighbour=noisy", "since", "rule     noisy-neighbour", "charged  0.3 s/s of /work/web",
                 "clears   when `when` stops holding for 10s - not now"):
        assert line in res.output
    res = CliRunner().invoke(explain, ["--socket", agent.path, "/no/such"])
    assert res.exit_code != 0 and "no such cgroup" in res.output


def test_the_policy_steps_naming_the_cgroup_follow_its_tags(tmp_path):
    """The latency-slo steps the agent's health carries are shown for the
    cgroup they name, as culprit or victim, with their outcome; others not."""
    ruleset = load_directory(RULES)
    engine = Engine(ruleset)
    snap = _tick(0.0)
    engine.evaluate(snap)
    steps = [{"policy": "web-slo", "t": 1.0, "victim": WEB, "culprit": BATCH, "lever": "idle",
              "outcome": "helped", "before": 0.004, "after": 0.0008},
             {"policy": "web-slo", "t": 2.0, "victim": WEB, "culprit": BATCH, "lever": "idle",
              "outcome": "needed", "before": 0.0008, "after": 0.003},
             {"policy": "web-slo", "t": 3.0, "victim": WEB, "culprit": "/work/other", "lever": "idle",
              "outcome": "released", "before": 0.0008, "after": 0.0007}]
    srv = ApiServer(str(tmp_path / "tagger.sock")).start()
    try:
        srv.set_rules(rules_summary(ruleset, str(RULES)))
        srv.publish(TickReport(snap, engine.store.current(), [], [],
                               Health.from_plain({"ticks": 1, "policy_recent_steps": steps})))
        res = _explain(srv, BATCH)
        assert res.exit_code == 0, res.output
        assert "policy steps naming /work/batch" in res.output
        assert "web-slo: idle helped: kept (culprit of /work/web" in res.output
        assert "web-slo: idle given back: still needed, put back" in res.output
        assert "/work/other" not in res.output
        res = CliRunner().invoke(explain, ["--socket", srv.path, "--json", WEB])
        assert [s["culprit"] for s in json.loads(res.output)["policy_steps"]] == [BATCH, BATCH, "/work/other"]
    finally:
        srv.close()
