"""Run-queue wait by cause (issue 15, part 1) on the real kernel.

The BPF side charges every nanosecond of a task's run-queue wait once: to
its own cgroup (self), to the cgroup that held the CPU (foreign, and that
cgroup as a culprit, by wait time), to its own CPU quota (throttled) or to
the rest (other).  Here, with real workloads in real cgroups:

- a victim that sleeps and wakes shares one CPU with two neighbours of
  known, different CPU use (two busy loops, cpu weights 4:1): the foreign
  wait charged to each neighbour is ordered as their CPU use; the four
  causes sum to the wait within 2%, and the wait still agrees with the
  kernel's schedstat run_delay (as tests/test_telemetry_bpf.py checks);
- a busy loop under a CPU quota of 0.02 CPU: most of its wait is charged to
  throttled, not foreign, while the kernel counts its throttled periods;
- two busy loops of one cgroup on one CPU: part of their wait is self,
  never more than their own CPU time, and a cgroup is never its own culprit.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest

from tests.bpf_helpers import BUSY_LOOP, thread_run_delays
from tests.cgroup_fixture import wait_for
from tests.test_telemetry_bpf import Totals, _stop_all, add_pairs, collector  # noqa: F401 (the fixture)

pytestmark = pytest.mark.bpf

WINDOW = 4.0
CAUSES = ("self", "foreign", "throttled", "other")

#: Sleeps and wakes: a 0.5 ms burst every ~2.5 ms (about 0.2 CPU alone).
INTERACTIVE = [sys.executable, "-c", """
import time
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < 0.0005:
        pass
    time.sleep(0.002)
"""]
#: The capped loop's quota, in CPUs.
QUOTA = 0.02
#: cpu weights of the two neighbours: they get the CPU they share about 4:1.
HEAVY, LIGHT = 400, 100


class WaitTotals(Totals):
    """Totals plus a cgroup's wait by cause and its culprits."""

    def __init__(self, coll, paths):
        super().__init__(coll, paths)
        self.cause = {p: dict.fromkeys(CAUSES, 0.0) for p in paths}
        self.by: dict[str, dict[str, float]] = {p: {} for p in paths}
        self.elapsed = 0.0           # seconds the ticks covered (a slow VM stretches a window)

    def tick(self):
        snap = super().tick()
        self.elapsed += snap.dt
        assert snap.node["cpu.steal"] >= 0              # /proc/stat, a node column
        for p in self.paths:
            i = snap.cgroups.index(p)
            if i is None:
                continue
            for c in CAUSES:
                self.cause[p][c] += snap.columns[f"runq.wait.{c}"][i] * snap.dt
            demand = snap.columns["cpu.demand"][i]
            assert demand == pytest.approx(snap.columns["cpu.usage"][i] + snap.columns["runq.wait"][i])
        add_pairs(snap, snap.culprits, self.by)
        return snap

    def report(self, p):
        parts = ", ".join(f"{c} {self.cause[p][c]:.4f}" for c in CAUSES)
        by = {k.rsplit("/", 1)[-1]: round(v, 4) for k, v in self.by[p].items()}
        return f"{p}: over {self.elapsed:.2f}s cpu {self.cpu_s[p]:.3f}s wait {self.wait_s[p]:.4f}s = {parts}; by {by}"


def _set_weight(cg, weight: int):
    """cpu.weight on v2; on v1 (hybrid host) cpu.shares of the same proportion."""
    d = cg.dir("cpu")
    if (d / "cpu.shares").exists():
        (d / "cpu.shares").write_text(str(weight * 1024 // 100))
    else:
        (d / "cpu.weight").write_text(str(weight))


def test_foreign_wait_is_charged_to_neighbours_by_their_cpu_use(collector, make_cgroup):
    """Why two busy loops of different weights and not a busy loop beside a
    duty cycle: a task that sleeps and wakes is favoured at its wake-up
    (lag, wake-up preemption), so it delays the victim -- another waker --
    out of proportion to its CPU use.  Busy loops hold the CPU in proportion
    to their weights, so the victim waits behind each in that proportion."""
    victim = make_cgroup("victim", controllers=("cpu",))
    busy, light = make_cgroup("heavy", controllers=("cpu",)), make_cgroup("light", controllers=("cpu",))
    _set_weight(busy, HEAVY)
    _set_weight(light, LIGHT)
    paths = [victim.path, busy.path, light.path]
    totals = WaitTotals(collector, paths)
    totals.tick()                                  # adopt the new cgroups' slots
    cpu = str(os.cpu_count() - 1)
    busy.spawn(["taskset", "-c", cpu] + BUSY_LOOP)
    light.spawn(["taskset", "-c", cpu] + BUSY_LOOP)
    victim.spawn(["taskset", "-c", cpu] + INTERACTIVE)
    totals.run(WINDOW)
    pids = victim.pids()
    _stop_all([victim, busy, light])
    totals.tick()
    for p in paths:
        print(totals.report(p))

    v = victim.path
    kernel_wait = thread_run_delays(pids) * 1e-9
    assert kernel_wait > 0.05, "the victim did not wait"
    assert totals.wait_s[v] == pytest.approx(kernel_wait, rel=0.05)
    # Every nanosecond charged once: the causes sum to the wait.
    for p in paths:
        assert sum(totals.cause[p].values()) == pytest.approx(totals.wait_s[p], rel=0.02, abs=1e-4)
    # Its neighbours held the CPU: foreign, not self (it has one task) nor throttled (no quota).
    assert totals.cause[v]["foreign"] > 0.5 * totals.wait_s[v]
    assert totals.cause[v]["throttled"] == 0.0
    # The culprits: charged by the wait they caused, ordered as their CPU use.
    assert totals.cpu_s[busy.path] > 1.5 * totals.cpu_s[light.path] > 0.02
    by = totals.by[v]
    assert by.get(busy.path, 0.0) > by.get(light.path, 0.0) > 0.0
    # The top culprits are a part of the foreign wait, never more.
    assert sum(by.values()) <= totals.cause[v]["foreign"] * 1.001 + 1e-6


def _set_quota(cg, cpus: float, period_us: int = 100_000):
    """A CPU quota on v1 (hybrid host: cpu.cfs_quota_us) or v2 (cpu.max)."""
    d = cg.dir("cpu")
    if (d / "cpu.cfs_quota_us").exists():
        (d / "cpu.cfs_period_us").write_text(str(period_us))
        (d / "cpu.cfs_quota_us").write_text(str(int(cpus * period_us)))
    else:
        (d / "cpu.max").write_text(f"{int(cpus * period_us)} {period_us}")


def _cpu_stat(cg) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in
                                   (cg.dir("cpu") / "cpu.stat").read_text().splitlines())}


def _nr_throttled(cg) -> int:
    return _cpu_stat(cg)["nr_throttled"]


def _throttled_seconds(cg) -> float:
    """The kernel's own time the cgroup spent throttled (v2 throttled_usec,
    v1 throttled_time in ns): from each throttle to its unthrottle."""
    stat = _cpu_stat(cg)
    return stat["throttled_usec"] / 1e6 if "throttled_usec" in stat else stat["throttled_time"] / 1e9


def test_a_quota_charges_the_wait_to_throttled(collector, make_cgroup):
    capped = make_cgroup("capped", controllers=("cpu",))
    # 2% of a CPU in 5 ms slices every 250 ms: the quota binds even on a CPU
    # crowded enough to give the loop only a few percent, and the wait for
    # its turn after each unthrottle (foreign) is small beside the period.
    _set_quota(capped, QUOTA, period_us=250_000)
    try:
        _measure_a_capped_loop(collector, capped)
    finally:
        _kill_throttled(capped)


def _kill_throttled(cg):
    """Kill under the quota and wait for the cgroup to empty: a throttled
    task must run to exit, which on a slow VM takes longer than the
    fixture's teardown waits.  (Not by lifting the quota first: on Debian's
    6.12 that unthrottle once panicked the guest in enqueue_task_fair.)"""
    for pid in cg.pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in cg.procs:
        proc.wait(timeout=60)
    events = cg.v2 / "cgroup.events"
    wait_for(lambda: "populated 0" in events.read_text(), timeout=60, what=f"{cg.path} to empty")


def _measure_a_capped_loop(collector, capped):
    totals = _run_capped(collector, capped, BUSY_LOOP)
    p = capped.path
    assert totals.cpu_s[p] == pytest.approx(QUOTA * totals.elapsed, rel=0.5)
    # Runnable ~98% of the time, held back by its own quota: throttled, not
    # a neighbour.  After each unthrottle it may still wait behind whatever
    # else runs on that CPU (foreign, on a busy host some of it).
    assert totals.wait_s[p] > 0.5 * totals.elapsed
    cause = totals.cause[p]
    if _kernel_at_least(6, 8):
        # The throttle's end is the kernel's own throttled time (6.8+): the
        # two agree, whether the loop left the CPU at the throttle or blocked
        # as the quota ran out (a page fault) and woke into it.
        _assert_within_kernel_throttle(cause["throttled"], capped)
        assert cause["throttled"] > 0.6 * totals.wait_s[p]
    else:
        # Before 6.8 a throttle is taken to last until the cgroup's next task
        # runs on that CPU, and an idle stretch the ring did not see it begin
        # is "other" (sched.bpf.c): 6.1 with the forced 5.15 programs gave
        # throttled 3.4 s, other 2.3 s of 5.9 s; a CI run on 6.1 (TCG)
        # throttled 2.7 s, other 2.9 s of 5.6 s.  So the throttle is a large
        # share and, with the blind spot, nearly all of it -- and what the
        # policy acts on holds: the quota, not a neighbour, is the cause.
        assert cause["throttled"] > max(cause["self"], 0.4 * totals.wait_s[p])
        assert cause["throttled"] + cause["other"] > 0.9 * totals.wait_s[p]
    assert cause["foreign"] < cause["throttled"] / 2


def test_a_sleeper_under_a_quota_is_charged_its_throttled_time(collector, make_cgroup):
    """A task that sleeps and wakes, capped below what it wants: it often
    blocks as its quota runs out and wakes into the throttle, with no
    switch-out to open one.  Its throttled wait is still the kernel's own
    throttled time (6.8+); before, the largest part is throttled."""
    capped = make_cgroup("sleeper", controllers=("cpu",))
    _set_quota(capped, 0.05, period_us=100_000)
    try:
        totals = _run_capped(collector, capped, INTERACTIVE)
        cause = totals.cause[capped.path]
        if _kernel_at_least(6, 8):
            _assert_within_kernel_throttle(cause["throttled"], capped)
        else:
            assert cause["throttled"] > 0.4 * totals.wait_s[capped.path]
    finally:
        _kill_throttled(capped)


def _run_capped(collector, capped, argv) -> WaitTotals:
    """``argv`` on the last CPU in ``capped`` (its quota set) from before its
    start until it is stopped, once the quota has bound twice; the four causes
    sum to the wait."""
    totals = WaitTotals(collector, [capped.path])
    totals.tick()
    totals.elapsed = 0.0
    capped.spawn(["taskset", "-c", str(os.cpu_count() - 1)] + argv)
    wait_for(lambda: _nr_throttled(capped) >= 2, what="the quota to throttle")
    totals.run(WINDOW)
    _stop_all([capped], timeout=60)       # a throttled task must run to stop
    totals.tick()
    p = capped.path
    print(totals.report(p), "nr_throttled", _nr_throttled(capped),
          "kernel throttled %.4fs" % _throttled_seconds(capped))
    assert sum(totals.cause[p].values()) == pytest.approx(totals.wait_s[p], rel=0.02)
    return totals


def _assert_within_kernel_throttle(throttled: float, cg):
    """The wait charged to throttled is the part of the kernel's throttled
    time the cgroup spent runnable: never more, and most of it (the kernel
    may count a throttle through a task's block, as a 9p page fault in a VM:
    -10% on Debian's 6.12 in TCG)."""
    kernel = _throttled_seconds(cg)
    assert 0.8 * kernel <= throttled <= 1.02 * kernel + 0.01


def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def test_tasks_of_one_cgroup_wait_behind_each_other_as_self(collector, make_cgroup):
    """Two busy loops of one cgroup pinned to one CPU, both always runnable:
    one waits while the other runs, so part of their wait is self -- never
    more than their own CPU time (each waits behind the other only while
    that one runs), less by what others ran meanwhile (foreign) and what
    fell beyond the ring of segments on a crowded CPU (other) -- and a
    cgroup is never its own culprit."""
    pair = make_cgroup("pair")
    totals = WaitTotals(collector, [pair.path])
    totals.tick()
    totals.elapsed = 0.0
    cpu = str(os.cpu_count() - 1)
    for _ in range(2):
        pair.spawn(["taskset", "-c", cpu] + BUSY_LOOP)
    totals.run(WINDOW / 2)
    _stop_all([pair])
    totals.tick()
    p = pair.path
    print(totals.report(p))
    c = totals.cause[p]
    assert totals.wait_s[p] > 0.3 * totals.elapsed
    assert sum(c.values()) == pytest.approx(totals.wait_s[p], rel=0.02)
    assert c["throttled"] == 0.0
    assert 0.2 * totals.cpu_s[p] < c["self"] < 1.02 * totals.cpu_s[p]
    assert p not in totals.by[p]                   # never its own culprit
