"""``macros:`` - named expressions, read from every file, then compiled in
dependency order before any rule uses them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from .. import expr as ex
from ..limits import MAX_EXPRESSION, MAX_MACROS, Tally
from ..yamlnode import Invalid, Reader, is_null, is_str

MACRO_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class MacroDef:
    """One macro as written: its source, node and the reader of its file."""
    name: str
    src: str
    node: yaml.Node
    reader: Reader


@dataclass
class Macros:
    """The compiled macros; ``broken`` failed (their own error says why, so a rule
    using one stays quiet about it)."""
    defs: dict[str, MacroDef]
    compiled: dict[str, ex.Compiled] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)


def expression(reader: Reader, node, src: str, what: str) -> str:
    """``src``, unless it is over the expression length limit."""
    if len(src) > MAX_EXPRESSION:
        reader.fail(node, f"{what} is {len(src)} characters, over the {MAX_EXPRESSION}-character "
                          f"limit for an expression (use macros)")
    return src


def read_macros(reader: Reader, node, defs: dict[str, MacroDef], tally: Tally) -> None:
    """One file's ``macros:`` mapping into ``defs`` (shared by every file)."""
    if is_null(node):
        return
    if not isinstance(node, yaml.MappingNode):
        reader.error(node, '"macros" must be a mapping of name: expression')
        return
    seen = set()
    for knode, vnode in node.value:
        if not isinstance(knode, yaml.ScalarNode):
            reader.error(knode, "a macro name must be a plain name")
            continue
        name = knode.value
        if not tally.room(reader, knode, len(defs), MAX_MACROS, "macros"):
            break
        about = reader.about(f'macro "{name}"')
        if not MACRO_RE.match(name):
            about.error(knode, "a macro name is letters, digits and _ (no dots: dotted names are metrics)")
            continue
        if name in ex.KEYWORDS or name in ex.FUNCTIONS:
            about.error(knode, f"{name!r} is reserved")
            continue
        if name in seen or name in defs:
            where = defs[name].reader.source.path if name in defs else reader.source.path
            about.error(knode, f"duplicate macro (first defined in {where})")
            continue
        seen.add(name)
        try:
            src = about.string(vnode, "a macro") if not isinstance(vnode, yaml.ScalarNode) \
                or is_str(vnode) else about.scalar_text(vnode, "a macro")
            expression(about, vnode, src, "a macro")
        except Invalid:
            continue
        defs[name] = MacroDef(name, src, vnode, about)


def compile_macros(defs: dict[str, MacroDef]) -> Macros:
    """Compile every macro in dependency order; cycles and errors are reported
    once, at the macro, and a macro using a broken one is broken too."""
    trees: dict[str, ex.Node] = {}
    for name, d in defs.items():
        try:
            trees[name] = ex.parse(d.src)
        except ex.ExprError as err:
            d.reader.expr_error(d.node, err)
    out = Macros(defs, broken=set(defs) - set(trees))
    state: dict[str, str] = {}      # "visiting" | "done"

    def visit(name, chain):
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = chain[chain.index(name):] + [name]
            first = defs[cycle[0]]
            first.reader.error(first.node, "macro cycle: " + " -> ".join(cycle))
            out.broken.update(cycle)
            return
        state[name] = "visiting"
        for dep in sorted(ex.names_in(trees[name]) & set(trees)):
            visit(dep, chain + [name])
        state[name] = "done"
        if name in out.broken or ex.names_in(trees[name]) & set(defs) & out.broken:
            out.broken.add(name)
            return
        d = defs[name]
        try:
            found = ex.static_problems(trees[name], defs)
            if found:
                for err in found:
                    d.reader.expr_error(d.node, err)
                out.broken.add(name)
                return
            out.compiled[name] = ex.Compiler(out.compiled).compile(trees[name])
        except ex.ExprError as err:
            d.reader.expr_error(d.node, err)
            out.broken.add(name)

    for name in trees:
        visit(name, [])
    return out
