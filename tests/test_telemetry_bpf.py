"""The BPF collector on the real kernel, against the kernel's own accounting.

Bars (issue 2): over >= 5 s with two CPUs oversubscribed, per cgroup
- CPU time within 2% of the cgroup's cpu.stat usage;
- run-queue wait within 5% of its tasks' /proc/PID/schedstat run_delay;
- fio direct I/O: ops within 2% of fio's count, mean latency within 10% of
  fio's completion-latency mean.  On this machine's virtual disk (~30 us per
  request) fio's clat carries ~10 us of syscall and wakeup outside the block
  layer, so the latency is checked against the kernel's own accounting of the
  same requests instead (and below fio's clat); see the closing note.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.bpf_helpers import BUSY_LOOP, is_stopped, require_bpf, thread_arrivals, thread_run_delays
from tests.cgroup_fixture import wait_for

pytestmark = pytest.mark.bpf

WINDOW = 5.0


@pytest.fixture
def collector():
    require_bpf()
    from tagger.telemetry import BpfCollector

    with BpfCollector(cgroupfs_metrics=()) as coll:
        yield coll


class Totals:
    """Sums a cgroup's per-tick figures back into totals over many ticks."""

    def __init__(self, coll, paths):
        self.coll = coll
        self.paths = paths
        self.cpu_s = dict.fromkeys(paths, 0.0)
        self.wait_s = dict.fromkeys(paths, 0.0)
        self.events = dict.fromkeys(paths, 0.0)
        self.io_ops = dict.fromkeys(paths, 0.0)
        self.io_lat_sum = dict.fromkeys(paths, 0.0)
        self.preempted_by: dict[str, dict[str, float]] = {p: {} for p in paths}

    def tick(self):
        snap = self.coll.tick()
        for p in self.paths:
            i = snap.cgroups.index(p)
            if i is None:
                continue
            c = snap.columns
            self.cpu_s[p] += c["cpu.usage"][i] * snap.dt
            self.wait_s[p] += c["runq.wait"][i] * snap.dt
            self.events[p] += c["runq.events"][i] * snap.dt
            ops = c["io.ops"][i] * snap.dt
            self.io_ops[p] += ops
            if ops > 0:
                self.io_lat_sum[p] += c["io.lat.avg"][i] * ops
        add_pairs(snap, snap.preemptions, self.preempted_by)
        return snap

    def run(self, seconds, interval=0.5):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(interval)
            self.tick()


def add_pairs(snap, pairs, into: dict) -> None:
    """Sum a tick's (victim row, other row, per second) pairs -- preemptions,
    culprits -- into ``into[victim path][other path]``, over the tick, for
    the victims ``into`` follows."""
    for victim, other, value in pairs:
        vp = snap.cgroups.paths[victim]
        if vp in into:
            op = snap.cgroups.paths[other]
            into[vp][op] = into[vp].get(op, 0.0) + value * snap.dt


def _usage_usec(cg) -> int:
    for line in (cg.v2 / "cpu.stat").read_text().splitlines():
        key, value = line.split()
        if key == "usage_usec":
            return int(value)
    raise AssertionError("no usage_usec in cpu.stat")


def _ends_at_io_done(collector) -> bool:
    from tagger.native import lib

    return bool(collector.probes.features & lib.TG_FEAT_IO_DONE)


def _stop_all(cgs, timeout=10.0):
    """SIGSTOP every task: each must run once more to stop, which closes its
    last wait and slice in both the kernel's accounting and ours (a task
    under a quota must wait for its unthrottle first: give it a timeout)."""
    pids = [pid for cg in cgs for pid in cg.pids()]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: all(is_stopped(pid) for pid in pids), timeout=timeout, what="workloads to stop")
    return pids


def test_cpu_time_and_runq_wait_match_the_kernel(collector, make_cgroup):
    """Two cgroups, five busy loops on two CPUs: both figures per cgroup
    against cpu.stat and the sum of its threads' schedstat run_delay."""
    a, b = make_cgroup("a"), make_cgroup("b")
    totals = Totals(collector, [a.path, b.path])
    totals.tick()                              # adopt the new cgroups' slots
    for _ in range(3):
        a.spawn(BUSY_LOOP)
    for _ in range(2):
        b.spawn(BUSY_LOOP)
    totals.run(WINDOW)
    pids = {cg.path: cg.pids() for cg in (a, b)}
    _stop_all([a, b])
    totals.tick()

    for cg in (a, b):
        kernel_cpu = _usage_usec(cg) * 1e-6
        kernel_wait = thread_run_delays(pids[cg.path]) * 1e-9
        ours_cpu, ours_wait = totals.cpu_s[cg.path], totals.wait_s[cg.path]
        print(f"{cg.path}: cpu {ours_cpu:.4f}s vs cpu.stat {kernel_cpu:.4f}s; "
              f"wait {ours_wait:.4f}s vs run_delay {kernel_wait:.4f}s; health {collector.health()}")
        assert kernel_cpu > 0.05, "the workload did not run"
        assert kernel_wait > 0.5, "two CPUs were not oversubscribed"
        # Both from se.sum_exec_runtime: equal but for a slice lost (1-2% low
        # with both CPUs filled, before unseen switch-ins were credited).
        assert ours_cpu == pytest.approx(kernel_cpu, rel=0.005)
        assert ours_wait == pytest.approx(kernel_wait, rel=0.05)
    # Five loops on two CPUs preempt each other across the two cgroups.
    assert totals.preempted_by[a.path].get(b.path, 0) > 0


def test_every_arrival_is_a_wait_the_zero_ones_too(collector, make_cgroup):
    """A sleeper waking 500 times a second, mostly onto an idle CPU: its
    run-queue events are the kernel's arrivals (pcount), not only the waits
    the rq clock saw as longer than 0 ns -- those were 5 a second of 600
    here, and the p99 was the p99 of the rare waits."""
    cg = make_cgroup("sleeper")
    totals = Totals(collector, [cg.path])
    totals.tick()                              # adopt the new cgroup's slot
    pid = cg.spawn([sys.executable, "-c", "import time\nwhile True: time.sleep(0.002)"]).pid
    wait_for(lambda: thread_arrivals([pid]) > 50, timeout=20, what="the sleeper to run")
    # Both counts cover the same arrivals: the sleeper is stopped while
    # each count is read (a slow tick, as in a TCG VM, moves nothing).
    _stop_all([cg])
    totals.tick()
    totals.events[cg.path] = 0.0
    before = thread_arrivals([pid])
    os.kill(pid, signal.SIGCONT)
    totals.run(WINDOW)
    _stop_all([cg])
    totals.tick()
    arrivals = thread_arrivals([pid]) - before
    print(f"{cg.path}: {totals.events[cg.path]:.0f} events vs {arrivals} arrivals (pcount)")
    assert arrivals > 100, "the sleeper did not wake"
    assert totals.events[cg.path] == pytest.approx(arrivals, rel=0.01, abs=5)


@pytest.fixture
def pid_room():
    """pid_max with room for a pid one task table (TG_TASKS) above today's:
    raised for the test if it is lower, and put back."""
    from tagger.native import lib

    path = Path("/proc/sys/kernel/pid_max")
    old = int(path.read_text())
    want = 4 * lib.TG_TASKS
    if old < want:
        path.write_text(str(want))
    try:
        yield lib.TG_TASKS
    finally:
        if old < want:
            path.write_text(str(old))


def _spawn_with_pid(cg, argv, pid: int, tries: int = 100):
    """Start ``argv`` in ``cg`` as process ``pid`` (the initial pid namespace
    hands out ns_last_pid + 1 next; another fork on the host may take it
    first, so try again)."""
    last = Path("/proc/sys/kernel/ns_last_pid")
    for _ in range(tries):
        last.write_text(str(pid - 1))
        proc = cg.spawn(argv)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    pytest.fail(f"pid {pid} was taken by another fork {tries} times")


def test_tasks_on_one_entry_of_the_task_table_keep_their_own_counts(collector, make_cgroup, pid_room):
    """Two sleepers whose pids are one table apart share an entry of the
    per-task table and take it from each other at almost every switch-in:
    each cgroup still gets exactly its own task's arrivals, none of the
    other's (an entry reads as the task's only while its tag matches)."""
    a, b = make_cgroup("entry-a"), make_cgroup("entry-b")
    totals = Totals(collector, [a.path, b.path])
    totals.tick()
    # Different rates, so counts that went to the other's cgroup would show.
    pa = a.spawn([sys.executable, "-c", "import time\nwhile True: time.sleep(0.002)"])
    # One table apart, above a's pid or (near pid_max) below it.
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    other = pa.pid + pid_room if pa.pid + pid_room < pid_max else pa.pid - pid_room
    assert other > 300, f"no pid one table ({pid_room}) from {pa.pid} below pid_max {pid_max}"
    pb = _spawn_with_pid(b, [sys.executable, "-c", "import time\nwhile True: time.sleep(0.005)"], other)
    pids = {a.path: pa.pid, b.path: pb.pid}
    wait_for(lambda: min(thread_arrivals([p]) for p in pids.values()) > 50, timeout=20,
             what="the sleepers to run")
    _stop_all([a, b])
    totals.tick()
    totals.events = dict.fromkeys(pids, 0.0)
    before = {path: thread_arrivals([pid]) for path, pid in pids.items()}
    misses = collector.probes.read_globals()["task_cache_miss"]
    for pid in pids.values():
        os.kill(pid, signal.SIGCONT)
    totals.run(WINDOW)
    _stop_all([a, b])
    totals.tick()
    misses = collector.probes.read_globals()["task_cache_miss"] - misses
    arrivals = {path: thread_arrivals([pid]) - before[path] for path, pid in pids.items()}
    print(f"events {totals.events} vs arrivals {arrivals}; {misses} switch-ins found no entry")
    for path in pids:
        assert arrivals[path] > 100, f"{path}'s sleeper did not wake"
        assert totals.events[path] == pytest.approx(arrivals[path], rel=0.01, abs=5), path
    # They did share the entry: most switch-ins found the other's there.
    assert misses > min(arrivals.values()) / 2


#: A sleeper niced to 19 that has just run beside a busy loop leaves its CPU
#: far ahead of its share: EEVDF keeps it on the run queue, asleep, for a few
#: hundred ms of the loop's running (delayed dequeue, 6.12+).
DELAYED_SLEEPER = """
import os, time
os.nice(19)
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < 0.006:
        pass
    time.sleep(%r)
"""


def _state_and_cpu(pid: int) -> tuple[str, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[36])           # state; processor (field 39)


def test_a_sleep_the_kernel_counts_as_wait_after_a_delayed_dequeue_is_not_counted(collector, make_cgroup):
    """A task asleep in a delayed dequeue and migrated (here by an affinity
    change; the load balancer does it too) is stamped as queued on its new
    run queue, and its next wait counts from there, its sleep included --
    in the kernel's run_delay as well: a light stress-ng parent read a wait
    of 24.6 s.  tagger counts no such wait (stale_waits).  Where the kernel
    never counts a sleep so (before 6.12 there is no delayed dequeue; Debian's
    6.12.95 in a TCG VM did not in 30 cycles), its run_delay and tagger's
    wait agree."""
    from tagger.native.variants import kernel_version

    # Until the kernel counted HITS of the sleeps as wait, at most CYCLES.
    # tagger's stale_waits are global: any task of the host migrated asleep
    # adds to them (in a VM, a daemon's 5 s sleep), so the loop and the
    # assertions go by what the kernel did to the sleeper's own run_delay.
    SLEEP, HITS, CYCLES = 0.3, 2, 30
    if os.cpu_count() < 2:
        pytest.fail("needs two CPUs")
    sleeper, busy = make_cgroup("asleep"), make_cgroup("busy")
    totals = Totals(collector, [sleeper.path])
    totals.tick()
    b = busy.spawn(BUSY_LOOP)
    os.sched_setaffinity(b.pid, {0})
    a = sleeper.spawn([sys.executable, "-c", DELAYED_SLEEPER % SLEEP])
    wait_for(lambda: thread_arrivals([a.pid]) > 2, timeout=30, what="the sleeper to run")
    # Both counts start from the same wait: the sleeper is stopped while
    # they are read (a slow tick, as in a TCG VM, moves nothing).
    _stop_all([sleeper])
    totals.tick()
    totals.wait_s[sleeper.path] = 0.0
    globals_before = collector.probes.read_globals()
    stale = lambda key="stale_waits": collector.probes.read_globals()[key] - globals_before[key]  # noqa: E731
    kernel_before, hits, hit_s = thread_run_delays([a.pid]), 0, 0.0
    os.kill(a.pid, signal.SIGCONT)
    # Before 6.12 no cycle can catch it (no delayed dequeue): 8 show that.
    delayed, cycles = kernel_version() >= (6, 12), 0
    while cycles < (CYCLES if delayed else 8) and hits < HITS:
        cycles += 1
        os.sched_setaffinity(a.pid, {0})
        # Caught as it falls asleep on CPU 0 beside the loop, then moved.
        wait_for(lambda: _state_and_cpu(a.pid) == ("R", 0), timeout=10, interval=0.0005,
                 what="the sleeper to run on CPU 0")
        wait_for(lambda: _state_and_cpu(a.pid)[0] == "S", timeout=10, interval=0.0005,
                 what="the sleeper to sleep")
        before = thread_run_delays([a.pid])
        os.sched_setaffinity(a.pid, {1})
        arrivals = thread_arrivals([a.pid])
        wait_for(lambda: thread_arrivals([a.pid]) > arrivals, timeout=10, what="the sleeper to wake")
        grown = (thread_run_delays([a.pid]) - before) * 1e-9
        if grown > SLEEP / 2:
            hits, hit_s = hits + 1, hit_s + grown
        totals.tick()
    _stop_all([sleeper])
    totals.tick()
    kernel = (thread_run_delays([a.pid]) - kernel_before) * 1e-9
    ours = totals.wait_s[sleeper.path]
    left_out, left_out_s = stale(), stale("stale_wait_ns") * 1e-9
    print(f"kernel run_delay {kernel:.3f} s ({hits} of {cycles} cycles grew it by more than the sleep's "
          f"half: {hit_s:.3f} s), ours {ours:.3f} s; on the whole host {left_out} waits not counted "
          f"({left_out_s:.3f} s)")
    tolerance = max(0.05 * kernel, 0.005)
    # Never more than the kernel: a sleep is not a wait.
    assert ours <= kernel + tolerance
    if hits:
        # The kernel counted the sleeper's sleeps as wait; tagger left each
        # such wait out (the host's count holds the sleeper's), its real
        # waits kept.
        assert left_out >= hits, "the kernel counted a sleep as wait, and so did tagger"
        # What is left out holds those sleeps (the host's count holds the
        # sleeper's), and is gone from ours.
        assert left_out_s > hit_s / 2
        assert ours < kernel - hit_s / 2
    else:
        # The kernel counted no sleep: the two agree, but for the sleeper's
        # waits left out (moved late in a sleep: each under the sleep's half
        # in the kernel's run_delay; on 6.1, none).  The host's count bounds them.
        assert ours >= kernel - min(left_out_s, left_out * SLEEP / 2) - tolerance


def test_running_tasks_are_credited_every_tick(collector, make_cgroup):
    """Tick by tick, a busy loop's CPU time follows the kernel's own cpu.stat:
    a task that does not switch out is credited at each read (checkpoint),
    not in one lump when it finally does."""
    cg = make_cgroup("lone")
    collector.tick()
    cg.spawn(BUSY_LOOP)
    start_before, t_before = _usage_usec(cg), [time.monotonic()]
    collector.tick()
    start_after, t_after = _usage_usec(cg), [time.monotonic()]
    ours, kernel_before, kernel_after = [], [], []
    for _ in range(6):
        time.sleep(0.5)
        # cpu.stat and the clock read on both sides of the tick: on a loaded
        # host (or under TCG) the gap between two reads is not "a moment", so
        # each figure is held to the kernel's bracket around it, not to one read.
        kernel_before.append((_usage_usec(cg) - start_after) * 1e-6)
        t_before.append(time.monotonic())
        snap = collector.tick()
        t_after.append(time.monotonic())
        kernel_after.append((_usage_usec(cg) - start_before) * 1e-6)
        ours.append(snap.value(cg.path, "cpu.usage") * snap.dt)
    print("CPU seconds so far, ours vs cpu.stat around it:",
          [(round(a, 3), round(b, 3), round(c, 3)) for a, b, c in zip(np.cumsum(ours), kernel_before, kernel_after)])
    # Never more than the one CPU it can use, over the time that can lie
    # between two ticks' reads (a sleep of 0.5 s lasts longer on a busy host).
    longest = np.array(t_after[1:]) - np.array(t_before[:-1])
    assert np.all(np.array(ours) <= longest * 1.04), list(zip(ours, longest))
    # Running totals agree at every tick: a lost or lumped slice would show
    # and stay; both also lag update_curr() by one 4 ms tick.
    ours_total = np.cumsum(ours)
    low, high = np.array(kernel_before), np.array(kernel_after)
    slack = 0.012 + 0.01 * high
    assert np.all(ours_total >= low - slack) and np.all(ours_total <= high + slack)


def test_detached_programs_count_nothing_until_attached_again(collector, make_cgroup):
    """Probes.detach keeps the maps but stops the counting (what
    benchmarks/bench_overhead_paired.py alternates); attach resumes it."""
    cg = make_cgroup("waker")
    shell = cg.spawn(["sh", "-c", "while :; do sleep 0.01; done"]).pid
    events = lambda: collector.tick().value(cg.path, "runq.events")   # noqa: E731
    wait_for(lambda: events() > 0, timeout=10, what="the sleeper's wake-ups to be counted")
    collector.probes.detach()
    collector.tick()                           # what was counted before the detach
    woken = thread_arrivals([shell])
    wait_for(lambda: thread_arrivals([shell]) >= woken + 10, timeout=10, what="ten wake-ups the kernel counts")
    assert events() == 0
    collector.probes.attach()
    wait_for(lambda: events() > 0, timeout=10, what="counting to resume")


def test_preemption_pairs_name_the_preemptor(collector, make_cgroup):
    """A real-time task (cyclictest, SCHED_FIFO, waking every 1 ms) shares a
    CPU with a busy loop: it preempts the loop at every wakeup, far more often
    than anything else running on the machine."""
    victim, hog = make_cgroup("victim"), make_cgroup("rt")
    totals = Totals(collector, [victim.path, hog.path])
    totals.tick()
    cpu = str(os.cpu_count() - 1)
    victim.spawn(["taskset", "-c", cpu] + BUSY_LOOP)
    hog.spawn(["cyclictest", "-q", "-t1", "-p", "80", "-i", "1000", "-a", cpu, "-D", "30"])

    def rt_on_top(by):
        # Kernel threads live in the root cgroup and preempt everyone on a busy
        # host; among workloads, the real-time task is the one.
        workloads = {path: n for path, n in by.items() if path != "/"}
        return bool(workloads) and max(workloads, key=workloads.get) == hog.path \
            and by[hog.path] > 200     # ~1000 wakeups/s over 2 s, fewer on a busy host

    # Windows of 2 s, from cyclictest's start: another tenant's busy task on
    # that CPU preempts the victim every slice too, and can outnumber a
    # cyclictest still starting up.  One window of at most three must show
    # the real-time task on top; a preemptor credited to the wrong cgroup
    # fails every one.
    seen = []
    for _ in range(3):
        totals.preempted_by[victim.path] = {}
        totals.run(2.0)
        by = totals.preempted_by[victim.path]
        seen.append({k: round(v) for k, v in by.items()})
        if rt_on_top(by):
            break
    print(seen)
    assert any(seen), "no preemption of the victim was seen"
    assert rt_on_top(by), seen


def test_cgroups_appear_and_vanish_between_ticks(collector, make_cgroup):
    snap = collector.tick()
    cg = make_cgroup("brief")
    snap = collector.tick()
    i = snap.cgroups.index(cg.path)
    assert i is not None
    assert snap.cgroups.ids[i] == cg.id
    # Known for BPF, measured as zero: a number, not NaN.
    assert snap.columns["cpu.usage"][i] == 0.0
    assert np.isnan(snap.columns["runq.p99"][i])       # no event: unknowable
    slot = collector.path_slot[cg.path]
    cg.stop()
    for d in set(cg.dirs.values()):
        d.rmdir()
    snap = collector.tick()
    assert snap.cgroups.index(cg.path) is None
    assert slot not in collector.slotmap.slot_path             # recycled


def _fio(args, cg=None) -> dict:
    cmd = ["fio", "--output-format=json", *args]
    proc = cg.spawn(cmd, stdout=subprocess.PIPE) if cg else subprocess.Popen(cmd, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "fio failed"
    return json.loads(out[out.index(b"{"):])


def _disk_reads(dev: str) -> tuple[int, int]:
    """(reads completed, ms spent reading) from /sys/block/DEV/stat: the
    kernel's own per-request accounting (Documentation/block/stat.rst)."""
    fields = open(f"/sys/block/{dev}/stat").read().split()
    return int(fields[0]), int(fields[3])


def _disk_of(path: str) -> str:
    dev = os.stat(path).st_dev
    name = os.path.basename(os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"))
    # A partition's stat lives in its own directory too, under the disk.
    return name


def test_fio_direct_io_matches_fio_and_the_kernel(collector, make_cgroup):
    """Direct reads in a cgroup (on a hybrid host through its v1 blkio cgroup,
    mapped to the v2 cgroup's slot): ops within 2% of fio's count; mean
    latency within 10% of the kernel's own accounting for the same requests
    (/sys/block/DEV/stat), and below fio's completion latency, which adds the
    syscall and the wakeup around the block layer's part."""
    # O_DIRECT needs a real block device: the kernel VMs attach a scratch disk
    # (tests/kernels/guest.sh), where /var/tmp is an overlay.
    data_dir = os.environ.get("TAGGER_TEST_DATA_DIR", "/var/tmp")
    data = os.path.join(data_dir, f"tagger-test-fio-{os.getpid()}")
    try:
        subprocess.run(["fio", "--name=layout", f"--filename={data}", "--size=64M", "--rw=write",
                        "--bs=1M", "--direct=1", "--output-format=terse"], check=True,
                       stdout=subprocess.DEVNULL)
        disk = _disk_of(data)
        cg = make_cgroup("fio", controllers=("blkio",))
        # The disk's own figures cover every reader of the disk: on a shared
        # host another's reads (slower or faster) move its mean.  So measure up
        # to three times and judge the run in which the disk served fewest
        # reads besides fio's.
        runs = []
        for _ in range(3):
            totals = Totals(collector, [cg.path])
            totals.tick()
            reads0, ms0 = _disk_reads(disk)
            report = _fio(["--name=probe", f"--filename={data}", "--rw=randread", "--bs=4k",
                           "--direct=1", "--ioengine=psync", "--iodepth=1", "--size=64M",
                           f"--runtime={WINDOW}", "--time_based"], cg)
            reads1, ms1 = _disk_reads(disk)
            totals.tick()
            job = report["jobs"][0]["read"]
            fio_ops, fio_clat = job["total_ios"], job["clat_ns"]["mean"] * 1e-9
            kernel_lat = (ms1 - ms0) * 1e-3 / max(reads1 - reads0, 1)
            ours_ops = totals.io_ops[cg.path]
            ours_lat = totals.io_lat_sum[cg.path] / max(ours_ops, 1)
            print(f"ops {ours_ops:.0f} vs fio {fio_ops} (disk reads {reads1 - reads0}); mean latency "
                  f"{ours_lat*1e6:.1f}us vs kernel {kernel_lat*1e6:.1f}us vs fio clat {fio_clat*1e6:.1f}us")
            assert fio_ops > 500
            assert ours_ops == pytest.approx(fio_ops, rel=0.02)
            assert ours_lat < fio_clat
            others = max((reads1 - reads0) - fio_ops, 0)
            runs.append((others, ours_lat, kernel_lat, (ms1 - ms0) * 1e-3, ours_lat * ours_ops))
            if others == 0:
                break
        others, ours_lat, kernel_lat, kernel_time, ours_time = min(runs)
        if others == 0 and _ends_at_io_done(collector):
            assert ours_lat == pytest.approx(kernel_lat, rel=0.10)
        elif others == 0:
            # Ended at block_rq_complete (kernels before 6.5), before the bio
            # completion callbacks that wake the reader: shorter than the
            # kernel's span, by 12 of 55 us here with another benchmark running.
            assert 0.7 * kernel_lat <= ours_lat <= 1.02 * kernel_lat
        else:
            # A few slow reads of another's can double the disk's mean: then
            # only the time is comparable -- ours is part of the disk's.
            print(f"{others} reads of others on the disk in every run: comparing time, not the mean")
            assert ours_time <= kernel_time * 1.10
    finally:
        if os.path.exists(data):
            os.unlink(data)


def test_rescan_keeps_a_remade_cgroups_slot(collector, make_cgroup):
    """A cgroup removed and made again at the same path between rescans is a
    new cgroup: it keeps the slot its mkdir gave it, the old slot is freed."""
    cg = make_cgroup("remade")
    collector.tick()
    old_slot = collector.path_slot[cg.path]
    cg.v2.rmdir()
    cg.v2.mkdir()
    collector.tick()                       # rmdir + mkdir events
    new_slot = collector.path_slot[cg.path]
    collector.slotmap.rescan()
    assert collector.path_slot[cg.path] == new_slot
    assert int(collector.slotmap.slot_id[new_slot]) == cg.id
    assert old_slot not in collector.slotmap.slot_path or old_slot == new_slot
    # The new slot counts: the loop's CPU time, against cpu.stat, over
    # however long a noisy host takes to give it 0.1 s (not a fixed sleep).
    # Only that it counts: the loop's first slice, begun before its move
    # into the cgroup was seen, is a large part of so short a window (a
    # 6.12 VM under TCG missed the 2% the 5 s accuracy tests hold to).
    totals = Totals(collector, [cg.path])
    totals.tick()
    start = _usage_usec(cg)
    cg.spawn(BUSY_LOOP)
    wait_for(lambda: _usage_usec(cg) - start > 100_000, timeout=60, what="the loop to run 0.1 s")
    _stop_all([cg])
    totals.tick()
    kernel_cpu = (_usage_usec(cg) - start) * 1e-6
    assert 0.5 * kernel_cpu <= totals.cpu_s[cg.path] <= 1.02 * kernel_cpu
