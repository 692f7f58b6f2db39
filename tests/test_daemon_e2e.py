"""The end-to-end bar on the real kernel: a busy loop in a test cgroup gets its
``cpu-intensive`` tag over the socket within ``for`` + 2 ticks and the rule's
CPU quota is applied; both are cleared and reverted within ``keep_for`` + 2
ticks after the loop stops; SIGTERM's path leaves nothing behind."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tagger.client import ApiClient
from tagger.agent.config import Config
from tagger.agent.daemon import Daemon
from tests.cgroup_fixture import wait_for

INTERVAL = 1.0
FOR = 2.0
KEEP_FOR = 2.0


def rules_text(prefix: str) -> str:
    return f"""
rules:
  - name: cpu-intensive
    match: {{cgroup: "{prefix}/**"}}
    when: cpu.usage > 0.15       # far below the quota: a capped hog on a busy machine stays tagged
    for: {FOR}s
    keep_for: {KEEP_FOR}s
    tags: {{resource: cpu-intensive}}
  - name: cap-hogs
    match: {{tags: {{resource: cpu-intensive}}}}
    actions:
      cpu: {{max: 0.5, period: 100ms}}
"""


def quota(cg) -> tuple[int | None, int]:
    """(quota µs or None for unlimited, period µs) from v2 cpu.max or v1 cfs files."""
    v2 = cg.v2 / "cpu.max"
    if v2.exists():
        q, p = v2.read_text().split()
        return (None if q == "max" else int(q)), int(p)
    d = cg.dir("cpu")
    q = int((d / "cpu.cfs_quota_us").read_text())
    return (None if q < 0 else q), int((d / "cpu.cfs_period_us").read_text())


@pytest.mark.bpf
def test_busy_loop_tagged_capped_then_cleared(make_cgroup, tmp_path):
    cg = make_cgroup("hog", controllers=("cpu", "cpuacct"))
    prefix = cg.path.rsplit("/", 1)[0]
    rules = tmp_path / "rules"
    rules.mkdir(mode=0o755)
    (rules / "10-e2e.yaml").write_text(rules_text(prefix))
    os.chmod(rules / "10-e2e.yaml", 0o644)
    sock = str(tmp_path / "tagger.sock")
    daemon = Daemon(Config(rules=str(rules), interval=INTERVAL, socket=sock, metrics=None,
                           state_dir=str(tmp_path / "state")))
    errors = []

    def run():
        try:
            daemon.run()
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: daemon.ready or errors, timeout=60, what="daemon ready")
        assert not errors, errors
        if daemon.collector.source != "bpf":
            pytest.skip(f"BPF collector did not load ({daemon.collector.source})")
        assert quota(cg)[0] is None
        with ApiClient(sock) as client:
            wait_for(lambda: client.request("health").get("ticks", 0) >= 2, timeout=10, what="ticks")

            def tag():
                tags = client.request("tags", cgroup=cg.path).get(cg.path, {})
                return tags.get("resource", {}).get("value")

            start, start_wall = time.monotonic(), time.time()
            cg.spawn(["sh", "-c", "while :; do :; done"])     # starts in a millisecond
            try:
                wait_for(lambda: tag() == "cpu-intensive", timeout=FOR + 10 * INTERVAL,
                         interval=0.02, what="cpu-intensive tag")
            except TimeoutError:
                snap = client.request("snapshot", cgroup=cg.path)
                raise AssertionError(f"no tag; the agent sees {cg.path}: "
                                     f"{ {k: v for k, v in snap['columns'].items() if v} if snap else None}; "
                                     f"rows {snap and snap['cgroups']['paths']}; "
                                     f"health {client.request('health')}; tags {client.request('tags')}") from None
            tagged_seen = time.monotonic() - start
            # When the agent set it: the tick's own time (epoch seconds, like every reply).
            tagged_at = client.request("tags")[cg.path]["resource"]["since"] - start_wall
            wait_for(lambda: quota(cg)[0] is not None, timeout=5 * INTERVAL, interval=0.02,
                     what="quota applied")
            capped_seen = time.monotonic() - start
            [act] = wait_for(lambda: [a for a in client.request("actions") if a["cgroup"] == cg.path],
                             timeout=5 * INTERVAL, what="the action over the socket")
            assert act["knob"] == "cpu.max" and act["rule"] == "cap-hogs"
            capped_at = act["since"] - start_wall      # journaled, then written (wall clock)
            # The actuator paces tightening (Safety: at most half off per step, then a
            # cool-down), so on a small node 0.5 CPU may come as a second step.
            cooldown = daemon.actuator.safety.cooldown
            wait_for(lambda: quota(cg) == (50000, 100000), timeout=cooldown + 4 * INTERVAL,
                     interval=0.02, what="the rule's full quota")
            full_seen = time.monotonic() - start

            cg.stop()                  # returns once the loop's process is gone
            stop, stop_wall = time.monotonic(), time.time()
            wait_for(lambda: tag() is None, timeout=KEEP_FOR + 10 * INTERVAL, interval=0.02,
                     what="tag cleared")
            cleared_seen = time.monotonic() - stop
            [removed] = [e for e in client.request("history", cgroup=cg.path) if e["kind"] == "removed"]
            cleared_at = removed["t"] - stop_wall
            wait_for(lambda: quota(cg)[0] is None, timeout=5 * INTERVAL, interval=0.02,
                     what="quota reverted")
            reverted_seen = time.monotonic() - stop
        bar_on, bar_off = FOR + 2 * INTERVAL, KEEP_FOR + 2 * INTERVAL
        print(f"\ntick {INTERVAL:g}s; on: tag set at +{tagged_at:.2f}s (seen +{tagged_seen:.2f}s), "
              f"quota journaled at +{capped_at:.2f}s (in the kernel +{capped_seen:.2f}s), "
              f"full 0.5 CPU +{full_seen:.2f}s (cool-down {cooldown:g}s); bar for + 2 ticks = {bar_on:.2f}s\n"
              f"off: tag removed at +{cleared_at:.2f}s (seen +{cleared_seen:.2f}s), quota reverted in the "
              f"kernel +{reverted_seen:.2f}s; bar keep_for + 2 ticks = {bar_off:.2f}s")
        # The bar in the agent's own time (the tick that decided); what a client or
        # the kernel shows follows within that tick's processing (journal fsync,
        # socket hop), allowed `process` seconds.
        eps, process = 0.02, 0.5
        assert tagged_at <= bar_on + eps and capped_at <= bar_on + eps
        assert tagged_seen <= bar_on + process and capped_seen <= bar_on + process
        assert full_seen <= bar_on + cooldown + INTERVAL + process
        assert cleared_at <= bar_off + eps
        assert cleared_seen <= bar_off + process and reverted_seen <= bar_off + process
    finally:
        daemon.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert not os.path.exists(sock)
    assert quota(cg)[0] is None


@pytest.mark.bpf
def test_stop_reverts_quota_still_held(make_cgroup, tmp_path):
    """SIGTERM's path (Daemon.stop) while an action is in force: reverted."""
    cg = make_cgroup("held", controllers=("cpu", "cpuacct"))
    rules = tmp_path / "rules"
    rules.mkdir(mode=0o755)
    (rules / "10.yaml").write_text(f"""
rules:
  - name: cap-static
    match: {{cgroup: "{cg.path}"}}
    actions:
      cpu: {{max: 0.25}}
""")
    os.chmod(rules / "10.yaml", 0o644)
    daemon = Daemon(Config(rules=str(rules), interval=INTERVAL, socket=None, metrics=None,
                           state_dir=str(tmp_path / "state")))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        # The first paced step is enough: what matters here is that stop() undoes it.
        wait_for(lambda: quota(cg)[0] is not None, timeout=30, what="static quota applied")
    finally:
        daemon.stop()
        thread.join(timeout=30)
    assert quota(cg)[0] is None
