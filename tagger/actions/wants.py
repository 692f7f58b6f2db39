"""What the rules and policies want, knob by knob: their ActionSets merged into
one value per journal key, the most restrictive winning (the smallest quota,
weight and CPU list, idle over not idle, the lowest limit per I/O key)."""

from __future__ import annotations

from tagger import errors
from tagger.cgroups import normalize
from tagger.knobs import CpuMax, format_io_limits, parse_cpulist
from tagger.rules.spec import ActionSet

from .control import ControlPoint
from .io import resolve_devices, spec_limits
from .journal import entry_key
from .points import ControlPoints
from .protection import Protection
from .rdt import PRESENT
from .refusal import ActionRefused, Notices

#: journal key -> (control point, value text, the rule or policy that wants it)
Wants = dict[str, tuple[ControlPoint, str, str]]


class Wanted:
    """Merges ``desired`` (cgroup path -> ActionSets) into :data:`Wants`.
    Protected cgroups are skipped; a refusal costs only its own control point."""

    def __init__(self, points: ControlPoints, protection: Protection, notices: Notices):
        self.points = points
        self.protection = protection
        self.notices = notices

    def __call__(self, desired: dict[str, list[ActionSet]]) -> Wants:
        wants: Wants = {}
        rdt_info = None
        for raw_path, sets in desired.items():
            path = normalize(raw_path)
            if self.protection.protects(path):
                self.notices.warn_once(f"protected {path}", "%s is protected: not acting on it (rules %s)",
                                       path, ", ".join(s.rule for s in sets))
                continue
            rdt_sets = [s for s in sets if s.rdt is not None]
            # One refusal (a bad device, no resctrl) must not cost the other control points.
            for what in ("cpu", "io", "rdt"):
                try:
                    if what == "cpu":
                        self._cpu(wants, path, sets)
                    elif what == "io":
                        self._io(wants, path, sets)
                    elif rdt_sets:
                        rdt_info = rdt_info or self.points.resctrl.info()
                        self._rdt(wants, path, rdt_sets, rdt_info)
                except (ActionRefused, errors.NotFound) as err:
                    self.notices.refuse(f"{path}\t{what}", err)
        return wants

    def _cpu(self, wants, path, sets):
        cpu = [s for s in sets if s.cpu is not None]
        quota = [s for s in cpu if s.cpu.max is not None]
        if quota:
            best = min(quota, key=lambda s: s.cpu.max)
            cp = self.points.get(path, "cpu.max")
            wants[entry_key(path, cp.knob)] = (cp, CpuMax.from_cpus(best.cpu.max, best.cpu.period).text(), best.rule)
        weight = [s for s in cpu if s.cpu.weight is not None]
        if weight:
            best = min(weight, key=lambda s: s.cpu.weight)
            cp = self.points.get(path, "cpu.weight")
            wants[entry_key(path, cp.knob)] = (cp, cp.native(best.cpu.weight), best.rule)
        idle = [s for s in cpu if s.cpu.idle is not None]
        if idle:
            best = max(idle, key=lambda s: s.cpu.idle)      # idle is the more restrictive
            cp = self.points.get(path, "cpu.idle")
            wants[entry_key(path, cp.knob)] = (cp, cp.native(best.cpu.idle), best.rule)
        cpuset = [s for s in cpu if s.cpu.cpuset is not None]
        if cpuset:
            cp = self.points.get(path, "cpuset.cpus")
            lists = [(cp.native(s.cpu.cpuset), s.rule) for s in cpuset]
            # The fewest CPUs win, as the smallest quota does.
            value, rule = min(lists, key=lambda x: len(parse_cpulist(x[0])))
            wants[entry_key(path, cp.knob)] = (cp, value, rule)

    def _io(self, wants, path, sets):
        per_device: dict[str, tuple[dict, str]] = {}
        for s in sets:
            if s.io is None:
                continue
            limits = spec_limits(s.io)
            for dev in resolve_devices(self.points.fs, s.io.device):
                have, rule = per_device.get(dev, ({}, s.rule))
                merged = {k: min((v for v in (have.get(k), limits[k]) if v is not None), default=None)
                          for k in limits}
                per_device[dev] = (merged, rule)
        for dev, (limits, rule) in per_device.items():
            cp = self.points.get(path, f"io.max {dev}")
            wants[entry_key(path, cp.knob)] = (cp, format_io_limits(limits), rule)

    def _rdt(self, wants, path, sets, info):
        s = sets[0]
        if len({x.rdt for x in sets}) > 1:
            self.notices.warn_once(f"rdt {path}", "%s: rules %s ask for different RDT groups; %s wins",
                                   path, ", ".join(x.rule for x in sets), s.rule)
        group = s.rdt.group
        text = self.points.resctrl.schemata_text(s.rdt, info)
        gkey, skey = entry_key("", f"rdt.group {group}"), entry_key("", f"rdt.schemata {group}")
        if skey in wants and wants[skey][1] != text:
            self.notices.warn_once(f"rdt {group} {s.rule}", "RDT group %s: rule %s asks for other "
                                   "schemata than rule %s; the first wins", group, s.rule, wants[skey][2])
        else:
            wants[gkey] = (self.points.get("", f"rdt.group {group}"), PRESENT, s.rule)
            wants[skey] = (self.points.get("", f"rdt.schemata {group}"), text, s.rule)
        cp = self.points.get(path, f"rdt.tasks {group}")
        wants[entry_key(path, cp.knob)] = (cp, group, s.rule)
