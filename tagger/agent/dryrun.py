"""The actuator of a view that must not act: ``tagger top`` standalone.

:class:`DryRunActuator` takes what the rules ask for each tick, as the real
actuator does, writes nothing, and reports each ask as a dry-run
AppliedAction, with the knob text the kernel would be given
(tagger.knobs) and the tick since which it has been asked.  It reads
nothing either: the view also runs over cgroups this host does not have
(a stand-in collector), where the real actuator's dry run would refuse.
"""

from __future__ import annotations

from tagger.actions.actuator import AppliedAction
from tagger.knobs import DEFAULT_PERIOD_US, CpuMax, format_io_limits

def planned_knobs(aset):
    """(knob, value) pairs an ActionSet asks for, named as the actuator names
    them; a device or RDT group stays as the rule wrote it (resolving it needs
    the host)."""
    cpu, io, rdt = aset.cpu, aset.io, aset.rdt
    if cpu is not None and cpu.max is not None:
        yield "cpu.max", CpuMax.from_cpus(cpu.max, cpu.period or DEFAULT_PERIOD_US / 1e6).text()
    if cpu is not None and cpu.weight is not None:
        yield "cpu.weight", str(cpu.weight)
    if cpu is not None and cpu.idle is not None:
        yield "cpu.idle", "1" if cpu.idle else "0"
    if cpu is not None and cpu.cpuset is not None:
        # A number is "that many CPUs" (a policy's); the actuator picks which.
        yield "cpuset.cpus", f"{cpu.cpuset} CPUs" if isinstance(cpu.cpuset, int) else cpu.cpuset
    if io is not None:
        yield f"io.max {io.device or '*'}", format_io_limits(io.limits())
    if rdt is not None:
        yield f"rdt.schemata {rdt.group}", " ".join(
            f"{k}={v}" for k, v in (("l3", rdt.l3), ("mb", rdt.mb)) if v is not None)


class DryRunActuator:
    """``apply(snapshot, desired)`` records; ``current()`` is what was asked, each
    ask once per (cgroup, knob, rule), ``since`` the snapshot time it was first
    asked (held while it is asked every tick, reset once it is not)."""

    def __init__(self):
        self._since: dict[tuple[str, str, str], float] = {}
        self._current: list[AppliedAction] = []

    def recover(self) -> list:
        return []

    def apply(self, snapshot, desired: dict) -> list[AppliedAction]:
        since, current = {}, []
        for path, sets in desired.items():
            for aset in sets:
                for knob, value in planned_knobs(aset):
                    key = (path, knob, aset.rule)
                    since[key] = self._since.get(key, snapshot.t)
                    current.append(AppliedAction(path, knob, value, None, aset.rule, since[key], True))
        self._since, self._current = since, current
        return current

    def current(self) -> list[AppliedAction]:
        return list(self._current)

    def close(self) -> None:
        self._since, self._current = {}, []
