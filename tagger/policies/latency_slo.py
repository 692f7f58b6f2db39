"""The ``latency-slo`` policy: Retro's LatencySLO loop (Mace et al., NSDI 2015),
with cgroups as workflows and CPU quota / I/O limits as control points.

Each tick:

1. Among the protected cgroups, W is the one with the worst
   ``miss = latency / target`` (the SLO metric, e.g. runq.p99 < 2ms).
2. Per resource r (cpu, io): ``importance(r) = latency(W, r) * log(slowdown(W, r))``
   — how much of W's latency r causes, and how much r is slowing W down.
   latency(W, cpu) is W's run-queue latency, latency(W, io) its block latency;
   slowdown is ``runq.slowdown`` / ``io.slowdown`` (Retro's slowdown).
3. Per low-priority cgroup l: ``interference(l) = Σ_r importance(r) * load(l, r) / load(r)``,
   normalised by Σ_r importance(r) so it lies in [0, 1]: l's share of the load
   on the resources that hurt W, weighted by how much each hurts.  load is
   ``cpu.usage`` for cpu and read+write bytes/s for io; load(r) sums over the
   protected and throttled cgroups.
4. If ``miss > 1``: every l's limit is scaled by ``1 - α (miss - 1) interference(l)``
   (not below ``floor``); else every limit is released by ``1 + β`` up to the
   ``ceiling``; a CPU limit released past the node's CPUs (no ceiling set), or an
   I/O limit back at the rate it was first throttled from, is dropped: the
   actuator then restores the cgroup's original setting.

The first CPU step is not a quota but a demotion (``demote``, one lever or a
list applied together): the lowest ``cpu.weight`` (1; v1 ``cpu.shares`` 10),
the default, or ``cpu.idle`` (``idle``), and ``cpuset``: l confined to the
CPUs the protected cgroups do not need (koordlet's CPU suppress; they keep
``ceil(1.5 × their CPU use)`` CPUs, at least one, and l at least one; the
cpuset narrows on a miss when their use grew, and widens on release when it
fell).  A weight or cpu.idle lets W's wake-ups
preempt l and is work-conserving: l still gets every cycle W leaves.  A
cpuset is not, but it leaves W whole CPUs to wake up on, so W's wake-ups need
not wait for a preemption at all; on the noisy-neighbour scenario it was the
lever that brought a timer-driven victim's tail back.  The demotion is kept
while there is anything to protect.  Quotas, which do cost l throughput, only
follow when W still misses with l demoted, ``persist`` ticks in a row (default
2, counted from the tick after the demotion): a quota cut is spent on a
lasting miss, not on one noisy tick (a host's steal, a one-off stall), which
it could not undo anyway.  On the noisy-neighbour scenario no quota brought
W's run-queue tail back (with six times W's weight, l still delays W whenever
its quota lets it run) while every demotion did (docs/noisy_neighbor.md).
When no protected cgroup ran a task for ``hold``
ticks, nothing is left to protect and every limit is dropped at once rather
than released step by step.

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
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tagger.actions.cpu import WEIGHT_MIN
from tagger.actions.spec import ActionSet, CpuSpec, IoSpec
from tagger.rules.selectors import PathSelector
from tagger.snapshot import Snapshot
from tagger.telemetry import hist_percentiles

from .spec import LatencySloSpec, Selector

#: I/O limits never go below this (bytes/s): a floor for the disk control point.
IO_FLOOR = 1024 * 1024
#: A cpuset demotion leaves the protected cgroups this many times their CPU use
#: (rounded up to whole CPUs): room for their bursts between two ticks.
CPUSET_HEADROOM = 1.5


@dataclass
class ControlState:
    """What the policy holds on one throttled cgroup."""
    cpu: float | None = None           # CPUs
    demoted: bool = False              # the demotion (lowest weight, cpu.idle, cpuset) is asked for
    cpuset: int | None = None          # CPUs l keeps when demoted to a cpuset
    missed_demoted: int = 0            # ticks in a row W missed with l already demoted
    io_scale: float | None = None      # fraction of io_base
    io_base: tuple[float, float] = (0.0, 0.0)   # read, write bytes/s when first throttled


@dataclass
class SloStatus:
    """The last tick's reasoning, for publishers and ``tagger actions``."""
    worst: str | None = None
    miss: float = math.nan
    importance: dict[str, float] = field(default_factory=dict)
    interference: dict[str, float] = field(default_factory=dict)
    action: str = "idle"          # "throttle" | "hold" | "release" | "idle"


def _resource_latency_metric(slo_metric: str, resource: str) -> str:
    if resource == "cpu":
        return slo_metric if slo_metric.startswith("runq.") else "runq.p99"
    return slo_metric if slo_metric.startswith("io.lat.") else "io.lat.p99"


SLOWDOWN = {"cpu": "runq.slowdown", "io": "io.slowdown"}

#: SLO metrics that are percentiles of per-tick histograms: metric stem ->
#: the histograms it is computed from (as tagger.telemetry does).
HISTOGRAMS = {"runq": ("runq.wakeup", "runq.new", "runq.preempt"), "runq.wakeup": ("runq.wakeup", "runq.new"),
              "runq.preempt": ("runq.preempt",), "io.lat": ("io.lat",)}


class LatencySlo:
    """One ``latency-slo`` policy.  ``step`` once a tick."""

    def __init__(self, spec: LatencySloSpec, cpus: float | None = None, hold: int = 3):
        self.spec = spec
        self.hold = hold
        self._met = 0              # ticks in a row with the SLO met
        self._recent: dict[str, deque] = {}   # protected path -> its last `window` histograms
        self._quiet = 0            # ticks in a row no protected cgroup ran
        self.rule = f"latency-slo:{spec.name}"
        self.cpus = cpus
        self.state: dict[str, ControlState] = {}
        self.status = SloStatus()
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

        protect = self._rows(snapshot, store, self._protect)
        pset = set(protect)
        throttle = [i for i in self._rows(snapshot, store, self._throttle) if i not in pset]
        paths = snapshot.cgroups.paths
        # Forget cgroups that left the table (vanished or no longer low priority).
        live = {paths[i] for i in throttle}
        for gone in [p for p in self.state if p not in live]:
            del self.state[gone]

        status = SloStatus()
        lat = self._latency(snapshot, protect)
        misses = [(lat[i] / spec.target, i) for i in protect if not math.isnan(lat[i])]
        if misses:
            miss, w = max(misses)
            status.worst, status.miss = paths[w], float(miss)
        else:
            miss, w = 0.0, None

        missed = w is not None and miss > 1
        self._met = 0 if missed else self._met + 1
        if not missed:
            for st in self.state.values():
                st.missed_demoted = 0
        usage = snapshot.column("cpu.usage")
        # NaN (a collector that cannot tell) counts as running.
        ran = any(not usage[i] == 0 for i in protect)
        self._quiet = 0 if ran else self._quiet + 1
        if self._quiet >= self.hold and self.state:
            status.action = "release"
            self.state.clear()
        elif missed:
            importance = {}
            for r in spec.resources:
                latency = snapshot.column(_resource_latency_metric(spec.metric, r))[w]
                slowdown = snapshot.column(SLOWDOWN[r])[w]
                value = latency * math.log(slowdown) if slowdown > 1 else 0.0
                importance[r] = 0.0 if math.isnan(value) else float(value)
            status.importance = importance
            total_importance = sum(importance.values())
            loads = {r: self._load(snapshot, r) for r in spec.resources}
            rows = protect + throttle
            totals = {r: float(np.nansum(loads[r][rows])) for r in spec.resources}
            status.action = "throttle"
            acted = False
            size = self._cpuset_size(snapshot, protect, cpus) if "cpuset" in spec.demote else None
            for i in throttle:
                interference = 0.0
                if total_importance > 0:
                    interference = sum(importance[r] * loads[r][i] / totals[r]
                                       for r in spec.resources
                                       if totals[r] > 0 and not math.isnan(loads[r][i])) / total_importance
                status.interference[paths[i]] = interference
                if interference <= 0:
                    continue
                factor = max(0.0, min(1 - spec.alpha * (miss - 1) * interference, 1 / (1 + spec.beta)))
                st = self.state.setdefault(paths[i], ControlState())
                if "cpu" in spec.resources and importance.get("cpu", 0) > 0:
                    if spec.demote and not st.demoted:
                        # The demotion first; a quota only if W misses with it.
                        st.demoted, acted = True, True
                        st.cpuset = size
                    elif st.cpuset is not None and size is not None and size < st.cpuset:
                        # The protected cgroups use more than when l was
                        # confined: leave them the CPUs before any quota.
                        st.cpuset, acted = size, True
                    elif spec.demote and st.cpu is None and st.missed_demoted + 1 < spec.persist:
                        # Missed with l demoted, but not yet `persist` ticks in a
                        # row: not yet worth a quota (the demotion written at the
                        # last tick is in force only from this one).
                        st.missed_demoted += 1
                    else:
                        acted = True
                        # The first throttle starts from what l uses now: scaling an
                        # unused ceiling would change nothing.
                        used = usage[i]
                        start = st.cpu if st.cpu is not None else min(ceiling, used if used > 0 else ceiling)
                        st.cpu = max(spec.floor, start * factor)
                if "io" in spec.resources and importance.get("io", 0) > 0:
                    if st.io_scale is None:
                        rb = snapshot.column("io.read_bytes")[i]
                        wb = snapshot.column("io.write_bytes")[i]
                        st.io_base = (0.0 if math.isnan(rb) else float(rb), 0.0 if math.isnan(wb) else float(wb))
                        st.io_scale = 1.0
                    if sum(st.io_base) > 0:
                        st.io_scale, acted = st.io_scale * factor, True
            if acted:
                # A new setting: the window judges the ticks under it, not the
                # misses that asked for it (they would ask again at once).
                self._recent.clear()
        elif self.state and self._met < self.hold:
            status.action = "hold"
        elif self.state:
            status.action = "release"
            size = self._cpuset_size(snapshot, protect, cpus) if "cpuset" in spec.demote else None
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
                if st.cpu is None and st.io_scale is None and not st.demoted:
                    del self.state[path]
        self.status = status
        return self._actions()

    def _latency(self, snap: Snapshot, protect: list[int]) -> np.ndarray:
        """The SLO metric per row: this tick's, or for the protected rows over
        the last ``window`` ticks when it is a histogram percentile."""
        spec = self.spec
        lat = snap.column(spec.metric)
        stem, _, pct = spec.metric.rpartition(".")
        names = HISTOGRAMS.get(stem)
        if (spec.window <= 1 or names is None or not pct.startswith("p") or not len(snap.hist_edges)
                or not all(n in snap.histograms for n in names)):
            return lat
        q = float(pct[1:]) / 100
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
            if st.cpu is not None or st.demoted:
                demote = self.spec.demote if st.demoted else ()
                cpu = CpuSpec(max=st.cpu, weight=WEIGHT_MIN if "weight" in demote else None,
                              idle=True if "idle" in demote else None,
                              cpuset=st.cpuset if "cpuset" in demote else None)
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
