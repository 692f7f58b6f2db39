"""Checks of rule actions against this node: CPUs it has, block devices it has.

``tagger run`` loads a fleet's rules on every node and refuses such an action
per cgroup when it applies it (the actuator's ActionRefused); ``tagger rules
check`` runs the same tests at load time, against the node it runs on, so a
rule that could never apply here is an error before it is deployed.  The
tests are the actions' own (``tagger.actions.io.resolve_devices``, the
kernel's CPU list), not copies.
"""

from __future__ import annotations

import re
from functools import cached_property

from tagger.actions.cpuset import format_cpulist, parse_cpulist
from tagger.actions.io import resolve_devices
from tagger.actions.refusal import ActionRefused
from tagger.kernelfs import HOST, KernelFS

_MAJ_MIN = re.compile(r"^\d+:\d+$")


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
        if _MAJ_MIN.match(device):
            # resolve_devices passes MAJ:MIN through; the kernel's io.max then says ENODEV.
            if not self.fs.exists(f"/sys/dev/block/{device}"):
                return f"io device {device!r}: no block device {device} on this node (/sys/dev/block)"
            if self.fs.exists(f"/sys/dev/block/{device}/partition"):
                return (f"io device {device!r} is a partition; blk-throttle limits whole disks, "
                        f"name the disk instead")
            return None
        try:
            resolve_devices(self.fs, device)
        except ActionRefused as err:
            return str(err)
        return None
