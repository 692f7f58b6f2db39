"""Prometheus exposition: parses with prometheus_client's own parser, carries
per-cgroup metrics, tags, actions and health, and forgets removed cgroups."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tagger.names import display, parse
from tagger.publish.exposition import MetricsServer, parse_addr
from tagger.publish.prometheus import HEALTH, TaggerCollector, metric_name
from tagger.snapshot import CgroupTable, Snapshot
from tagger.actions.actuator import AppliedAction
from tagger.tags import Tag
from tagger.snapshot import hist_edges


def snapshot(paths, usage, labels=None, ids=None, dt=1.0, hist=None, t=1.0):
    table = CgroupTable.from_paths(paths, labels=labels, ids=ids)
    snap = Snapshot(t=t, dt=dt, cgroups=table,
                    columns={"cpu.usage": np.asarray(usage, float),
                             "runq.p99": np.asarray([0.002] * len(paths)),
                             "runq.wait": np.asarray(usage, float) / 10,
                             "mem.current": np.full(len(paths), 4096.0),
                             "io.read_bytes": np.full(len(paths), np.nan)},
                    node={"cpus": 2.0, "cpu.usage": 1.5})
    if hist is not None:                  # run-queue events per row and bucket this tick
        snap.hist_edges = hist_edges(hist.shape[1])
        zero = np.zeros_like(hist)
        snap.histograms = {"runq.wakeup": hist, "runq.new": zero, "runq.preempt": zero, "io.lat": zero}
    return snap


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

    usage = {s.labels["cgroup"]: s for s in samples(fams, "tagger_cgroup_cpu_seconds_total")}
    assert usage["/a"].value == 1.5 and usage["/a"].labels == {"cgroup": "/a"}    # no duplicate name label
    pod = usage["/kubepods/pod1/c1"].labels
    assert (pod["namespace"], pod["pod"], pod["container"]) == ("web", "front-1", "nginx")
    assert "unit" not in pod                      # the unit label comes from the path, not the table
    assert fams["tagger_cgroup_cpu_seconds"].type == "counter"
    assert samples(fams, "tagger_mem_current_bytes")[0].value == 4096.0
    # per-tick percentiles are histograms now, never gauges of the last tick
    assert samples(fams, "tagger_runq_p99_seconds") == []
    # unknown (NaN) is absent, never 0
    assert samples(fams, "tagger_cgroup_io_read_bytes_total") == []
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
    assert samples(fams, "tagger_bpf_seconds_per_event")[0].value == pytest.approx(80e-9)
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
    assert [s.labels["cgroup"] for s in samples(fams, "tagger_cgroup_cpu_seconds_total")] == ["/stay"]


def exported(fams) -> list[str]:
    return sorted(s.labels["cgroup"] for s in samples(fams, "tagger_cgroup_cpu_seconds_total"))


def test_export_policy_defaults_globs_and_cap():
    paths = ["/", "/system.slice", "/system.slice/sshd.service", "/kubepods", "/kubepods/pod1",
             "/kubepods.slice/kubepods-pod2.slice", "/user.slice/tagged", "/hot", "/warm", "/cold",
             "/batch/job1", "/batch/job2"]
    usage = [0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 3.0, 2.0, 0.01, 0.0, 0.0]
    tags = {"/user.slice/tagged": {"k": Tag("k", "v", "r", 0.0)}}
    col = TaggerCollector(top=2)
    col.update(snapshot(paths, usage), tags, [], {})
    fams, _ = exposition(col)
    default = ["/hot", "/kubepods", "/kubepods/pod1", "/kubepods.slice/kubepods-pod2.slice",
               "/system.slice/sshd.service", "/user.slice/tagged", "/warm"]
    assert exported(fams) == sorted(default)
    assert samples(fams, "tagger_cgroups_unexported")[0].value == len(paths) - len(default)
    unit = {s.labels["cgroup"]: s.labels.get("unit") for s in samples(fams, "tagger_cgroup_cpu_seconds_total")}
    assert unit["/system.slice/sshd.service"] == "sshd.service" and unit["/hot"] is None
    assert [s.labels["cgroup"] for s in samples(fams, "tagger_tag")] == ["/user.slice/tagged"]

    # --export adds to the default set
    col = TaggerCollector(export=["/batch/**"], top=2)
    col.update(snapshot(paths, usage), tags, [], {})
    assert exported(exposition(col)[0]) == sorted(default + ["/batch/job1", "/batch/job2"])

    # the cap keeps globs and tags first, then pods and services, then CPU; the rest is counted
    col = TaggerCollector(export=["/batch/job1"], top=2, cap=3)
    col.update(snapshot(paths, usage), tags, [], {})
    fams, _ = exposition(col)
    kept = exported(fams)
    assert len(kept) == 3 and {"/batch/job1", "/user.slice/tagged"} <= set(kept) and "/hot" not in kept
    assert samples(fams, "tagger_cgroups_unexported")[0].value == len(paths) - 3


def test_counters_accumulate_monotonic_and_restart_with_the_cgroup():
    col = TaggerCollector()
    seen, elapsed = [], 0.0
    for usage, dt in [(1.0, 1.0), (0.5, 2.0), (0.0, 1.0), (2.0, 0.5)]:
        col.update(snapshot(["/a", "/b"], [usage, 0.25], ids=[10, 11], dt=dt), {}, [], {})
        elapsed += dt
        fams, _ = exposition(col)
        by = {s.labels["cgroup"]: s.value for s in samples(fams, "tagger_cgroup_cpu_seconds_total")}
        seen.append(by["/a"])
        assert by["/b"] == pytest.approx(0.25 * elapsed)
    assert seen == pytest.approx([1.0, 2.0, 2.0, 3.0])            # sum of rate x dt
    assert seen == sorted(seen)
    wait = {s.labels["cgroup"]: s.value for s in samples(fams, "tagger_cgroup_runq_wait_seconds_total")}
    assert wait["/a"] == pytest.approx(0.3)
    # /a removed: its series is gone; made again (a new id): it starts from 0
    col.update(snapshot(["/b"], [0.25], ids=[11]), {}, [], {})
    assert exported(exposition(col)[0]) == ["/b"]
    col.update(snapshot(["/a", "/b"], [1.0, 0.25], ids=[12, 11]), {}, [], {})
    by = {s.labels["cgroup"]: s.value for s in samples(exposition(col)[0], "tagger_cgroup_cpu_seconds_total")}
    assert by["/a"] == 1.0 and by["/b"] == pytest.approx(0.25 * (elapsed + 2))


def test_counters_and_histograms_carry_the_time_their_tick_measured_them():
    """A scrape lands anywhere in a tick: the rate families are stamped with
    the tick's wall-clock time (ms), so rate() does not see the tick-to-scrape
    lag; levels are not; a snapshot on a synthetic clock gets no stamp."""
    hist = np.zeros((1, 24), np.uint32)
    hist[0, 6] = 5
    measured = time.monotonic() - 0.7                 # the tick read its counters 0.7 s ago
    col = TaggerCollector()
    col.update(snapshot(["/a"], [1.0], hist=hist, t=measured), {}, [], {})
    expected_ms = (time.time() - 0.7) * 1000
    fams, text = exposition(col)
    [cpu] = samples(fams, "tagger_cgroup_cpu_seconds_total")
    assert cpu.timestamp is not None and abs(float(cpu.timestamp) * 1000 - expected_ms) < 200
    stamps = {s.timestamp for f in ("tagger_cgroup_runq_latency_seconds",) for s in fams[f].samples}
    assert stamps == {cpu.timestamp}                  # _bucket, _count and _sum alike
    assert samples(fams, "tagger_mem_current_bytes")[0].timestamp is None
    # Not this host's clock: minutes old (a replayed record), in the future,
    # negative; and a synthetic t=1.0 once the host has been up past the horizon.
    now = time.monotonic()
    for t in [now - 120.0, now + 30.0, -5.0] + ([1.0] if now > 62.0 else []):
        col = TaggerCollector()
        col.update(snapshot(["/a"], [1.0], hist=hist, t=t), {}, [], {})
        assert samples(exposition(col)[0], "tagger_cgroup_cpu_seconds_total")[0].timestamp is None, t


def test_cfs_period_counters_only_where_a_quota_ran_a_period():
    """cAdvisor's cfs periods as counters, present for the cgroups whose CPU
    quota has run a period (0 periods on every other cgroup would be most of
    the series); once present, kept."""
    col = TaggerCollector(export=["/**"])

    def tick(periods, throttled):
        snap = snapshot(["/capped", "/free"], [0.5, 0.5], ids=[1, 2])
        snap.columns.update({"cpu.periods": np.asarray(periods, float),
                             "cpu.throttled_periods": np.asarray(throttled, float)})
        col.update(snap, {}, [], {})
        fams, _ = exposition(col)
        return ({s.labels["cgroup"]: s.value for s in samples(fams, "tagger_cgroup_cpu_periods_total")},
                {s.labels["cgroup"]: s.value for s in samples(fams, "tagger_cgroup_cpu_throttled_periods_total")})

    assert tick([10, 0], [0, 0]) == ({"/capped": 10}, {"/capped": 0})
    assert tick([10, 0], [4, 0]) == ({"/capped": 20}, {"/capped": 4})
    assert tick([0, 5], [0, 5]) == ({"/capped": 20, "/free": 5}, {"/capped": 4, "/free": 5})
    assert tick([0, 0], [0, 0]) == ({"/capped": 20, "/free": 5}, {"/capped": 4, "/free": 5})


def test_healthz_says_whether_the_loop_publishes_ticks():
    col = TaggerCollector()
    server = MetricsServer(col, "127.0.0.1:0")
    url = server.url.replace("/metrics", "/healthz")

    def status():
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    try:
        assert status() == (503, "stalled: no tick published yet\n")
        col.update(snapshot(["/a"], [0.5]), {}, [], {"ticks": 1})
        col.update(snapshot(["/a"], [0.5]), {}, [], {"ticks": 2})
        code, text = status()
        assert code == 200 and text.startswith("ok: last tick"), text
        renders = server.exposition.renders
        later = time.monotonic() + 60.0                  # a minute with no tick
        server.exposition.clock = lambda: later
        code, text = status()
        assert code == 503 and text.startswith("stalled: no tick for 6"), text
        assert server.exposition.renders == renders      # a probe renders nothing
    finally:
        server.close()


def test_histogram_counts_every_event_cumulatively():
    col = TaggerCollector()
    rng = np.random.default_rng(7)
    fed = np.zeros((2, 24), np.int64)
    for _ in range(5):
        tick = rng.integers(0, 4, size=(2, 24)).astype(np.uint32)
        tick[1] = 0                                   # /idle: no events at all
        fed += tick
        col.update(snapshot(["/busy", "/idle"], [0.5, 0.0], ids=[1, 2], hist=tick), {}, [], {})
    fams, text = exposition(col)
    fam = fams["tagger_cgroup_runq_latency_seconds"]
    assert fam.type == "histogram"
    count = {s.labels["cgroup"]: s.value for s in fam.samples if s.name.endswith("_count")}
    assert count == {"/busy": fed[0].sum()}                          # no event yet: no histogram
    buckets = [(float(s.labels["le"]), s.value) for s in fam.samples
               if s.name.endswith("_bucket") and s.labels["cgroup"] == "/busy"]
    edges = hist_edges(24)
    for le, value in buckets:
        if le != float("inf"):
            k = int(np.flatnonzero(np.isclose(edges[1:], le))[0])
            assert value == fed[0, : k + 1].sum(), le                # cumulative, le = upper edge
    assert buckets[-1] == (float("inf"), fed[0].sum())
    total = {s.labels["cgroup"]: s.value for s in fam.samples if s.name.endswith("_sum")}
    assert total["/busy"] == pytest.approx(0.05 * 5)                # runq.wait x dt, summed


def test_promtool_finds_nothing_to_lint():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus: make deps)")
    col = TaggerCollector(export=["/**"])
    paths = ["/", "/system.slice/sshd.service", "/kubepods/pod1/c1"]
    hist = np.zeros((3, 24), np.uint32)
    hist[:, 4] = 3
    snap = snapshot(paths, [0.5] * 3, ids=[1, 2, 3], hist=hist, t=time.monotonic())     # timestamped
    snap.columns.update({"cpu.periods": np.asarray([0.0, 10.0, 10.0]),
                         "cpu.throttled_periods": np.asarray([0.0, 2.0, 0.0])})
    col.update(snap,
               {"/": {"k": Tag("k", "v", "r", 0.0)}},
               [AppliedAction("/system.slice/sshd.service", "cpu.max", "50000 100000", "max 100000",
                              "cap", 1.0, False)],
               {**{key: 1.0 for key in HEALTH}, "source": "bpf", "tick_stage_seconds": {"collect": 0.1},
                "policy_steps": [{"policy": "web-slo", "lever": "idle", "outcome": "helped", "steps": 2}]})
    server = MetricsServer(col, "127.0.0.1:0")
    try:
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            text = resp.read()
    finally:
        server.close()
    assert b"tagger_cgroup_runq_latency_seconds_bucket" in text
    assert b"tagger_cgroup_cpu_throttled_periods_total" in text
    assert b'tagger_policy_steps_total{lever="idle",outcome="helped",policy="web-slo"} 2.0' in text
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out


def test_awkward_label_values_stay_parseable():
    col = TaggerCollector()
    weird = '/a "quoted" \\ back\nslash'
    col.update(snapshot([weird], [0.5]), {weird: {"k": Tag("k", 'v"\n', "r", 0.0)}}, [], {})
    fams, _ = exposition(col)
    # In display form (tagger.names): the newline is escaped, and the name comes back from it.
    assert samples(fams, "tagger_cgroup_cpu_seconds_total")[0].labels["cgroup"] == display(weird)
    assert parse(samples(fams, "tagger_cgroup_cpu_seconds_total")[0].labels["cgroup"]) == weird
    assert samples(fams, "tagger_tag")[0].labels["value"] == 'v"\\x0a'


def test_empty_collector_before_first_tick():
    fams, _ = exposition(TaggerCollector())
    assert "tagger_info" in fams and samples(fams, "tagger_tag") == []


def test_metric_names():
    assert metric_name("cpu.usage", "cpus") == "tagger_cpu_usage_cpus"
    assert metric_name("io.read_bytes", "bytes/s") == "tagger_io_read_bytes_per_second"
    assert metric_name("mem.current", "bytes") == "tagger_mem_current_bytes"
    assert metric_name("runq.slowdown", "ratio") == "tagger_runq_slowdown_ratio"


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
        assert {"tagger_cgroup_cpu_seconds", "tagger_ticks"} <= names
    finally:
        server.close()


def test_default_exposition_of_a_3000_cgroup_node_is_small():
    """Issue 17's bar: <= 300 kB by default with 3,000 cgroups (every cgroup: ~3 MB)."""
    from prometheus_client import CollectorRegistry

    from tagger.publish.exposition import Exposition
    from tests.exposition_fixture import node_ticks

    col, everything = TaggerCollector(), TaggerCollector(export=["/**"], cap=3000)
    health = {**{key: 1.0 for key in HEALTH}, "source": "bpf", "tick_stage_seconds": {"collect": 0.1}}
    for snap in node_ticks(3000):
        col.update(snap, {}, [], health)
        everything.update(snap, {}, [], health)
    body = Exposition(col, CollectorRegistry(auto_describe=False)).get()
    full = Exposition(everything, CollectorRegistry(auto_describe=False)).get()
    assert len(body) <= 300_000, len(body)
    assert len(full) > 4 * len(body)                       # the policy is what keeps it small
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    shown = {s.labels["cgroup"] for s in fams["tagger_cgroup_cpu_seconds"].samples}
    assert {f"/system.slice/svc{i}.service" for i in range(60)} <= shown            # every service
    assert {p for p in shown if p.startswith("/kubepods/")} >= {"/kubepods/burstable/pod0000/ctr0a"}
    assert fams["tagger_cgroups_unexported"].samples[0].value == 3000 - len(shown)


def test_policy_steps_are_a_counter_by_policy_lever_and_outcome():
    """The latency-slo policy's judged steps (the daemon's health["policy_steps"],
    from LatencySlo.step_counts) as tagger_policy_steps_total."""
    from tagger.policies.latency_slo import LatencySlo
    from tagger.rules.spec import LatencySloSpec, Selector
    slo = LatencySlo(LatencySloSpec(name="web-slo", protect=Selector(), throttle=Selector(),
                                    metric="runq.p99", target=1e-3))
    slo.counts.update({("idle", "no_effect"): 2, ("weight", "helped"): 1})
    col = TaggerCollector()
    col.update(None, {}, [], {"policy_steps": slo.step_counts()})
    fams, _ = exposition(col)
    assert fams["tagger_policy_steps"].type == "counter"
    got = {(s.labels["policy"], s.labels["lever"], s.labels["outcome"]): s.value
           for s in samples(fams, "tagger_policy_steps_total")}
    assert got == {("web-slo", "idle", "no_effect"): 2.0, ("web-slo", "weight", "helped"): 1.0}
    col.update(None, {}, [], {})
    assert samples(exposition(col)[0], "tagger_policy_steps_total") == []     # no policy: no family


def test_publish_report_is_update_and_keeps_what_it_leaves_out():
    """TaggerCollector as a Publisher: a TickReport gives the exposition update() gives
    (Health read through its plain form); parts left None keep their last value."""
    from tagger.publish.report import CollectorHealth, Health, TickReport
    snap = snapshot(["/a", "/b"], [1.5, 0.25])
    tags = {"/a": {"resource": Tag("resource", "cpu-intensive", "cpu-intensive", 0.5)}}
    acts = [AppliedAction("/a", "cpu.max", "50000 100000", "max 100000", "cap-hogs", 1.0, False)]
    health = Health(interval_seconds=1.0, ticks=7, tick_stage_seconds={"collect": 0.003},
                    collector=CollectorHealth.from_collector({"source": "bpf", "bpf_ns_per_event": 80.0}))
    by_update, by_publish = TaggerCollector(), TaggerCollector()
    by_update.update(snap, tags, acts, health.to_plain())
    by_publish.publish(TickReport(snap, tags, [], acts, health))
    assert exposition(by_publish)[1] == exposition(by_update)[1]
    assert "tagger_bpf_seconds_per_event 8e-08" in exposition(by_publish)[1]
    # a tick that only brings health: the snapshot, tags and actions stay, counted once
    health.ticks = 8
    by_publish.publish(TickReport(health=health))
    fams, text = exposition(by_publish)
    assert samples(fams, "tagger_ticks_total")[0].value == 8
    assert {s.labels["cgroup"]: s.value for s in samples(fams, "tagger_cgroup_cpu_seconds_total")} == \
        {"/a": 1.5, "/b": 0.25}
    assert [s.labels["cgroup"] for s in samples(fams, "tagger_tag")] == ["/a"]
    assert samples(fams, "tagger_cpu_max_cpus")[0].value == 0.5
    # the pipeline's two reports a tick: tags first (held back), then actions and health
    generation = by_publish.generation
    by_publish.publish(TickReport(snapshot(["/c"], [2.0]), {}, []))
    assert by_publish.generation == generation                # one exposition per tick, not two
    by_publish.publish(TickReport(actions=[], health=health))
    fams, _ = exposition(by_publish)
    assert {s.labels["cgroup"]: s.value for s in samples(fams, "tagger_cgroup_cpu_seconds_total")} == {"/c": 2.0}
    assert samples(fams, "tagger_tag") == [] and samples(fams, "tagger_cpu_max_cpus") == []
