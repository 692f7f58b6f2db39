"""Every type a rules file declares, as the loader hands it on.

A rule's ``match:`` is a :class:`Selector`, its ``actions:`` an
:class:`ActionSet` (:class:`CpuSpec`, :class:`IoSpec`, :class:`RdtSpec`); a
``policies:`` entry is a :class:`LatencySloSpec`.  The rules loader builds them,
:mod:`tagger.actions` carries out the action sets and :mod:`tagger.policies`
runs the policies: both import these types downward from here.

Values are SI: CPUs, seconds, bytes per second, fractions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CPU_LEVERS", "DEFAULT_LADDER", "ActionSet", "CpuSpec", "FrozenTags", "IoSpec",
           "LatencySloSpec", "RdtSpec", "Selector"]


# --- match: ---------------------------------------------------------------------

class FrozenTags(dict):
    """The ``tags`` of a loaded Selector: a dict that cannot change and so can be
    hashed, which keeps the frozen Selector/LatencySloSpec hashable (the daemon
    keys policy controllers by their spec across reloads)."""

    def __hash__(self):
        return hash(tuple(sorted(self.items())))

    def _readonly(self, *a, **kw):
        raise TypeError("a loaded selector's tags are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore


@dataclass(frozen=True)
class Selector:
    """Which cgroups: by path globs, excludes, display names and current tags."""
    cgroup: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)


# --- actions: -------------------------------------------------------------------

@dataclass(frozen=True)
class CpuSpec:
    """``cpu: {max: 0.5, period: 100ms, weight: 50, idle: true, cpuset: "2-3"}``."""
    max: float | None = None        # CPUs (quota / period); None leaves the quota alone
    period: float = 0.1             # seconds
    weight: int | None = None       # cgroup v2 cpu.weight 1..10000 (v1 cpu.shares is derived)
    idle: bool | None = None        # cpu.idle: the group's tasks run as SCHED_IDLE (Linux 5.15+)
    # cpuset.cpus: a CPU list ("2-3"), or (from policies) a number of CPUs, the
    # highest-numbered the parent allows
    cpuset: str | int | None = None


@dataclass(frozen=True)
class IoSpec:
    """``io: {device: "8:0" | "/dev/vda", read_bps: 10MiB, write_iops: 100}``."""
    device: str | None = None       # "MAJ:MIN" or a /dev path; None = every disk with traffic
    read_bps: float | None = None
    write_bps: float | None = None
    read_iops: float | None = None
    write_iops: float | None = None

    def limits(self) -> dict[str, float | None]:
        """The limits by the kernel's ``io.max`` keys (rbps, wbps, riops, wiops)."""
        return {"rbps": self.read_bps, "wbps": self.write_bps, "riops": self.read_iops, "wiops": self.write_iops}


@dataclass(frozen=True)
class RdtSpec:
    """``rdt: {group: NAME, l3: "0x0f" | "25%", mb: 30}``."""
    group: str
    l3: str | None = None           # a hex capacity bitmask or a percentage of the cache
    mb: int | None = None           # memory bandwidth percent


@dataclass(frozen=True)
class ActionSet:
    """Everything one rule asks to be done to each cgroup it matches."""
    rule: str
    cpu: CpuSpec | None = None
    io: IoSpec | None = None
    rdt: RdtSpec | None = None
    extra: dict = field(default_factory=dict)


# --- policies: ------------------------------------------------------------------

#: The CPU levers a latency-slo ladder may name (docs/actions.md, "The lever ladder").
CPU_LEVERS = ("idle", "weight", "quota", "cpuset")
#: The levers that cost the culprit only the CPU the victim takes: it keeps
#: every cycle the victim leaves idle (a quota or a cpuset costs it cycles
#: whether or not the victim wants them).
WORK_CONSERVING = frozenset({"idle", "weight"})

#: The default ladder, cheapest for the culprit first (docs/actions.md, "The
#: lever ladder"): cpu.idle and the lowest weight are work-conserving (the
#: culprit keeps every cycle the victim leaves; in the static sweeps cpu.idle
#: left it 90-104% of what the lowest weight did, within the host's noise),
#: and cpu.idle comes first because it also gives the victim somewhere to wake
#: up: the kernel places a wake-up on a CPU running only SCHED_IDLE tasks as
#: on an idle one. A quota costs the culprit cycles whether or not the victim
#: wants them; a cpuset costs it whole CPUs (39-58%) but is the one lever that
#: gave a timer-driven victim its tail back.
DEFAULT_LADDER: tuple[tuple[str, ...], ...] = (("idle",), ("weight",), ("quota",), ("cpuset",))


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
    boost: bool = True          # raise a protected cgroup's weight to its neighbours' (tagger.policies.boost)

    def rungs(self) -> tuple[tuple[str, ...], ...]:
        """The CPU ladder in force."""
        if self.ladder is not None:
            return self.ladder
        if self.demote is not None:
            return ((self.demote,) if self.demote else ()) + (("quota",),)
        return DEFAULT_LADDER
