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
   counts only when neighbours can be the cause (:func:`.culprits.cpu_cause`): not when W
   is throttled by its own quota.
3. Per low-priority cgroup l: ``interference(l) = Σ_r importance(r) * load(l, r) / load(r)``,
   normalised by Σ_r importance(r) so it lies in [0, 1]: l's share of the load
   on the resources that hurt W, weighted by how much each hurts.  load is
   ``cpu.usage`` for cpu and read+write bytes/s for io; load(r) sums over the
   protected and throttled cgroups.  Where the collector attributes W's
   run-queue wait (``runq.wait.foreign`` known), the CPU's share is instead
   l's share of W's foreign wait charged to it (``runq.wait.by``), and only
   the culprits count: the fewest most-charged cgroups that together hold half
   of it, each charged at least CULPRIT_FLOOR s/s -- the ones that held the
   CPU while W waited, not every cgroup that ran (:func:`.culprits.blamed`).
   There a cgroup's first step also needs it blamed ``persist`` misses in a
   row: one tick in which a light neighbour happened to hold the CPU does not
   make it a culprit -- unless it *crowds* W: it and the protected together
   want at least the node's CPUs (``cpu.demand``; the protected's less the
   wait other cgroups cause them, which is the harm, not a want), a hog,
   not a light neighbour's burst; then the first miss it is blamed for is
   enough, and for that first step CULPRIT_FLOOR does not apply: in the
   sine's quiet seconds web's whole wait was 30-140 ms/s, 15-40 of it
   behind batch, and five misses in a row went unanswered (the labelled
   run of 14:18).
   And while such a hog is blamed, or held by a CPU step, light neighbours
   take no step at all: the hog is the cause at hand (its ladder is what
   the misses left beside it call for), and a light neighbour blamed then
   only held the CPU the hog left (the unlabelled scenario's light
   neighbours were charged 130-200 ms/s of web's wait beside a demoted hog,
   and no lever on them was the fix).  Nor does a light neighbour take a
   step while W's own tasks hold more than half of its wait (the "own
   tasks" rule of :func:`.culprits.cpu_cause`, waived only for a cgroup
   that crowds W and so squeezes its tasks onto the CPUs it leaves): in the
   unlabelled scenario's lead-in, three light neighbours starting at once,
   one charged 86-103 ms/s beside 250-275 ms/s of web's own wait was
   demoted, and no lever on it could have brought web within its SLO.
   Nor while it wants no more than its fair share of the node
   (:func:`.culprits.within_share`, by weight): it takes nothing its weight
   does not give it (the lead-in's light neighbours, 0.3-0.5 CPU in their
   bursts against a share of about 0.6, were blamed for two misses in a row).
   (Letting ticks within the SLO not break the run made no first action
   faster on the labelled scenario, 2.3-10.2 s, and let a light neighbour's
   bursts a few ticks apart add up on the unlabelled one.)
4. If ``miss > 1``, each l with interference > 0 and no step under judgment
   takes one **step**: the next lever of the ladder for the resource that
   matters most to W (below), or, on a lever it keeps, a further cut by
   ``1 - α (miss - 1) interference(l)`` (not below ``floor``).  Else, once the
   SLO has held ``hold`` ticks, quotas and I/O limits are released by ``1 + β``
   up to the ``ceiling``; a CPU limit released past the node's CPUs (no
   ceiling set), or an I/O limit back at the rate it was first throttled from,
   is dropped: the actuator then restores the cgroup's original setting.

**The ladder** (``ladder``, default idle, weight, quota, cpuset: cheapest for
l first, from the noisy-neighbour scenario's static sweeps) is the order of
the CPU levers: ``idle`` (cpu.idle) and ``weight`` (the lowest cpu.weight, 1;
v1 cpu.shares 10) are work-conserving, l keeps every cycle W leaves (the
sweeps had both keeping W within its SLO, and l's throughput equal within the
host's noise); ``idle`` first, since W's wake-ups may also land on l's CPUs as
on idle ones; a ``quota`` costs l cycles whether or not W wants them;
a ``cpuset`` (l confined to the CPUs the protected cgroups do not need: they
keep ``ceil(1.5 × their CPU use)`` CPUs, at least one, and l at least one)
costs l whole CPUs, but leaves W CPUs to wake up on without a preemption, the
one lever that brought a timer-driven victim's tail back on the
noisy-neighbour scenario (docs/noisy_neighbor.md).  A rung may name several
levers applied together; the old ``demote: [..]`` is the ladder ``[[..], quota]``.
When the disk matters more to W than the CPU (importance), l's I/O limit is
the step (lever ``io``).  A cgroup's first step comes on the first miss it
is interfering in (blamed ``persist`` times, with wait attribution, unless
it crowds W);
after that, a next step needs ``persist`` misses in a row under what l keeps.

**Every step is verified.** The ``judge`` ticks after a step (the first is
the tick after it was written) are its judgment window.  The step *helped* if
W's SLO metric over the window (the percentile of the summed histograms when
the metric is a histogram percentile, else the median of the ticks) is within
the target, or at most ``(1 - gain)`` times the same figure over the misses
that asked for the step (up to ``judge`` ticks of them).  A step that helped is
kept; one that did not is **undone** (l's previous settings asked for again:
the actuator restores what it journaled) and its lever is not tried again on
that (W, l) pair for ``cooldown`` seconds (a work-conserving one: for W
against every culprit, docs/actions.md); the next miss tries the next rung.
A window that cannot finish (W stopped, l left, everything dropped) is
*unjudged*.  The outcomes are counted in :attr:`LatencySlo.counts` and the
recent ones kept in :attr:`LatencySlo.outcomes`.

Demotions that helped are kept while they are needed.  Once the SLO has held
``hold`` ticks and no step is judged, a demotion kept GIVE_BACK_AFTER seconds
since it was last found needed is **given back on trial** (the cgroup wanting
the least CPU first, one at a time): if W misses at a tick of the next
``judge`` with l blamed for it (any miss, without attribution) it is put back
at once ("needed") and the next trial waits twice as long; else it stays
given back ("released").  Beside a hog of the moment, while W's own
tasks hold most of its wait, or while it wants no more than its fair
share, a light l's blame does not count, as it takes no step then: the
unlabelled scenario's light neighbours, demoted for their start-up
bursts, were found "needed" while another neighbour hogged and stayed
demoted into the next turn (17:25).  A demoted culprit is
charged little of W's wait whether it still hogs or not, so only a trial
tells -- except where its demand does: a work-conserving demotion (weight,
idle) costs l only the CPU the protected take, and while l and the
protected together want at least
the node's CPUs (``cpu.demand``) giving it back could only bring the
contention back, so it is not tried (and l's demand then is the one it must
fall under to count as stopped); it goes when l stops or, once l fits
beside them, a trial finds it not needed.  A culprit that stops (its
``cpu.demand``, known where the run-queue wait is -- demoted, less its wait
behind hogs not demoted with it, which the demotion causes -- under
STOPPED times what
it was at its first CPU step, when a trial last found it needed (if more),
or when it was last seen wanting the node, for ``hold`` ticks in a row) gets its CPU
levers back at once: the next cgroup to hog the CPU is the next culprit, and
the last one's light work must not wait behind it at the lowest weight.
When no protected cgroup ran a task for ``hold`` ticks, nothing is left to
protect and every limit is dropped at once rather than released step by
step.

**W's own weight.**  A miss on which no neighbour takes a step (none is a
culprit: each within its share, or charged too little) and no step is
judged raises W's ``cpu.weight`` to the highest among the neighbours
charged with its wait (lever ``boost``, :mod:`.boost`), judged like a step;
``boost: false`` never does.

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

Its parts: :mod:`.culprits` (importance, interference, :func:`cpu_cause`),
:mod:`.ladder` (the next step), :mod:`.figures` (W's SLO metric over windows),
:mod:`.verdicts` (judging steps), :mod:`.boost` (W's own weight), :mod:`.state` (what it holds
between ticks).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from tagger.kernelfs import HOST
from tagger.knobs import WEIGHT_MIN, CpuMax
from tagger.rules.selectors import PathSelector
from tagger.rules.spec import WORK_CONSERVING, ActionSet, CpuSpec, IoSpec, LatencySloSpec, Selector
from tagger.snapshot import Snapshot

from .boost import Boosts
from .culprits import (SLOWDOWN, Interference, demand_below_hogs, fresh_hogs, hog_at_hand, importance,
                       neighbours_hold, within_share)
from .figures import SloFigures
from .ladder import Ladder
from .state import ControlState, SloStatus, Trial
from .verdicts import Verdicts

__all__ = ["LatencySlo", "SloStatus"]

#: I/O limits never go below this (bytes/s): a floor for the disk control point.
IO_FLOOR = 1024 * 1024
#: A culprit whose CPU demand fell under this share of its demand at its
#: first CPU step, ``hold`` ticks in a row, has stopped: its CPU levers go.
STOPPED = 0.5


class LatencySlo:
    """One ``latency-slo`` policy.  ``step`` once a tick."""

    def __init__(self, spec: LatencySloSpec, cpus: float | None = None, hold: int = 3):
        self.spec = spec
        self.hold = hold
        self.figures = SloFigures(spec)
        self.verdicts = Verdicts(spec)
        self.ladder = Ladder(spec, self.verdicts.cooled)
        self.boosts = Boosts(self.verdicts, self.figures)
        self._met = 0              # ticks in a row with the SLO met
        self._blamed: dict[str, int] = {}   # path -> W's misses in a row it was blamed for
        self._quiet = 0            # ticks in a row no protected cgroup ran
        self.rule = f"latency-slo:{spec.name}"
        self.cpus = cpus
        self.state: dict[str, ControlState] = {}
        self.status = SloStatus()
        #: (lever, outcome) -> steps since start; the latest StepOutcomes, oldest first
        self.counts, self.outcomes = self.verdicts.counts, self.verdicts.outcomes
        unknown = set(spec.resources) - set(SLOWDOWN)
        if unknown:
            raise ValueError(f"latency-slo {spec.name}: unknown resources {sorted(unknown)} "
                             f"(control points: {', '.join(SLOWDOWN)})")
        self._protect = PathSelector(spec.protect)
        self._throttle = PathSelector(spec.throttle)

    @property
    def name(self) -> str:
        return self.spec.name

    def cooling(self, now: float) -> dict[tuple[str, str, str], float]:
        """(victim, culprit, lever) -> seconds left of its cool-down."""
        return self.verdicts.cooling(now)

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
            cpus = float(HOST.online_cpus())
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
            self.verdicts.unjudged(gone, self.state.pop(gone), now)
        self.boosts.forget({paths[i] for i in protect}, now)
        self.verdicts.expire(now)

        status = SloStatus()
        room = self._room(snapshot, protect, cpus)
        status.stopped = self._stopped(snapshot, room, now)
        lat = self.figures.latency(snapshot, protect)
        misses = [(lat[i] / spec.target, i) for i in protect if not math.isnan(lat[i])]
        if misses:
            miss, w = max(misses)
            status.worst, status.miss = paths[w], float(miss)
        else:
            miss, w = 0.0, None

        missed = w is not None and miss > 1
        self.figures.record(snapshot, protect, lat)
        self._met = 0 if missed else self._met + 1
        if not missed:
            self._blamed.clear()
        usage = snapshot.column("cpu.usage")
        # NaN (a collector that cannot tell) counts as running.
        ran = any(not usage[i] == 0 for i in protect)
        self._quiet = 0 if ran else self._quiet + 1
        if self._quiet >= self.hold and (self.state or self.boosts.state):
            status.action = "release"
            for path, st in self.state.items():
                self.verdicts.unjudged(path, st, now)
            self.state.clear()
            self.boosts.forget(set(), now)
            self.status = status
            return {}

        for st in self.state.values():
            if st.trial is None:
                st.missed = st.missed + 1 if missed else 0
        fresh = fresh_hogs(snapshot, throttle, room, self.state)
        # A light neighbour's blame counts for nothing beside a hog, while
        # W's own tasks hold most of its wait, or while it wants no more than
        # its fair share: it takes no step then, and its demotion given back
        # on trial is not "needed" either.
        excused = w is not None and (
            ("cpu" in spec.resources and hog_at_hand(snapshot, w, throttle, room, self.state, fresh))
            or not neighbours_hold(snapshot, w))
        fair = within_share(snapshot, protect + throttle, cpus)
        judged, changed = self.verdicts.judge(self.state, snapshot, self.figures, now, room, excused,
                                              {paths[i] for i in fair})
        changed |= self.boosts.judge(snapshot, now)
        if missed:
            status.action = "throttle"
            changed |= self._throttle_step(snapshot, status, w, miss, protect, throttle, judged,
                                           cpus, ceiling, now, room, fresh, set(throttle) if excused else fair)
            if spec.boost and not changed and not any(st.trial for st in {**self.state, **self.boosts.state}.values()):
                # No neighbour is the culprit to step: W's own weight (.boost).
                changed = self.boosts.step(snapshot, w, throttle, status.importance, now)
        elif self.state and (self._met < self.hold or any(st.trial for st in self.state.values())):
            # Nothing is released while a step is judged: its window must see it alone.
            status.action = "hold"
        elif self.state:
            status.action = "release"
            self._release(self.ladder.cpuset_size(snapshot, protect, cpus), ceiling)
            if w is not None:
                changed |= self._give_back(snapshot, paths[w], room, now)
        if changed:
            # A new setting: the windows judge the ticks under it, not the
            # misses that asked for it (they would ask again at once).
            self.figures.clear()
        status.trials = {p: st.trial.lever for p, st in {**self.state, **self.boosts.state}.items() if st.trial}
        self.status = status
        return self._actions()

    def _throttle_step(self, snapshot: Snapshot, status: SloStatus, w: int, miss: float, protect: list[int],
                       throttle: list[int], judged: set[str], cpus: float, ceiling: float, now: float,
                       room: float, fresh: set[int], spared: set[int]) -> bool:
        """W missed: each culprit with no step under judgment takes one.  True if one did.
        ``spared``: the rows whose blame counts for nothing now if they are light."""
        spec, paths, changed = self.spec, snapshot.cgroups.paths, False
        status.importance, status.cause = importance(snapshot, w, spec.metric, spec.resources)
        demand = snapshot.column("cpu.demand")
        harm = Interference(snapshot, w, protect + throttle, status.importance, unfloored=fresh)
        status.charged = harm.charged
        size = self.ladder.cpuset_size(snapshot, protect, cpus)
        interferences = {i: harm.of(i) for i in throttle}
        runs = {paths[i]: self._blamed.get(paths[i], 0) + 1 for i, x in interferences.items() if x > 0}
        self._blamed = runs
        for i, interference in interferences.items():
            status.interference[paths[i]] = interference
            if interference <= 0:
                continue
            if harm.attributed and not demand[i] >= room and (
                    i in spared or (paths[i] not in self.state and runs[paths[i]] < spec.persist)):
                continue        # light: never when spared (above), else after `persist` misses
            st = self.state.setdefault(paths[i], ControlState())
            if st.trial is not None or paths[i] in judged:
                continue        # one step at a time, each judged before the next
            # A new rung is spent on a lasting miss, not on one noisy tick;
            # a further cut of a lever l keeps (Retro's loop) on any miss.
            holds_any = st.cpu is not None or st.levers or st.io_scale is not None
            climb = not holds_any or st.missed >= spec.persist
            factor = max(0.0, min(1 - spec.alpha * (miss - 1) * interference, 1 / (1 + spec.beta)))
            before = replace(st, trial=None)
            lever = self.ladder.next_step(snapshot, i, paths[w], st, status.importance, factor, size,
                                          ceiling, climb)
            if lever is not None:
                st.trial = Trial(lever, paths[w], now, before, self.figures.baseline(paths[w]))
                if lever != "io" and not before.holds_cpu:
                    st.demand, st.calm = float(snapshot.column("cpu.demand")[i]), 0
                st.missed = 0
                changed = True
        return changed

    def _release(self, size: int | None, ceiling: float) -> None:
        """The SLO held ``hold`` ticks: quotas and I/O limits loosened by ``1 + beta``;
        what is back at the top is dropped (the actuator restores the original)."""
        spec = self.spec
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

    @staticmethod
    def _room(snap: Snapshot, protect: list[int], cpus: float) -> float:
        """CPUs the node has beside what the protected cgroups would want with
        the node to themselves (``cpu.demand`` less the wait other cgroups
        caused them, ``runq.wait.foreign``): a cgroup wanting at least this
        *crowds* them (a NaN demand never does).  That wait is the harm, not
        a want: counted, the more W waited the less room it left, and a
        light neighbour wanting 0.44 CPU crowded a W whose demand had
        swollen to 1.59 with 1.3 s/s of such wait (the unlabelled run of
        2026-12-01 02:20)."""
        demand = snap.column("cpu.demand")[protect]
        foreign = np.nan_to_num(snap.column("runq.wait.foreign")[protect])
        return cpus - float(np.nansum(demand - foreign))

    def _give_back(self, snap: Snapshot, victim: str, room: float, now: float) -> bool:
        """The SLO has held ``hold`` ticks and no step is judged: the kept
        demotion that is due (kept ``give_back_after`` seconds), on the cgroup
        wanting the least CPU, is given back on trial.  A work-conserving one
        is not due while l and the protected want the whole node (see the
        module doc).  True if one was given back."""
        demand = demand_below_hogs(snap, self.state, room)
        due = []
        for path, st in self.state.items():
            if st.levers and not math.isnan(st.kept) and now - st.kept >= st.give_back_after:
                row = snap.cgroups.index(path)
                want = float(demand[row]) if row is not None else math.nan
                if st.levers <= WORK_CONSERVING and want >= room:
                    # Still a culprit by its demand: stopped is measured from this.
                    st.demand, st.calm = want, 0
                    continue
                due.append((math.inf if math.isnan(want) else want, path))
        if not due:
            return False
        path = min(due)[1]
        st = self.state[path]
        lever = "+".join(sorted(st.levers))
        st.trial = Trial(lever, victim, now, replace(st, trial=None), self.figures.baseline(victim),
                         give_back=True)
        st.levers, st.cpuset = frozenset(), None
        return True

    def _stopped(self, snap: Snapshot, room: float, now: float) -> list[str]:
        """Give back the CPU levers of culprits that stopped wanting the CPU
        (``cpu.demand`` under STOPPED x what it was at their first CPU step,
        ``hold`` ticks in a row); returns their paths.  Unknown demand (NaN:
        a collector without run-queue wait) never counts as stopped.  A
        demoted culprit's demand leaves out its wait behind hogs (:func:`.culprits.demand_below_hogs`)."""
        demand = demand_below_hogs(snap, self.state, room)
        out = []
        for path, st in list(self.state.items()):
            row = snap.cgroups.index(path)
            if row is None or not st.holds_cpu or math.isnan(st.demand) or math.isnan(demand[row]):
                continue
            st.calm = st.calm + 1 if demand[row] < STOPPED * st.demand else 0
            if st.calm < self.hold:
                continue
            if st.trial is not None and st.trial.lever != "io":
                self.verdicts.unjudged(path, st, now)
            st.cpu, st.levers, st.cpuset, st.demand, st.calm, st.missed = None, frozenset(), None, math.nan, 0, 0
            if st.io_scale is None and st.trial is None:
                del self.state[path]
            out.append(path)
        return out

    def _sync(self, applied) -> None:
        for a in applied or ():
            st = self.state.get(a.cgroup)
            if st is None or a.rule != self.rule or a.knob != "cpu.max" or st.cpu is None:
                continue
            limit = CpuMax.parse(a.value)
            if limit.quota_us is not None:
                st.cpu = limit.cpus

    def _actions(self) -> dict[str, ActionSet]:
        out = self.boosts.actions(self.rule)
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
