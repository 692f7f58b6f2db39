"""``tagger actions``: lists what is changed and why, from the journal."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tagger.actions.journal import JOURNAL_NAME, Entry, Journal
from tagger.cli.actions import actions


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path, durable=False)
    j.put(Entry("/batch/a", "cpu.max", "max 100000", "30000 100000", "cap-low-priority-hogs"))
    j.put(Entry("", "rdt.group batch", "absent", "present", "cache-hogs", made=True))
    j.put(Entry("/batch/b", "cpu.idle", "0 1536", "1", "latency-slo:web"))
    j.put(Entry("/batch/c", "cpuset.cpus", "", "1", "latency-slo:web"))
    return j


def test_table_lists_each_knob_with_its_rule(journal, tmp_path):
    out = CliRunner().invoke(actions, ["--state-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["CGROUP", "KNOB", "VALUE", "ORIGINAL", "RULE", "SINCE"]
    rows = {tuple(line.split("  ")[0:1]) + tuple(c.strip() for c in line.split("  ") if c.strip())[1:4]
            for line in lines[1:5]}
    assert rows == {("/batch/a", "cpu.max", "0.3 CPU per 100ms", "unlimited"),
                    ("/batch/b", "cpu.idle", "SCHED_IDLE", "not idle, weight 1536"),
                    ("/batch/c", "cpuset.cpus", "CPUs 1", "the parent's CPUs"),
                    ("(resctrl)", "rdt.group batch", "present", "absent")}
    assert "cap-low-priority-hogs" in out.output
    assert "no agent is running" in out.output          # nobody holds the lock


def test_json_and_the_running_agent(journal, tmp_path):
    journal.lock()                                      # as a running agent would
    try:
        out = CliRunner().invoke(actions, ["--json", "--state-dir", str(tmp_path)])
    finally:
        journal.unlock()
    doc = json.loads(out.output)
    assert doc["agent_pid"] > 0
    assert {(a["cgroup"], a["knob"], a["value"], a["original"]) for a in doc["actions"]} == {
        ("/batch/a", "cpu.max", "30000 100000", "max 100000"), (None, "rdt.group batch", "present", "absent"),
        ("/batch/b", "cpu.idle", "1", "0 1536"), ("/batch/c", "cpuset.cpus", "1", "")}


def test_empty_and_unreadable(tmp_path):
    out = CliRunner().invoke(actions, ["--state-dir", str(tmp_path)])
    assert out.output.strip() == "no kernel settings changed"
    (tmp_path / JOURNAL_NAME).write_text("garbage")
    out = CliRunner().invoke(actions, ["--state-dir", str(tmp_path)])
    assert out.exit_code == 1 and "1 damaged journal record" in out.stderr
    assert (tmp_path / JOURNAL_NAME).read_text() == "garbage"   # a viewer never moves it


def test_a_damaged_journal_still_lists_its_intact_entries(tmp_path):
    journal = Journal(tmp_path)
    journal.put(Entry("/a", "cpu.max", "max 100000", "30000 100000", "r"))
    journal.put(Entry("/b", "cpu.weight", "100", "1", "r"))
    path = tmp_path / JOURNAL_NAME
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])   # the last record torn
    out = CliRunner().invoke(actions, ["--state-dir", str(tmp_path), "--json"])
    assert out.exit_code == 1
    doc = json.loads(out.stdout)
    assert [(a["cgroup"], a["knob"]) for a in doc["actions"]] == [("/a", "cpu.max")]
    assert len(doc["damaged"]) == 1 and "/b" in doc["damaged"][0]


@pytest.mark.root
@pytest.mark.cgroup_v1
def test_restore_puts_a_crashed_agents_knobs_back(make_cgroup, tmp_path):
    cg = make_cgroup("left", controllers=("cpu",))
    (cg.dir("cpu") / "cpu.cfs_quota_us").write_text("30000")         # as the crashed agent left it
    Journal(tmp_path).put(Entry(cg.path, "cpu.max", "max 100000", "30000 100000", "r"))
    out = CliRunner().invoke(actions, ["--state-dir", str(tmp_path), "--restore"])
    assert out.exit_code == 0, out.output
    assert "restored 1 of 1 knobs" in out.output
    assert (cg.dir("cpu") / "cpu.cfs_quota_us").read_text().strip() == "-1"
    assert not (tmp_path / JOURNAL_NAME).exists()


def test_policy_steps_are_listed_with_their_judgment(tmp_path):
    """The agent's step log (tagger.policies.steplog) below the journal: each
    step's lever, victim, culprit, outcome, and the victim's figure before and
    over its judgment window; in --json too."""
    import time

    from tagger.policies.steplog import write_steps
    now = time.time()
    write_steps(tmp_path, [
        {"policy": "web-slo", "t": now - 90, "victim": "/web", "culprit": "/batch",
         "lever": "idle", "outcome": "no_effect", "before": 5e-3, "after": 5e-3},
        {"policy": "web-slo", "t": now - 86, "victim": "/web", "culprit": "/batch",
         "lever": "weight", "outcome": "helped", "before": 5e-3, "after": 0.5e-3},
        {"policy": "web-slo", "t": now - 80, "victim": "/web", "culprit": "/batch",
         "lever": "quota", "outcome": "unjudged", "before": 4e-3, "after": float("nan")}])
    out = CliRunner().invoke(actions, ["--state-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "no kernel settings changed"
    head = next(i for i, line in enumerate(lines) if line.startswith("WHEN"))
    rows = [line.split() for line in lines[head + 1:]]
    assert [r[2:] for r in rows] == [
        ["web-slo", "/web", "/batch", "idle", "no", "effect:", "undone", "5ms", "->", "5ms"],
        ["web-slo", "/web", "/batch", "weight", "helped:", "kept", "5ms", "->", "0.5ms"],
        ["web-slo", "/web", "/batch", "quota", "not", "judged", "4ms", "->", "-"]]
    assert rows[0][:2] == ["2m", "ago"]                   # 90 s ago
    doc = json.loads(CliRunner().invoke(actions, ["--json", "--state-dir", str(tmp_path)]).output)
    assert [(s["lever"], s["outcome"], s["after"]) for s in doc["policy_steps"]] == [
        ("idle", "no_effect", 5e-3), ("weight", "helped", 0.5e-3), ("quota", "unjudged", None)]


def test_a_damaged_step_log_lists_no_steps(tmp_path):
    from tagger.policies.steplog import STEPS_NAME, read_steps
    for text in ("garbage", "[]", '{"steps": 3}', '{"steps": [1, {"lever": "idle"}]}'):
        (tmp_path / STEPS_NAME).write_text(text)
        assert read_steps(tmp_path) == ([{"lever": "idle"}] if "idle" in text else [])
        out = CliRunner().invoke(actions, ["--state-dir", str(tmp_path)])
        assert out.exit_code == 0 and out.output.startswith("no kernel settings changed"), out.output
