"""The lever ladder: which step a throttled cgroup l takes next on a miss -
the next rung of CPU levers (default idle, weight, quota, cpuset), a further cut of a
lever it keeps, or an I/O limit when the disk matters more to W."""

from __future__ import annotations

import math

import numpy as np

from tagger.rules.spec import LatencySloSpec
from tagger.snapshot import Snapshot

from .state import ControlState
from .verdicts import ANY

#: A cpuset demotion leaves the protected cgroups this many times their CPU use
#: (rounded up to whole CPUs): room for their bursts between two ticks.
CPUSET_HEADROOM = 1.5


def cpuset_size(snap: Snapshot, protect: list[int], cpus: float) -> int | None:
    """CPUs a low-priority cgroup keeps under a cpuset demotion; None when
    the protected cgroups need every CPU but one's worth of the node."""
    used = float(np.nansum(snap.column("cpu.usage")[protect])) if protect else 0.0
    reserve = max(1, math.ceil(used * CPUSET_HEADROOM))
    keep = int(cpus) - reserve
    return keep if keep >= 1 else None


class Ladder:
    """The rungs in force (``spec.rungs()``), skipping levers cooling on a
    pair, or on the victim against any culprit (a work-conserving lever that
    did not help, :class:`.verdicts.Verdicts`)."""

    def __init__(self, spec: LatencySloSpec, cooled: dict):
        self.spec = spec
        self.rungs = spec.rungs()
        self.cooled = cooled
        self.has_cpuset = any("cpuset" in rung for rung in self.rungs)

    def cpuset_size(self, snap: Snapshot, protect: list[int], cpus: float) -> int | None:
        """:func:`cpuset_size`, or None when no rung confines l to a cpuset."""
        return cpuset_size(snap, protect, cpus) if self.has_cpuset else None

    def next_step(self, snap: Snapshot, i: int, victim: str, st: ControlState, importance: dict,
                  factor: float, size: int | None, ceiling: float, climb: bool) -> str | None:
        """Take l's next step (changing ``st``) and name its lever; None if none is
        left.  Without ``climb`` only a further cut of a lever l keeps."""
        culprit = snap.cgroups.paths[i]
        for r in sorted((r for r, v in importance.items() if v > 0), key=lambda r: -importance[r]):
            if r == "io":
                if self._io_step(snap, i, victim, culprit, st, factor, climb):
                    return "io"
                continue
            lever = self._cpu_step(snap, i, victim, culprit, st, factor, size, ceiling, climb)
            if lever is not None:
                return lever
        return None

    def _io_step(self, snap, i, victim, culprit, st, factor, climb) -> bool:
        if (victim, culprit, "io") in self.cooled:
            return False
        if st.io_scale is None:
            if not climb:
                return False
            rb = snap.column("io.read_bytes")[i]
            wb = snap.column("io.write_bytes")[i]
            base = (0.0 if math.isnan(rb) else float(rb), 0.0 if math.isnan(wb) else float(wb))
            if sum(base) <= 0:
                return False
            st.io_base, st.io_scale = base, 1.0
        st.io_scale *= factor
        return True

    def _cpu_step(self, snap, i, victim, culprit, st, factor, size, ceiling, climb) -> str | None:
        for rung in self.rungs:
            lever = "+".join(rung)
            if (victim, culprit, lever) in self.cooled or (victim, ANY, lever) in self.cooled:
                continue
            if all(st.holds(x) for x in rung):
                # A rung l keeps: a further cut where it has one, before the next rung.
                if "quota" in rung and st.cpu > self.spec.floor:
                    st.cpu = max(self.spec.floor, st.cpu * factor)
                    return lever
                if "cpuset" in rung and size is not None and st.cpuset is not None and size < st.cpuset:
                    st.cpuset = size     # the protected use more than when l was confined
                    return lever
                continue
            if not climb:
                continue
            # The kernel refuses a weight while a group is idle: the two never stack.
            if ("weight" in rung and "idle" in st.levers) or ("idle" in rung and "weight" in st.levers):
                continue
            if "cpuset" in rung and size is None:
                continue        # the protected need every CPU but one's worth: nothing to confine l to
            for x in rung:
                if x == "quota":
                    # The first cut starts from what l uses now: scaling an
                    # unused ceiling would change nothing.
                    used = snap.column("cpu.usage")[i]
                    st.cpu = max(self.spec.floor, min(ceiling, used if used > 0 else ceiling) * factor)
                else:
                    st.levers = st.levers | {x}
                    if x == "cpuset":
                        st.cpuset = size
            return lever
        return None
