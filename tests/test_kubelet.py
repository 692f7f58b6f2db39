"""Pod and container names from the kubelet's log layout (tagger.kubelet), on
fixture nodes of both kubelet cgroup drivers, every runtime and every cgroup
layout: every pod and container cgroup gets namespace/pod/container labels in
the registry, the Snapshot's cgroup table and the Prometheus exposition, and
the packaged rules' priority/qos tags (issue 17's bar).  With the real BPF
collector too, where this kernel can (names that come after the cgroup)."""

from __future__ import annotations

import os
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tagger.cgroups import Layout, Registry
from tagger.kernelfs import KernelFS
from tagger.kubelet import KubeletLogs, parse_container_log, parse_pod_dir
from tests.cgroup_fixture import wait_for
from tests.kubelet_fixture import (DRIVERS, LAYOUTS, PODS, RUNTIMES, node_cgroups, remove_pod_logs,
                                   write_cgroups, write_logs, write_pod_logs)

CID = "a" * 64
PRIORITY = {"guaranteed": "high", "burstable": "normal", "besteffort": "low"}


def settle(*dirs):
    """Date the directories' mtimes 10 s back: no longer "racy", so an
    unchanged directory is not listed again (tagger.kubelet._RACY_NS)."""
    past = time.time() - 10
    for d in dirs:
        os.utime(d, (past, past))


# --- the log layout -------------------------------------------------------------------

def test_parse_entry_names():
    assert parse_pod_dir("shop_checkout-1_8F1D4C2E-5a3b-4c6d-9e8f-0a1b2c3d4e5f") == \
        ("shop", "checkout-1", "8f1d4c2e-5a3b-4c6d-9e8f-0a1b2c3d4e5f")
    assert parse_pod_dir("not-a-pod-dir") is None
    assert parse_pod_dir("a_b_c_d") is None and parse_pod_dir("a__c") is None
    assert parse_container_log(f"web.v2-1_default_log-shipper-{CID}.log") == \
        ("default", "web.v2-1", "log-shipper", CID)
    assert parse_container_log(f"web-1_default_web-{CID}") is None          # not a .log
    assert parse_container_log("web-1_default_web-abc.log") is None         # not a container id
    assert parse_container_log(f"web-1_web-{CID}.log") is None


def test_reads_only_when_a_directory_changes(tmp_path, monkeypatch):
    write_logs(tmp_path, PODS[:1])
    settle(tmp_path / "pods", tmp_path / "containers")
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: listed.append(p) or real_scandir(p))
    names = KubeletLogs(str(tmp_path))
    assert names.refresh() and len(listed) == 2
    pod = PODS[0]
    assert names.pod(pod.uid) == (pod.namespace, pod.name)
    assert names.container(pod.ids["envoy"]) == "envoy"
    for _ in range(3):
        assert not names.refresh()
    assert len(listed) == 2                          # nothing changed: two stat(2) calls, no listing
    write_pod_logs(tmp_path, PODS[2])
    assert names.refresh()
    assert names.pod(PODS[2].uid) == ("shop", "cart-0") and names.container(PODS[2].ids["cart"]) == "cart"
    remove_pod_logs(tmp_path, PODS[0])
    settle(tmp_path / "pods", tmp_path / "containers")
    assert names.refresh()
    assert names.pod(pod.uid) is None and names.container(pod.ids["app"]) is None
    listed.clear()
    assert not names.refresh() and not listed


def test_a_node_without_the_kubelet_has_no_names(tmp_path, monkeypatch):
    listed = []
    monkeypatch.setattr(os, "scandir", lambda p: listed.append(p))
    names = KubeletLogs(str(tmp_path / "nothing"))
    assert not names.refresh() and not names.refresh()
    assert names.pod(PODS[0].uid) is None and not listed and names.generation == 0


# --- every pod and container labelled, both drivers, every runtime and layout --------

def _fixture_node(tmp_path, layout, driver, runtime):
    paths, expected = node_cgroups(driver, runtime)
    write_cgroups(tmp_path / "root", layout, paths)
    write_logs(tmp_path / "log")
    return KernelFS(tmp_path / "root"), KubeletLogs(str(tmp_path / "log")), expected


def _check_labels(labels_of, expected):
    for want in expected:
        labels = labels_of(want.path)
        got = (labels.get("namespace"), labels.get("pod"), labels.get("container"), labels.get("qos"))
        assert got == (want.namespace, want.pod, want.container, want.qos), want.path


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_registry_labels_every_pod_and_container(tmp_path, layout, driver, runtime):
    fs, names, expected = _fixture_node(tmp_path, layout, driver, runtime)
    reg = Registry(Layout.detect(fs), workload_names=names)
    reg.scan()
    reg.refresh_names()
    assert {e.path for e in expected} <= set(reg.paths())
    _check_labels(lambda p: reg.describe(p)[1], expected)
    table = reg.table()
    _check_labels(lambda p: table.labels[table.index(p)], expected)
    web = next(p for p in PODS if p.name == "web.v2-1")
    name = reg.describe(next(e.path for e in expected if e.pod == web.name and e.container == "log-shipper"))[0]
    assert name.startswith("default/web.v2-1/log-shipper")


def test_labels_follow_the_log_layout(tmp_path):
    """A pod's cgroup is made before its log directory, and its log directory
    goes after it: the labels follow, through every cache on the way."""
    fs, names, expected = _fixture_node(tmp_path, "v2", "systemd", "containerd")
    pod = PODS[2]
    remove_pod_logs(tmp_path / "log", pod)
    reg = Registry(Layout.detect(fs), workload_names=names)
    reg.scan()
    reg.refresh_names()
    mine = [e for e in expected if e.pod == pod.name]
    for e in mine:
        assert "namespace" not in reg.describe(e.path)[1] and "container" not in reg.describe(e.path)[1]
    write_pod_logs(tmp_path / "log", pod)
    assert reg.refresh_names()
    _check_labels(lambda p: reg.table().labels[reg.table().index(p)], expected)
    remove_pod_logs(tmp_path / "log", pod)
    assert reg.refresh_names()
    assert all("pod" not in reg.describe(e.path)[1] for e in mine)


# --- the agent: Snapshot, exposition and the packaged rules' tags --------------------

@pytest.mark.parametrize("layout,driver,runtime", [
    ("v2", "systemd", "containerd"), ("v2", "cgroupfs", "crio"), ("v1", "cgroupfs", "docker"),
    ("hybrid", "systemd", "crio"),
])
def test_agent_labels_and_tags_every_pod_and_container(tmp_path, layout, driver, runtime):
    from tagger.agent.config import Config
    from tagger.agent.daemon import Daemon
    from tests.test_daemon import RecordingActuator

    fs, _, expected = _fixture_node(tmp_path, layout, driver, runtime)
    pod = PODS[4]                                     # its logs come while the agent runs
    remove_pod_logs(tmp_path / "log", pod)
    config = Config(interval=0.05, prefer_bpf=False, dry_run=True, socket=None, metrics="127.0.0.1:0",
                    state_dir=str(tmp_path / "state"), kubelet_logs=str(tmp_path / "log"),
                    check_ownership=False, export_top=0)
    daemon = Daemon(config, fs=fs, actuator=RecordingActuator())
    errors = []
    thread = threading.Thread(target=_run, args=(daemon, errors), daemon=True)
    thread.start()
    try:
        wait_for(lambda: daemon.cost.ticks >= 1 or errors, timeout=20, what="first tick")
        assert not errors, errors
        snap = daemon.last_snapshot
        pod_path = next(e.path for e in expected if e.pod == pod.name)
        assert "pod" not in snap.cgroups.labels[snap.cgroups.index(pod_path)]
        assert "pod" not in _scrape(daemon)[pod_path]           # exported, not yet named
        write_pod_logs(tmp_path / "log", pod)
        ticks = daemon.cost.ticks
        wait_for(lambda: daemon.cost.ticks > ticks + 1 and
                 daemon.last_snapshot.cgroups.labels[daemon.last_snapshot.cgroups.index(pod_path)].get("pod"),
                 timeout=20, what="the new pod's labels")
        snap = daemon.last_snapshot
        table = snap.cgroups
        _check_labels(lambda p: table.labels[table.index(p)], expected)

        # The packaged rules (rules/10-priority.yaml) tag every pod and container by QoS class.
        tags = daemon.store.current()
        for e in expected:
            got = {k: t.value for k, t in tags.get(e.path, {}).items()}
            assert got.get("qos") == e.qos and got.get("priority") == PRIORITY[e.qos], e.path

        # The exposition Prometheus scrapes: pods and containers are exported by
        # default, with the same labels.  It is rebuilt after the tick that
        # named the pod, not with it: poll, as a scraper would see it next.
        wait_for(lambda: _scrape(daemon).get(pod_path, {}).get("pod"), timeout=20,
                 what="the new pod's labels in the exposition")
        series = _scrape(daemon)
        _check_labels(lambda p: {**series[p], "qos": next(e.qos for e in expected if e.path == p)}, expected)
        for e in expected:
            if e.container is None:
                assert "container" not in series[e.path]
    finally:
        daemon.stop()
        thread.join(timeout=20)
    assert not thread.is_alive()


def _scrape(daemon) -> dict:
    """cgroup -> labels of its CPU counter, as Prometheus would scrape them."""
    with urllib.request.urlopen(daemon.metrics.url, timeout=10) as resp:
        text = resp.read().decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == "tagger_cgroup_cpu_seconds":
            return {s.labels["cgroup"]: s.labels for s in fam.samples}
    return {}


def _run(daemon, errors):
    try:
        daemon.run()
    except BaseException as err:       # surfaced by the test
        errors.append(err)


# --- the real kernel: BPF collector, names that come after the cgroup ----------------

@pytest.mark.bpf
def test_bpf_collector_labels_real_pod_cgroups(tmp_path, make_cgroup):
    """Real cgroups shaped as a systemd-driver node's (under the test prefix:
    the kubepods part is found anywhere in a path), named once their logs
    appear, while the BPF collector runs."""
    from tests.bpf_helpers import require_bpf
    require_bpf()
    from tagger.telemetry import BpfCollector

    cg = make_cgroup("node")
    pods = PODS[:3]
    paths, expected = node_cgroups("systemd", "containerd", pods)
    for p in paths:
        (cg.v2 / p.lstrip("/")).mkdir(parents=True, exist_ok=True)
    log_root = tmp_path / "log"
    write_logs(log_root, pods[:1])
    inside = [e.__class__(cg.path + e.path, e.namespace, e.pod, e.container, e.qos) for e in expected]
    with BpfCollector(cgroupfs_metrics=(), workload_names=KubeletLogs(str(log_root))) as coll:
        table = coll.tick().cgroups
        first = [e for e in inside if e.pod == pods[0].name]
        _check_labels(lambda p: table.labels[table.index(p)], first)
        later = [e for e in inside if e.pod != pods[0].name]
        assert all("pod" not in table.labels[table.index(e.path)] for e in later)
        for pod in pods[1:]:
            write_pod_logs(log_root, pod)
        table = coll.tick().cgroups
        _check_labels(lambda p: table.labels[table.index(p)], inside)
