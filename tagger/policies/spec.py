"""A ``policies:`` entry, parsed by the rules loader and run by :mod:`tagger.policies`."""

from __future__ import annotations

from dataclasses import dataclass, field

#: The CPU levers a latency-slo ladder may name (docs/actions.md, "The lever ladder").
CPU_LEVERS = ("idle", "weight", "quota", "cpuset")

#: The default ladder, cheapest for the culprit first (docs/noisy_neighbor.md's
#: static sweep): cpu.idle and the lowest weight are work-conserving (the
#: culprit keeps every cycle the victim leaves; 92-96% and 84-99% of its
#: throughput there), a quota costs it cycles whether or not the victim wants
#: them, a cpuset costs it whole CPUs (39-58%) but is the one lever that gave a
#: timer-driven victim its tail back.
DEFAULT_LADDER: tuple[tuple[str, ...], ...] = (("idle",), ("weight",), ("quota",), ("cpuset",))


@dataclass(frozen=True)
class Selector:
    """Which cgroups: by path globs, excludes, display names and current tags."""
    cgroup: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LatencySloSpec:
    """``kind: latency-slo``: keep ``metric < target`` for the protected cgroups by
    throttling the ``throttle`` ones (Retro's LatencySLO)."""
    name: str
    protect: Selector
    throttle: Selector
    metric: str                 # e.g. "runq.p99" or "io.lat.p99"
    target: float               # seconds
    alpha: float = 0.5          # throttle gain
    beta: float = 0.1           # release step (fraction per tick)
    floor: float = 0.1          # CPUs: lowest quota it may impose
    ceiling: float | None = None  # CPUs: released limit; None = the node's CPUs
    resources: tuple[str, ...] = ("cpu", "io")
    # The CPU levers in the order they are tried, each rung one lever or several
    # applied together (CPU_LEVERS); None: DEFAULT_LADDER, or the old ``demote``.
    ladder: tuple[tuple[str, ...], ...] | None = None
    # The old key: these levers applied together as the first rung, then quota
    # (``demote: none`` is ()).  A rules file sets one of ``ladder`` and ``demote``.
    demote: tuple[str, ...] | None = None
    persist: int = 2            # misses in a row, with l's kept levers in force, before its next step
    window: int = 1             # ticks a histogram percentile SLO is judged over
    judge: int = 3              # ticks each step is judged over before it is kept or undone
    gain: float = 0.2           # a step helped if the SLO metric fell by this fraction (or the SLO is met)
    cooldown: float = 60.0      # seconds a lever that did not help is not tried again on that pair

    def rungs(self) -> tuple[tuple[str, ...], ...]:
        """The CPU ladder in force."""
        if self.ladder is not None:
            return self.ladder
        if self.demote is not None:
            return ((self.demote,) if self.demote else ()) + (("quota",),)
        return DEFAULT_LADDER
