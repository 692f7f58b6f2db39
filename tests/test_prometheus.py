"""Prometheus exposition: parses with prometheus_client's own parser, carries
per-cgroup metrics, tags, actions and health, and forgets removed cgroups."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tagger.names import display, parse
from tagger.publish.prometheus import MetricsServer, TaggerCollector, metric_name, parse_addr
from tagger.snapshot import CgroupTable, Snapshot
from tagger.actions.actuator import AppliedAction
from tagger.tags import Tag


def snapshot(paths, usage, labels=None):
    table = CgroupTable.from_paths(paths, labels=labels)
    return Snapshot(t=1.0, dt=1.0, cgroups=table,
                    columns={"cpu.usage": np.asarray(usage, float),
                             "runq.p99": np.asarray([0.002] * len(paths)),
                             "io.read_bytes": np.full(len(paths), np.nan)},
                    node={"cpus": 2.0, "cpu.usage": 1.5})


def exposition(collector) -> dict:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    text = generate_latest(reg).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def samples(fams, name):
    """Samples called ``name`` (a counter's family drops the _total suffix)."""
    fam = fams.get(name) or fams.get(name.removesuffix("_total"))
    return [s for s in fam.samples if s.name == name] if fam else []


def test_exposition_parses_and_carries_everything():
    col = TaggerCollector()
    snap = snapshot(["/a", "/kubepods/pod1/c1"], [1.5, 0.25],
                    labels=[{}, {"namespace": "web", "pod": "front-1", "container": "nginx", "unit": "x"}])
    tags = {"/a": {"resource": Tag("resource", "cpu-intensive", "cpu-intensive", 0.5)}}
    acts = [AppliedAction("/a", "cpu.max", "50000 100000", "max 100000", "cap-hogs", 1.0, False),
            AppliedAction("/a", "io.max 8:0", "rbps=1048576 wbps=max riops=max wiops=max",
                          "rbps=max wbps=max riops=max wiops=max", "io-cap", 1.0, False),
            AppliedAction("", "rdt.schemata low", "L3:0=0f", "L3:0=ff", "rdt", 1.0, True),
            AppliedAction("/a", "cpu.idle", "1", "0 1536", "latency-slo:web", 1.0, False),
            AppliedAction("/a", "cpuset.cpus", "2-3,6", "0-7", "latency-slo:web", 1.0, False)]
    health = {"tick_seconds": 0.004, "tick_jitter_seconds": 0.001, "ticks": 7, "reloads": 1,
              "rule_errors": 0, "rules_loaded": 3, "bpf_ns_per_event": 80.0, "ringbuf_drops": 0,
              "map_full": 0, "source": "bpf", "tick_stage_seconds": {"collect": 0.003, "rules": 0.001}}
    col.update(snap, tags, acts, health)
    fams, text = exposition(col)

    usage = {s.labels["cgroup"]: s for s in samples(fams, "tagger_cpu_usage_cpus")}
    assert usage["/a"].value == 1.5 and usage["/a"].labels["name"] == "a"
    pod = usage["/kubepods/pod1/c1"].labels
    assert (pod["namespace"], pod["pod"], pod["container"]) == ("web", "front-1", "nginx")
    assert "unit" not in pod
    assert samples(fams, "tagger_runq_p99_seconds")[0].value == 0.002
    # unknown (NaN) is absent, never 0
    assert samples(fams, "tagger_io_read_bytes_per_second") == []
    assert samples(fams, "tagger_node_cpus")[0].value == 2.0

    [tag] = samples(fams, "tagger_tag")
    assert tag.labels == {"cgroup": "/a", "key": "resource", "value": "cpu-intensive"} and tag.value == 1
    [quota] = samples(fams, "tagger_cpu_max_cpus")
    assert quota.labels["cgroup"] == "/a" and quota.value == 0.5
    assert samples(fams, "tagger_action")[0].labels["rule"] == "cap-hogs"
    [idle] = samples(fams, "tagger_cpu_idle")
    assert idle.labels["cgroup"] == "/a" and idle.value == 1.0
    [cpuset] = samples(fams, "tagger_cpuset_cpus")
    assert cpuset.labels["cgroup"] == "/a" and cpuset.value == 3
    [rbps] = samples(fams, "tagger_io_max_read_bytes_per_second")
    assert rbps.labels["device"] == "8:0" and rbps.value == 1048576
    rdt = [s for s in samples(fams, "tagger_action") if s.labels["knob"].startswith("rdt")]
    assert rdt[0].labels["value"] == "L3:0=0f" and rdt[0].labels["dry_run"] == "true"

    assert samples(fams, "tagger_tick_seconds")[0].value == 0.004
    assert samples(fams, "tagger_ticks_total")[0].value == 7
    assert samples(fams, "tagger_rule_reloads_total")[0].value == 1
    assert samples(fams, "tagger_bpf_ns_per_event")[0].value == 80.0
    assert samples(fams, "tagger_info")[0].labels["source"] == "bpf"
    assert {s.labels["stage"]: s.value for s in samples(fams, "tagger_tick_stage_seconds")} == \
        {"collect": 0.003, "rules": 0.001}


def test_removed_cgroup_leaves_no_series():
    col = TaggerCollector()
    tags = {"/gone": {"k": Tag("k", "v", "r", 0.0)}}
    acts = [AppliedAction("/gone", "cpu.max", "50000 100000", "max 100000", "r", 0.0, False)]
    col.update(snapshot(["/stay", "/gone"], [0.1, 0.9]), tags, acts, {})
    _, text = exposition(col)
    assert 'cgroup="/gone"' in text
    col.update(snapshot(["/stay"], [0.1]), {}, [], {})
    fams, text = exposition(col)
    assert 'cgroup="/gone"' not in text
    assert [s.labels["cgroup"] for s in samples(fams, "tagger_cpu_usage_cpus")] == ["/stay"]


def test_export_glob_limits_cardinality():
    col = TaggerCollector(export=["/kubepods/**"])
    paths = ["/", "/system.slice/sshd.service", "/kubepods", "/kubepods/pod1", "/kubepods/pod1/c"]
    tags = {"/system.slice/sshd.service": {"k": Tag("k", "v", "r", 0.0)},
            "/kubepods/pod1": {"k": Tag("k", "v", "r", 0.0)}}
    col.update(snapshot(paths, [0.1] * len(paths)), tags, [], {})
    fams, _ = exposition(col)
    assert sorted(s.labels["cgroup"] for s in samples(fams, "tagger_cpu_usage_cpus")) == \
        ["/kubepods", "/kubepods/pod1", "/kubepods/pod1/c"]
    assert [s.labels["cgroup"] for s in samples(fams, "tagger_tag")] == ["/kubepods/pod1"]


def test_awkward_label_values_stay_parseable():
    col = TaggerCollector()
    weird = '/a "quoted" \\ back\nslash'
    col.update(snapshot([weird], [0.5]), {weird: {"k": Tag("k", 'v"\n', "r", 0.0)}}, [], {})
    fams, _ = exposition(col)
    # In display form (tagger.names): the newline is escaped, and the name comes back from it.
    assert samples(fams, "tagger_cpu_usage_cpus")[0].labels["cgroup"] == display(weird)
    assert parse(samples(fams, "tagger_cpu_usage_cpus")[0].labels["cgroup"]) == weird
    assert samples(fams, "tagger_tag")[0].labels["value"] == 'v"\\x0a'


def test_empty_collector_before_first_tick():
    fams, _ = exposition(TaggerCollector())
    assert "tagger_info" in fams and samples(fams, "tagger_tag") == []


def test_metric_names():
    assert metric_name("cpu.usage", "cpus") == "tagger_cpu_usage_cpus"
    assert metric_name("io.read_bytes", "bytes/s") == "tagger_io_read_bytes_per_second"
    assert metric_name("mem.current", "bytes") == "tagger_mem_current_bytes"
    assert metric_name("runq.slowdown", "ratio") == "tagger_runq_slowdown"


def test_parse_addr_defaults_to_loopback():
    assert parse_addr(":9473") == ("127.0.0.1", 9473)
    assert parse_addr("9473") == ("127.0.0.1", 9473)
    assert parse_addr("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError):
        parse_addr("localhost:http")


def test_served_over_http_on_loopback():
    col = TaggerCollector()
    col.update(snapshot(["/a"], [0.5]), {}, [], {"ticks": 1})
    server = MetricsServer(col, "127.0.0.1:0")
    try:
        assert server.host == "127.0.0.1"
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            text = resp.read().decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"tagger_cpu_usage_cpus", "tagger_ticks"} <= names
    finally:
        server.close()
