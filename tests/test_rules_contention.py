"""The packaged contention rules (rules/30-contention.yaml) on the real kernel.

The BPF collector as the agent runs it (cgroupfs figures every 10 ticks) and
the packaged rules, over real workloads in real cgroups pinned to one CPU:

- a task that sleeps and wakes beside a cgroup of two busy loops with ten
  times its CPU weight: it is `runq=starved` (it waits behind the loops at its
  wake-ups) and the loops' cgroup is `neighbour=noisy` (charged with that
  wait, culprit_most / culprit_of_tagged);
- two cgroups of busy loops alone: both wait, behind each other, and neither is
  starved nor noisy - a CPU hog waiting behind its equals is no victim (the
  old rule, on run-queue latency and preemption counts, tagged both starved);
- the same sleeper under its own CPU quota: it waits, for its quota, and is
  `quota=throttled` - within the rule's `for` plus two ticks of appearing,
  though the cgroupfs figures are read every 10 ticks - and never starved.

Ticks are 0.5 s; the rules' timers run on the Snapshot's clock.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tagger.rules import Engine, load_directory
from tests.bpf_helpers import BUSY_LOOP, require_bpf
from tests.cgroup_fixture import wait_for
from tests.test_runq_attribution import INTERACTIVE, _kill_throttled, _nr_throttled, _set_quota, _set_weight
from tests.test_telemetry_bpf import _stop_all

pytestmark = pytest.mark.bpf

RULES = Path(__file__).resolve().parent.parent / "rules"
TICK = 0.5
#: cpu weights: the loops' cgroup gets ten times the sleeper's share of the CPU.
SLEEPER_WEIGHT, HOG_WEIGHT = 100, 1000


@pytest.fixture
def tagging():
    """(collector, engine): the agent's collector settings and the packaged rules."""
    require_bpf()
    from tagger.telemetry import BpfCollector

    with BpfCollector(cgroupfs_every=10) as coll:
        yield coll, Engine(load_directory(RULES))


class Ticks:
    """Ticks the collector into the engine; remembers every tag each path ever had."""

    def __init__(self, coll, engine, paths):
        self.coll, self.engine, self.paths = coll, engine, paths
        self.seen: dict[str, set[str]] = {p: set() for p in paths}
        self.first: dict[tuple[str, str], float] = {}
        self.snap = None
        self.dts: list[float] = []       # every tick's length, as its Snapshot measured it

    def tick(self):
        time.sleep(TICK)
        self.snap = self.coll.tick()
        self.dts.append(self.snap.dt)
        self.engine.evaluate(self.snap)
        for p in self.paths:
            for k, tag in self.engine.store.tags_of(p).items():
                self.seen[p].add(f"{k}={tag.value}")
                self.first.setdefault((p, f"{k}={tag.value}"), self.snap.t)
        return self.snap

    def has(self, path, tag) -> bool:
        self.tick()
        key, value = tag.split("=")
        got = self.engine.store.tags_of(path).get(key)
        return got is not None and got.value == value

    def run(self, seconds, sums=()) -> dict[tuple[str, str], float]:
        """Tick for ``seconds``; the seconds each (path, rate metric) in ``sums``
        added up over those ticks (one tick's figure is too few events to
        compare causes by)."""
        total = dict.fromkeys(sums, 0.0)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.tick()
            for path, metric in total:
                total[path, metric] += self.value(path, metric) * self.snap.dt
        return total

    def value(self, path, metric) -> float:
        i = self.snap.cgroups.index(path)
        return float("nan") if i is None else float(self.snap.columns[metric][i])


def _pinned(argv):
    return ["taskset", "-c", str(os.cpu_count() - 1)] + argv


def test_a_sleeper_behind_busy_loops_is_starved_and_the_loops_are_noisy(tagging, make_cgroup):
    coll, engine = tagging
    sleeper = make_cgroup("sleeper", controllers=("cpu",))
    hog = make_cgroup("hog", controllers=("cpu",))
    _set_weight(sleeper, SLEEPER_WEIGHT)
    _set_weight(hog, HOG_WEIGHT)
    ticks = Ticks(coll, engine, [sleeper.path, hog.path])
    ticks.tick()
    for _ in range(2):
        hog.spawn(_pinned(BUSY_LOOP))
    sleeper.spawn(_pinned(INTERACTIVE))
    try:
        wait_for(lambda: ticks.has(sleeper.path, "runq=starved"), timeout=60, interval=0,
                 what="the sleeper to be runq=starved")
        wait_for(lambda: ticks.has(hog.path, "neighbour=noisy"), timeout=30, interval=0,
                 what="the busy loops to be neighbour=noisy")
        print("sleeper", sorted(ticks.seen[sleeper.path]), "hog", sorted(ticks.seen[hog.path]),
              "foreign %.3f usage %.3f" % (ticks.value(sleeper.path, "runq.wait.foreign"),
                                           ticks.value(sleeper.path, "cpu.usage")))
        # Victim and culprit, not the other way round.
        assert "neighbour=noisy" not in ticks.seen[sleeper.path]
        assert "runq=starved" not in ticks.seen[hog.path]
        assert "type=interactive" not in ticks.seen[hog.path]
    finally:
        _stop_all([sleeper, hog])


def test_busy_loops_alone_wait_behind_each_other_and_are_neither_starved_nor_noisy(tagging, make_cgroup):
    coll, engine = tagging
    a, b = make_cgroup("hog-a"), make_cgroup("hog-b")
    ticks = Ticks(coll, engine, [a.path, b.path])
    ticks.tick()
    for cg in (a, b):
        cg.spawn(_pinned(BUSY_LOOP))
    waited = {a.path: 0.0, b.path: 0.0}
    try:
        # cpu=intensive (for: 10s) says the rules have looked at them long
        # enough; then as long again, past runq-starved's `for` of 5 s.
        wait_for(lambda: ticks.has(a.path, "cpu=intensive") and ticks.has(b.path, "cpu=intensive"),
                 timeout=60, interval=0, what="both loops to be cpu=intensive")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ticks.tick()
            for p in waited:
                waited[p] += ticks.value(p, "runq.wait.foreign") * ticks.snap.dt
        print({p.rsplit("/", 1)[-1]: sorted(s) for p, s in ticks.seen.items()}, "foreign wait", waited)
        # The premise: each waited behind the other, for seconds.
        assert all(w > 1.0 for w in waited.values())
        for p in (a.path, b.path):
            assert "runq=starved" not in ticks.seen[p]
            assert "neighbour=noisy" not in ticks.seen[p]
    finally:
        _stop_all([a, b])


def test_a_sleeper_under_its_own_quota_is_throttled_not_starved(tagging, make_cgroup):
    coll, engine = tagging
    ticks = Ticks(coll, engine, [])
    ticks.tick()                                  # the agent was running before the cgroup came
    capped = make_cgroup("capped", controllers=("cpu",))
    _set_quota(capped, 0.05, period_us=100_000)
    ticks.paths.append(capped.path)
    ticks.seen[capped.path] = set()
    ticks.tick()                                  # the new cgroup: seen, its cgroupfs first read
    rule = next(r for r in engine.ruleset.rules if r.tags.get("quota") == "throttled")
    try:
        capped.spawn(_pinned(INTERACTIVE))
        wait_for(lambda: _nr_throttled(capped) >= 1, what="the quota to throttle")
        started = ticks.tick().t                  # the first tick with throttling behind it
        since = len(ticks.dts)
        wait_for(lambda: ticks.has(capped.path, "quota=throttled"), timeout=60, interval=0,
                 what="the sleeper to be quota=throttled")
        took = ticks.first[(capped.path, "quota=throttled")] - started
        longest = max([TICK, *ticks.dts[since:]])  # a loaded host stretches some ticks
        p = capped.path
        # Past runq-starved's `for`, still throttled.  Before 6.8 a wake-up into
        # a throttle opens no window (that wait is "other"), so a single tick
        # may hold no throttled wait at all (6.1: 0 against 4 ms foreign);
        # over the whole stretch the quota still outweighs the neighbours.
        wait = ticks.run(8, sums=[(p, "runq.wait.throttled"), (p, "runq.wait.foreign")])
        throttled, foreign = wait[p, "runq.wait.throttled"], wait[p, "runq.wait.foreign"]
        print(sorted(ticks.seen[p]), "tagged after %.1fs" % took,
              "over 8 s: throttled wait %.3f s, foreign %.3f s" % (throttled, foreign))
        assert throttled > foreign
        # Read at once, though the collector reads cgroupfs every 10 ticks
        # (5 s): set within the rule's `for` plus two ticks (on the
        # Snapshot's clock; a tick for the read that sees the throttling).
        assert took <= rule.for_ + 3 * longest + 0.1
        assert "runq=starved" not in ticks.seen[p]
    finally:
        _kill_throttled(capped)
