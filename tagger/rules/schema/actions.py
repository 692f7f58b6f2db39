"""A rule's ``actions:`` - cpu, io and rdt - checked against the kernel's own
limits (:mod:`tagger.knobs`, the ones the control points check before they
write) and, for ``rules check``, against this node (:mod:`tagger.rules.node`)."""

from __future__ import annotations

import re

import yaml

from tagger import knobs

from ..spec import ActionSet, CpuSpec, IoSpec, RdtSpec
from ..yamlnode import INT, STR, Invalid, Reader

ACTION_KEYS = ("cpu", "io", "rdt")
CPU_KEYS = ("max", "period", "weight", "idle", "cpuset")
IO_KEYS = ("device", "read_bps", "write_bps", "read_iops", "write_iops")
RDT_KEYS = ("group", "l3", "mb")
BYTES_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "KB", "MB", "GB")
#: An IoSpec field -> the io.max key it sets.
IO_MAX_KEYS = {"read_bps": "rbps", "write_bps": "wbps", "read_iops": "riops", "write_iops": "wiops"}


class ActionsSchema:
    """Reads ``actions:`` blocks; ``node`` (NodeFacts or None) adds the checks
    against this node's CPUs and block devices."""

    def __init__(self, node=None):
        self.node = node

    def read(self, reader: Reader, node, rule_name: str) -> ActionSet:
        if not isinstance(node, yaml.MappingNode):
            reader.fail(node, '"actions" must be a mapping with keys: ' + ", ".join(ACTION_KEYS))
        fields = reader.mapping(node, ACTION_KEYS, "action")
        bad = len(fields) != len(node.value)
        specs = {}
        for key, fn in (("cpu", self._cpu), ("io", self._io), ("rdt", self._rdt)):
            if key in fields:
                vnode = fields[key][1]
                if not isinstance(vnode, yaml.MappingNode):
                    reader.error(vnode, f'"{key}" must be a mapping')
                    bad = True
                    continue
                try:
                    specs[key] = fn(reader, vnode)
                except Invalid:
                    bad = True
        if not fields and not bad:
            reader.error(node, '"actions" is empty')
            bad = True
        if bad:
            raise Invalid
        return ActionSet(rule_name, specs.get("cpu"), specs.get("io"), specs.get("rdt"))

    @staticmethod
    def _fields(reader: Reader, node, keys, what, parse, required=()) -> dict:
        """Each field of one action's mapping; keep going after a bad one."""
        fields = reader.mapping(node, keys, f"{what} key")
        bad = len(fields) != len(node.value)
        for key in required:
            if key not in fields:
                reader.error(node, f'{what} action needs "{key}"')
                bad = True
        out = {}
        for key, (knode, vnode) in fields.items():
            try:
                out[key] = parse[key](vnode, f"{what}.{key}")
            except Invalid:
                bad = True
        if bad:
            raise Invalid
        return out

    # --- cpu -----------------------------------------------------------------------
    def _cpu(self, reader: Reader, node) -> CpuSpec:
        f = self._fields(reader, node, CPU_KEYS, "cpu", {
            "max": lambda v, w: reader.number(v, w + " (CPUs)", positive=True),
            "period": lambda v, w: _period(reader, v, w),
            "weight": lambda v, w: _weight(reader, v, w),
            "idle": lambda v, w: reader.boolean(v, w),
            "cpuset": lambda v, w: self._cpulist(reader, v, w)})
        if not {"max", "weight", "idle", "cpuset"} & set(f):
            reader.fail(node, 'cpu action needs "max" (CPUs), "weight", "idle" or "cpuset"')
        if f.get("idle") and "weight" in f:
            reader.fail(node, "cpu.idle and a weight exclude each other: the kernel refuses a weight "
                              "while a group is idle")
        if "max" in f:
            _quota(reader, node, f["max"], f.get("period", 0.1))
        return CpuSpec(max=f.get("max"), period=f.get("period", 0.1),
                       weight=int(f["weight"]) if "weight" in f else None, idle=f.get("idle"),
                       cpuset=f.get("cpuset"))

    def _cpulist(self, reader: Reader, node, what) -> str:
        # Quoted or not: YAML reads `cpuset: 3` as the number 3, the list "3".
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (INT, STR):
            reader.fail(node, f'{what} must be a CPU list like "2-3,6"')
        try:
            cpus = knobs.parse_cpulist(node.value)
        except ValueError as err:
            reader.fail(node, f'{what}: {err} (a CPU list like "2-3,6")')
        if not cpus:
            reader.fail(node, f"{what} needs at least one CPU")
        problem = self.node.cpu_problem(cpus) if self.node is not None else None
        if problem:
            reader.fail(node, f"{what}: {problem}")
        return knobs.format_cpulist(cpus)

    # --- io --------------------------------------------------------------------------
    def _io(self, reader: Reader, node) -> IoSpec:
        rate = lambda v, w: reader.number(v, w, BYTES_UNITS, positive=True)       # noqa: E731
        iops = lambda v, w: reader.number(v, w, (), positive=True, integer=True)  # noqa: E731
        f = self._fields(reader, node, IO_KEYS, "io", {
            "device": lambda v, w: self._device(reader, v, w),
            "read_bps": rate, "write_bps": rate, "read_iops": iops, "write_iops": iops})
        if not set(f) - {"device"}:
            reader.fail(node, "io action needs a limit: read_bps, write_bps, read_iops or write_iops")
        spec = IoSpec(**f)
        for name, key in IO_MAX_KEYS.items():
            value = getattr(spec, name)
            if value is not None and value < knobs.IO_LIMIT_MIN:
                # The actuator's own floor (tagger.actions.io refuses the same).
                reader.fail(node, f"io {key}={value}: a limit must be at least {knobs.IO_LIMIT_MIN} "
                                  f"per second")
        return spec

    def _device(self, reader: Reader, node, what) -> str:
        device = reader.scalar_text(node, what)
        problem = self.node.device_problem(device) if self.node is not None else None
        if problem:
            reader.fail(node, problem)
        return device

    # --- rdt ---------------------------------------------------------------------------
    def _rdt(self, reader: Reader, node) -> RdtSpec:
        f = self._fields(reader, node, RDT_KEYS, "rdt", {
            "group": lambda v, w: reader.string(v, w),
            "l3": lambda v, w: _l3(reader, v, w),
            "mb": lambda v, w: _mb(reader, v, w)}, required=("group",))
        return RdtSpec(f["group"], f.get("l3"), int(f["mb"]) if "mb" in f else None)


def _period(reader: Reader, node, what) -> float:
    value = reader.duration(node, what)
    if not knobs.MIN_PERIOD_US / 1e6 <= value <= knobs.MAX_PERIOD_US / 1e6:
        reader.fail(node, f"{what} must be between {knobs.MIN_PERIOD_US // 1000}ms and "
                          f"{knobs.MAX_PERIOD_US // 1_000_000}s")
    return value


def _weight(reader: Reader, node, what) -> float:
    value = reader.number(node, what, integer=True)
    if not knobs.WEIGHT_MIN <= value <= knobs.WEIGHT_MAX:     # cgroup v2 cpu.weight
        reader.fail(node, f"{what} must be {knobs.WEIGHT_MIN}..{knobs.WEIGHT_MAX}")
    return value


def _quota(reader: Reader, node, cpus: float, period: float) -> None:
    """The kernel's CFS quota range, as the actuator computes the quota
    (min_cfs_quota_period, max_cfs_runtime)."""
    quota = knobs.CpuMax.from_cpus(cpus, period).quota_us
    mnode = next((v for k, v in node.value if getattr(k, "value", None) == "max"), node)
    if quota < knobs.MIN_QUOTA_US:
        reader.fail(mnode, f"cpu.max {cpus:g} CPUs at a {period * 1000:g}ms period is a quota of "
                           f"{quota}us, below the kernel's {knobs.MIN_QUOTA_US}us minimum "
                           f"(min_cfs_quota_period): raise max or the period")
    if quota > knobs.MAX_QUOTA_US:
        reader.fail(mnode, f"cpu.max is a quota of {quota}us, above the kernel's max_cfs_runtime")


def _l3(reader: Reader, node, what) -> str:
    text = reader.scalar_text(node, what)
    if re.fullmatch(r"0x[0-9a-fA-F]+", text):
        if int(text, 16) == 0:
            reader.fail(node, f"{what}: an empty cache mask")
        return text
    if re.fullmatch(r"\d+(\.\d+)?%", text) and 0 < float(text[:-1]) <= 100:
        return text
    reader.fail(node, f'{what} must be a hex mask like "0x0f" or a percentage like "25%"')


def _mb(reader: Reader, node, what) -> float:
    value = reader.number(node, what, ("%",), integer=False)
    if node.tag == STR and node.value.endswith("%"):
        value *= 100
    if not 1 <= value <= 100 or value != int(value):
        reader.fail(node, f"{what} must be a whole percent 1..100")
    return value
