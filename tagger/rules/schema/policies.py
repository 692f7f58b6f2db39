"""``policies:`` - closed loops over many cgroups; today one kind, ``latency-slo``
(:class:`tagger.rules.spec.LatencySloSpec`, run by :mod:`tagger.policies`)."""

from __future__ import annotations

import yaml

from tagger.snapshot import METRICS, suggest

from .. import expr as ex
from ..spec import CPU_LEVERS, LatencySloSpec
from ..yamlnode import Invalid, Reader, position
from .macros import expression
from .selector import TagRef, read_selector

POLICY_KEYS = ("name", "kind", "description", "enabled", "protect", "throttle", "slo", "alpha",
               "beta", "floor", "ceiling", "resources", "demote", "ladder", "persist", "window", "judge",
               "gain", "cooldown", "boost")
POLICY_KINDS = ("latency-slo",)
DEMOTIONS = ("weight", "idle", "cpuset", "none")     # latency-slo's first CPU step(s), the old key
POLICY_RESOURCES = ("cpu", "io")
REQUIRED = ("name", "kind", "protect", "throttle", "slo")
#: Keys passed on to LatencySloSpec as they are read.
TUNING = ("alpha", "beta", "floor", "ceiling", "resources", "demote", "ladder", "persist", "window",
          "judge", "gain", "cooldown", "boost")


def read_policies(items: list[tuple[yaml.Node, Reader]], tag_refs: list[TagRef]) -> list[LatencySloSpec]:
    """Every enabled policy of the directory (``items``: each node with its file's reader)."""
    out: list[LatencySloSpec] = []
    names: dict[str, str] = {}
    for node, reader in items:
        # Numbered by the policies loaded so far, as a policy without a name is reported.
        try:
            spec = _policy(reader.about(f"policy #{len(out) + 1}"), node, names, tag_refs)
        except Invalid:
            continue
        if spec is not None:
            out.append(spec)
    return out


def _policy(reader: Reader, node, names: dict[str, str], tag_refs) -> LatencySloSpec | None:
    if not isinstance(node, yaml.MappingNode):
        reader.fail(node, "a policy must be a mapping (name, kind, protect, slo, throttle)")
    fields = reader.mapping(node, POLICY_KEYS, "policy key")
    bad = len(fields) != len(node.value)
    for key in REQUIRED:
        if key not in fields:
            reader.error(node, f'missing required key "{key}"')
            bad = True
    if "name" not in fields:
        raise Invalid
    name_node = fields["name"][1]
    name = reader.string(name_node, "name")
    reader = reader.about(f'policy "{name}"')
    if name in names:
        reader.error(name_node, f"duplicate policy name (first defined at {names[name]})")
        bad = True
    names.setdefault(name, position(reader.source.path, name_node))

    number = lambda key: lambda v: reader.number(v, key, positive=True)                      # noqa: E731
    count = lambda key: lambda v: int(reader.number(v, key, positive=True, integer=True))  # noqa: E731
    parse = {
        "kind": lambda v: reader.one_of(v, "policy kind", POLICY_KINDS),
        "description": lambda v: reader.string(v, "description"),
        "enabled": lambda v: reader.boolean(v, "enabled"),
        "protect": lambda v: read_selector(reader, v, "protect", tag_refs),
        "throttle": lambda v: read_selector(reader, v, "throttle", tag_refs),
        "slo": lambda v: _slo(reader, v),
        "alpha": number("alpha"), "beta": number("beta"), "floor": number("floor"),
        "ceiling": number("ceiling"),
        "resources": lambda v: _resources(reader, v),
        "demote": lambda v: _demote(reader, v),
        "ladder": lambda v: _ladder(reader, v),
        "persist": count("persist"), "window": count("window"), "judge": count("judge"),
        "gain": lambda v: reader.fraction(v, "gain"),
        "cooldown": lambda v: reader.duration(v, "cooldown"),
        "boost": lambda v: reader.boolean(v, "boost"),
    }
    values = {}
    for key, read in parse.items():
        if key in fields:
            try:
                values[key] = read(fields[key][1])
            except Invalid:
                bad = True
    if "demote" in fields and "ladder" in fields:
        reader.error(fields["ladder"][0], "ladder and demote exclude each other (demote: [x] is "
                                          "ladder: [[x], quota]; write the ladder)")
        bad = True
    if bad:
        raise Invalid
    if values.get("enabled") is False:
        return None
    metric, target = values["slo"]
    return LatencySloSpec(name=name, protect=values["protect"], throttle=values["throttle"],
                          metric=metric, target=target, **{k: values[k] for k in TUNING if k in values})


def _demote(reader: Reader, node) -> tuple[str, ...]:
    """One demotion or a list of them, applied together; "none" alone."""
    items = tuple(reader.one_of(v, "demote", DEMOTIONS) for v in
                  (node.value if isinstance(node, yaml.SequenceNode) else (node,)))
    if "none" in items:
        if len(items) > 1:
            reader.fail(node, 'demote "none" cannot be listed with others')
        return ()
    if {"weight", "idle"} <= set(items):
        reader.fail(node, "demote: weight and idle exclude each other (the kernel refuses a weight "
                          "while a group is idle)")
    return tuple(dict.fromkeys(items))


def _ladder(reader: Reader, node) -> tuple[tuple[str, ...], ...]:
    """The CPU levers in the order they are tried: each rung a lever or a
    list of levers applied together; each lever once."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        reader.fail(node, f"ladder must be a list of levers ({', '.join(CPU_LEVERS)}), "
                          f"cheapest first, e.g. [idle, weight, quota, cpuset]")
    rungs, seen = [], set()
    for item in node.value:
        rung = tuple(reader.one_of(v, "lever", CPU_LEVERS)
                     for v in (item.value if isinstance(item, yaml.SequenceNode) else (item,)))
        if not rung:
            reader.fail(item, "ladder: an empty rung")
        for lever in rung:
            if lever in seen:
                reader.fail(item, f"ladder: {lever} twice (each lever has one place)")
            seen.add(lever)
        if {"weight", "idle"} <= set(rung):
            reader.fail(item, "ladder: weight and idle exclude each other in one rung (the kernel "
                              "refuses a weight while a group is idle)")
        if "quota" in rung and len(rung) > 1:
            reader.fail(item, "ladder: quota is a rung of its own (it is cut step by step)")
        rungs.append(rung)
    return tuple(rungs)


def _resources(reader: Reader, node) -> tuple[str, ...]:
    items = reader.strings(node, "resources")
    for r in items:
        if r not in POLICY_RESOURCES:
            reader.fail(node, f"unknown resource {r!r} (known: {', '.join(POLICY_RESOURCES)})")
    return items


def _slo(reader: Reader, node) -> tuple[str, float]:
    """``"<latency metric> < <target>"`` -> (metric, target seconds)."""
    src = expression(reader, node, reader.string(node, "slo"), "slo")
    try:
        tree = ex.parse(src)
    except ex.ExprError as err:
        reader.expr_error(node, err)
        raise Invalid from None
    if tree.kind != "cmp" or tree.value not in ("<", "<=") or tree.args[0].kind != "name" \
            or tree.args[1].kind != "num":
        reader.fail(node, 'slo must read "<latency metric> < <target>", e.g. "runq.p99 < 2ms"')
    metric = tree.args[0].value
    if metric not in METRICS or METRICS[metric].unit != "s":
        hint = suggest(metric, [k for k, v in METRICS.items() if v.unit == "s"])
        base = reader.expr_offset(node)
        reader.fail(node, f"slo needs a latency metric, not {metric!r}"
                    + (f": did you mean {hint}?" if hint else ""),
                    offset=None if base is None else base + tree.args[0].pos)
    target = tree.args[1].value
    if not target > 0:
        reader.fail(node, "slo target must be greater than 0")
    return metric, float(target)
