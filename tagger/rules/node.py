"""Checks of rule actions against this node: CPUs it has, block devices it has.

``tagger run`` loads a fleet's rules on every node and refuses such an action
per cgroup when it applies it (the actuator's ActionRefused); ``tagger rules
check`` runs the same tests at load time, against the node it runs on, so a
rule that could never apply here is an error before it is deployed.  The
CPU list is parsed by :mod:`tagger.knobs`, as the control points parse it; a
device is looked up by :mod:`tagger.blockdev`, as the actuator looks it up
when it applies the limit, with the same messages.
"""

from __future__ import annotations

from functools import cached_property

from tagger import blockdev
from tagger.kernelfs import HOST, KernelFS
from tagger.knobs import format_cpulist, parse_cpulist


class NodeFacts:
    """What this node has, read once through ``fs`` (tests point it at a tree)."""

    def __init__(self, fs: KernelFS = HOST):
        self.fs = fs

    @cached_property
    def cpus(self) -> list[int] | None:
        """Online CPUs (/sys/devices/system/cpu/online); None when unknown."""
        text = self.fs.read_optional("/sys/devices/system/cpu/online")
        try:
            return parse_cpulist(text) if text else None
        except ValueError:
            return None

    def cpu_problem(self, cpus: list[int]) -> str | None:
        """Why a cpuset of ``cpus`` cannot apply here, or None."""
        if self.cpus is None:
            return None
        missing = sorted(set(cpus) - set(self.cpus))
        if not missing:
            return None
        return (f"CPU{'s' if len(missing) > 1 else ''} {format_cpulist(missing)} not on this node "
                f"(online: {format_cpulist(self.cpus)})")

    def device_problem(self, device: str) -> str | None:
        """Why an io limit on ``device`` ("MAJ:MIN", "/dev/vda", "vda") cannot apply here, or None."""
        found = blockdev.problem(self.fs, device, check_numbers=True)
        return None if found is None else found[0]
