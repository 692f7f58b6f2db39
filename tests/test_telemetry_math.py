"""Percentiles from the kernel's log2 histograms (pure numpy, no kernel)."""

from __future__ import annotations

import numpy as np
import pytest

from tagger.snapshot import hist_edges, hist_percentiles

B = 27
SHIFT = 10
EDGES = hist_edges(B, SHIFT)


def _hist_of(latencies_s):
    """What the kernel's hist_bucket() would count for these latencies."""
    h = np.zeros(B, np.uint32)
    for lat in latencies_s:
        us = int(lat * 1e9) >> SHIFT
        k = 0 if us < 2 else min(int(np.log2(us)), B - 1)
        h[k] += 1
    return h


def test_edges_are_log2_of_the_kernels_unit():
    assert EDGES[0] == 0 and EDGES[1] == pytest.approx(2.048e-6) and EDGES[11] == pytest.approx(2048 * 1.024e-6)
    assert np.all(np.diff(EDGES) > 0)


def test_percentiles_fall_in_the_right_bucket_and_respect_the_max():
    rng = np.random.default_rng(7)
    lat = rng.uniform(1.1e-3, 2.0e-3, 1000)               # all inside one bucket [1.049, 2.097) ms
    h = _hist_of(lat)[None, :]
    p50, p99 = hist_percentiles(h, EDGES, (0.5, 0.99))[0]
    assert EDGES[10] <= p50 <= p99 <= EDGES[11]
    capped = hist_percentiles(h, EDGES, (0.99,), cap=[lat.max()])[0, 0]
    assert capped <= lat.max()


def test_percentiles_track_a_bimodal_distribution():
    lat = [50e-6] * 900 + [8e-3] * 100                     # 10% slow
    h = _hist_of(lat)[None, :]
    p50, p95 = hist_percentiles(h, EDGES, (0.5, 0.95))[0]
    assert EDGES[5] <= p50 <= EDGES[6]
    assert EDGES[12] <= p95 <= EDGES[13]


def test_rows_without_events_are_nan_not_zero():
    h = np.zeros((3, B), np.uint32)
    h[1, 5] = 4
    out = hist_percentiles(h, EDGES, (0.5, 0.99))
    assert np.isnan(out[0]).all() and np.isnan(out[2]).all()
    assert np.all((out[1] >= EDGES[5]) & (out[1] <= EDGES[6]))


def test_wrapped_uint32_deltas_still_count():
    """Kernel buckets are u32 and wrap; deltas are taken mod 2^32."""
    before = np.array([2**32 - 3], np.uint32)
    after = np.array([4], np.uint32)
    assert int((after - before).astype(np.uint32)[0]) == 7


def test_event_strings_end_at_the_first_nul():
    """Ring-buffer records are not zeroed: bytes after the NUL are garbage."""
    from tagger.telemetry.events import c_string as _c_string

    assert _c_string(b"/tagger-bench-1/c0399\x00\x00garbage/tagger-bench-1") == "/tagger-bench-1/c0399"
    assert _c_string(b"\x00junk") == ""


def test_open_collector_falls_back_with_the_reason(monkeypatch, tmp_path):
    """When BPF cannot load, the cgroupfs fallback takes over and says why."""
    from tagger import errors, telemetry

    def refuse(**kwargs):
        raise errors.BpfUnavailable(1, "loading BPF programs (needs root or CAP_BPF+CAP_PERFMON)")

    made = {}

    class FakeFallback:
        def __init__(self, fs, reason):
            made["reason"] = reason

    monkeypatch.setattr(telemetry, "BpfCollector", refuse)
    monkeypatch.setattr("tagger.telemetry.FallbackCollector", FakeFallback)
    coll = telemetry.open_collector()
    assert isinstance(coll, FakeFallback)
    assert "CAP_BPF" in made["reason"]
