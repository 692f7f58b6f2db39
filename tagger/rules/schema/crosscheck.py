"""Warnings that need the whole directory: tags nobody sets, and two rules
setting one tag key on cgroups that may overlap (the later wins)."""

from __future__ import annotations

from tagger.cgroupglob import literal_prefix

from .. import expr as ex
from ..model import Rule
from ..spec import Selector
from .rules import RuleDef
from .selector import TagRef


def cross_check(rules: list[tuple[Rule, RuleDef]], tag_refs: list[TagRef]) -> None:
    """Record the warnings on each rule's (and selector's) own reader."""
    set_keys: dict[str, set[str]] = {}
    for r, _ in rules:
        for k, v in r.tags.items():
            set_keys.setdefault(k, set()).add(v)

    for ref in tag_refs:
        msg = _unset_tag(ref.key, ref.value, set_keys)
        if msg:
            ref.reader.warn(ref.node, msg)
    for r, d in rules:
        for c in (r.when, r.clear_when):
            for key, value, _ in (ex.tag_refs(c.tree) if c is not None and c.tree else ()):
                msg = _unset_tag(key, value, set_keys)
                if msg:
                    d.reader.about(f'rule "{r.name}"').warn(d.node, msg)

    by_key: dict[str, list[tuple[Rule, RuleDef]]] = {}
    for r, d in rules:
        for k in r.tags:
            by_key.setdefault(k, []).append((r, d))
    for key, owners in by_key.items():
        for i, (later, d) in enumerate(owners):
            for earlier, e in owners[:i]:
                if (earlier.tags[key] != later.tags[key] and not _one_classifier(earlier, e, later, d)
                        and _may_overlap(earlier.match, later.match)):
                    d.reader.about(f'rule "{later.name}"').warn(
                        d.node, f'sets tag "{key}" like rule "{earlier.name}" on cgroups both may '
                                f"match; this later rule wins")
                    break


def _unset_tag(key, value, set_keys) -> str | None:
    if key not in set_keys:
        return f'tag "{key}" is set by no rule'
    if value not in (None, "*") and value not in set_keys[key]:
        return f"no rule sets tag {key}={value}"
    return None


def _one_classifier(a: Rule, a_def: RuleDef, b: Rule, b_def: RuleDef) -> bool:
    """Conditional rules in one file that set one key to different values are
    written side by side as one choice (type=interactive / type=batch), their
    conditions meant to exclude each other: no overlap warning for them.  Static
    rules, or rules in different files, are still warned about."""
    return (a.when is not None and b.when is not None
            and a_def.reader.source.path == b_def.reader.source.path)


def _may_overlap(a: Selector, b: Selector) -> bool:
    if not a.cgroup or not b.cgroup:
        return True
    for ga in a.cgroup:
        for gb in b.cgroup:
            pa, pb = literal_prefix(ga), literal_prefix(gb)
            if pa.startswith(pb) or pb.startswith(pa):
                return True
    return False
