"""The pure step counters -> columns (tagger.telemetry.derive), without BPF:
counter records made by hand, figures checked by arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from tagger.snapshot import CULPRIT_DTYPE, PREEMPTION_DTYPE, hist_edges
from tagger.telemetry.derive import (Causes, bpf_columns, changed_slots, drops, load, merge_pairs,
                                     safe_div, slowdown)

B = 27
EDGES = hist_edges(B, 10)
# The fields of struct tg_cg_stats (bpf/tagger.h) the step reads, in the same types.
STATS = np.dtype([
    ("cpu_ns", "<u8"), ("switches", "<u8"), ("preempted", "<u8"), ("preempts", "<u8"),
    ("runq", [("count", "<u8"), ("sum_ns", "<u8"), ("max_ns", "<u8"), ("hist", "<u4", (B,)),
              ("_pad", "<u4")], (3,)),
    ("io_ops", "<u8"), ("io_read_bytes", "<u8"), ("io_write_bytes", "<u8"), ("io_queue_ns", "<u8"),
    ("io_device_ns", "<u8"), ("io_max_ns", "<u8"), ("io_hist", "<u4", (B,)), ("_pad", "<u4"),
    ("wait_self_ns", "<u8"), ("wait_foreign_ns", "<u8"), ("wait_throttled_ns", "<u8"),
    ("wait_other_ns", "<u8"),
])
WAKE, NEW, PREEMPT = 0, 1, 2


def test_slowdown_is_wait_plus_run_over_run():
    out = slowdown([0.5, 0.0, 3.0, 1.0, 0.0], [0.5, 2.0, 1.0, 0.0, 0.0])
    assert out[:3].tolist() == [2.0, 1.0, 4.0]
    assert np.isnan(out[3]) and np.isnan(out[4])      # nothing ran: undefined, not 0 or inf


def test_load_is_usage_over_the_nodes_cpus():
    assert load(np.array([1.0, 0.5, 0.0]), 4).tolist() == [0.25, 0.125, 0.0]


def test_safe_div_is_nan_where_not_finite():
    out = safe_div([1.0, 0.0, 6.0], [0.0, 0.0, 3.0])
    assert np.isnan(out[0]) and np.isnan(out[1]) and out[2] == 2.0


def _pair_of_reads(n):
    prev, cur = np.zeros(n, STATS), np.zeros(n, STATS)
    # prev: a counter near the top of u64 and a u32 bucket about to wrap.
    prev["cpu_ns"][1] = 2**64 - 100_000_000
    prev["runq"]["hist"][1, WAKE, 10] = 2**32 - 2
    return prev, cur


def test_columns_from_counter_deltas():
    """Slot 1 ran 0.5 s of CPU over a 2 s tick (its counter wrapped) and
    waited 0.25 s in 5 wake-ups; slot 2 did block I/O; slot 3 is idle; slot 0
    (no row) counts for the node only."""
    prev, cur = _pair_of_reads(4)
    cur["cpu_ns"][1] = 400_000_000                     # 100 ms before the wrap + 400 ms after
    cur["runq"]["count"][1, WAKE] = 5
    cur["runq"]["sum_ns"][1, WAKE] = 250_000_000
    cur["runq"]["max_ns"][1, WAKE] = 80_000_000
    cur["runq"]["hist"][1, WAKE, 10] = 3               # 5 events in bucket 10, mod 2^32
    cur["wait_foreign_ns"][1] = 200_000_000
    cur["wait_self_ns"][1] = 50_000_000
    cur["switches"][1] = 10
    cur["io_ops"][2] = 4
    cur["io_queue_ns"][2] = 4_000_000                  # 1 ms queued per request
    cur["io_device_ns"][2] = 12_000_000                # 3 ms on the device
    cur["io_max_ns"][2] = 5_000_000
    cur["io_hist"][2, 11] = 4
    cur["io_read_bytes"][2] = 8192
    cur["cpu_ns"][0] = 1_000_000_000                   # unknown cgroups: the node's only

    changed = changed_slots(cur, prev)
    assert changed.tolist() == [0, 1, 2]
    rows = np.array([-1, 0, 1, 2])[changed]            # slots 1..3 are rows 0..2
    cols, hists, node = bpf_columns(cur[changed], prev[changed], rows, 3, 2.0, 4, EDGES, Causes())

    assert cols["cpu.usage"].tolist() == pytest.approx([0.25, 0.0, 0.0])
    assert cols["cpu.share"].tolist() == pytest.approx([0.0625, 0.0, 0.0])
    assert cols["runq.wait"][0] == pytest.approx(0.125)
    assert cols["runq.wait.foreign"][0] == pytest.approx(0.1)
    assert cols["runq.wait.self"][0] == pytest.approx(0.025)
    assert cols["runq.events"][0] == pytest.approx(2.5)
    assert cols["runq.avg"][0] == pytest.approx(0.05)
    assert cols["runq.slowdown"][0] == pytest.approx((0.25 + 0.5) / 0.5)
    assert cols["sched.switches"][0] == pytest.approx(5.0)
    # Bucket 10 is [1.049, 2.097) ms; the observed max (80 ms) does not cap it.
    assert EDGES[10] <= cols["runq.p50"][0] <= cols["runq.p99"][0] <= EDGES[11]
    assert cols["runq.max"][0] == pytest.approx(0.08)
    assert hists["runq.wakeup"][0, 10] == 5 and hists["runq.wakeup"].shape == (3, B)

    assert cols["io.ops"][1] == pytest.approx(2.0)
    assert cols["io.read_bytes"][1] == pytest.approx(4096.0)
    assert cols["io.lat.avg"][1] == pytest.approx(0.004)
    assert cols["io.queue.avg"][1] == pytest.approx(0.001)
    assert cols["io.device.avg"][1] == pytest.approx(0.003)
    assert cols["io.slowdown"][1] == pytest.approx(4 / 3)
    assert cols["io.lat.p99"][1] <= 0.005              # capped by the observed max

    # Idle rows: rates 0, latencies and ratios NaN (no event, nothing to know).
    for name in ("cpu.usage", "runq.wait", "io.ops"):
        assert cols[name][2] == 0.0
    for name in ("runq.avg", "runq.p99", "runq.slowdown", "io.lat.avg", "io.slowdown"):
        assert np.isnan(cols[name][2])
    assert np.isnan(cols["runq.slowdown"][1])          # did I/O, never ran

    assert node["cpus"] == 4.0 and node["cgroups"] == 3.0
    assert node["cpu.usage"] == pytest.approx((0.5 + 1.0) / 2.0)     # slot 0 included
    assert node["runq.wait"] == pytest.approx(0.125)
    assert node["io.ops"] == pytest.approx(2.0)
    assert node["events"] == pytest.approx((10 + 5) / 2.0)


def test_an_unchanged_read_changes_nothing():
    prev, cur = _pair_of_reads(3)
    cur[:] = prev
    assert changed_slots(cur, prev).size == 0


def test_drops_sum_every_way_an_event_is_lost():
    old = {"ringbuf_drops": 1, "rq_full": 0, "slots_exhausted": 0, "task_cache_miss": 0,
           "unknown_cgroup": 10, "other": 5}
    new = {"ringbuf_drops": 3, "rq_full": 1, "slots_exhausted": 2, "task_cache_miss": 7,
           "unknown_cgroup": 14, "other": 99}
    # A task with no entry yet loses nothing: its wait is counted all the same.
    assert drops(new, old, 2.0) == pytest.approx((2 + 1 + 2 + 4) / 2.0)


def test_pairs_merge_over_cpus_into_rows_never_a_cgroup_its_own():
    pairs = np.zeros(5, [("victim", "<u4"), ("preemptor", "<u4"), ("count", "<u4")])
    # (victim slot, preemptor slot, count) from two CPUs; slot 3 has no row.
    pairs[:] = [(1, 2, 3), (1, 2, 5), (2, 1, 1), (1, 1, 7), (1, 3, 9)]
    slot_row = np.array([-1, 0, 1, -1])
    out = merge_pairs(pairs, slot_row, "preemptor", "count", PREEMPTION_DTYPE, 0.5)
    assert out.dtype == PREEMPTION_DTYPE
    assert [tuple(r) for r in out.tolist()] == [(0, 1, 4.0), (1, 0, 0.5)]
    assert merge_pairs(pairs[:0], slot_row, "culprit", "wait_ns", CULPRIT_DTYPE, 1.0).dtype == CULPRIT_DTYPE
