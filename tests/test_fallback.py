"""The fallback collector: a fixture tree for the plumbing (NaN columns, the one
warning, sysctl restored on every exit path), the real kernel for the figures."""

from __future__ import annotations

import logging
import math
import os
import signal
import time

import numpy as np
import pytest

from tagger import errors
from tagger.cgroups import Layout
from tagger.telemetry.fallback import FallbackCollector, _compact
from tagger.kernelfs import HOST, KernelFS
from tagger.snapshot import METRICS
from tests.bpf_helpers import is_stopped
from tests.cgroup_fixture import wait_for
from tests.test_cgroups import MOUNTS_HYBRID, make_tree
from tests.test_cgroupfs import hybrid_cgroup

BUSY = ["python3", "-c", "while True: pass"]


def fake_proc(tmp_path, pid, run_delay_ns, start_ticks=0, threads=1):
    for t in range(threads):
        d = tmp_path / f"proc/{pid}/task/{pid + t}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "schedstat").write_text(f"1000 {run_delay_ns} 5\n")
    (tmp_path / f"proc/{pid}/stat").write_text(f"{pid} (busy (x)) R 1 " + "0 " * 15 + f"{start_ticks} 0 0\n")


@pytest.fixture
def tree(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_HYBRID, "/sys/fs/cgroup/unified", "")
    root = tmp_path / "sys/fs/cgroup"
    (tmp_path / "proc/uptime").write_text("1000.00 1900.00\n")
    (tmp_path / "proc/stat").write_text("cpu  100 0 100 1000 0 0 0 0 0 0\n")
    (tmp_path / "sys/devices/system/cpu").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/online").write_text("0-3\n")
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/task_delayacct").write_text("0\n")
    hybrid_cgroup(root, "/w", 0, 0, 0, 0, 0, 0, 0)
    (root / "unified/w/cgroup.procs").write_text("4000\n")
    (root / "unified/cgroup.procs").write_text("")
    fake_proc(tmp_path, 4000, 0, threads=2)
    return fs, tmp_path


def test_fixture_tick_fills_what_it_can(tree, caplog):
    fs, tmp = tree
    with caplog.at_level(logging.WARNING, logger="tagger.telemetry.fallback"):
        coll = FallbackCollector(fs=fs, reason="no BTF", rundelay="schedstat")
    warnings = [r for r in caplog.records if r.name == "tagger.telemetry.fallback"]
    assert len(warnings) == 1
    assert "no BTF" in warnings[0].message and "runq.{avg,p50,p95,p99,max,events}" in warnings[0].message
    with coll:
        hybrid_cgroup(tmp / "sys/fs/cgroup", "/w", 2_000_000_000, 10, 5, 0, 0, 0, 0)
        fake_proc(tmp, 4000, 250_000_000, threads=2)      # each thread waited 0.25 s
        hz = os.sysconf("SC_CLK_TCK")
        (tmp / "proc/stat").write_text(f"cpu  100 0 100 1000 0 0 0 {hz // 2} 0 0\n")   # 0.5 s stolen
        snap = coll.tick()
    assert snap.source == "cgroupfs" and snap.seq == 1
    assert snap.cgroups.paths == ["/", "/w"]
    i = snap.cgroups.index("/w")
    usage = snap.columns["cpu.usage"][i]
    assert usage == pytest.approx(2.0 / snap.dt)
    assert snap.columns["runq.wait"][i] == pytest.approx(0.5 / snap.dt)
    assert snap.columns["runq.slowdown"][i] == pytest.approx((0.5 / snap.dt + usage) / usage)
    assert snap.columns["cpu.throttled"][i] == 0.5
    # Demand is running + runnable, from the same two columns; steal from /proc/stat.
    assert snap.columns["cpu.demand"][i] == pytest.approx(usage + 0.5 / snap.dt)
    assert snap.node["cpu.steal"] == pytest.approx((hz // 2) / hz / snap.dt)
    # The wait by cause and its culprits need the kernel programs.
    for cause in ("self", "foreign", "throttled", "other"):
        assert np.isnan(snap.columns[f"runq.wait.{cause}"]).all()
    assert len(snap.culprits) == 0
    # What needs the kernel programs is NaN, never 0; every catalogue metric is a column.
    assert set(snap.columns) == set(METRICS)
    for m in ("runq.p99", "io.lat.p99", "sched.preempts", "sched.switches", "runq.events"):
        assert np.isnan(snap.columns[m]).all(), m
    assert snap.node["cpus"] == 4
    assert math.isnan(snap.node["runq.p99"])
    h = coll.health()
    assert h["source"] == "cgroupfs" and h["rundelay_source"] == "schedstat" and h["ticks"] == 1
    with pytest.raises(errors.TaggerError, match="closed"):
        coll.tick()


def test_vanished_cgroup_and_process(tree):
    fs, tmp = tree
    with FallbackCollector(fs=fs, rundelay="schedstat", warn=False) as coll:
        import shutil
        shutil.rmtree(tmp / "proc/4000")
        snap = coll.tick()
        assert snap.columns["runq.wait"][snap.cgroups.index("/w")] == 0.0
        for d in ("unified", "cpu", "cpuacct", "memory", "blkio"):
            shutil.rmtree(tmp / "sys/fs/cgroup" / d / "w")
        snap = coll.tick()
        assert snap.cgroups.paths == ["/"]


def test_old_process_moved_in_is_a_baseline_not_a_burst(tree):
    fs, tmp = tree
    with FallbackCollector(fs=fs, rundelay="schedstat", warn=False) as coll:
        fake_proc(tmp, 5000, 9_000_000_000, start_ticks=10)        # started at 0.1 s, uptime 1000 s
        (tmp / "sys/fs/cgroup/unified/w/cgroup.procs").write_text("4000\n5000\n")
        snap = coll.tick()
        assert snap.columns["runq.wait"][snap.cgroups.index("/w")] == 0.0
        fake_proc(tmp, 5000, 9_100_000_000, start_ticks=10)
        snap = coll.tick()
        assert snap.columns["runq.wait"][snap.cgroups.index("/w")] == pytest.approx(0.1 / snap.dt)


def test_delayacct_restored_on_every_exit_path(tree):
    fs, tmp = tree
    sysctl = tmp / "proc/sys/kernel/task_delayacct"
    with pytest.raises(RuntimeError):
        with FallbackCollector(fs=fs, rundelay="schedstat", enable_delayacct=True, warn=False) as coll:
            assert sysctl.read_text().strip() == "1"
            assert coll.health()["delayacct_changed"]
            raise RuntimeError("boom")
    assert sysctl.read_text().strip() == "0"
    # A failure while opening (taskstats cannot read a fixture tree) restores it too.
    with pytest.raises(errors.ConfigError):
        FallbackCollector(fs=fs, rundelay="taskstats", enable_delayacct=True, warn=False)
    assert sysctl.read_text().strip() == "0"
    coll = FallbackCollector(fs=fs, rundelay="schedstat", enable_delayacct=True, warn=False)
    coll.close()
    coll.close()                                   # idempotent
    assert sysctl.read_text().strip() == "0"


def test_stream_count_and_include(tree):
    fs, _ = tree
    with FallbackCollector(fs=fs, rundelay=None, include="/w/**", warn=False) as coll:
        snaps = list(coll.stream(interval=0.01, count=3))
    assert [s.seq for s in snaps] == [1, 2, 3]
    assert all(s.cgroups.paths == ["/w"] for s in snaps)
    assert np.isnan(snaps[-1].columns["runq.wait"]).all()


def test_compact():
    assert _compact(["runq.p50", "runq.p99", "io.slowdown", "x"]) == "runq.{p50,p99}, io.slowdown, x"


# --- the real kernel -------------------------------------------------------------------

def _run_delay_ns(pids):
    total = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def _usage_us(cg):
    return int((cg.v2 / "cpu.stat").read_text().split()[1])


@pytest.mark.root
@pytest.mark.parametrize("rundelay", ["taskstats", "schedstat"])
def test_real_busy_loops(make_cgroup, rundelay):
    """Three busy loops on this machine's two CPUs: cpu.usage agrees with the
    cgroup's own cpu.stat, and runq.wait is nonzero and agrees with the tasks'
    /proc/PID/schedstat run delay over the same window."""
    layout = Layout.detect(HOST)
    cg = make_cgroup("fb", controllers=("cpu", "cpuacct") if layout.kind == "hybrid" else ())
    ncpu = len(os.sched_getaffinity(0))
    procs = [cg.spawn(BUSY) for _ in range(ncpu + 1)]
    wait_for(lambda: len(cg.pids()) == len(procs), timeout=10, what="busy loops to start")
    pids = [p.pid for p in procs]

    def pause(sig):
        # Stopped tasks change nothing, so the collector and the references
        # read the same window however long each read takes on a busy host.
        for pid in pids:
            os.kill(pid, sig)
        if sig == signal.SIGSTOP:
            wait_for(lambda: all(is_stopped(pid) for pid in pids), what="busy loops to stop")

    with FallbackCollector(include=cg.path, rundelay=rundelay, warn=False) as coll:
        pause(signal.SIGSTOP)
        coll.tick()
        u0, d0 = _usage_us(cg), _run_delay_ns(pids)
        pause(signal.SIGCONT)
        time.sleep(1.5)                 # the measurement window itself
        pause(signal.SIGSTOP)
        snap = coll.tick()
        u1, d1 = _usage_us(cg), _run_delay_ns(pids)
    cg.stop()
    i = snap.cgroups.index(cg.path)
    usage = snap.columns["cpu.usage"][i]
    ref_usage = (u1 - u0) / 1e6 / snap.dt
    wait = snap.columns["runq.wait"][i]
    ref_wait = (d1 - d0) / 1e9 / snap.dt
    print(f"\n{rundelay}: cpu.usage {usage:.3f} (cpu.stat {ref_usage:.3f}), "
          f"runq.wait {wait:.3f} s/s (schedstat {ref_wait:.3f}), dt {snap.dt:.3f}s")
    assert usage > 0.2                              # other engineers share these CPUs
    assert usage == pytest.approx(ref_usage, rel=0.05)
    assert wait > 0.05                              # oversubscribed: tasks wait for a CPU
    assert wait == pytest.approx(ref_wait, rel=0.10)
    assert snap.columns["runq.slowdown"][i] > 1.0
    assert np.isnan(snap.columns["runq.p99"][i])


@pytest.mark.root
def test_real_delayacct_untouched_by_default():
    before = HOST.read_text("/proc/sys/kernel/task_delayacct")
    with FallbackCollector(include="/", warn=False) as coll:
        coll.tick()
        assert not coll.health()["delayacct_changed"]
    assert HOST.read_text("/proc/sys/kernel/task_delayacct") == before


def test_include_glob_semantics():
    from tagger.telemetry.fallback import _as_predicate
    under = _as_predicate("/kubepods/**")
    assert under("/kubepods") and under("/kubepods/a/b") and not under("/kubepodsx")
    one = _as_predicate("/system.slice/*")
    assert one("/system.slice/a.service") and not one("/system.slice/a.service/x")
    assert _as_predicate("/**")("/")
