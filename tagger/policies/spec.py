"""A ``policies:`` entry, parsed by the rules loader and run by :mod:`tagger.policies`."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    # first CPU step, levers applied together: "weight" (the lowest), "idle"
    # (cpu.idle), "cpuset" (the CPUs the protected cgroups do not need); () for none
    demote: tuple[str, ...] = ("weight",)
    persist: int = 2            # ticks in a row W must miss (with l demoted) before a first quota
    window: int = 1             # ticks a histogram percentile SLO is judged over
