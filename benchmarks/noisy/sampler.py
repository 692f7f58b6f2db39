"""Once a second, what the scenario needs to plot and judge: web's run-queue
latency as tagger's own BPF collector measures it (the same code `tagger run`
uses, opened here so the alone and collocated phases, when no agent runs, are
measured the same way), batch's CPU, disk writes, CPU quota and demotion, the
CPU time the hypervisor stole from this VM, and the agent's CPU time.  A
thread, so the main thread can run the phases."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from tagger.agent.loopguard import LoopGuard
from tagger.clock import Ticker, cede

RUNQ_HISTS = ("runq.wakeup", "runq.new", "runq.preempt")


@dataclass
class Sample:
    t: float                          # CLOCK_MONOTONIC, end of the window
    dt: float
    web_p50: float = math.nan         # seconds (tagger's runq.p50 of web)
    web_p99: float = math.nan
    web_max: float = math.nan
    web_events: float = 0.0           # run-queue events/s
    batch_cpu: float = math.nan       # CPUs (tagger's cpu.usage of batch)
    batch_write: float = math.nan     # bytes/s
    batch_quota: float | None = None  # CPUs; None = no limit
    batch_demoted: bool = False       # batch at the lowest weight, SCHED_IDLE or confined
    batch_cpus: int | None = None     # CPUs batch's cpuset allows
    steal: float = math.nan           # s/s the hypervisor ran others on our vCPUs (all CPUs)
    agent_cpu: float | None = None    # seconds of CPU the agent has used so far
    demoted: dict = field(default_factory=dict)   # watched workload -> demoted (the unlabelled scenario)
    cpu: dict = field(default_factory=dict)       # watched workload -> CPUs it used
    demand: dict = field(default_factory=dict)    # watched workload (and web) -> CPUs it wanted (cpu.demand)
    weight: dict = field(default_factory=dict)    # watched workload (and web) -> its cpu.weight (v2 units)
    charged: dict = field(default_factory=dict)   # watched workload -> web's run-queue wait charged to it, s/s
    web_foreign: float = math.nan     # web's run-queue wait while another cgroup's task held the CPU, s/s
    web_wait: float = math.nan        # all of web's run-queue wait, s/s
    web_self: float = math.nan        # ... while a task of web itself held the CPU, s/s
    web_other: float = math.nan       # ... waking an idle CPU, before a migration, unseen, s/s
    web_hist: np.ndarray | None = field(default=None, repr=False)


def steal_seconds() -> float:
    """Steal time of all CPUs so far (/proc/stat, 8th field of the "cpu" line):
    time a vCPU wanted to run but the host ran someone else.  No cgroup limit
    can give it back, so the report shows it beside web's misses."""
    import os
    with open("/proc/stat") as fh:
        fields = fh.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (all threads), from /proc/PID/stat."""
    import os
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    def __init__(self, web, batch, interval: float = 1.0, watch=None):
        super().__init__(name="nn-sampler", daemon=True)
        from tagger.telemetry import open_collector
        self.web, self.batch = web, batch
        self.watch = dict(watch or {})     # name -> Workload: its CPU and demotion every sample too
        self.interval = interval
        self.collector = open_collector(prefer_bpf=True)
        if getattr(self.collector, "source", "") != "bpf":
            self.collector.close()
            raise RuntimeError("the BPF collector did not load (tagger doctor says why)")
        self.edges = None
        self.samples: list[Sample] = []
        self.agent_pid: int | None = None
        self.error: BaseException | None = None
        self.boosts = 0           # samples found starved and run as SCHED_FIFO
        self._steal = steal_seconds()
        self._halt = threading.Event()

    def run(self):
        try:
            # Guarded as tagger run's loop (tagger.agent.loopguard): beside a
            # demoted batch an ordinary thread was starved for seconds, and a
            # sample held up that long measures the harness, not web.
            guard = LoopGuard()
            self.collector.tick()
            # tagger's own schedule (tagger.clock.Ticker): a late sample (this
            # thread did not run for seconds: the runs of 2026-11-30 saw
            # 1.5-12 s, with batch demoted) covers the whole gap, and the
            # missed slots are skipped, not caught up with a burst of
            # millisecond windows whose p99 says nothing.
            ticker = Ticker(self.interval, first=time.monotonic() + self.interval)
            guard.waiting(ticker.next)
            try:
                while not self._halt.is_set():
                    wait = ticker.due_in()
                    if wait > 0:
                        self._halt.wait(wait)
                        continue
                    guard.begun(ticker.begin())
                    self.samples.append(self._sample())
                    ticker.end()
                    guard.ended(time.monotonic(), ticker.next)
            finally:
                self.boosts = guard.boosts
                guard.close()
        except BaseException as err:     # the main thread reports it
            self.error = err

    def _sample(self) -> Sample:
        snap = self.collector.tick()
        cede()           # web waits for one step of the harness, not all of it (tagger.clock.cede)
        self.edges = snap.hist_edges
        s = Sample(t=snap.t, dt=snap.dt)
        w = snap.cgroups.index(self.web.path)
        if w is not None:
            s.web_p50 = float(snap.column("runq.p50")[w])
            s.web_p99 = float(snap.column("runq.p99")[w])
            s.web_max = float(snap.column("runq.max")[w])
            s.web_events = float(snap.column("runq.events")[w])
            s.web_hist = sum(snap.histograms[h][w].astype(np.int64) for h in RUNQ_HISTS)
        b = snap.cgroups.index(self.batch.path)
        if b is not None:
            s.batch_cpu = float(snap.column("cpu.usage")[b])
            s.batch_write = float(snap.column("io.write_bytes")[b])
        try:
            s.batch_quota = self.batch.quota()
            s.batch_demoted = self.batch.demoted()
            s.batch_cpus = self.batch.allowed_cpus()
        except OSError:
            pass
        cede()
        usage = snap.column("cpu.usage")
        by = {}
        if w is not None:
            s.web_foreign = float(snap.column("runq.wait.foreign")[w])
            s.web_wait = float(snap.column("runq.wait")[w])
            s.web_self = float(snap.column("runq.wait.self")[w])
            s.web_other = float(snap.column("runq.wait.other")[w])
            mine = snap.culprits[snap.culprits["victim"] == w]
            for culprit, wait in zip(mine["culprit"], mine["wait"]):
                by[int(culprit)] = by.get(int(culprit), 0.0) + float(wait)
        demand, weight = snap.column("cpu.demand"), snap.column("cpu.weight")
        for name, wl in (("web", self.web), *self.watch.items()):
            row = snap.cgroups.index(wl.path)
            s.demand[name] = math.nan if row is None else float(demand[row])
            s.weight[name] = math.nan if row is None else float(weight[row])
        for name, wl in self.watch.items():
            row = snap.cgroups.index(wl.path)
            s.cpu[name] = math.nan if row is None else float(usage[row])
            s.charged[name] = by.get(row, 0.0) if row is not None else math.nan
            try:
                s.demoted[name] = wl.demoted()
            except OSError:
                pass
        steal, self._steal = self._steal, steal_seconds()
        s.steal = (self._steal - steal) / s.dt if s.dt else math.nan
        if self.agent_pid is not None:
            s.agent_cpu = proc_cpu_seconds(self.agent_pid)
        return s

    def stop(self):
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)
        self.collector.close()
