"""The pure parts of benchmarks/noisy_neighbor.py: the probe's sine schedule,
record parsing, SLO choice, recovery and release times, the report and plots
built from recorded samples.  No kernel, no processes, no long runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.noisy import report as rp
from benchmarks.noisy.schedule import SineRate


# --- the sine schedule -----------------------------------------------------------------
def test_sine_rate_quiet_at_start_busy_at_half_period():
    r = SineRate(quiet=50, busy=600, period=20)
    assert r.rate(0) == pytest.approx(50)
    assert r.rate(10) == pytest.approx(600)
    assert r.rate(20) == pytest.approx(50)
    assert r.rate(5) == pytest.approx(325)
    assert all(50 - 1e-9 <= r.rate(t / 10) <= 600 + 1e-9 for t in range(400))


def test_send_times_follow_the_rate():
    r = SineRate(quiet=50, busy=600, period=20)
    times = np.array(list(r.send_times(20.0, start=100.0)))
    assert times[0] == 100.0 and times[-1] < 120.0
    assert np.all(np.diff(times) > 0)
    # The mean rate of a sine between 50 and 600 over a whole period is 325/s.
    assert len(times) == pytest.approx(325 * 20, rel=0.02)
    quiet = ((times >= 100) & (times < 101)).sum()
    busy = ((times >= 109.5) & (times < 110.5)).sum()
    assert quiet < 60 and busy > 550


# --- records -------------------------------------------------------------------------
def test_parse_cyclictest_verbose_output():
    text = ("WARN: not setting cpu_dma_latency to save battery power\n"
            "Max CPUs = 2\nThread 0 Interval: 2000\n"
            "       0:       0:      74\n       0:       1:     120\n       0:       2:    3500\n")
    rows = rp.parse_cyclictest(text, start=10.0)
    assert rows.shape == (3, 2)
    np.testing.assert_allclose(rows[:, 0], [10.002, 10.004, 10.006])
    np.testing.assert_allclose(rows[:, 1], [74e-6, 120e-6, 3.5e-3])


def test_read_probe_skips_a_line_cut_by_a_kill(tmp_path):
    f = tmp_path / "probe.txt"
    f.write_text("1.000000 0.0002500\n1.010000 0.0003000\n1.0200")
    rows = rp.read_probe(str(f))
    assert rows.shape == (2, 2)
    assert rp.read_probe(str(tmp_path / "missing")).shape == (0, 2)


def test_stress_ng_yaml_and_fio_json():
    yaml = ("metrics:\n    - stressor: cpu\n      bogo-ops: 2195\n"
            "      bogo-ops-per-second-usr-sys-time: 1486.1\n      bogo-ops-per-second-real-time: 1097.02\n")
    assert rp.parse_stress_ng_yaml(yaml) == {"cpu": pytest.approx(1097.02)}
    assert rp.fio_write_bps({"jobs": [{"write": {"bw_bytes": 1000}}, {"write": {"bw": 2}}]}) == 1000 + 2048


# --- figures -------------------------------------------------------------------------
def test_summary_and_window():
    rows = np.array([[0.5, 1.0], [1.5, 2.0], [2.5, 3.0]])
    assert rp.in_window(rows, 1.0, 3.0)[:, 1].tolist() == [2.0, 3.0]
    s = rp.summary([1.0, 2.0, math.nan, 3.0])
    assert s["n"] == 3 and s["max"] == 3.0 and s["p50"] == 2.0
    assert math.isnan(rp.summary([])["p99"])


def test_hist_summary_sums_ticks_and_caps_at_the_max():
    edges = np.concatenate([[0.0], 2.0 ** np.arange(1, 27)]) * 1e-6
    a = np.zeros(26, np.int64)
    a[3] = 99        # [8, 16) us
    b = np.zeros(26, np.int64)
    b[11] = 1        # [2048, 4096) us
    s = rp.hist_summary([a, b, None], edges, [12e-6, 3e-3, math.nan])
    assert 8e-6 <= s["p50"] < 16e-6
    assert s["p99"] <= 16e-6 + 1e-12
    assert s["max"] == 3e-3
    assert math.isnan(rp.hist_summary([], edges)["p99"])


def test_per_second_percentile_bins():
    rows = np.array([[10.1, 1.0], [10.2, 3.0], [12.5, 5.0]])
    xs, ys = rp.per_second(rows, 10.0, 13.0, q=100)
    assert xs.tolist() == [0.0, 1.0, 2.0]
    assert ys[0] == 3.0 and math.isnan(ys[1]) and ys[2] == 5.0


def test_recovery_time_needs_hold_ticks_in_a_row():
    t = [9, 10, 11, 12, 13, 14, 15, 16, 17]
    v = [1, 5, 1, 5, 1, 1, 1, 1, 1]            # met at 11, missed at 12, then held from 13
    assert rp.recovery_time(t, v, start=10, slo=2, hold=3) == pytest.approx(3.0)
    assert rp.recovery_time(t, v, start=10, slo=2, hold=1) == pytest.approx(1.0)
    # a tick with no events (NaN) neither breaks nor counts
    assert rp.recovery_time([10, 11, 12, 13], [1, math.nan, 1, 1], 10, 2, 3) == pytest.approx(0.0)
    assert rp.recovery_time(t, [5] * 9, start=10, slo=2) is None


def test_release_time_is_the_first_sample_without_a_limit():
    t = [0, 1, 2, 3, 4, 5]
    q = [None, 0.5, 0.6, 0.9, None, None]
    assert rp.release_time(t, q, start=1.5) == pytest.approx(2.5)
    assert rp.release_time(t, [0.5] * 6, start=0) is None


def test_choose_slo_is_twice_the_alone_p99_rounded_with_a_floor():
    assert rp.choose_slo(0.52e-3) == pytest.approx(1e-3)          # 1.04 ms rounds to 1 ms
    assert rp.choose_slo(0.1e-3) == pytest.approx(1e-3)           # floor
    assert rp.choose_slo(1.03e-3) == pytest.approx(2e-3)          # 2.06 -> 2.0
    assert rp.choose_slo(1.15e-3) == pytest.approx(2.5e-3)        # 2.30 -> 2.5
    assert rp.choose_slo(float("nan")) == pytest.approx(1e-3)


def test_longest_miss():
    assert rp.longest_miss([1, 3, 3, math.nan, 3, 1, 3], 2) == 3
    assert rp.longest_miss([], 2) == 0


def test_within_share():
    assert rp.within([1, 2, 3, math.nan], 2) == pytest.approx(2 / 3)
    assert math.isnan(rp.within([], 1))


# --- report and plots from recorded samples -----------------------------------------
def recorded_run() -> dict:
    """A small run's results, as benchmarks/noisy_neighbor.py builds them."""
    names = ("alone", "collocated", "protected", "release")
    phases = []
    for i, name in enumerate(names):
        lat = {"p50": 1e-4, "p99": 1e-3 * (1 + i), "max": 5e-3, "n": 100}
        phases.append({"name": name, "t0": 100.0 + 10 * i, "t1": 110.0 + 10 * i, "cyclictest": lat,
                       "probe": lat, "runq": lat, "within": 0.9, "batch_cpu": 1.0, "quota_text": "none",
                       "bogo_ops": 1000.0 if i else math.nan, "fio_mibs": 100.0 if i else math.nan})
    t = list(np.arange(0.5, 41, 1.0))
    quota = [None if x < 20 or x > 35 else 0.5 for x in t]
    idle = [15 <= x <= 35 for x in t]
    allowed = [1 if down else 2 for down in idle]
    series = {"batch_cpus": allowed, "t0": 99.0, "t": t, "web_p99": [1e-3 if x < 10 else 4e-3 for x in t], "quota": quota, "idle": idle,
              "steal": [0.0] * len(t), "batch_cpu": [0.0 if x < 10 else 1.5 for x in t], "batch_write": [50 * 2**20] * len(t),
              "cyc_x": t, "cyc_p99": [2e-4] * len(t), "probe_x": t, "probe_p99": [3e-4] * len(t)}
    return {
        "meta": {"command": "benchmarks/noisy_neighbor.py", "date": "2026-11-22 04:00 UTC", "kernel": "6.18",
                 "cpus": 2, "load_before": "0.10 0.20 0.30", "phase_s": 10, "interval": 1.0,
                 "cyclictest_interval_us": 2000, "probe_work_us": 200, "rate_quiet": 50, "rate_busy": 600,
                 "rate_period": 15, "stress_cpus": 2, "stress_method": "matrixprod", "fio": "--rw=write",
                 "demote": ["weight", "cpuset"]},
        "slo": {"target": 2e-3, "why": "Twice the alone p90.", "window": 5},
        "phases": phases, "recovery_s": 2.0, "release_s": 7.0, "release_from": "0.25 CPU", "hold": 3,
        "agent_cpu_share": 0.005,
        "quota_after_stop": "-1",
        "static": {"trial_s": 15, "verdict": "Static allocation: 0.40 CPU.",
                   "trials": [{"lever": "quota", "quota": None, "runq": {"p99": 5e-3}, "within": 0.1, "probe": {"p99": 5e-3},
                               "cyclictest": {"p99": 6e-3}, "bogo_ops": 1000.0, "fio_mibs": 100.0, "meets": False},
                              {"lever": "quota", "quota": 0.9, "runq": {"p99": 4e-3}, "within": 0.2, "probe": {"p99": 5e-3},
                               "cyclictest": {"p99": 6e-3}, "bogo_ops": 900.0, "fio_mibs": 100.0, "meets": False},
                              {"lever": "quota", "quota": 0.4, "runq": {"p99": 1e-3}, "within": 1.0,
                               "probe": {"p99": 1e-3},
                               "cyclictest": {"p99": 1e-3}, "bogo_ops": 400.0, "fio_mibs": 100.0, "meets": True},
                              {"lever": "idle", "quota": None, "value": 1.0, "runq": {"p99": 1e-3}, "within": 1.0,
                               "probe": {"p99": 1e-3}, "cyclictest": {"p99": 1e-3}, "bogo_ops": 950.0,
                               "fio_mibs": 100.0, "meets": True},
                              {"lever": "cpuset", "quota": None, "value": 1.0, "runq": {"p99": 1e-3}, "within": 0.9,
                               "probe": {"p99": 1e-3}, "cyclictest": {"p99": 5e-4}, "bogo_ops": 600.0,
                               "fio_mibs": 100.0, "meets": True}],
                   "weights_verdict": "Static cpu.idle: as good."},
        "overhead": {"runs": {"perf bench sched pipe (ops/s)": {"A": [100.0, 102.0], "B": [99.0, 100.0],
                                                                 "ratio": 0.985}}},
        "series": series,
        "bars": [rp.Bar("release", "≤ 20 s", "7.0 s", True), rp.Bar("overhead", "≤ 3%", "+5%", False),
                 rp.Bar("static", "tagger > static", "no static quota met the SLO", None)],
        "notes": ["a note"],
    }


def test_markdown_report_from_recorded_samples():
    md = rp.build_markdown(recorded_run())
    assert md.startswith("# Noisy neighbour")
    assert "**SLO: web's run-queue p99 ≤ 2.0 ms** over each phase or trial." in md
    assert "| release | ≤ 20 s | 7.0 s | yes |" in md
    assert "| overhead | ≤ 3% | +5% | **no** |" in md
    assert "| n/a |" in md
    for name in ("alone", "collocated", "protected", "release"):
        assert f"| {name} |" in md
    assert "| quota 0.40 CPU | 1.00 | 100% |" in md
    assert "| no limit (the collocated phase) | 5.00 |" in md
    assert "| cpu.idle 1 (no quota; not a WCA setting) | 1.00 | 100% |" in md
    assert "Static cpu.idle: as good." in md
    assert "| cpuset.cpus: the last 1 CPU(s) (WCA's cpuset_cpus, koordlet's CPU suppress) | 1.00 | 90% | 1.00 | 0.50 |" in md
    assert "a demotion of batch: the lowest `cpu.weight`" in md and "and `cpuset.cpus` confined" in md
    assert "| perf bench sched pipe (ops/s) | 100, 102 | 99, 100 | – | 0.9850 | – |" in md
    assert "noisy_neighbor_latency.png" in md and "noisy_neighbor_batch.png" in md
    assert "**2.0 s**" in md and "**7.0 s** (from 0.25 CPU)" in md
    res = recorded_run()
    res["release_from"] = None
    assert "no limit was in force when `web` stopped" in rp.build_markdown(res)


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    res = recorded_run()
    rp.plot_latency(res, str(tmp_path / "lat.png"))
    rp.plot_batch(res, str(tmp_path / "batch.png"))
    for name in ("lat.png", "batch.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10000


def test_the_rules_tagger_run_gets_load_with_the_demotion_asked_for():
    from types import SimpleNamespace

    from benchmarks.noisy_neighbor import Run
    from tagger.rules import load_text
    fake = SimpleNamespace(args=SimpleNamespace(demote="weight,cpuset", beta=0.2, window=5),
                           scenario=SimpleNamespace(prefix="/tagger-nn-1"), slo=1e-3)
    rs = load_text(Run.rules_text(fake))
    [policy] = rs.policies
    assert (policy.demote, policy.target, policy.window, policy.beta) == (("weight", "cpuset"), 1e-3, 5, 0.2)
    assert rs.rule("nn-batch").match.cgroup == ("/tagger-nn-1/batch",)
