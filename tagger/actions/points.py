"""The control point a journal key's knob names, on the hierarchy that holds it.

Knob names are the journal's: ``cpu.max``, ``cpu.weight``, ``cpu.idle``,
``cpuset.cpus``, ``io.max MAJ:MIN``, ``rdt.group G``, ``rdt.schemata G``,
``rdt.tasks G``.  The same name is used on cgroup v1 and v2.
"""

from __future__ import annotations

from tagger.cgroups import Layout
from tagger.kernelfs import KernelFS

from .control import ControlPoint
from .cpu import CpuIdle, CpuQuota, CpuWeight
from .cpuset import CpuSet
from .io import IoLimit
from .rdt import Resctrl, RdtGroup, RdtSchemata, RdtTasks

#: Set before, undone after: an RDT group exists before its schemata is written
#: and before tasks move in; tasks leave before the group is removed.
_PHASE = {"rdt.group": 0, "rdt.schemata": 1, "rdt.tasks": 2}


def phase(knob: str) -> int:
    """Order of setting (ascending) and of undoing (descending) a knob."""
    return _PHASE.get(knob.split(" ", 1)[0], 3)


class ControlPoints:
    """Builds control points for one host: its cgroup layout, resctrl and CPU count."""

    def __init__(self, layout: Layout, fs: KernelFS, resctrl: Resctrl, cpus: float):
        self.layout = layout
        self.fs = fs
        self.resctrl = resctrl
        self.cpus = cpus

    def get(self, cgroup: str, knob: str) -> ControlPoint:
        """The control point ``knob`` names on ``cgroup`` ("" for node-wide RDT groups)."""
        kind, _, arg = knob.partition(" ")
        if kind in ("cpu.max", "cpu.weight", "cpu.idle"):
            directory, version = self.layout.controller_dir("cpu", cgroup), self.layout.controller_version("cpu")
            if kind == "cpu.max":
                return CpuQuota(self.fs, cgroup, directory, version, self.cpus)
            return (CpuWeight if kind == "cpu.weight" else CpuIdle)(self.fs, cgroup, directory, version)
        if kind == "cpuset.cpus":
            return CpuSet(self.fs, cgroup, self.layout.controller_dir("cpuset", cgroup),
                          self.layout.controller_version("cpuset"))
        if kind == "io.max":
            return IoLimit(self.fs, cgroup, self.layout.controller_dir("io", cgroup),
                           self.layout.controller_version("io"), arg)
        if kind == "rdt.group":
            return RdtGroup(self.resctrl, arg)
        if kind == "rdt.schemata":
            return RdtSchemata(self.resctrl, arg)
        if kind == "rdt.tasks":
            return RdtTasks(self.resctrl, arg, cgroup, self._threads_file(cgroup))
        raise ValueError(f"unknown knob {knob!r}")

    def _threads_file(self, cgroup: str) -> str:
        # Thread ids, not process ids: resctrl places threads one by one.
        if self.layout.v2_root is not None:
            return self.layout.v2_dir(cgroup) + "/cgroup.threads"
        return self.layout.controller_dir("cpu", cgroup) + "/tasks"
