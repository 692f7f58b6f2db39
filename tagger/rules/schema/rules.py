"""``rules:`` - each rule's keys, its conditions compiled against the macros,
its tags and its actions.

Read in two passes: :func:`read_rule` takes each rule's keys and name as its
file is read (names are unique across the directory, and every later message
names the rule); :class:`RuleSchema` builds the rules once every file's macros
are compiled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from .. import expr as ex
from ..model import Rule
from ..yamlnode import BOOL, Invalid, Reader, is_str, position
from .actions import ActionsSchema
from .macros import Macros, expression
from .selector import TagRef, read_selector

RULE_KEYS = ("name", "description", "match", "when", "for", "keep_for", "clear_when", "tags",
             "actions", "enabled")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")
TAG_VALUE_RE = re.compile(r"^[A-Za-z0-9_.\-:/+]+$")


@dataclass(frozen=True)
class RuleDef:
    """A rule's keys as read from its file; ``reader`` names it in every message."""
    name: str                   # "" when it has none (messages say "rule #N")
    fields: dict
    node: yaml.MappingNode
    reader: Reader


def read_rule(reader: Reader, node, number: int, names: dict[str, str]) -> RuleDef | None:
    """The ``number``-th rule of a file; ``names`` (name -> where) spans the directory."""
    if not isinstance(node, yaml.MappingNode):
        reader.about(f"rule #{number}").error(node, "a rule must be a mapping (name, match, when, tags, ...)")
        return None
    name = next((v.value for k, v in node.value     # name first, so every message names the rule
                 if isinstance(k, yaml.ScalarNode) and k.value == "name" and is_str(v)), "")
    reader = reader.about(f'rule "{name}"' if name else f"rule #{number}")
    fields = reader.mapping(node, RULE_KEYS, "rule key")
    if "name" in fields:
        vnode = fields["name"][1]
        try:
            reader.string(vnode, "name")
            if not NAME_RE.match(name):
                reader.error(vnode, "a rule name is letters, digits, '.', '_' and '-'")
            if name in names:
                reader.error(vnode, f"duplicate rule name (first defined at {names[name]})")
            else:
                names[name] = position(reader.source.path, vnode)
        except Invalid:
            pass
    else:
        reader.error(node, 'missing required key "name"')
    return RuleDef(name, fields, node, reader)


class RuleSchema:
    """Builds rules from their definitions, once the macros are compiled."""

    def __init__(self, macros: Macros, actions: ActionsSchema, tag_refs: list[TagRef]):
        self.macros = macros
        self.actions = actions
        self.tag_refs = tag_refs

    def build(self, d: RuleDef, index: int) -> Rule | None:
        """The rule, or None when something in it is wrong (every problem recorded)."""
        reader, fields = d.reader, d.fields
        rule = Rule(name=d.name, index=index, source=position(reader.source.path, d.node))
        ok = True
        readers = {
            "description": lambda v: setattr(rule, "description", reader.string(v, "description")),
            "enabled": lambda v: setattr(rule, "enabled", reader.boolean(v, "enabled")),
            "match": lambda v: setattr(rule, "match", read_selector(reader, v, "match", self.tag_refs)),
            "for": lambda v: setattr(rule, "for_", reader.duration(v, '"for"')),
            "keep_for": lambda v: setattr(rule, "keep_for", reader.duration(v, "keep_for")),
            "tags": lambda v: setattr(rule, "tags", _tags(reader, v)),
            "actions": lambda v: setattr(rule, "actions", self.actions.read(reader, v, rule.name)),
        }
        for key, read in readers.items():
            if key in fields:
                try:
                    read(fields[key][1])
                except Invalid:
                    ok = False
        for key in ("when", "clear_when"):
            if key in fields:
                try:
                    compiled, src = self._condition(reader, fields[key][1], key)
                except Invalid:
                    ok = False
                    continue
                if key == "when":
                    rule.when, rule.when_src = compiled, src
                else:
                    rule.clear_when, rule.clear_when_src = compiled, src
        if "when" not in fields:
            for key in ("for", "clear_when"):
                if key in fields:
                    reader.error(fields[key][0], f'"{key}" needs a "when" condition '
                                                 "(a rule without one is static)")
                    ok = False
        if "tags" not in fields and "actions" not in fields:
            reader.error(d.node, 'a rule needs "tags" or "actions" (it would do nothing)')
            ok = False
        return rule if ok else None

    def _condition(self, reader: Reader, vnode, key: str) -> tuple[ex.Compiled, str]:
        """``when``/``clear_when`` compiled: a condition over metrics, tags and macros."""
        src = reader.string(vnode, key) if not (isinstance(vnode, yaml.ScalarNode)
                                                and vnode.tag == BOOL) else vnode.value
        expression(reader, vnode, src, key)
        try:
            tree = ex.parse(src)
            if ex.names_in(tree) & self.macros.broken:
                raise Invalid       # the macro's own error says what is wrong
            found = ex.static_problems(tree, self.macros.defs)
            if found:
                for err in found:
                    reader.expr_error(vnode, err)
                raise Invalid
            c = ex.Compiler(self.macros.compiled).compile(tree)
        except ex.ExprError as err:
            reader.expr_error(vnode, err)
            raise Invalid from None
        for warning in ex.deprecated_calls(tree):
            reader.expr_error(vnode, warning, severity="warning")
        if c.type != "bool":
            reader.fail(vnode, f"{key} must be a condition (a comparison, and/or/not), "
                               f"not {ex._TYPE_WORD[c.type]}")
        return c, src


def _tags(reader: Reader, node) -> dict[str, str]:
    if not isinstance(node, yaml.MappingNode):
        reader.fail(node, '"tags" must be a mapping of key: value')
    out, bad = {}, False
    for knode, vnode in node.value:
        try:
            key = reader.scalar_text(knode, "a tag key")
            if not TAG_KEY_RE.match(key):
                reader.fail(knode, f"bad tag key {key!r}: letters, digits, '.', '_', '-', '/'")
            if key in out:
                reader.fail(knode, f'duplicate tag key "{key}"')
            value = reader.scalar_text(vnode, f'tag "{key}"')
            if not TAG_VALUE_RE.match(value):
                reader.fail(vnode, f"bad tag value {value!r}: letters, digits and . _ - : / +")
            out[key] = value
        except Invalid:
            bad = True
    if bad:
        raise Invalid
    return out
