"""Who is to blame: how much each resource hurts the worst-off protected
cgroup W (importance), whether CPU levers on neighbours can help at all
(:func:`cpu_cause`), and each throttled cgroup's share of the harm
(interference), from the wait the collector charges it where it can."""

from __future__ import annotations

import math

import numpy as np

from tagger.knobs import WEIGHT_DEFAULT
from tagger.rules.spec import WORK_CONSERVING
from tagger.snapshot import Snapshot

from .state import ControlState

#: With wait attribution, neighbours are the CPU cause only when they hold at
#: least this share of W's run-queue wait (the rest: its own tasks, the host).
FOREIGN_SHARE = 0.5
#: With wait attribution, W's CPU culprits are the fewest most-charged cgroups
#: that together hold FOREIGN_SHARE of its foreign run-queue wait
#: (runq.wait.by; :func:`blamed`): a neighbour running light work is charged
#: some of it too, 0-150 ms/s beside a hog charged 200-850 ms/s on the
#: noisy-neighbour scenario (docs/noisy_neighbor.md), so a fixed share would
#: name it with the hog in one tick of three.
#: Each culprit is charged at least this much of it, seconds per second: the
#: floor of the packaged neighbour=noisy rule (rules/30-contention.yaml).
#: Neighbours running light work are each charged a few ms/s of W's wait, a
#: sizeable *share* of a small total when W misses for reasons of its own or
#: the host's; demoting them would be judged "helped" by chance.
CULPRIT_FLOOR = 0.05

SLOWDOWN = {"cpu": "runq.slowdown", "io": "io.slowdown"}


def _resource_latency_metric(slo_metric: str, resource: str) -> str:
    if resource == "cpu":
        return slo_metric if slo_metric.startswith("runq.") else "runq.p99"
    return slo_metric if slo_metric.startswith("io.lat.") else "io.lat.p99"


def cpu_cause(snap: Snapshot, row: int) -> str | None:
    """Why CPU levers on neighbours cannot help the protected cgroup at ``row``,
    or None when they can.  The one place that decides it, so that the wait
    attribution columns refine it where a collector has them:

    * "own quota": the victim's own CFS quota throttles it (``cpu.throttled`` >
      0, or ``runq.wait.throttled`` > 0): the neighbours do not hold its CPU.
    * "host steal": the node's ``steal`` (s/s) exceeds the wait neighbours
      cause it (``runq.wait.foreign``).
    * "own tasks": neighbours cause less than FOREIGN_SHARE of its run-queue
      wait, and the victim alone wants more CPUs than the node has
      (``cpu.demand`` >= its CPUs): its tasks would queue behind each other
      with the node to themselves.  Short of that, its tasks' wait behind
      each other is the neighbours' doing too -- a hog on one CPU of two
      crowds them onto the other (the unlabelled scenario: web's own wait
      grew to 100-500 ms/s beside the hog, its foreign wait under half of
      it at times) -- and the culprits (:func:`blamed`) decide.

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
    demand = cols.get("cpu.demand")
    cpus = float(snap.node.get("cpus", math.nan))
    if not neighbours_hold(snap, row) and demand is not None and demand[row] >= cpus:
        return "own tasks"
    return None


def neighbours_hold(snap: Snapshot, row: int) -> bool:
    """Do other cgroups hold at least FOREIGN_SHARE of the run-queue wait of
    the cgroup at ``row`` (``runq.wait.foreign`` / ``runq.wait``)?  Unknown
    (no attribution, NaN) or no wait at all: True -- it never vetoes."""
    foreign, wait = snap.columns.get("runq.wait.foreign"), snap.columns.get("runq.wait")
    if foreign is None or wait is None or math.isnan(foreign[row]) or not wait[row] > 0:
        return True
    return bool(foreign[row] >= FOREIGN_SHARE * wait[row])


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


def demand_below_hogs(snap: Snapshot, state: dict[str, ControlState], room: float) -> np.ndarray:
    """``cpu.demand``, with each cgroup ``state`` holds at cpu.idle or the
    lowest weight less its run-queue wait behind hogs not demoted with it (rows
    wanting at least ``room``, the CPUs beside what the protected want;
    ``runq.wait.by``).  Demoted, a cgroup's one light thread waits behind
    such a hog all the time, where at its own weight it would have had its
    share at once: its demand then reads what the demotion costs it, not
    what it wants.  The unlabelled scenario's turn-1 hog, light again at
    ``cpu.idle`` behind the next hog not yet demoted, read 0.8-1.09 CPU for
    its one thread of 0.2 (13:22 and 15:21 on 2026-12-02) and stayed
    demoted into the next turn.  Its wait behind the protected and light
    neighbours stays in (their wake-ups go first at any weight), and so
    does its wait behind hogs demoted alike (they share the node): a
    demoted hog keeps its demand.  Without attribution (NaN
    ``runq.wait.foreign``) the row's demand is kept as it is."""
    demand, foreign = snap.column("cpu.demand"), snap.columns.get("runq.wait.foreign")
    out = demand.copy()
    demoted = {row for path, st in state.items()
               if st.levers & WORK_CONSERVING and (row := snap.cgroups.index(path)) is not None}
    by = snap.culprits
    if foreign is None or not demoted or not len(by):
        return out
    # Whole-table array operations: the table holds a few rows per cgroup and CPU.
    rows = np.fromiter(demoted, np.int64)
    v, c = by["victim"], by["culprit"]
    keep = np.isin(v, rows) & ~np.isin(c, rows) & (demand[c] >= room) & ~np.isnan(foreign[v])
    np.subtract.at(out, v[keep], by["wait"][keep])
    return out


def blamed(by: dict[int, float], unfloored=frozenset()) -> set[int]:
    """W's CPU culprits among the cgroups charged with its foreign wait (``by``,
    row -> s/s, from :func:`charged`): the fewest most-charged that together
    hold at least FOREIGN_SHARE of it, each charged at least CULPRIT_FLOOR --
    except the rows in ``unfloored`` (the policy's hogs not yet stepped on:
    in a quiet second W's whole wait can be under the floor, and a few ms of
    it behind a hog decide its p99)."""
    foreign = sum(by.values())
    out, held = set(), 0.0
    for row, wait in sorted(by.items(), key=lambda kv: -kv[1]):
        if held >= FOREIGN_SHARE * foreign:
            break
        if wait < CULPRIT_FLOOR and row not in unfloored:
            continue        # only unfloored rows can follow: the rest are lower still
        out.add(row)
        held += wait
    return out


def fresh_hogs(snap: Snapshot, throttle: list[int], room: float, state: dict[str, ControlState]) -> set[int]:
    """The rows of ``throttle`` that crowd W (``cpu.demand`` at least
    ``room``, the CPUs beside what the protected want) and hold no CPU step
    in ``state`` yet: a hog's first step needs no floor on what it is
    charged (latency_slo's module doc)."""
    demand, paths = snap.column("cpu.demand"), snap.cgroups.paths
    return {i for i in throttle if demand[i] >= room
            and not (paths[i] in state and state[paths[i]].holds_cpu)}


def within_share(snap: Snapshot, rows: list[int], cpus: float) -> set[int]:
    """The rows that want no more CPU than their fair share: the node's CPUs
    shared among ``rows`` (the protected and throttled cgroups) by weighted
    max-min fairness -- each gets what it wants (``cpu.demand``) or, if it
    wants more, CPUs in proportion to its weight (``cpu.weight``) from what
    the others leave -- the split the kernel's weights promise.  Such a
    cgroup takes nothing its weight does not give it, so no lever on it is
    the fix for W's misses (the unlabelled scenario's light neighbours,
    0.3-0.5 CPU in their bursts against a share of 0.6 at their weight,
    were blamed for two misses in a row and demoted).  The ones it leaves
    out want more than their share: a hog, or a neighbour among several
    that together want more than the node.  A row whose demand is unknown
    (NaN) is never within its share; an unknown weight counts as the
    default (100).  cpu.idle is not read: an idle cgroup counts at its
    weight."""
    demand = snap.column("cpu.demand")
    weights = snap.columns.get("cpu.weight")
    want = {i: float(demand[i]) for i in rows if not math.isnan(demand[i])}
    weight = {i: float(weights[i]) if weights is not None and weights[i] > 0 else float(WEIGHT_DEFAULT)
              for i in want}
    left, open_, out = float(cpus), set(want), set()
    while open_:
        per_weight = max(left, 0.0) / sum(weight[i] for i in open_)
        fits = {i for i in open_ if want[i] <= per_weight * weight[i]}
        if not fits:
            break           # the rest all want more than their share
        out |= fits
        left -= sum(want[i] for i in fits)
        open_ -= fits
    return out


def hog_at_hand(snap: Snapshot, w: int, throttle: list[int], room: float,
                state: dict[str, ControlState], fresh: set[int]) -> bool:
    """Is there a hog of the moment for W: a cgroup crowding it, blamed for
    its wait now or held by a CPU step -- or stepped on as a hog (its demand
    at the step, ``ControlState.demand``, crowded W) and still held, until
    it counts as stopped (``hold`` ticks under STOPPED x that demand), not
    from the tick its demand falls (at the end of a hog's turn in the
    unlabelled scenario a light neighbour was demoted on that tick, a
    second before the next hog began, 20:03)?  While there is one it is the
    cause at hand: a light neighbour blamed beside it takes no step, and a
    light neighbour's demotion given back on trial is not "needed" for
    misses it is blamed for.  ``fresh``: :func:`fresh_hogs`.  Only with
    wait attribution: without it nobody is blamed."""
    by = charged(snap, w)
    if by is None:
        return False
    demand, paths = snap.column("cpu.demand"), snap.cgroups.paths
    culprits = blamed(by, unfloored=fresh)
    for i in throttle:
        st = state.get(paths[i])
        held = st is not None and st.holds_cpu
        if (demand[i] >= room and (i in culprits or held)) or (held and st.demand >= room):
            return True
    return False


def importance(snap: Snapshot, w: int, metric: str, resources) -> tuple[dict[str, float], str]:
    """Per resource r: ``latency(W, r) * log(slowdown(W, r))``, and why the CPU's
    was zeroed ("" when it was not): never spend a neighbour's CPU on what it
    does not cause."""
    out = {}
    for r in resources:
        latency = snap.column(_resource_latency_metric(metric, r))[w]
        slowdown = snap.column(SLOWDOWN[r])[w]
        value = latency * math.log(slowdown) if slowdown > 1 else 0.0
        out[r] = 0.0 if math.isnan(value) else float(value)
    cause = cpu_cause(snap, w)
    if cause is not None and out.get("cpu", 0) > 0:
        out["cpu"] = 0.0
        return out, cause
    return out, ""


def _load(snap: Snapshot, resource: str) -> np.ndarray:
    if resource == "cpu":
        return snap.column("cpu.usage")
    return np.nan_to_num(snap.column("io.read_bytes")) + np.nan_to_num(snap.column("io.write_bytes"))


class Interference:
    """Each cgroup's share of the harm to W: ``Σ_r importance(r) * load(l, r) /
    load(r)``, normalised by ``Σ_r importance(r)`` so it lies in [0, 1]."""

    def __init__(self, snap: Snapshot, w: int, rows: list[int], importance: dict[str, float],
                 unfloored=frozenset()):
        self.importance = importance
        self.total = sum(importance.values())
        resources = list(importance)
        self.loads = {r: _load(snap, r) for r in resources}
        self.totals = {r: float(np.nansum(self.loads[r][rows])) for r in resources}
        #: culprit path -> W's wait charged to it, s/s (empty without wait attribution)
        self.charged: dict[str, float] = {}
        by = charged(snap, w)
        #: the CPU's share is W's wait charged to the culprits (:func:`blamed`)
        self.attributed = by is not None and "cpu" in self.loads
        if self.attributed:
            # The CPU's load is W's foreign wait charged to each culprit:
            # who held the CPU while W waited, not who ran at all.
            paths = snap.cgroups.paths
            foreign = sum(by.values())
            share = np.zeros(len(paths))
            for row in blamed(by, unfloored):
                share[row] = by[row] / foreign
            self.loads["cpu"], self.totals["cpu"] = share, 1.0
            self.charged = {paths[row]: wait for row, wait in by.items()}

    def of(self, i: int) -> float:
        """Row ``i``'s interference with W, 0..1."""
        if self.total <= 0:
            return 0.0
        return sum(self.importance[r] * self.loads[r][i] / self.totals[r]
                   for r in self.importance
                   if self.totals[r] > 0 and not math.isnan(self.loads[r][i])) / self.total
