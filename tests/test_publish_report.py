"""tagger.publish.report: Health's wire form is the dict the daemon always sent."""

import math

from tagger.publish.report import CollectorHealth, Health, TickReport


def test_collector_health_names_and_passes_everything_through():
    raw = {"source": "bpf", "bpf_ns_per_event": 75.0, "kernel.ringbuf_drops": 3, "kernel.rq_full": 1,
           "kernel.slots_exhausted": 2, "lost_lifecycle_events": 0, "slots_reclaimed": 4}
    plain = CollectorHealth.from_collector(raw).to_plain()
    assert list(plain)[:7] == ["source", "bpf_ns_per_event", "ringbuf_drops", "lost_lifecycle_events",
                               "slots_reclaimed", "map_full", "collector.source"]
    assert plain["ringbuf_drops"] == 3 and plain["map_full"] == 3
    assert {k[len("collector."):]: v for k, v in plain.items() if k.startswith("collector.")} == raw


def test_fallback_health_keys():
    raw = {"source": "cgroupfs", "events_per_s": math.nan, "drops": 0, "ticks": 5}
    h = CollectorHealth.from_collector(raw)
    assert h.ringbuf_drops == 0 and math.isnan(h.events_per_second) and h.map_full is None
    assert "map_full" not in h.to_plain() and h.to_plain()["collector.ticks"] == 5


def test_health_plain_round_trip_and_optional_parts_left_out():
    h = Health(interval_seconds=1.0, ticks=3, tick_stage_seconds={"collect": 0.01}, dry_run=True,
               collector=CollectorHealth.from_collector({"source": "synthetic", "drops": 3}),
               api_clients=1, api_dropped=0, api_errors=2)
    plain = h.to_plain()
    assert list(plain)[:3] == ["version", "interval_seconds", "tick_seconds"]
    assert "journal_write_failures" not in plain and "redis_connected" not in plain
    assert "policy_steps" not in plain and "api" not in plain
    assert plain["ringbuf_drops"] == 3 and plain["api_errors"] == 2
    back = Health.from_plain({**plain, "api": {"clients": 1}, "from_a_newer_agent": 1})
    assert back.api == {"clients": 1}
    back.api = None
    assert back == h and back.to_plain() == plain


def test_tick_report_defaults_mean_unchanged():
    r = TickReport()
    assert r.snapshot is None and r.tags is None and r.events == [] and r.actions is None and r.health is None


def test_every_exported_health_key_is_a_field():
    """Prometheus reads health keys by name: each must be one Health or CollectorHealth spells."""
    import dataclasses

    from tagger.publish.prometheus import HEALTH, HEALTH_SCALE
    fields = {f.name for f in dataclasses.fields(Health)} | {f.name for f in dataclasses.fields(CollectorHealth)}
    assert set(HEALTH) | set(HEALTH_SCALE) <= fields
