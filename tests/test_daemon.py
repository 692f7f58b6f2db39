"""The daemon's wiring, reload, ownership check, sd_notify and teardown, with a
synthetic collector and a recording actuator (the real-kernel end-to-end bar
is in test_daemon_e2e.py)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tagger.actions.actuator import AppliedAction
from tagger.client import ApiClient
from tagger.clock import epoch
from tagger.agent.config import Config, check_rules_ownership, read_config_file
from tagger.agent.daemon import Daemon
from tagger.errors import ConfigError
from tagger.sdnotify import Notifier
from tagger.telemetry.base import Collector
from tagger.snapshot import Snapshot
from tests.cgroup_fixture import wait_for

RULES = """
rules:
  - name: cpu-intensive
    match: {cgroup: "/**"}
    when: cpu.usage > 0.8
    for: 0s
    keep_for: 0s
    tags: {resource: cpu-intensive}
  - name: cap-hogs
    match: {tags: {resource: cpu-intensive}}
    actions:
      cpu: {max: 0.5}
"""

MORE_RULES = """
rules:
  - name: everyone-low
    match: {cgroup: "/**"}
    tags: {priority: low}
"""


class FakeCollector(Collector):
    """Synthetic snapshots; ``usage`` (path -> CPUs) may be changed between
    ticks.  ``refreshed``: the paths the pipeline asked to read again."""

    def __init__(self, usage):
        self.usage = dict(usage)
        self.seq = 0
        self.closed = False
        self.refreshed: list[set] = []

    def refresh(self, paths):
        self.refreshed.append(set(paths))

    def tick(self):
        self.seq += 1
        paths = sorted(self.usage)
        snap = Snapshot.synthetic(paths, {"cpu.usage": [self.usage[p] for p in paths]},
                                  t=self.seq * 0.05, dt=0.05)
        snap.seq = self.seq
        return snap

    def health(self):
        return {"source": "synthetic", "bpf_ns_per_event": 75.0, "drops": 3}

    def close(self):
        self.closed = True


class RecordingActuator:
    def __init__(self):
        self.desired = {}
        self.recovered = self.closed = False

    def recover(self):
        self.recovered = True
        return []

    def apply(self, snapshot, desired):
        self.desired = desired
        return self.current()

    def current(self):
        out = []
        for path, sets in self.desired.items():
            for s in sets:
                if s.cpu and s.cpu.max:
                    quota = int(s.cpu.max * 100000)
                    out.append(AppliedAction(path, "cpu.max", f"{quota} 100000", "max 100000", s.rule, 0.0, False))
        return out

    def close(self):
        self.closed = True
        self.desired = {}


class Running:
    """A Daemon on a thread, stopped on every exit path."""

    def __init__(self, tmp_path, rules_dir, usage, **cfg):
        self.collector = FakeCollector(usage)
        self.actuator = RecordingActuator()
        self.notify = None
        config = Config(rules=str(rules_dir), interval=0.05, socket=str(tmp_path / "tagger.sock"),
                        metrics="127.0.0.1:0", state_dir=str(tmp_path / "state"), **cfg)
        self.daemon = Daemon(config, collector=self.collector, actuator=self.actuator,
                             notifier=cfg.pop("notifier", None) if False else None)
        self.result = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.result = self.daemon.run()
        except BaseException as err:   # surfaced by the test
            self.error = err

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: self.daemon.ready or self.error, timeout=10, what="daemon ready")
        if self.error:
            raise self.error
        wait_for(lambda: self.daemon.cost.ticks >= 1, timeout=10, what="first tick")
        return self

    def __exit__(self, *exc):
        self.daemon.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "daemon did not stop"


def make_rules_dir(tmp_path):
    """tmp_path/rules holding RULES, with the modes the ownership check wants."""
    d = tmp_path / "rules"
    d.mkdir(mode=0o755)
    (d / "10-cpu.yaml").write_text(RULES)
    os.chmod(d / "10-cpu.yaml", 0o644)
    return d


@pytest.fixture
def rules_dir(tmp_path):
    return make_rules_dir(tmp_path)


def test_tick_flows_to_socket_metrics_and_actions(tmp_path, rules_dir):
    with Running(tmp_path, rules_dir, {"/hog": 1.5, "/idle": 0.1}) as run:
        with ApiClient(run.daemon.config.socket) as client:
            wait_for(lambda: "/hog" in client.request("tags"), timeout=5, what="tag over the socket")
            assert client.request("tags")["/hog"]["resource"]["value"] == "cpu-intensive"
            [act] = client.request("actions")
            assert act["knob"] == "cpu.max" and act["value"] == "50000 100000"
            health = client.request("health")
            assert health["ticks"] >= 1 and health["rules_loaded"] == 2
            assert health["bpf_ns_per_event"] == 75.0 and health["ringbuf_drops"] == 3
            assert health["tick_seconds"] >= 0 and "tick_jitter_seconds" in health
            rules = client.request("rules")
            assert [r["name"] for r in rules["rules"]] == ["cpu-intensive", "cap-hogs"]
        assert run.actuator.recovered
        assert [s.rule for s in run.actuator.desired["/hog"]] == ["cap-hogs"]

        with urllib.request.urlopen(run.daemon.metrics.url, timeout=5) as resp:
            text = resp.read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        tag = [s for s in fams["tagger_tag"].samples if s.labels["cgroup"] == "/hog"]
        assert tag and tag[0].labels["value"] == "cpu-intensive"
        assert fams["tagger_cpu_max_cpus"].samples[0].value == 0.5
        assert fams["tagger_tick_seconds"].samples[0].value >= 0

        run.collector.usage["/hog"] = 0.1                 # the hog calms down
        with ApiClient(run.daemon.config.socket) as client:
            wait_for(lambda: not client.request("tags"), timeout=5, what="tag cleared")
            assert client.request("actions") == []
            history = client.request("history", cgroup="/hog")
            assert [e["kind"] for e in history] == ["added", "removed"]
    # teardown: reverted, collector closed, socket gone, exit 0
    assert run.result == 0 and run.error is None
    assert run.actuator.closed and run.collector.closed
    assert not os.path.exists(run.daemon.config.socket)


def test_reload_with_broken_file_keeps_previous_rules(tmp_path, rules_dir, caplog):
    with Running(tmp_path, rules_dir, {"/hog": 1.5}) as run:
        d = run.daemon
        (rules_dir / "20-broken.yaml").write_text("rules:\n  - name: bad\n    when: cpu.usgae > 1\n"
                                                  "    frobnicate: yes\n    tags: {a: b}\n")
        wait_for(lambda: d.reload_failures >= 1, timeout=5, what="reload refused")
        assert d.rule_errors >= 2                          # every error, not only the first
        assert len(d.ruleset.rules) == 2                   # previous rules in force
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "20-broken.yaml:3" in logged and "frobnicate" in logged
        with ApiClient(d.config.socket) as client:
            wait_for(lambda: client.request("rules")["errors"], timeout=5, what="errors in rules reply")
            assert "/hog" in client.request("tags")        # still tagging with the old rules
            wait_for(lambda: client.request("health")["rule_errors"] == d.rule_errors, timeout=5,
                     what="rule errors in health")

        (rules_dir / "20-broken.yaml").write_text(MORE_RULES)     # fixed: reload takes it
        wait_for(lambda: d.reloads >= 1, timeout=5, what="reload")
        assert d.rule_errors == 0 and len(d.ruleset.rules) == 3
        with ApiClient(d.config.socket) as client:
            wait_for(lambda: client.request("tags").get("/hog", {}).get("priority"), timeout=5,
                     what="new rule in force")

        d.request_reload()                                 # SIGHUP's path, unchanged files
        wait_for(lambda: d.reloads >= 2, timeout=5, what="forced reload")


def test_broken_rules_at_start_refuse_to_start(tmp_path, rules_dir):
    (rules_dir / "10-cpu.yaml").write_text("rules: [{name: x, when: 'cpu.usage >'}]\n")
    daemon = Daemon(Config(rules=str(rules_dir), socket=None, metrics=None),
                    collector=FakeCollector({}), actuator=RecordingActuator())
    with pytest.raises(ValueError, match="error"):
        daemon.run()


def test_ownership_check(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    os.chmod(d, 0o755)
    f = d / "a.yaml"
    f.write_text(RULES)
    os.chmod(f, 0o644)
    check_rules_ownership(str(d), uid=os.geteuid())          # fine

    os.chmod(f, 0o664)
    with pytest.raises(ConfigError, match=r"writable by group.*\n.*chmod go-w .*a.yaml"):
        check_rules_ownership(str(d), uid=os.geteuid())
    os.chmod(f, 0o644)
    os.chmod(d, 0o757)
    with pytest.raises(ConfigError, match="rules directory .* writable by others"):
        check_rules_ownership(str(d), uid=os.geteuid())
    os.chmod(d, 0o755)
    if os.geteuid() == 0:
        os.chown(f, pwd.getpwnam("nobody").pw_uid, -1)
        with pytest.raises(ConfigError, match=r"owned by uid .*\n.*chown root:root"):
            check_rules_ownership(str(d), uid=0)


def test_config_file(tmp_path):
    cfg = tmp_path / "tagger.yaml"
    cfg.write_text("interval: 500ms\nmetrics: off\nexport: '/kubepods/**'\ndry-run: true\n")
    assert read_config_file(str(cfg)) == {"interval": 0.5, "metrics": None,
                                          "export": ("/kubepods/**",), "dry_run": True}
    cfg.write_text("intervall: 1s\n")
    with pytest.raises(ConfigError, match="unknown setting 'intervall'"):
        read_config_file(str(cfg))


def test_sd_notify_ready_and_watchdog(tmp_path, rules_dir):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
        assert notifier.watchdog_interval == 0.05
        daemon = Daemon(Config(rules=str(rules_dir), interval=0.02, socket=None, metrics=None),
                        collector=FakeCollector({"/a": 0.1}), actuator=RecordingActuator(),
                        notifier=notifier)
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        try:
            got = set()
            while not {"READY=1", "WATCHDOG=1"} <= got:
                got |= set(sock.recv(4096).decode().split("\n"))
        finally:
            daemon.stop()
            thread.join(timeout=10)
        got |= set(sock.recv(4096).decode().split("\n"))
        while "STOPPING=1" not in got:
            got |= set(sock.recv(4096).decode().split("\n"))
    finally:
        sock.close()
    assert Notifier({}).ready() is False                  # outside systemd: a no-op


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None


@pytest.mark.root
def test_cli_sighup_and_sigterm(tmp_path, rules_dir):
    """The real command in a subprocess (cgroupfs collector, dry run): SIGHUP
    reloads, SIGTERM exits 0 and removes the socket."""
    if os.geteuid() != 0:
        pytest.skip("needs root (ownership check, cgroupfs)")
    sock_path = str(tmp_path / "t.sock")
    argv = [sys.executable, "-m", "tagger.cli.main", "run", "--rules", str(rules_dir),
            "--interval", "200ms", "--socket", sock_path, "--metrics", "127.0.0.1:0",
            "--state-dir", str(tmp_path / "state"), "--dry-run", "--cgroupfs-only"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def health():
            if proc.poll() is not None:
                raise AssertionError(f"tagger run exited: {proc.stderr.read()}")
            try:
                with ApiClient(sock_path, timeout=2) as c:
                    return c.request("health")
            except Exception:
                return None
        wait_for(lambda: (health() or {}).get("ticks", 0) >= 1, timeout=120, what="tagger run ticking")  # imports and first tick: slow under TCG
        # The loop is guarded (the default --rt-priority 1): a child process
        # at SCHED_FIFO 1 that runs a starved tick as SCHED_FIFO.
        wait_for(lambda: (health() or {}).get("loop_guard_priority") == 1, timeout=60, what="the loop guarded")
        [guard] = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == proc.pid]
        assert os.sched_getscheduler(guard) == os.SCHED_FIFO and os.sched_getparam(guard).sched_priority == 1
        os.kill(proc.pid, signal.SIGHUP)
        wait_for(lambda: (health() or {}).get("reloads", 0) >= 1, timeout=10, what="SIGHUP reload")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert not os.path.exists(sock_path)
        assert "reloaded (SIGHUP)" in err and "stopped" in err
        assert not os.path.exists(f"/proc/{guard}")        # stopped with the agent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_tags_command(tmp_path, rules_dir):
    from click.testing import CliRunner

    from tagger.cli.tags import tags
    with Running(tmp_path, rules_dir, {"/hog": 1.5, "/x/y": 0.9}) as run:
        with ApiClient(run.daemon.config.socket) as client:
            wait_for(lambda: len(client.request("tags")) == 2, timeout=5, what="tags")
        runner = CliRunner()
        res = runner.invoke(tags, ["--socket", run.daemon.config.socket])
        assert res.exit_code == 0, res.output
        assert "/hog" in res.output and "cpu-intensive" in res.output
        res = runner.invoke(tags, ["--socket", run.daemon.config.socket, "--json", "--cgroup", "/x/**"])
        assert list(json.loads(res.output)) == ["/x/y"]


class FailingCollector(FakeCollector):
    def tick(self):
        if self.seq >= 2:
            self.seq += 1
            raise ValueError("embedded null byte")
        return super().tick()


def test_failing_ticks_are_counted_and_visible(tmp_path, rules_dir):
    run = Running(tmp_path, rules_dir, {"/hog": 1.5})
    run.collector = FailingCollector({"/hog": 1.5})
    run.daemon.collector = run.collector
    with run:
        with ApiClient(run.daemon.config.socket) as client:
            wait_for(lambda: client.request("health")["tick_errors"] >= 3, timeout=5,
                     what="tick errors in health")
            assert "/hog" in client.request("tags")          # the last good tick's tags stay
    assert run.result == 0


def test_record_writes_a_readable_trace(tmp_path, rules_dir):
    from tagger.publish.trace import read_trace
    trace = tmp_path / "run.trace"
    with Running(tmp_path, rules_dir, {"/hog": 1.5, "/b": 0.2}, record=str(trace)) as run:
        wait_for(lambda: run.daemon.cost.ticks >= 3, timeout=5, what="3 ticks")
    snaps = list(read_trace(str(trace)))
    assert len(snaps) >= 3
    assert snaps[0].cgroups.paths == ["/b", "/hog"] and snaps[0].value("/hog", "cpu.usage") == 1.5


def test_tags_watch_streams_changes(tmp_path, rules_dir):
    with Running(tmp_path, rules_dir, {"/hog": 0.1}) as run:
        proc = subprocess.Popen([sys.executable, "-m", "tagger.cli.main", "tags", "--watch", "--json",
                                 "--socket", run.daemon.config.socket],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        guard = threading.Timer(20, proc.kill)       # a missing line must not hang the test
        guard.start()
        try:
            first = json.loads(proc.stdout.readline())
            assert first == {"tags": {}}
            run.collector.usage["/hog"] = 1.5
            event = json.loads(proc.stdout.readline())
            assert (event["cgroup"], event["kind"], event["value"]) == ("/hog", "added", "cpu-intensive")
        finally:
            guard.cancel()
            proc.kill()
            proc.wait(timeout=10)
            proc.stdout.close()
            proc.stderr.close()


def test_run_command_merges_config_file_and_flags(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import tagger.agent.daemon
    import tagger.agent.logging
    from tagger.cli.run import run as run_command
    seen = {}

    class CapturingDaemon:
        def __init__(self, config):
            seen["config"] = config

        def run(self):
            return 0

    monkeypatch.setattr(tagger.agent.daemon, "Daemon", CapturingDaemon)
    monkeypatch.setattr(tagger.agent.logging, "setup_logging", lambda level: None)
    cfg = tmp_path / "tagger.yaml"
    cfg.write_text("interval: 250ms\nmetrics: off\nredis: redis://r:6379\nrules: /etc/tagger/rules\n")
    res = CliRunner().invoke(run_command, ["--config", str(cfg), "--rules", str(tmp_path), "--dry-run"])
    assert res.exit_code == 0, res.output
    c = seen["config"]
    assert c.interval == 0.25 and c.metrics is None and c.redis == "redis://r:6379"
    assert c.rules == str(tmp_path) and c.dry_run is True           # flags win
    assert c.socket == "/run/tagger/tagger.sock" and c.prefer_bpf is True   # defaults


SLO_RULES = """
rules:
  - name: web-is-high
    match: {cgroup: "/web"}
    tags: {priority: high}
  - name: batch-is-low
    match: {cgroup: "/batch"}
    tags: {priority: low}
policies:
  - name: web-slo
    kind: latency-slo
    protect: {tags: {priority: high}}
    slo: runq.p99 < 1ms
    throttle: {tags: {priority: low}}
    ladder: [idle, weight]
"""


class StolenCollector(FakeCollector):
    """web misses its SLO by 5x whatever batch gets (the host's steal)."""

    def tick(self):
        snap = super().tick()
        web = [p == "/web" for p in snap.cgroups.paths]
        snap.columns["runq.p99"] = np.where(web, 5e-3, 1e-4)
        snap.columns["runq.slowdown"] = np.where(web, 3.0, 1.0)
        return snap


def test_policy_step_outcomes_reach_health_metrics_and_the_step_log(tmp_path):
    """The daemon's wiring of issue 16's outcomes: each judged step in the
    socket API's health (policy_steps, policy_recent_steps), as
    tagger_policy_steps_total, and in the state directory's step log that
    `tagger actions` lists."""
    from click.testing import CliRunner

    from tagger.cli.actions import actions
    d = tmp_path / "rules"
    d.mkdir(mode=0o755)
    (d / "10-slo.yaml").write_text(SLO_RULES)
    os.chmod(d / "10-slo.yaml", 0o644)
    (tmp_path / "state").mkdir(mode=0o700)
    run = Running(tmp_path, d, {"/web": 0.5, "/batch": 1.5})
    run.collector = run.daemon.collector = StolenCollector(run.collector.usage)
    with run:
        with ApiClient(run.daemon.config.socket) as client:
            # idle (3 ticks, undone), then weight (3 ticks, undone): both judged no help.
            wait_for(lambda: len(client.request("health").get("policy_steps", [])) == 2, timeout=10,
                     what="two judged steps in health")
            health = client.request("health")
        assert {(s["policy"], s["lever"], s["outcome"], s["steps"]) for s in health["policy_steps"]} == {
            ("web-slo", "idle", "no_effect", 1), ("web-slo", "weight", "no_effect", 1)}
        recent = health["policy_recent_steps"]
        assert [(s["victim"], s["culprit"], s["lever"]) for s in recent] == [
            ("/web", "/batch", "idle"), ("/web", "/batch", "weight")]
        assert recent[0]["before"] == pytest.approx(5e-3) and recent[0]["after"] == pytest.approx(5e-3)
        # Judged at the 4th and 8th ticks (the collector's t = 0.05 s each), in
        # epoch seconds as every reply: idle asked at the 1st, weight at the 5th.
        assert [s["t"] for s in recent] == [pytest.approx(epoch(0.2)), pytest.approx(epoch(0.4))]
        with urllib.request.urlopen(run.daemon.metrics.url, timeout=5) as resp:
            text = resp.read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        got = {(s.labels["lever"], s.labels["outcome"]): s.value for s in fams["tagger_policy_steps"].samples
               if s.name == "tagger_policy_steps_total"}
        assert got == {("idle", "no_effect"): 1.0, ("weight", "no_effect"): 1.0}
        out = CliRunner().invoke(actions, ["--json", "--state-dir", str(tmp_path / "state")])
        assert [(s["lever"], s["outcome"]) for s in json.loads(out.output)["policy_steps"]] == [
            ("idle", "no_effect"), ("weight", "no_effect")]
    assert run.result == 0 and run.error is None
