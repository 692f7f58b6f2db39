"""Slots come back after the ring buffer drops cgroup lifecycle events.

The kernel's mkdir handler hands each new v2 cgroup a slot and says so only
in a MKDIR event; the 256 KiB ring buffer holds about 800 of them.  A burst of
mkdir/rmdir pairs between two ticks fills it: the cgroups after the first ~400
take slots whose MKDIR and RMDIR events are both lost.  Without reconciling,
those slots never come back, and the cgroups made afterwards find none.

The timed bar (60 s at 2,000 mkdir/s, then 300 slow cgroups) is measured by
benchmarks/bench_churn.py; this test counts ticks, not time.
"""

from __future__ import annotations

import os

import pytest

from tests.bpf_helpers import bpf_problem, require_bpf
from tests.cgroup_fixture import v2_root

pytestmark = pytest.mark.bpf

#: Free slots at start (besides the host's own cgroups): few enough that the
#: lost slots outnumber those the delivered events return.
FREE_SLOTS = 1024
#: mkdir/rmdir pairs per burst: the ring buffer overflows after ~400.
BURST = 1500
#: Cgroups made after the bursts and kept: more than the slots that stay free
#: without reconciling (~400, those of the delivered events), fewer than all.
NEW = 700
PER_TICK = 100


def _variants() -> list[tuple[str, int]]:
    """(id, features_off): this kernel's slot table, and the hash map by
    cgroup id of older kernels when this one has cgroup storage."""
    if bpf_problem():
        return [("unavailable", 0)]
    from tagger.native import lib

    out = [("native", 0)]
    if lib.tg_probe_features() & lib.TG_FEAT_CGRP_STORAGE:
        out.append(("hash", int(lib.TG_FEAT_CGRP_STORAGE)))
    return out


VARIANTS = _variants()


def _exported(coll) -> dict[str, float]:
    """The collector's health as the daemon passes it on, through the
    Prometheus exposition, parsed by prometheus_client."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from tagger.publish.report import CollectorHealth
    from tagger.publish.prometheus import TaggerCollector

    col = TaggerCollector()
    col.update(health=CollectorHealth.from_collector(coll.health()).to_plain())
    reg = CollectorRegistry(auto_describe=False)
    reg.register(col)
    return {f.name: f.samples[0].value for f in text_string_to_metric_families(generate_latest(reg).decode())
            if f.samples}


@pytest.mark.parametrize("features_off", [off for _, off in VARIANTS], ids=[n for n, _ in VARIANTS])
def test_slots_lost_with_their_events_come_back(make_cgroup, features_off):
    require_bpf()
    from tagger.telemetry import BpfCollector

    parent = make_cgroup("churn")
    made: list[str] = []
    existing = sum(1 for _ in os.walk(v2_root()))
    with BpfCollector(cgroupfs_metrics=(), max_slots=existing + FREE_SLOTS, features_off=features_off) as coll:
        coll.tick()
        drops_before = coll.health()["lost_lifecycle_events"]
        try:
            for burst in range(2):
                for i in range(BURST):
                    d = parent.v2 / f"b{burst}-{i}"
                    os.mkdir(d)
                    os.rmdir(d)
                coll.tick()
            lost = coll.health()["lost_lifecycle_events"]
            assert lost > drops_before, "the bursts did not overflow the ring buffer"
            # Counted apart from, and within, every ring-buffer drop (the
            # kernel counts a drop there first).
            assert lost <= coll.probes.read_globals()["ringbuf_drops"]
            # Exported (>=: the tracepoints see every cgroup made on the host).
            assert _exported(coll)["tagger_lost_lifecycle_events"] >= lost

            # New cgroups, a hundred per tick, kept: each has its slot within two ticks.
            late = []
            for start in range(0, NEW, PER_TICK):
                batch = []
                for i in range(start, start + PER_TICK):
                    d = parent.v2 / f"new-{i}"
                    os.mkdir(d)
                    made.append(d)
                    batch.append(f"{parent.path}/new-{i}")
                coll.tick()
                coll.tick()
                late += [p for p in batch if p not in coll.path_slot]
            assert not late, f"{len(late)} of {NEW} new cgroups had no slot after two ticks " \
                             f"(reclaimed {coll.slots_reclaimed})"
            assert coll.slots_reclaimed > 0
            # No slot held twice, and the kernel agrees with each one we know
            # (registering a cgroup that has a slot returns the kernel's).
            held = list(coll.path_slot.values())
            assert len(held) == len(set(held))
            for d in made:
                assert coll.probes.register_cgroup(str(d), 1) == coll.path_slot[f"{parent.path}/{d.name}"]
        finally:
            for d in made:
                os.rmdir(d)
