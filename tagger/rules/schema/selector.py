"""A selector - a rule's ``match:``, a policy's ``protect:``/``throttle:``."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from tagger.cgroupglob import GlobError, compile_glob

from ..spec import FrozenTags, Selector
from ..yamlnode import Invalid, Reader

MATCH_KEYS = ("cgroup", "exclude", "names", "tags")


@dataclass(frozen=True)
class TagRef:
    """A tag a selector asks for, checked against the tags rules set once every
    file is read (a tag nobody sets is a warning at ``node``)."""
    key: str
    value: str
    node: yaml.Node
    reader: Reader


def read_selector(reader: Reader, node, what: str, tag_refs: list[TagRef]) -> Selector:
    if not isinstance(node, yaml.MappingNode):
        reader.fail(node, f'"{what}" must be a mapping with keys: ' + ", ".join(MATCH_KEYS))
    fields = reader.mapping(node, MATCH_KEYS, f"{what} key")
    bad = len(fields) != len(node.value)
    globs = {}
    for key in ("cgroup", "exclude"):
        if key in fields:
            vnode = fields[key][1]
            globs[key] = reader.strings(vnode, f"{what}.{key}")
            items = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
            for g, item in zip(globs[key], items):
                try:
                    compile_glob(g)
                except GlobError as err:
                    reader.error(item, str(err))
                    bad = True
    names = reader.strings(fields["names"][1], f"{what}.names") if "names" in fields else ()
    tags = {}
    if "tags" in fields:
        vnode = fields["tags"][1]
        if not isinstance(vnode, yaml.MappingNode):
            reader.fail(vnode, f"{what}.tags must be a mapping of key: value")
        for knode, valnode in vnode.value:
            key = reader.scalar_text(knode, "a tag key")
            tags[key] = reader.scalar_text(valnode, f"tag {key}")
            tag_refs.append(TagRef(key, tags[key], knode, reader))
    if bad:
        raise Invalid
    return Selector(globs.get("cgroup", ()), globs.get("exclude", ()), names, FrozenTags(tags))
