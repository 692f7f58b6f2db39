"""What a rule's ``actions:`` block asks for, parsed and validated by the rules
loader (:mod:`tagger.rules`) and carried out by :mod:`tagger.actions`.

Values are SI: CPUs, seconds, bytes per second, fractions.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
