"""What a latency-slo policy holds between ticks: its settings on each
throttled cgroup, the step under judgment, the judged outcomes and the last
tick's reasoning."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Step outcomes, as counted and exported: a step helped (kept), had no effect
#: (undone) or could not be judged; a kept demotion given back on trial was
#: released (the SLO held without it) or still needed (put back at once).
OUTCOMES = ("helped", "no_effect", "unjudged", "released", "needed")
#: Seconds a kept demotion waits, with the SLO met, before its first give-back
#: trial; each trial that finds it still needed doubles the wait, up to
#: GIVE_BACK_MAX times this.
GIVE_BACK_AFTER = 10.0
GIVE_BACK_MAX = 16


@dataclass
class Trial:
    """A step under judgment: what l had before it, and W's figures."""
    lever: str
    victim: str
    t: float                           # the tick it was asked for
    before: "ControlState"             # l's state before the step: what undo asks for again
    baseline: float                    # W's SLO metric over the misses that asked for it
    samples: list = field(default_factory=list)   # W's per-tick samples since
    give_back: bool = False            # a kept demotion given back on trial, not a step


@dataclass
class ControlState:
    """What the policy holds on one throttled cgroup (or, for the
    ``boost`` lever, on a protected one)."""
    cpu: float | None = None           # CPUs (the quota lever)
    levers: frozenset = frozenset()    # demotions in force: "idle", "weight", "cpuset"
    cpuset: int | None = None          # CPUs l keeps when confined to a cpuset
    weight: int | None = None          # a protected cgroup's raised cpu.weight (lever "boost", .boost)
    missed: int = 0                    # misses in a row since l's last step or verdict
    io_scale: float | None = None      # fraction of io_base
    io_base: tuple[float, float] = (0.0, 0.0)   # read, write bytes/s when first throttled
    demand: float = math.nan           # l's cpu.demand at its first CPU step (NaN: not known)
    calm: int = 0                      # ticks in a row l wanted under STOPPED x demand
    kept: float = math.nan             # when its demotion was last found needed (a step helped, a give-back missed)
    give_back_after: float = GIVE_BACK_AFTER   # seconds kept, with the SLO met, before the next give-back trial
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
