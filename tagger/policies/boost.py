"""The protected cgroup's own weight (lever ``boost``): W missed, its wait is
held by neighbours, and no step on any of them is called for -- each takes
no more than its weight gives it, or is no culprit by the rules of
:mod:`.culprits` -- yet W waits behind them because its own weight is lower
than theirs.  Then the lever is W's: its ``cpu.weight`` raised to the highest
weight among the neighbours charged with its wait (``runq.wait.by``), so that
it is weighted at least as they are, never above.

Why it helps a W that wants little CPU: the scheduler orders a waking task by
a virtual deadline that grows as 1/weight, so a light W at a low weight waits
behind light neighbours' bursts even when the node has room for everyone
(the unlabelled scenario's lead-in: web at weight 25 beside three neighbours
at 150, each within its fair share, missed on 6 ticks of 10; with web at
150, on 1 of 10).  It costs them little: a weight only splits the CPUs the
cgroups contend for, and W takes no more than it wants.

A boost is a step like any other: judged over ``judge`` ticks, kept if it
helped, undone (W's weight back to what it was: the actuator restores the
journaled original) and cooled for ``cooldown`` seconds if not.  It is asked
for only when no other step is under judgment, so each window judges one
change.  A kept boost holds while W runs, and goes when W stops, leaves, or
the agent exits; a further one only if W then waits behind a neighbour
weighted higher still."""

from __future__ import annotations

import math

from tagger.knobs import WEIGHT_MAX
from tagger.rules.spec import ActionSet, CpuSpec
from tagger.snapshot import Snapshot

from .culprits import charged, neighbours_hold
from .figures import SloFigures
from .state import ControlState, Trial
from .verdicts import Verdicts

LEVER = "boost"


class Boosts:
    """The boosts one policy holds, by protected cgroup path."""

    def __init__(self, verdicts: Verdicts, figures: SloFigures):
        self.verdicts = verdicts
        self.figures = figures
        self.state: dict[str, ControlState] = {}

    @property
    def judging(self) -> bool:
        return any(st.trial is not None for st in self.state.values())

    def judge(self, snap: Snapshot, now: float) -> bool:
        """This tick's sample for each boost under judgment; True if one was undone."""
        _, undone = self.verdicts.judge(self.state, snap, self.figures, now)
        self._prune()
        return undone

    def step(self, snap: Snapshot, w: int, neighbours: list[int], importance: dict[str, float],
             now: float) -> bool:
        """W (row ``w``) missed and no neighbour took a step: raise W's weight
        to the highest among the ``neighbours`` charged with its wait, if that
        is above W's own.  Not when the CPU is not what hurts W
        (``importance``, zeroed for its own quota or host steal), nor while
        its own tasks hold most of its wait, nor without wait attribution or
        weights to go by.  True if W was boosted."""
        if not importance.get("cpu", 0.0) > 0 or not neighbours_hold(snap, w):
            return False
        by, weights = charged(snap, w), snap.columns.get("cpu.weight")
        if by is None or weights is None:
            return False
        theirs = [float(weights[i]) for i in neighbours if by.get(i, 0.0) > 0 and not math.isnan(weights[i])]
        victim = snap.cgroups.paths[w]
        st = self.state.get(victim, ControlState())
        mine = st.weight if st.weight is not None else float(weights[w])
        if not theirs or math.isnan(mine) or max(theirs) <= mine:
            return False
        if (victim, victim, LEVER) in self.verdicts.cooled:
            return False
        before = ControlState(weight=st.weight)
        st.weight = min(WEIGHT_MAX, math.ceil(max(theirs)))
        st.trial = Trial(LEVER, victim, now, before, self.figures.baseline(victim))
        self.state[victim] = st
        return True

    def forget(self, live: set[str], now: float) -> None:
        """Drop the boosts of protected cgroups no longer in ``live``."""
        for path in [p for p in self.state if p not in live]:
            self.verdicts.unjudged(path, self.state.pop(path), now)

    def actions(self, rule: str) -> dict[str, ActionSet]:
        return {path: ActionSet(rule, cpu=CpuSpec(weight=st.weight))
                for path, st in self.state.items() if st.weight is not None}

    def _prune(self) -> None:
        for path in [p for p, st in self.state.items() if st.weight is None and st.trial is None]:
            del self.state[path]
