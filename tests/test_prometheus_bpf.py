"""The exposition's counters and histograms fed by the real BPF collector:
what a scraper sums is what the collector counted (against the kernel's
cpu.stat: tests/test_telemetry_bpf.py, and through a real Prometheus:
tests/test_prometheus_server.py)."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.bpf_helpers import BUSY_LOOP, require_bpf

pytestmark = pytest.mark.bpf


def _scrape(col, path: str) -> dict:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(col)
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            if s.labels.get("cgroup") == path and "le" not in s.labels:
                out[s.name] = s.value
    return out


def test_counters_and_histogram_match_the_collector(make_cgroup):
    require_bpf()
    from tagger.publish.prometheus import TaggerCollector
    from tagger.telemetry import BpfCollector

    cg = make_cgroup("prom")
    col = TaggerCollector(export=[cg.path])
    events = cpu = 0.0
    scraped = []
    with BpfCollector(cgroupfs_metrics=()) as coll:
        col.update(coll.tick(), {}, [], {})          # adopt the new cgroup's slot
        for _ in range(3):                           # three loops on two CPUs: run-queue waits
            cg.spawn(BUSY_LOOP)
        for _ in range(8):
            time.sleep(0.5)                          # the tick's length, not a synchronisation
            snap = coll.tick()
            col.update(snap, {}, [], {})
            i = snap.cgroups.index(cg.path)
            events += snap.columns["runq.events"][i] * snap.dt
            cpu += snap.columns["cpu.usage"][i] * snap.dt
            scraped.append(_scrape(col, cg.path))
        cg.stop()
        snap = coll.tick()
        col.update(snap, {}, [], {})
        i = snap.cgroups.index(cg.path)
        events += snap.columns["runq.events"][i] * snap.dt
        cpu += snap.columns["cpu.usage"][i] * snap.dt
        last = _scrape(col, cg.path)

    for name in ("tagger_cgroup_cpu_seconds_total", "tagger_cgroup_runq_wait_seconds_total",
                 "tagger_cgroup_runq_latency_seconds_count", "tagger_cgroup_runq_latency_seconds_sum"):
        series = [s.get(name, 0.0) for s in scraped] + [last[name]]
        assert series == sorted(series), name                        # counters never go back
    assert events > 100, "the workload did not wait on the run queue"
    assert last["tagger_cgroup_runq_latency_seconds_count"] == pytest.approx(events, rel=1e-6)
    assert last["tagger_cgroup_cpu_seconds_total"] == pytest.approx(cpu, rel=1e-6)
