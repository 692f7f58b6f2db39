"""The ``latency-slo`` policy: Retro's LatencySLO loop (Mace et al., NSDI 2015),
with cgroups as workflows and CPU levers / I/O limits as control points, each
step verified and undone when it did not help.

Each tick:

1. Among the protected cgroups, W is the one with the worst
   ``miss = latency / target`` (the SLO metric, e.g. runq.p99 < 2ms).
2. Per resource r (cpu, io): ``importance(r) = latency(W, r) * log(slowdown(W, r))``
   — how much of W's latency r causes, and how much r is slowing W down.
   latency(W, cpu) is W's run-queue latency, latency(W, io) its block latency;
   slowdown is ``runq.slowdown`` / ``io.slowdown`` (Retro's slowdown).  The CPU
   counts only when neighbours can be the cause (:func:`cpu_cause`): not when W
   is throttled by its own quota.
3. Per low-priority cgroup l: ``interference(l) = Σ_r importance(r) * load(l, r) / load(r)``,
   normalised by Σ_r importance(r) so it lies in [0, 1]: l's share of the load
   on the resources that hurt W, weighted by how much each hurts.  load is
   ``cpu.usage`` for cpu and read+write bytes/s for io; load(r) sums over the
   protected and throttled cgroups.  Where the collector attributes W's
   run-queue wait (``runq.wait.foreign`` known), the CPU's share is instead
   l's share of W's foreign wait charged to it (``runq.wait.by``), and only a
   cgroup charged at least CULPRIT_SHARE of it, and CULPRIT_FLOOR s/s, counts:
   the one that held the CPU while W waited, not every cgroup that ran
   (:func:`charged`).
4. If ``miss > 1``, each l with interference > 0 and no step under judgment
   takes one **step**: the next lever of the ladder for the resource that
   matters most to W (below), or, on a lever it keeps, a further cut by
   ``1 - α (miss - 1) interference(l)`` (not below ``floor``).  Else, once the
   SLO has held ``hold`` ticks, quotas and I/O limits are released by ``1 + β``
   up to the ``ceiling``; a CPU limit released past the node's CPUs (no
   ceiling set), or an I/O limit back at the rate it was first throttled from,
   is dropped: the actuator then restores the cgroup's original setting.

**The ladder** (``ladder``, default idle, weight, quota, cpuset: cheapest for
l first) is the order of the CPU levers: ``idle`` (cpu.idle) and ``weight``
(the lowest cpu.weight, 1; v1 cpu.shares 10) are work-conserving, l keeps
every cycle W leaves; a ``quota`` costs l cycles whether or not W wants them;
a ``cpuset`` (l confined to the CPUs the protected cgroups do not need: they
keep ``ceil(1.5 × their CPU use)`` CPUs, at least one, and l at least one)
costs l whole CPUs, but leaves W CPUs to wake up on without a preemption, the
one lever that brought a timer-driven victim's tail back on the
noisy-neighbour scenario (docs/noisy_neighbor.md).  A rung may name several
levers applied together; the old ``demote: [..]`` is the ladder ``[[..], quota]``.
When the disk matters more to W than the CPU (importance), l's I/O limit is
the step (lever ``io``).  A cgroup's first step comes on the first miss;
after that, a next step needs ``persist`` misses in a row under what l keeps.

**Every step is verified.** The ``judge`` ticks after a step (the first is
the tick after it was written) are its judgment window.  The step *helped* if
W's SLO metric over the window (the percentile of the summed histograms when
the metric is a histogram percentile, else the median of the ticks) is within
the target, or at most ``(1 - gain)`` times the same figure over the misses
that asked for the step (up to ``judge`` ticks of them).  A step that helped is
kept; one that did not is **undone** (l's previous settings asked for again:
the actuator restores what it journaled) and its lever is not tried again on
that (W, l) pair for ``cooldown`` seconds; the next miss tries the next rung.
A window that cannot finish (W stopped, l left, everything dropped) is
*unjudged*.  The outcomes are counted in :attr:`LatencySlo.counts` and the
recent ones kept in :attr:`LatencySlo.outcomes`.

Demotions that helped are kept while there is anything to protect and l
goes on wanting the CPU.  A culprit that stops (its ``cpu.demand``, known
where the run-queue wait is, under STOPPED times what it was at its first
CPU step for ``hold`` ticks in a row) gets its CPU levers back at once: the
next cgroup to hog the CPU is the next culprit, and the last one's light
work must not wait behind it at the lowest weight.  When no protected cgroup
ran a task for ``hold`` ticks, nothing is left to protect and every limit is
dropped at once rather than released step by step.

Two additions to the seed algorithm keep it from sitting on the target (the
proportional throttle vanishes as miss -> 1 while each release adds β; a
deterministic load then parks W just above its SLO):

* a throttle takes back at least one release step (factor <= 1 / (1 + β));
* release waits until the SLO has held for ``hold`` ticks in a row (default 3),
  so after a miss the limit stays below the point that missed for a while
  (TCP's congestion avoidance does the same with its slow growth).

With ``window: N`` (default 1) a histogram percentile SLO (``runq.p99``,
``runq.wakeup.p99``, ``io.lat.p99``...) is judged over W's last N ticks
(summed histograms), as SLOs are stated over a period: one slow tick then
moves the figure only if it holds more than 1% of the window's events, so a
host's passing stall does not cost l a quota, while lasting harm shows at once.
The window starts again after each new setting: it judges the ticks under the
setting in force, not the misses that asked for it.

The policy only says what it wants (ActionSets merged into the rules' desired
actions); the actuator applies them with its floor, step limit and cool-down.
"""

from __future__ import annotations

import math
import os
from collections import Counter, deque
from dataclasses import dataclass, field, replace

import numpy as np

from tagger.knobs import WEIGHT_MIN
from tagger.actions.spec import ActionSet, CpuSpec, IoSpec
from tagger.rules.selectors import PathSelector
from tagger.snapshot import Snapshot
from tagger.snapshot import hist_percentiles

from .spec import LatencySloSpec, Selector

#: I/O limits never go below this (bytes/s): a floor for the disk control point.
IO_FLOOR = 1024 * 1024
#: A cpuset demotion leaves the protected cgroups this many times their CPU use
#: (rounded up to whole CPUs): room for their bursts between two ticks.
CPUSET_HEADROOM = 1.5
#: With wait attribution, neighbours are the CPU cause only when they hold at
#: least this share of W's run-queue wait (the rest: its own tasks, the host).
FOREIGN_SHARE = 0.5
#: With wait attribution, a neighbour counts as a CPU culprit of W only when
#: charged at least this share of W's foreign run-queue wait (runq.wait.by):
#: a neighbour running light work is charged a little of it too.
CULPRIT_SHARE = 0.2
#: ... and at least this much of it, seconds per second: the floor of the
#: packaged neighbour=noisy rule (rules/30-contention.yaml).  Neighbours running
#: light work are each charged a few ms/s of W's wait, a sizeable *share* of a
#: small total when W misses for reasons of its own or the host's; demoting
#: them is judged "helped" by chance and kept for as long as W runs.
CULPRIT_FLOOR = 0.05
#: A culprit whose CPU demand fell under this share of its demand at its
#: first CPU step, ``hold`` ticks in a row, has stopped: its CPU levers go.
STOPPED = 0.5
#: Step outcomes, as counted and exported.
OUTCOMES = ("helped", "no_effect", "unjudged")
#: Outcome records kept for ``tagger actions`` and the socket API.
RECENT_OUTCOMES = 50


@dataclass
class Trial:
    """A step under judgment: what l had before it, and W's figures."""
    lever: str
    victim: str
    t: float                           # the tick it was asked for
    before: "ControlState"             # l's state before the step: what undo asks for again
    baseline: float                    # W's SLO metric over the misses that asked for it
    samples: list = field(default_factory=list)   # W's per-tick samples since


@dataclass
class ControlState:
    """What the policy holds on one throttled cgroup."""
    cpu: float | None = None           # CPUs (the quota lever)
    levers: frozenset = frozenset()    # demotions in force: "idle", "weight", "cpuset"
    cpuset: int | None = None          # CPUs l keeps when confined to a cpuset
    missed: int = 0                    # misses in a row since l's last step or verdict
    io_scale: float | None = None      # fraction of io_base
    io_base: tuple[float, float] = (0.0, 0.0)   # read, write bytes/s when first throttled
    demand: float = math.nan           # l's cpu.demand at its first CPU step (NaN: not known)
    calm: int = 0                      # ticks in a row l wanted under STOPPED x demand
    trial: Trial | None = None

    @property
    def holds_cpu(self) -> bool:
        return self.cpu is not None or bool(self.levers)

    @property
    def demoted(self) -> bool:
        return bool(self.levers)

    def holds(self, lever: str) -> bool:
        if lever == "quota":
            return self.cpu is not None
        if lever == "io":
            return self.io_scale is not None
        return lever in self.levers


@dataclass(frozen=True)
class StepOutcome:
    """One judged (or unjudgeable) step."""
    t: float
    victim: str
    culprit: str
    lever: str
    outcome: str                       # one of OUTCOMES
    before: float                      # W's SLO metric, seconds, over the misses that asked
    after: float                       # over the judgment window (NaN: unjudged)


@dataclass
class SloStatus:
    """The last tick's reasoning, for publishers and ``tagger actions``."""
    worst: str | None = None
    miss: float = math.nan
    importance: dict[str, float] = field(default_factory=dict)
    interference: dict[str, float] = field(default_factory=dict)
    action: str = "idle"          # "throttle" | "hold" | "release" | "idle"
    cause: str = ""               # why the CPU levers were left alone ("own quota", "host steal")
    charged: dict[str, float] = field(default_factory=dict)   # culprit -> W's wait charged to it, s/s
    stopped: list[str] = field(default_factory=list)   # culprits whose CPU levers went: they stopped
    trials: dict[str, str] = field(default_factory=dict)   # culprit -> lever under judgment


def _resource_latency_metric(slo_metric: str, resource: str) -> str:
    if resource == "cpu":
        return slo_metric if slo_metric.startswith("runq.") else "runq.p99"
    return slo_metric if slo_metric.startswith("io.lat.") else "io.lat.p99"


SLOWDOWN = {"cpu": "runq.slowdown", "io": "io.slowdown"}

#: SLO metrics that are percentiles of per-tick histograms: metric stem ->
#: the histograms it is computed from (as tagger.telemetry does).
HISTOGRAMS = {"runq": ("runq.wakeup", "runq.new", "runq.preempt"), "runq.wakeup": ("runq.wakeup", "runq.new"),
              "runq.preempt": ("runq.preempt",), "io.lat": ("io.lat",)}


def cpu_cause(snap: Snapshot, row: int) -> str | None:
    """Why CPU levers on neighbours cannot help the protected cgroup at ``row``,
    or None when they can.  The one place that decides it, so that the wait
    attribution columns refine it where a collector has them:

    * "own quota": the victim's own CFS quota throttles it (``cpu.throttled`` >
      0, or ``runq.wait.throttled`` > 0): the neighbours do not hold its CPU.
    * "host steal": the node's ``steal`` (s/s) exceeds the wait neighbours
      cause it (``runq.wait.foreign``).
    * "own tasks": neighbours cause less than FOREIGN_SHARE of its run-queue wait.

    Without the attribution columns only the first can be told; an unknown
    figure (NaN) never vetoes."""
    cols = snap.columns
    for name in ("cpu.throttled", "runq.wait.throttled"):
        col = cols.get(name)
        if col is not None and col[row] > 0:
            return "own quota"
    foreign = cols.get("runq.wait.foreign")
    if foreign is None or math.isnan(foreign[row]):
        return None
    steal = float(snap.node.get("steal", math.nan))
    if steal > foreign[row]:
        return "host steal"
    wait = cols.get("runq.wait")
    if wait is not None and wait[row] > 0 and foreign[row] < FOREIGN_SHARE * wait[row]:
        return "own tasks"
    return None


def charged(snap: Snapshot, row: int) -> dict[int, float] | None:
    """W's (``row``) run-queue wait charged to each other cgroup's row (s/s,
    ``runq.wait.by``), or None where the collector does not attribute the wait
    (``runq.wait.foreign`` unknown): then l's share of the load stands in."""
    foreign = snap.columns.get("runq.wait.foreign")
    if foreign is None or math.isnan(foreign[row]):
        return None
    out: dict[int, float] = {}
    by = snap.culprits
    for culprit, wait in zip(by["culprit"][by["victim"] == row], by["wait"][by["victim"] == row]):
        out[int(culprit)] = out.get(int(culprit), 0.0) + float(wait)
    return out


class LatencySlo:
    """One ``latency-slo`` policy.  ``step`` once a tick."""

    def __init__(self, spec: LatencySloSpec, cpus: float | None = None, hold: int = 3):
        self.spec = spec
        self.hold = hold
        self.ladder = spec.rungs()
        self._met = 0              # ticks in a row with the SLO met
        self._recent: dict[str, deque] = {}   # protected path -> its last `window` histograms
        self._since: dict[str, deque] = {}    # protected path -> (sample, missed) since the last change
        self._cooled: dict[tuple[str, str, str], float] = {}   # (victim, culprit, lever) -> until
        self._quiet = 0            # ticks in a row no protected cgroup ran
        self.rule = f"latency-slo:{spec.name}"
        self.cpus = cpus
        self.state: dict[str, ControlState] = {}
        self.status = SloStatus()
        #: (lever, outcome) -> steps, since start
        self.counts: Counter = Counter()
        #: the latest StepOutcomes, oldest first
        self.outcomes: deque = deque(maxlen=RECENT_OUTCOMES)
        unknown = set(spec.resources) - set(SLOWDOWN)
        if unknown:
            raise ValueError(f"latency-slo {spec.name}: unknown resources {sorted(unknown)} "
                             f"(control points: {', '.join(SLOWDOWN)})")
        self._protect = PathSelector(spec.protect)
        self._throttle = PathSelector(spec.throttle)

    @property
    def name(self) -> str:
        return self.spec.name

    # --- selection ------------------------------------------------------------
    @staticmethod
    def _tags_ok(sel: Selector, tags) -> bool:
        return all(k in tags and tags[k].value == v for k, v in sel.tags.items())

    def _rows(self, snap: Snapshot, store, selector: PathSelector) -> list[int]:
        t = snap.cgroups
        out = []
        for i, (path, name) in enumerate(zip(t.paths, t.names)):
            if selector.match_one(path, name) and (
                    not selector.selector.tags or self._tags_ok(selector.selector, store.tags_of(path))):
                out.append(i)
        return out

    # --- the loop ---------------------------------------------------------------
    def step(self, snapshot: Snapshot, store, applied=None) -> dict[str, ActionSet]:
        """The actions this policy wants now, by cgroup path.  ``applied`` (the
        actuator's ``current()``) lets the loop continue from the limits actually
        in force when the actuator paced or floored them."""
        spec = self.spec
        cpus = self.cpus or float(snapshot.node.get("cpus", math.nan))
        if not cpus or math.isnan(cpus):
            cpus = float(os.cpu_count() or 1)
        ceiling = spec.ceiling if spec.ceiling is not None else cpus
        self._sync(applied)
        now = float(snapshot.t)

        protect = self._rows(snapshot, store, self._protect)
        pset = set(protect)
        throttle = [i for i in self._rows(snapshot, store, self._throttle) if i not in pset]
        paths = snapshot.cgroups.paths
        # Forget cgroups that left the table (vanished or no longer low priority).
        live = {paths[i] for i in throttle}
        for gone in [p for p in self.state if p not in live]:
            self._unjudged(gone, self.state.pop(gone), now)
        for key in [k for k, until in self._cooled.items() if until <= now]:
            del self._cooled[key]

        status = SloStatus()
        status.stopped = self._stopped(snapshot, now)
        lat = self._latency(snapshot, protect)
        misses = [(lat[i] / spec.target, i) for i in protect if not math.isnan(lat[i])]
        if misses:
            miss, w = max(misses)
            status.worst, status.miss = paths[w], float(miss)
        else:
            miss, w = 0.0, None

        missed = w is not None and miss > 1
        self._record(snapshot, protect, lat)
        self._met = 0 if missed else self._met + 1
        usage = snapshot.column("cpu.usage")
        # NaN (a collector that cannot tell) counts as running.
        ran = any(not usage[i] == 0 for i in protect)
        self._quiet = 0 if ran else self._quiet + 1
        if self._quiet >= self.hold and self.state:
            status.action = "release"
            for path, st in self.state.items():
                self._unjudged(path, st, now)
            self.state.clear()
            self.status = status
            return {}

        for st in self.state.values():
            if st.trial is None:
                st.missed = st.missed + 1 if missed else 0
        judged, changed = self._judge(snapshot, now)
        if missed:
            importance = {}
            cause = cpu_cause(snapshot, w)
            for r in spec.resources:
                latency = snapshot.column(_resource_latency_metric(spec.metric, r))[w]
                slowdown = snapshot.column(SLOWDOWN[r])[w]
                value = latency * math.log(slowdown) if slowdown > 1 else 0.0
                importance[r] = 0.0 if math.isnan(value) else float(value)
            if cause is not None and importance.get("cpu", 0) > 0:
                # Never spend a neighbour's CPU on what it does not cause.
                status.cause, importance["cpu"] = cause, 0.0
            status.importance = importance
            total_importance = sum(importance.values())
            loads = {r: self._load(snapshot, r) for r in spec.resources}
            rows = protect + throttle
            totals = {r: float(np.nansum(loads[r][rows])) for r in spec.resources}
            by = charged(snapshot, w)
            if by is not None and "cpu" in loads:
                # The CPU's load is W's foreign wait charged to each culprit:
                # who held the CPU while W waited, not who ran at all.
                foreign = sum(by.values())
                share = np.zeros(len(paths))
                for row, wait in by.items():
                    if foreign > 0 and wait >= max(CULPRIT_SHARE * foreign, CULPRIT_FLOOR):
                        share[row] = wait / foreign
                loads["cpu"], totals["cpu"] = share, 1.0
                status.charged = {paths[row]: wait for row, wait in by.items()}
            status.action = "throttle"
            size = (self._cpuset_size(snapshot, protect, cpus)
                    if any("cpuset" in rung for rung in self.ladder) else None)
            for i in throttle:
                interference = 0.0
                if total_importance > 0:
                    interference = sum(importance[r] * loads[r][i] / totals[r]
                                       for r in spec.resources
                                       if totals[r] > 0 and not math.isnan(loads[r][i])) / total_importance
                status.interference[paths[i]] = interference
                if interference <= 0:
                    continue
                st = self.state.setdefault(paths[i], ControlState())
                if st.trial is not None or paths[i] in judged:
                    continue        # one step at a time, each judged before the next
                # A new rung is spent on a lasting miss, not on one noisy tick;
                # a further cut of a lever l keeps (Retro's loop) on any miss.
                holds_any = st.cpu is not None or st.levers or st.io_scale is not None
                climb = not holds_any or st.missed >= spec.persist
                factor = max(0.0, min(1 - spec.alpha * (miss - 1) * interference, 1 / (1 + spec.beta)))
                before = replace(st, trial=None)
                lever = self._next_step(snapshot, i, paths[w], st, importance, factor, size, ceiling, climb)
                if lever is not None:
                    st.trial = Trial(lever, paths[w], now, before, self._baseline(paths[w]))
                    if lever != "io" and not before.holds_cpu:
                        st.demand, st.calm = float(snapshot.column("cpu.demand")[i]), 0
                    st.missed = 0
                    changed = True
        elif self.state and (self._met < self.hold or any(st.trial for st in self.state.values())):
            # Nothing is released while a step is judged: its window must see it alone.
            status.action = "hold"
        elif self.state:
            status.action = "release"
            size = (self._cpuset_size(snapshot, protect, cpus)
                    if any("cpuset" in rung for rung in self.ladder) else None)
            for path, st in list(self.state.items()):
                if st.cpu is not None:
                    st.cpu *= 1 + spec.beta
                    if st.cpu >= ceiling:
                        st.cpu = ceiling if spec.ceiling is not None else None
                if st.io_scale is not None:
                    st.io_scale *= 1 + spec.beta
                    if st.io_scale >= 1:
                        st.io_scale = None
                if st.cpuset is not None and size is not None and size > st.cpuset:
                    st.cpuset = size        # the protected use less now: l gets CPUs back
                if st.cpu is None and st.io_scale is None and not st.levers:
                    del self.state[path]
        if changed:
            # A new setting: the windows judge the ticks under it, not the
            # misses that asked for it (they would ask again at once).
            self._recent.clear()
            self._since.clear()
        status.trials = {p: st.trial.lever for p, st in self.state.items() if st.trial is not None}
        self.status = status
        return self._actions()

    # --- the ladder ---------------------------------------------------------------
    def _next_step(self, snap: Snapshot, i: int, victim: str, st: ControlState, importance: dict,
                   factor: float, size: int | None, ceiling: float, climb: bool) -> str | None:
        """Take l's next step (changing ``st``) and name its lever; None if none is
        left.  Without ``climb`` only a further cut of a lever l keeps."""
        culprit = snap.cgroups.paths[i]
        for r in sorted((r for r, v in importance.items() if v > 0), key=lambda r: -importance[r]):
            if r == "io":
                if (victim, culprit, "io") in self._cooled:
                    continue
                if st.io_scale is None:
                    if not climb:
                        continue
                    rb = snap.column("io.read_bytes")[i]
                    wb = snap.column("io.write_bytes")[i]
                    base = (0.0 if math.isnan(rb) else float(rb), 0.0 if math.isnan(wb) else float(wb))
                    if sum(base) <= 0:
                        continue
                    st.io_base, st.io_scale = base, 1.0
                st.io_scale *= factor
                return "io"
            for rung in self.ladder:
                lever = "+".join(rung)
                if (victim, culprit, lever) in self._cooled:
                    continue
                if all(st.holds(x) for x in rung):
                    # A rung l keeps: a further cut where it has one, before the next rung.
                    if "quota" in rung and st.cpu > self.spec.floor:
                        st.cpu = max(self.spec.floor, st.cpu * factor)
                        return lever
                    if "cpuset" in rung and size is not None and st.cpuset is not None and size < st.cpuset:
                        st.cpuset = size     # the protected use more than when l was confined
                        return lever
                    continue
                if not climb:
                    continue
                # The kernel refuses a weight while a group is idle: the two never stack.
                if ("weight" in rung and "idle" in st.levers) or ("idle" in rung and "weight" in st.levers):
                    continue
                if "cpuset" in rung and size is None:
                    continue        # the protected need every CPU but one's worth: nothing to confine l to
                for x in rung:
                    if x == "quota":
                        # The first cut starts from what l uses now: scaling an
                        # unused ceiling would change nothing.
                        used = snap.column("cpu.usage")[i]
                        st.cpu = max(self.spec.floor, min(ceiling, used if used > 0 else ceiling) * factor)
                    else:
                        st.levers = st.levers | {x}
                        if x == "cpuset":
                            st.cpuset = size
                return lever
        return None

    def _stopped(self, snap: Snapshot, now: float) -> list[str]:
        """Give back the CPU levers of culprits that stopped wanting the CPU
        (``cpu.demand`` under STOPPED x what it was at their first CPU step,
        ``hold`` ticks in a row); returns their paths.  Unknown demand (NaN:
        a collector without run-queue wait) never counts as stopped."""
        demand = snap.column("cpu.demand")
        index = {p: k for k, p in enumerate(snap.cgroups.paths)}
        out = []
        for path, st in list(self.state.items()):
            row = index.get(path)
            if row is None or not st.holds_cpu or math.isnan(st.demand) or math.isnan(demand[row]):
                continue
            st.calm = st.calm + 1 if demand[row] < STOPPED * st.demand else 0
            if st.calm < self.hold:
                continue
            if st.trial is not None and st.trial.lever != "io":
                self._unjudged(path, st, now)
            st.cpu, st.levers, st.cpuset, st.demand, st.calm, st.missed = None, frozenset(), None, math.nan, 0, 0
            if st.io_scale is None and st.trial is None:
                del self.state[path]
            out.append(path)
        return out

    def _judge(self, snap: Snapshot, now: float) -> tuple[set[str], bool]:
        """Give each trial this tick's sample of its victim; decide the ones
        whose window is full.  Returns the culprits judged this tick, and
        whether a step was undone."""
        judged, undone = set(), False
        paths = snap.cgroups.paths
        index = {p: k for k, p in enumerate(paths)}
        for culprit, st in self.state.items():
            trial = st.trial
            if trial is None or trial.t >= now:
                continue
            row = index.get(trial.victim)
            if row is not None:
                trial.samples.append(self._sample(snap, row))
            if len(trial.samples) < self.spec.judge:
                continue
            after = self._aggregate(trial.samples)
            if math.isnan(after):
                outcome = "unjudged"
            elif after <= self.spec.target or after <= (1 - self.spec.gain) * trial.baseline:
                outcome = "helped"
            else:
                outcome = "no_effect"
            self._count(StepOutcome(now, trial.victim, culprit, trial.lever, outcome, trial.baseline, after))
            if outcome == "no_effect":
                # Undo: ask for l's settings before the step; the actuator
                # restores the journaled originals of what is no longer asked for.
                previous = trial.before
                st.cpu, st.levers, st.cpuset = previous.cpu, previous.levers, previous.cpuset
                st.io_scale, st.io_base = previous.io_scale, previous.io_base
                self._cooled[(trial.victim, culprit, trial.lever)] = now + self.spec.cooldown
                undone = True
            st.trial, st.missed = None, 0
            judged.add(culprit)
        return judged, undone

    def _unjudged(self, culprit: str, st: ControlState, now: float) -> None:
        if st.trial is not None:
            t = st.trial
            self._count(StepOutcome(now, t.victim, culprit, t.lever, "unjudged", t.baseline, math.nan))
            st.trial = None

    def _count(self, outcome: StepOutcome) -> None:
        self.counts[(outcome.lever, outcome.outcome)] += 1
        self.outcomes.append(outcome)

    def cooling(self, now: float) -> dict[tuple[str, str, str], float]:
        """(victim, culprit, lever) -> seconds left of its cool-down."""
        return {k: until - now for k, until in self._cooled.items() if until > now}

    # --- W's figures ----------------------------------------------------------------
    def _histogram_names(self, snap: Snapshot):
        stem, _, pct = self.spec.metric.rpartition(".")
        names = HISTOGRAMS.get(stem)
        if (names is None or not pct.startswith("p") or not len(snap.hist_edges)
                or not all(n in snap.histograms for n in names)):
            return None, None
        return names, float(pct[1:]) / 100

    def _sample(self, snap: Snapshot, row: int):
        """W's figure of one tick, to aggregate over a window: its histogram
        (with the edges and quantile) when the SLO metric is a histogram
        percentile, else the metric's value."""
        names, q = self._histogram_names(snap)
        if names is None:
            return float(snap.column(self.spec.metric)[row])
        return (sum(snap.histograms[n][row].astype(np.int64) for n in names), snap.hist_edges, q)

    @staticmethod
    def _aggregate(samples) -> float:
        """The SLO metric over a window of samples: the percentile of the summed
        histograms, or the median of the values (NaN if none is known)."""
        hists = [s for s in samples if isinstance(s, tuple)]
        if hists:
            total = np.sum([h for h, _, _ in hists], axis=0)
            if total.sum() == 0:
                return math.nan
            _, edges, q = hists[-1]
            return float(hist_percentiles(total[None, :], edges, (q,))[0, 0])
        values = [s for s in samples if not math.isnan(s)]
        return float(np.median(values)) if values else math.nan

    def _record(self, snap: Snapshot, protect: list[int], lat: np.ndarray) -> None:
        paths = snap.cgroups.paths
        for i in protect:
            since = self._since.setdefault(paths[i], deque(maxlen=self.spec.judge))
            missed = not math.isnan(lat[i]) and lat[i] > self.spec.target
            since.append((self._sample(snap, i), missed))
        live = {paths[i] for i in protect}
        for gone in [p for p in self._since if p not in live]:
            del self._since[gone]

    def _baseline(self, victim: str) -> float:
        """W's SLO metric over the misses in a row that ask for a step (at most
        ``judge`` ticks of them, under the settings in force)."""
        streak = []
        for sample, missed in reversed(self._since.get(victim, ())):
            if not missed:
                break
            streak.append(sample)
        return self._aggregate(streak) if streak else math.nan

    def _latency(self, snap: Snapshot, protect: list[int]) -> np.ndarray:
        """The SLO metric per row: this tick's, or for the protected rows over
        the last ``window`` ticks when it is a histogram percentile."""
        spec = self.spec
        lat = snap.column(spec.metric)
        names, q = self._histogram_names(snap)
        if spec.window <= 1 or names is None:
            return lat
        paths = snap.cgroups.paths
        lat = lat.copy()
        for i in protect:
            recent = self._recent.setdefault(paths[i], deque(maxlen=spec.window))
            recent.append(sum(snap.histograms[n][i].astype(np.int64) for n in names))
            total = np.sum(recent, axis=0)[None, :]
            lat[i] = hist_percentiles(total, snap.hist_edges, (q,))[0, 0]
        live = {paths[i] for i in protect}
        for gone in [p for p in self._recent if p not in live]:
            del self._recent[gone]
        return lat

    @staticmethod
    def _cpuset_size(snap: Snapshot, protect: list[int], cpus: float) -> int | None:
        """CPUs a low-priority cgroup keeps under a cpuset demotion; None when
        the protected cgroups need every CPU but one's worth of the node."""
        used = float(np.nansum(snap.column("cpu.usage")[protect])) if protect else 0.0
        reserve = max(1, math.ceil(used * CPUSET_HEADROOM))
        keep = int(cpus) - reserve
        return keep if keep >= 1 else None

    def _load(self, snap: Snapshot, resource: str) -> np.ndarray:
        if resource == "cpu":
            return snap.column("cpu.usage")
        return np.nan_to_num(snap.column("io.read_bytes")) + np.nan_to_num(snap.column("io.write_bytes"))

    def _sync(self, applied) -> None:
        for a in applied or ():
            st = self.state.get(a.cgroup)
            if st is None or a.rule != self.rule or a.knob != "cpu.max" or st.cpu is None:
                continue
            quota, _, period = a.value.partition(" ")
            if quota != "max":
                st.cpu = int(quota) / int(period)

    def _actions(self) -> dict[str, ActionSet]:
        out = {}
        for path, st in self.state.items():
            cpu = None
            if st.cpu is not None or st.levers:
                cpu = CpuSpec(max=st.cpu, weight=WEIGHT_MIN if "weight" in st.levers else None,
                              idle=True if "idle" in st.levers else None,
                              cpuset=st.cpuset if "cpuset" in st.levers else None)
                if cpu == CpuSpec():
                    cpu = None      # a cpuset demotion on a node with no CPU to spare
            io = None
            if st.io_scale is not None:
                rb, wb = st.io_base
                io = IoSpec(read_bps=max(IO_FLOOR, rb * st.io_scale) if rb > 0 else None,
                            write_bps=max(IO_FLOOR, wb * st.io_scale) if wb > 0 else None)
                if io.read_bps is None and io.write_bps is None:
                    io = None
            if cpu or io:
                out[path] = ActionSet(self.rule, cpu=cpu, io=io)
        return out

    # --- reporting --------------------------------------------------------------------
    def step_counts(self) -> list[dict]:
        """Steps since start by lever and outcome (for the exporters)."""
        return [{"policy": self.name, "lever": lever, "outcome": outcome, "steps": n}
                for (lever, outcome), n in sorted(self.counts.items())]

    def recent_steps(self) -> list[dict]:
        """The latest judged steps, oldest first (for ``tagger actions`` and the API)."""
        return [{"policy": self.name, **o.__dict__} for o in self.outcomes]

