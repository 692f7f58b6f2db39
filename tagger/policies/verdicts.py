"""Judging steps: each step's window of W's samples decides whether it helped
(kept) or not (undone, and its lever cooled on that victim/culprit pair)."""

from __future__ import annotations

import math
from collections import Counter, deque

from tagger.rules.spec import WORK_CONSERVING, LatencySloSpec
from tagger.snapshot import Snapshot

from .culprits import blamed, charged
from .figures import SloFigures, aggregate
from .state import GIVE_BACK_AFTER, GIVE_BACK_MAX, ControlState, StepOutcome

#: Outcome records kept for ``tagger actions`` and the socket API.
RECENT_OUTCOMES = 50
#: The culprit of a cool-down that holds for a victim against every culprit.
ANY = "*"


class Verdicts:
    """The outcomes of one policy's steps, and the levers cooling after one
    that did not help."""

    def __init__(self, spec: LatencySloSpec):
        self.spec = spec
        #: (lever, outcome) -> steps, since start
        self.counts: Counter = Counter()
        #: the latest StepOutcomes, oldest first
        self.outcomes: deque = deque(maxlen=RECENT_OUTCOMES)
        self.cooled: dict[tuple[str, str, str], float] = {}   # (victim, culprit, lever) -> until

    def expire(self, now: float) -> None:
        for key in [k for k, until in self.cooled.items() if until <= now]:
            del self.cooled[key]

    def cooling(self, now: float) -> dict[tuple[str, str, str], float]:
        """(victim, culprit, lever) -> seconds left of its cool-down."""
        return {k: until - now for k, until in self.cooled.items() if until > now}

    def judge(self, state: dict[str, ControlState], snap: Snapshot, figures: SloFigures,
              now: float, room: float = math.inf, excused: bool = False,
              fair: frozenset[str] | set[str] = frozenset()) -> tuple[set[str], bool]:
        """Give each trial this tick's sample of its victim; decide the ones
        whose window is full.  ``excused``: a light neighbour's blame does
        not count now (a hog is the cause at hand, or the victim's own tasks
        hold most of its wait), so it does not make its demotion "needed";
        nor does the blame of a light culprit in ``fair`` (wanting no more
        than its fair share, :func:`.culprits.within_share`).  Light is
        wanting less than ``room``, the CPUs beside the protected ones.
        Returns the culprits judged this tick, and whether a step was
        undone."""
        judged, undone = set(), False
        index = snap.cgroups.index
        for culprit, st in list(state.items()):
            trial = st.trial
            if trial is None or trial.t >= now:
                continue
            row = index(trial.victim)
            if row is not None:
                trial.samples.append(figures.sample(snap, row))
            if trial.give_back:
                by = charged(snap, row) if row is not None else None
                blamed_now = None if by is None else {snap.cgroups.paths[r] for r in blamed(by)}
                mine = index(culprit)
                demand = float(snap.column("cpu.demand")[mine]) if mine is not None else math.nan
                if blamed_now and (excused or culprit in fair) and not demand >= room:
                    # Light, and its blame does not count now (the rule a
                    # step follows too, latency_slo's module doc).
                    blamed_now.discard(culprit)
                if self._give_back(state, culprit, st, blamed_now, demand, now):
                    judged.add(culprit)
                    undone = undone or st.trial is None and bool(st.levers)
                continue
            if len(trial.samples) < self.spec.judge:
                continue
            after = aggregate(trial.samples)
            if math.isnan(after):
                outcome = "unjudged"
            elif after <= self.spec.target or after <= (1 - self.spec.gain) * trial.baseline:
                outcome = "helped"
            else:
                outcome = "no_effect"
            self._count(StepOutcome(now, trial.victim, culprit, trial.lever, outcome, trial.baseline, after))
            if outcome == "helped" and st.levers:
                st.kept = now
            if outcome == "no_effect":
                # Undo: ask for l's settings before the step; the actuator
                # restores the journaled originals of what is no longer asked for.
                previous = trial.before
                st.cpu, st.levers, st.cpuset = previous.cpu, previous.levers, previous.cpuset
                st.weight = previous.weight
                st.io_scale, st.io_base = previous.io_scale, previous.io_base
                self.cooled[(trial.victim, culprit, trial.lever)] = now + self.spec.cooldown
                if set(trial.lever.split("+")) <= WORK_CONSERVING:
                    # What a work-conserving lever does for W is let W's
                    # wake-ups preempt whoever runs: if it did not help
                    # against this culprit it will not against the next.
                    self.cooled[(trial.victim, ANY, trial.lever)] = now + self.spec.cooldown
                undone = True
            st.trial, st.missed = None, 0
            judged.add(culprit)
        return judged, undone

    def _give_back(self, state: dict[str, ControlState], culprit: str, st: ControlState,
                   blamed_now: set[str] | None, demand: float, now: float) -> bool:
        """A give-back trial's verdict, as soon as there is one: "needed" at
        the first tick W misses without the demotion and l is among the
        culprits of W's wait (``blamed_now``; None where the collector does
        not attribute it: any miss) -- put back at once, and the next trial
        waits twice as long, and l's CPU demand now, if higher than the one
        it was held at, is the one it must fall under to count as stopped
        (it may have been demoted while light, and hog now); "released" when the window passed without (the demotion
        stays given back).  True once decided."""
        trial = st.trial
        tick = aggregate(trial.samples[-1:])
        if tick > self.spec.target and (blamed_now is None or culprit in blamed_now):
            outcome = "needed"
        elif len(trial.samples) >= self.spec.judge:
            outcome = "released" if not math.isnan(aggregate(trial.samples)) else "unjudged"
        else:
            return False
        after = tick if outcome == "needed" else aggregate(trial.samples)
        self._count(StepOutcome(now, trial.victim, culprit, trial.lever, outcome, trial.baseline, after))
        st.trial, st.missed = None, 0
        if outcome == "released":
            st.kept, st.give_back_after = math.nan, GIVE_BACK_AFTER
            if not st.holds_cpu and st.io_scale is None:
                del state[culprit]
        else:
            # Still needed (or not judged): the demotion as it was.
            st.levers, st.cpuset = trial.before.levers, trial.before.cpuset
            st.kept = now
            if outcome == "needed":
                st.give_back_after = min(2 * st.give_back_after, GIVE_BACK_MAX * GIVE_BACK_AFTER)
                if not math.isnan(demand):
                    # Stopped is measured from the most it wanted while held:
                    # from its demand now if it turned hog, not if it is light
                    # now (an ex-hog found "needed" as the next hog began, its
                    # light work then the bar, stayed demoted 20 s: the
                    # unlabelled run of 2026-12-01 08:38).
                    st.demand, st.calm = max(demand, st.demand) if not math.isnan(st.demand) else demand, 0
        return True

    def unjudged(self, culprit: str, st: ControlState, now: float) -> None:
        """A step whose window cannot finish (W stopped, l left, everything dropped)."""
        if st.trial is not None:
            t = st.trial
            self._count(StepOutcome(now, t.victim, culprit, t.lever, "unjudged", t.baseline, math.nan))
            st.trial = None

    def _count(self, outcome: StepOutcome) -> None:
        self.counts[(outcome.lever, outcome.outcome)] += 1
        self.outcomes.append(outcome)
