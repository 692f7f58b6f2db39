"""The cpuset control point: which CPUs a cgroup's tasks may run on.

Confining best-effort work to the CPUs latency-critical work does not need is
koordlet's "CPU suppress" (and WCA's ``cpuset_cpus``).  Unlike a CFS quota it
leaves the protected tasks whole CPUs to wake up on: on the noisy-neighbour
scenario it brought a SCHED_OTHER cyclictest's p99 from ~3 ms to ~0.5 ms,
which neither a weight nor a quota did (docs/noisy_neighbor.md).

cgroup v1: ``cpuset.cpus`` in the cpuset hierarchy; a child's CPUs must lie
within its parent's, and a parent may not drop a CPU a child holds
(kernel/cgroup/cpuset-v1.c ``cpuset1_validate_change``), and a populated
cpuset may not be emptied.  cgroup v2: ``cpuset.cpus`` where the cpuset
controller is enabled; "" means "the parent's", and the kernel confines the
effective CPUs to the parent's instead of refusing
(Documentation/admin-guide/cgroup-v2.rst, "Cpuset").

The text form is the kernel's CPU list ("0-3,8"), normalised, so journal
entries compare equal whatever spelling was written.
"""

from __future__ import annotations

import errno as errnolib
import logging
import math

from tagger import errors
from tagger.knobs import format_cpulist, parse_cpulist

from .control import ControlPoint, Safety
from .refusal import ActionRefused

log = logging.getLogger(__name__)


class CpuSet(ControlPoint):
    """``cpuset.cpus`` (v1 and v2).  ``native`` takes a CPU list, or a number of
    CPUs: the highest-numbered ones the parent allows (CPU 0 usually takes the
    most interrupts and housekeeping, so the low ones are left to the others)."""

    knob = "cpuset.cpus"

    def __init__(self, fs, cgroup, directory, version: int):
        super().__init__(fs, cgroup, directory)
        self.version = version
        self.file = f"{directory}/cpuset.cpus"

    def _parent_cpus(self) -> list[int]:
        parent = self.dir.rstrip("/").rsplit("/", 1)[0]
        name = "cpuset.cpus.effective" if self.version == 2 else "cpuset.cpus"
        text = self.fs.read_optional(f"{parent}/{name}")
        if text is None:
            raise ActionRefused(f"{self.cgroup}: no {name} in the parent cgroup ({parent}): is the cpuset "
                                f"controller enabled there?", "no cpuset", parent)
        return parse_cpulist(text)

    def native(self, cpus: str | int) -> str:
        allowed = self._parent_cpus()
        if isinstance(cpus, int):
            if cpus < 1:
                raise ActionRefused(f"{self.cgroup}: a cpuset needs at least one CPU", "cpuset not empty", self.dir)
            return format_cpulist(allowed[-cpus:])
        try:
            want = parse_cpulist(cpus)
        except ValueError as err:
            raise ActionRefused(f"{self.cgroup}: {err}", "CPU list", self.dir) from None
        if not want:
            raise ActionRefused(f"{self.cgroup}: a cpuset needs at least one CPU", "cpuset not empty", self.dir)
        outside = sorted(set(want) - set(allowed))
        if outside and self.version == 1:
            raise ActionRefused(f"{self.cgroup}: CPUs {format_cpulist(outside)} are not in the parent's cpuset "
                                f"({format_cpulist(allowed)}): on cgroup v1 a child's CPUs must lie within "
                                f"its parent's", "v1 cpuset within parent", self.dir)
        return format_cpulist(want)

    def read(self) -> str:
        try:
            text = self.fs.read_text(self.file)
        except errors.NotFound:
            if self.version == 2 and self.present():
                raise self.not_delegated("cpuset", "cpuset.cpus") from None
            if self.present():
                raise ActionRefused(f"{self.cgroup}: no cpuset.cpus (is the cpuset controller enabled for "
                                    f"it?)", "no cpuset", self.file) from None
            raise
        return format_cpulist(parse_cpulist(text))

    def write(self, value: str) -> None:
        try:
            try:
                # "" (v2: the parent's CPUs) is written as "\n": cgroupfs acts on a
                # write only when it has bytes, so a zero-length write(2) leaves the
                # old CPUs in place and an empty original would never come back.
                self.fs.write_text(self.file, value or "\n")
            except errors.KernelRefused as err:
                if value or self.version != 2 or err.errno != errnolib.ENOSPC:
                    raise
                self._widen_to_parent()
        except errors.KernelRefused as err:
            # EBUSY: a child still holds a CPU this parent would drop.  Named as
            # the quota's v1 rule, so the actuator retries it once the child
            # (written after its parent) has been narrowed in the same tick.
            limit = "v1 child <= parent" if err.errno == errnolib.EBUSY else "kernel refused"
            raise ActionRefused(f"{self.cgroup}: {err} — the kernel refused cpuset.cpus {value!r} (on v1 a "
                                f"child's CPUs must lie within its parent's and a parent's must cover its "
                                f"children's)", limit, err.path) from err

    def _widen_to_parent(self) -> None:
        # A cgroup with tasks may not have its cpuset emptied, v2 included
        # (ENOSPC, kernel/cgroup/cpuset.c validate_change: "Cpusets with tasks
        # ... can't be changed to have empty cpus_allowed").  The parent's CPUs
        # are what "" gives the tasks now; only later changes of the parent's
        # are not followed any more, so it is said once.
        parent = format_cpulist(self._parent_cpus())
        self.fs.write_text(self.file, parent)
        log.warning("%s: cpuset.cpus back to its parent's CPUs %s, not to \"\" as it was: the kernel "
                    "refuses to empty the cpuset of a cgroup with tasks (ENOSPC); it will not follow "
                    "the parent's CPUs until someone writes \"\" when it is empty", self.cgroup, parent)

    def _count(self, text: str) -> float:
        # "" (v2: the parent's CPUs) is as wide as it gets.
        return len(parse_cpulist(text)) if text else math.inf

    def tighter(self, old: str, new: str) -> bool:
        return self._count(new) < self._count(old)

    def paced(self, current: str, wanted: str, safety: Safety, held_for: float | None) -> str:
        if not self.tighter(current, wanted):
            return wanted
        if held_for is not None and held_for < safety.cooldown:
            return current
        if safety.max_step is None:
            return wanted
        # At most max_step of the CPUs off in one change: keep enough of the
        # current ones (the highest-numbered) beside the wanted ones.
        have = parse_cpulist(current) if current else self._parent_cpus()
        keep = math.ceil(len(have) * (1 - safety.max_step))
        out = set(parse_cpulist(wanted))
        for c in reversed(have):
            if len(out) >= keep:
                break
            out.add(c)
        return format_cpulist(out)
