"""Load a rules directory: strict decode, every problem with its line and column.

Every ``*.yaml``/``*.yml`` file, in name order, is composed into YAML nodes
(``yaml.compose``) so each key and value keeps its position; a pass over the
nodes checks the fixed set of keys (Prometheus ``rulefmt`` style: unknown keys
are errors) and collects every problem in the directory instead of stopping at
the first.  Loading is atomic: :func:`load_directory` returns a complete
:class:`RuleSet` or raises :class:`RulesLoadError` listing everything wrong.

Sizes are bounded (``MAX_*`` below, docs/rules.md "Limits") so a huge file is
refused before it is parsed, and kernel ranges (cpu quota floor, weights,
io rates) are checked with the actions' own limits.  ``node=`` adds the checks
against this node's CPUs and devices (:mod:`tagger.rules.node`), which
``tagger rules check`` runs and ``tagger run`` leaves to the actuator.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path

import yaml

from tagger.actions import cpu as cpu_limits
from tagger.actions.cpuset import format_cpulist, parse_cpulist
from tagger.actions.io import spec_limits
from tagger.actions.refusal import ActionRefused
from tagger.actions.spec import ActionSet, CpuSpec, IoSpec, RdtSpec
from tagger.policies.spec import CPU_LEVERS, LatencySloSpec, Selector
from tagger.snapshot import METRICS
from tagger.units import parse_duration, parse_quantity

from . import expr as ex
from .model import FrozenTags, Problem, Rule, RuleSet, RulesLoadError
from .selectors import GlobError, check_glob, literal_prefix

TOP_KEYS = ("macros", "rules", "policies")
RULE_KEYS = ("name", "description", "match", "when", "for", "keep_for", "clear_when", "tags",
             "actions", "enabled")
MATCH_KEYS = ("cgroup", "exclude", "names", "tags")
ACTION_KEYS = ("cpu", "io", "rdt")
CPU_KEYS = ("max", "period", "weight", "idle", "cpuset")
IO_KEYS = ("device", "read_bps", "write_bps", "read_iops", "write_iops")
RDT_KEYS = ("group", "l3", "mb")
POLICY_KEYS = ("name", "kind", "description", "enabled", "protect", "throttle", "slo", "alpha",
               "beta", "floor", "ceiling", "resources", "demote", "ladder", "persist", "window", "judge",
               "gain", "cooldown")
POLICY_KINDS = ("latency-slo",)
DEMOTIONS = ("weight", "idle", "cpuset", "none")     # latency-slo's first CPU step(s), the old key
POLICY_RESOURCES = ("cpu", "io")

# Limits: far above any real rule set (the packaged one is 4 KiB, 12 rules,
# 76-character expressions), low enough that checking the worst case stays in
# seconds and tens of MB (benchmarks/bench_rules_limits.py); the pure-Python
# YAML composer is the cost, so the file size is refused before parsing.
MAX_FILE_BYTES = 256 * 1024         # one rule file
MAX_DIRECTORY_BYTES = 1024 * 1024   # all rule files together
MAX_RULES = 1000                    # rules in the directory
MAX_MACROS = 1000                   # macros in the directory
MAX_POLICIES = 100                  # policies in the directory
MAX_EXPRESSION = 1024               # characters in one expression (when, clear_when, a macro, slo)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MACRO_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")
TAG_VALUE_RE = re.compile(r"^[A-Za-z0-9_.\-:/+]+$")
BYTES_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "KB", "MB", "GB")

# libyaml's composer, when PyYAML has it, is ~8x faster than the pure-Python one
# (the bulk of a check's cost) and keeps the same marks (line, column, index).
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


def rule_files(directory: str | os.PathLike) -> list[Path]:
    """The rule files of a directory, in the order they load (by name)."""
    d = Path(directory)
    return sorted((p for p in d.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()),
                  key=lambda p: p.name)


def load_directory(directory: str | os.PathLike, node=None) -> RuleSet:
    """Load, check and compile every rule file in ``directory``.

    Returns a RuleSet (its ``warnings`` list what is suspicious but usable) or
    raises RulesLoadError with every error and warning found.  ``node`` (a
    :class:`tagger.rules.node.NodeFacts`) also makes actions naming CPUs or
    devices this node lacks errors.
    """
    return _Loader(str(directory), node).load()


def load_text(text: str, name: str = "<rules>.yaml") -> RuleSet:
    """Load one rules document given as text (tests, `tagger rules test` inline rules)."""
    loader = _Loader(os.path.dirname(name) or ".")
    return loader.load(files=[(name, text)])


class _Skip(Exception):
    """A problem was recorded; abandon the current item quietly."""


class _Loader:
    def __init__(self, directory: str, node=None):
        self.directory = directory
        self.node = node                     # NodeFacts, or None: no checks against this node
        self.problems: list[Problem] = []
        self.path = ""                       # the file being read
        self.text = ""
        self.subject = ""
        self.constructor = None
        # collected across files
        self.macro_defs: dict[str, tuple[str, yaml.Node, str, str]] = {}   # name -> (src, node, path, text)
        self.rule_defs: list[tuple[dict, str, str, str]] = []              # (fields, path, text, subject)
        self.policy_nodes: list[tuple[yaml.MappingNode, str, str]] = []
        self.rule_names: dict[str, str] = {}
        self.selector_tags: list = []                                      # (tags, node, path, subject)
        self.broken: set[str] = set()                                      # macros that failed
        self.over_limit: set[str] = set()                                  # counts reported over

    # --- problems -------------------------------------------------------------
    def error(self, node, message, severity="error", offset=None, subject=None, path=None):
        line, col = 0, 0
        if node is not None:
            line, col = node.start_mark.line + 1, node.start_mark.column + 1
            if offset is not None:
                col += offset
        self.problems.append(Problem(path or self.path, line, col, message,
                                     self.subject if subject is None else subject, severity))

    def warn(self, node, message, **kw):
        self.error(node, message, severity="warning", **kw)

    # --- entry ------------------------------------------------------------------
    def load(self, files=None) -> RuleSet:
        if files is None:
            try:
                paths = rule_files(self.directory)
            except OSError as err:
                self.error(None, f"cannot read rules directory: {err.strerror or err}",
                           path=self.directory)
                raise RulesLoadError(self.problems) from None
            files = []
            total = 0
            for p in paths:
                try:
                    text = self._read_bounded(p, MAX_DIRECTORY_BYTES - total)
                except (OSError, UnicodeDecodeError) as err:
                    self.error(None, f"cannot read file: {getattr(err, 'strerror', None) or err}",
                               path=str(p))
                    continue
                if text is not None:
                    total += len(text.encode("utf-8", "surrogateescape"))
                    files.append((str(p), text))
            if not paths:
                self.warn(None, "no rule files (*.yaml, *.yml) in the directory", path=self.directory)
        else:
            files = [(path, text) for path, text in files
                     if self._size_ok(path, len(text.encode("utf-8", "surrogatepass")))]
        for path, text in files:
            self.path, self.text, self.subject = path, text, ""
            self._file(text)
        macros = self._macros()
        rules = self._rules(macros)
        policies = self._policies()
        self._cross_checks(rules)
        if any(p.severity == "error" for p in self.problems):
            raise RulesLoadError(self.problems)
        warnings = sorted(self.problems, key=lambda p: p.sort_key)
        return RuleSet(self.directory, [f for f, _ in files], rules,
                       {k: v[0] for k, v in self.macro_defs.items()}, policies, warnings)

    # --- limits --------------------------------------------------------------------
    def _size_ok(self, path, size, room=MAX_DIRECTORY_BYTES) -> bool:
        if size > MAX_FILE_BYTES:
            self.error(None, f"file is {_kib(size)}, over the {_kib(MAX_FILE_BYTES)} limit for a rule "
                             f"file (split it, or trim it)", path=path)
            return False
        if size > room:
            self.error(None, f"the rule files add up to over the {_kib(MAX_DIRECTORY_BYTES)} limit for "
                             f"a rules directory at this file", path=path)
            return False
        return True

    def _read_bounded(self, p: Path, room: int) -> str | None:
        """The file's text, or None (an error recorded) when it is over a size
        limit; never reads more than the limit, whatever the file grows to."""
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if not self._size_ok(str(p), size, room):
                return None
            data = f.read(min(MAX_FILE_BYTES, max(room, 0)) + 1)
        if not self._size_ok(str(p), len(data), room):      # grew after the fstat
            return None
        return data.decode("utf-8")

    def _count_ok(self, node, have: int, limit: int, what: str) -> bool:
        """False (one error, at the first item over) once ``have`` reached ``limit``."""
        if have < limit:
            return True
        if what not in self.over_limit:
            self.over_limit.add(what)
            self.error(node, f"more than {limit} {what} in the rules directory (the limit); "
                             f"the rest are not read", subject="")
        return False

    def _expression(self, node, src: str, what: str) -> str:
        if len(src) > MAX_EXPRESSION:
            self.error(node, f"{what} is {len(src)} characters, over the {MAX_EXPRESSION}-character "
                             f"limit for an expression (use macros)")
            raise _Skip
        return src

    # --- one file -------------------------------------------------------------------
    def _file(self, text: str):
        self.constructor = yaml.constructor.SafeConstructor()
        try:
            try:
                root = yaml.compose(text, Loader=_COMPOSER)
            except yaml.YAMLError:
                # a broken file: the pure-Python composer's messages are the clearer ones
                root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            msg = f"bad YAML: {err.problem or err.context}"
            self.problems.append(Problem(self.path, mark.line + 1 if mark else 0,
                                         mark.column + 1 if mark else 0, msg))
            return
        except yaml.YAMLError as err:
            self.error(None, f"bad YAML: {err}")
            return
        except RecursionError:
            self.error(None, "bad YAML: nested too deeply")
            return
        if root is None or (root.tag == _NULL and isinstance(root, yaml.ScalarNode)):
            self.warn(None, "empty file")
            return
        if not isinstance(root, yaml.MappingNode):
            self.error(root, "a rules file is a mapping with keys: " + ", ".join(TOP_KEYS))
            return
        top = self._mapping(root, TOP_KEYS, "key")
        if "macros" in top:
            self._macro_block(top["macros"][1])
        if "rules" in top:
            node = top["rules"][1]
            if self._is_null(node):
                pass
            elif not isinstance(node, yaml.SequenceNode):
                self.error(node, '"rules" must be a list of rules')
            else:
                for i, item in enumerate(node.value):
                    if not self._count_ok(item, len(self.rule_defs), MAX_RULES, "rules"):
                        break
                    self._rule_node(item, i + 1)
        if "policies" in top:
            node = top["policies"][1]
            if self._is_null(node):
                pass
            elif not isinstance(node, yaml.SequenceNode):
                self.error(node, '"policies" must be a list of policies')
            else:
                for item in node.value:
                    if not self._count_ok(item, len(self.policy_nodes), MAX_POLICIES, "policies"):
                        break
                    self.policy_nodes.append((item, self.path, self.text))

    # --- node helpers -------------------------------------------------------------------
    def _is_null(self, node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.tag == _NULL

    def _mapping(self, node, allowed, what) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Keys of a mapping node -> (key node, value node); unknown and repeated keys
        are errors (YAML itself would silently keep the last)."""
        out = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                self.error(knode, f"a {what} must be a plain name")
                continue
            key = knode.value
            if key in out:
                self.error(knode, f'duplicate key "{key}"')
                continue
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                self.error(knode, f'unknown {what} "{key}"'
                           + (f' (did you mean "{hint[0]}"?)' if hint else
                              f" (allowed: {', '.join(allowed)})"))
                continue
            out[key] = (knode, vnode)
        return out

    def _str(self, node, what) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
            self.error(node, f"{what} must be a string")
            raise _Skip
        return node.value

    def _scalar_text(self, node, what) -> str:
        """A scalar of any YAML type, as written (tag values: `1`, `true` stay text)."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
            self.error(node, f"{what} must be a single value")
            raise _Skip
        return node.value

    def _bool(self, node, what) -> bool:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL:
            self.error(node, f"{what} must be true or false")
            raise _Skip
        return self._construct(node)

    def _number(self, node, what, allowed_units=(), positive=False, integer=False) -> float:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_INT, _FLOAT, _STR):
            self.error(node, f"{what} must be a number")
            raise _Skip
        raw = self._construct(node) if node.tag != _STR else node.value
        if node.tag == _STR and not allowed_units:
            try:
                raw = float(raw)
            except ValueError:
                self.error(node, f"{what} must be a plain number")
                raise _Skip from None
        try:
            value = parse_quantity(raw, allowed_units) if node.tag == _STR else float(raw)
        except ValueError as err:
            self.error(node, f"{what}: {err}")
            raise _Skip from None
        if math.isnan(value) or math.isinf(value):
            self.error(node, f"{what} must be a finite number")
            raise _Skip
        if positive and value <= 0:
            self.error(node, f"{what} must be greater than 0")
            raise _Skip
        if integer and value != int(value):
            self.error(node, f"{what} must be a whole number")
            raise _Skip
        return value

    def _duration(self, node, what) -> float:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_INT, _FLOAT, _STR):
            self.error(node, f"{what} must be a duration like 10s or 500ms")
            raise _Skip
        raw = node.value if node.tag == _STR else self._construct(node)
        try:
            value = parse_duration(raw)
        except ValueError as err:
            self.error(node, f"{what}: bad duration: {err}")
            raise _Skip from None
        if math.isinf(value):
            self.error(node, f"{what} must be finite")
            raise _Skip
        return value

    def _construct(self, node):
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as err:
            self.error(node, f"bad value: {err}")
            raise _Skip from None

    def _strings(self, node, what) -> tuple[str, ...]:
        """A string or a list of strings."""
        if isinstance(node, yaml.SequenceNode):
            return tuple(self._str(item, what) for item in node.value)
        return (self._str(node, what),)

    def _expr_offset(self, node) -> int | None:
        """Where the expression's first character sits relative to the node's mark,
        or None when YAML folding/escapes make offsets meaningless (point at the node)."""
        start, end = node.start_mark.index, node.end_mark.index
        raw = self.text[start:end]
        if not node.style and raw == node.value:     # plain: None (PyYAML) or "" (libyaml)
            return 0
        if node.style in ("'", '"') and raw[1:-1] == node.value:
            return 1
        return None

    def _expr_error(self, node, err: ex.ExprError, offset_base=None):
        base = self._expr_offset(node) if offset_base is None else offset_base
        if base is None:
            self.error(node, err.message)
        else:
            self.error(node, err.message, offset=base + err.offset)

    # --- macros ---------------------------------------------------------------------------
    def _macro_block(self, node):
        if self._is_null(node):
            return
        if not isinstance(node, yaml.MappingNode):
            self.error(node, '"macros" must be a mapping of name: expression')
            return
        seen = set()
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                self.error(knode, "a macro name must be a plain name")
                continue
            name = knode.value
            if not self._count_ok(knode, len(self.macro_defs), MAX_MACROS, "macros"):
                break
            self.subject = f'macro "{name}"'
            try:
                if not MACRO_RE.match(name):
                    self.error(knode, "a macro name is letters, digits and _ (no dots: "
                                      "dotted names are metrics)")
                    continue
                if name in ex.KEYWORDS or name in ex.FUNCTIONS:
                    self.error(knode, f"{name!r} is reserved")
                    continue
                if name in seen or name in self.macro_defs:
                    where = self.macro_defs[name][2] if name in self.macro_defs else self.path
                    self.error(knode, f"duplicate macro (first defined in {where})")
                    continue
                seen.add(name)
                src = self._str(vnode, "a macro") if not isinstance(vnode, yaml.ScalarNode) \
                    or vnode.tag == _STR else self._scalar_text(vnode, "a macro")
                self._expression(vnode, src, "a macro")
                self.macro_defs[name] = (src, vnode, self.path, self.text)
            except _Skip:
                pass
            finally:
                self.subject = ""

    def _macros(self) -> dict[str, ex.Compiled]:
        """Compile every macro in dependency order; cycles and errors are reported
        once, at the macro, and rules using a broken macro stay quiet about it."""
        trees: dict[str, ex.Node] = {}
        for name, (src, node, path, text) in self.macro_defs.items():
            self.path, self.text, self.subject = path, text, f'macro "{name}"'
            try:
                trees[name] = ex.parse(src)
            except ex.ExprError as err:
                self._expr_error(node, err)
        self.broken = set(self.macro_defs) - set(trees)
        compiled: dict[str, ex.Compiled] = {}
        state: dict[str, str] = {}      # "visiting" | "done"

        def visit(name, chain):
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                cycle = chain[chain.index(name):] + [name]
                first = cycle[0]
                src, node, path, text = self.macro_defs[first]
                self.path, self.text, self.subject = path, text, f'macro "{first}"'
                self.error(node, "macro cycle: " + " -> ".join(cycle))
                self.broken.update(cycle)
                return
            state[name] = "visiting"
            for dep in sorted(ex.names_in(trees[name]) & set(trees)):
                visit(dep, chain + [name])
            state[name] = "done"
            if name in self.broken:
                return
            deps = ex.names_in(trees[name]) & set(self.macro_defs)
            if deps & self.broken:
                self.broken.add(name)
                return
            src, node, path, text = self.macro_defs[name]
            self.path, self.text, self.subject = path, text, f'macro "{name}"'
            try:
                found = ex.static_problems(trees[name], self.macro_defs)
                if found:
                    for err in found:
                        self._expr_error(node, err)
                    self.broken.add(name)
                    return
                compiled[name] = ex.Compiler(compiled).compile(trees[name])
            except ex.ExprError as err:
                self._expr_error(node, err)
                self.broken.add(name)

        for name in trees:
            visit(name, [])
        self.subject = ""
        return compiled

    # --- rules ------------------------------------------------------------------------------
    def _rule_node(self, node, number):
        self.subject = f"rule #{number}"
        if not isinstance(node, yaml.MappingNode):
            self.error(node, "a rule must be a mapping (name, match, when, tags, ...)")
            self.subject = ""
            return
        for knode, vnode in node.value:     # name first, so every message names the rule
            if isinstance(knode, yaml.ScalarNode) and knode.value == "name" \
                    and isinstance(vnode, yaml.ScalarNode) and vnode.tag == _STR:
                self.subject = f'rule "{vnode.value}"'
                break
        fields = self._mapping(node, RULE_KEYS, "rule key")
        if "name" in fields:
            try:
                name = self._str(fields["name"][1], "name")
                if not NAME_RE.match(name):
                    self.error(fields["name"][1], "a rule name is letters, digits, '.', '_' and '-'")
                self.subject = f'rule "{name}"'
                if name in self.rule_names:
                    self.error(fields["name"][1], f"duplicate rule name (first defined at "
                                                  f"{self.rule_names[name]})")
                else:
                    m = fields["name"][1].start_mark
                    self.rule_names[name] = f"{self.path}:{m.line + 1}:{m.column + 1}"
            except _Skip:
                pass
        else:
            self.error(node, 'missing required key "name"')
        self.rule_defs.append((fields, node, self.path, self.text, self.subject))
        self.subject = ""

    def _rules(self, macros) -> list[Rule]:
        rules = []
        for fields, node, path, text, subject in self.rule_defs:
            self.path, self.text, self.subject = path, text, subject
            self.constructor = yaml.constructor.SafeConstructor()
            rule = self._rule(fields, node, macros, len(rules))
            if rule is not None:
                rules.append(rule)
        self.subject = ""
        return rules

    def _rule(self, fields, node, macros, index) -> Rule | None:
        ok = True
        m = node.start_mark
        rule = Rule(name=self.subject[6:-1] if self.subject.startswith('rule "') else "",
                    index=index, source=f"{self.path}:{m.line + 1}:{m.column + 1}")

        def field(key, fn):
            nonlocal ok
            if key not in fields:
                return
            try:
                fn(fields[key][1])
            except _Skip:
                ok = False

        field("description", lambda v: setattr(rule, "description", self._str(v, "description")))
        field("enabled", lambda v: setattr(rule, "enabled", self._bool(v, "enabled")))
        field("match", lambda v: setattr(rule, "match", self._selector(v, "match")))
        field("for", lambda v: setattr(rule, "for_", self._duration(v, '"for"')))
        field("keep_for", lambda v: setattr(rule, "keep_for", self._duration(v, "keep_for")))
        field("tags", lambda v: setattr(rule, "tags", self._tags(v)))
        field("actions", lambda v: setattr(rule, "actions", self._actions(v, rule.name)))

        def compile_field(key):
            nonlocal ok
            if key not in fields:
                return None, None
            vnode = fields[key][1]
            try:
                src = self._str(vnode, key) if not (isinstance(vnode, yaml.ScalarNode)
                                                    and vnode.tag == _BOOL) else vnode.value
                self._expression(vnode, src, key)
            except _Skip:
                ok = False
                return None, None
            try:
                tree = ex.parse(src)
                used = ex.names_in(tree) & self.broken
                if used:
                    ok = False          # the macro's own error says what is wrong
                    return None, None
                found = ex.static_problems(tree, self.macro_defs)
                if found:
                    for err in found:
                        self._expr_error(vnode, err)
                    ok = False
                    return None, None
                c = ex.Compiler(macros).compile(tree)
            except ex.ExprError as err:
                self._expr_error(vnode, err)
                ok = False
                return None, None
            for warning in ex.deprecated_calls(tree):
                base = self._expr_offset(vnode)
                self.warn(vnode, warning.message,
                          offset=None if base is None else base + warning.offset)
            if c.type != "bool":
                self.error(vnode, f"{key} must be a condition (a comparison, and/or/not), "
                                  f"not {ex._TYPE_WORD[c.type]}")
                ok = False
                return None, None
            return c, src

        rule.when, rule.when_src = compile_field("when")
        rule.clear_when, rule.clear_when_src = compile_field("clear_when")
        if "when" not in fields:
            for key in ("for", "keep_for", "clear_when"):
                if key in fields and key != "keep_for":
                    self.error(fields[key][0], f'"{key}" needs a "when" condition '
                                               "(a rule without one is static)")
                    ok = False
        if "tags" not in fields and "actions" not in fields:
            self.error(node, 'a rule needs "tags" or "actions" (it would do nothing)')
            ok = False
        if rule.actions is not None and rule.name:
            rule.actions = ActionSet(rule.name, rule.actions.cpu, rule.actions.io, rule.actions.rdt)
        return rule if ok else None

    def _selector(self, node, what) -> Selector:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f'"{what}" must be a mapping with keys: ' + ", ".join(MATCH_KEYS))
            raise _Skip
        fields = self._mapping(node, MATCH_KEYS, f"{what} key")
        bad = len(fields) != len(node.value)
        globs = {}
        for key in ("cgroup", "exclude"):
            if key in fields:
                vnode = fields[key][1]
                globs[key] = self._strings(vnode, f"{what}.{key}")
                items = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
                for g, item in zip(globs[key], items):
                    try:
                        check_glob(g)
                    except GlobError as err:
                        self.error(item, str(err))
                        bad = True
        names = self._strings(fields["names"][1], f"{what}.names") if "names" in fields else ()
        tags = {}
        if "tags" in fields:
            vnode = fields["tags"][1]
            if not isinstance(vnode, yaml.MappingNode):
                self.error(vnode, f"{what}.tags must be a mapping of key: value")
                raise _Skip
            for knode, valnode in vnode.value:
                key = self._scalar_text(knode, "a tag key")
                tags[key] = self._scalar_text(valnode, f"tag {key}")
                self.selector_tags.append((key, tags[key], knode, self.path, self.subject))
        if bad:
            raise _Skip
        return Selector(globs.get("cgroup", ()), globs.get("exclude", ()), names, FrozenTags(tags))

    def _tags(self, node) -> dict[str, str]:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, '"tags" must be a mapping of key: value')
            raise _Skip
        out, bad = {}, False
        for knode, vnode in node.value:
            try:
                key = self._scalar_text(knode, "a tag key")
                if not TAG_KEY_RE.match(key):
                    self.error(knode, f"bad tag key {key!r}: letters, digits, '.', '_', '-', '/'")
                    raise _Skip
                if key in out:
                    self.error(knode, f'duplicate tag key "{key}"')
                    raise _Skip
                value = self._scalar_text(vnode, f'tag "{key}"')
                if not TAG_VALUE_RE.match(value):
                    self.error(vnode, f"bad tag value {value!r}: letters, digits and . _ - : / +")
                    raise _Skip
                out[key] = value
            except _Skip:
                bad = True
        if bad:
            raise _Skip
        return out

    # --- actions --------------------------------------------------------------------------------
    def _actions(self, node, rule_name) -> ActionSet:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, '"actions" must be a mapping with keys: ' + ", ".join(ACTION_KEYS))
            raise _Skip
        fields = self._mapping(node, ACTION_KEYS, "action")
        bad = len(fields) != len(node.value)
        specs = {}
        for key, fn in (("cpu", self._cpu), ("io", self._io), ("rdt", self._rdt)):
            if key in fields:
                vnode = fields[key][1]
                if not isinstance(vnode, yaml.MappingNode):
                    self.error(vnode, f'"{key}" must be a mapping')
                    bad = True
                    continue
                try:
                    specs[key] = fn(vnode)
                except _Skip:
                    bad = True
        if not fields and not bad:
            self.error(node, '"actions" is empty')
            bad = True
        if bad:
            raise _Skip
        return ActionSet(rule_name, specs.get("cpu"), specs.get("io"), specs.get("rdt"))

    def _sub(self, node, keys, what, parse, required=()):
        """Parse each field of an action mapping; keep going after a bad one."""
        fields = self._mapping(node, keys, f"{what} key")
        bad = len(fields) != len(node.value)
        for key in required:
            if key not in fields:
                self.error(node, f'{what} action needs "{key}"')
                bad = True
        out = {}
        for key, (knode, vnode) in fields.items():
            try:
                out[key] = parse[key](vnode, f"{what}.{key}")
            except _Skip:
                bad = True
        if bad:
            raise _Skip
        return out

    def _cpu(self, node) -> CpuSpec:
        f = self._sub(node, CPU_KEYS, "cpu", {
            "max": lambda v, w: self._number(v, w + " (CPUs)", positive=True),
            "period": lambda v, w: self._period(v, w),
            "weight": lambda v, w: self._weight(v, w),
            "idle": lambda v, w: self._bool(v, w),
            "cpuset": lambda v, w: self._cpulist(v, w)})
        if not {"max", "weight", "idle", "cpuset"} & set(f):
            self.error(node, 'cpu action needs "max" (CPUs), "weight", "idle" or "cpuset"')
            raise _Skip
        if f.get("idle") and "weight" in f:
            self.error(node, "cpu.idle and a weight exclude each other: the kernel refuses a weight "
                             "while a group is idle")
            raise _Skip
        if "max" in f:
            self._quota(node, f["max"], f.get("period", 0.1))
        return CpuSpec(max=f.get("max"), period=f.get("period", 0.1),
                       weight=int(f["weight"]) if "weight" in f else None, idle=f.get("idle"),
                       cpuset=f.get("cpuset"))

    def _quota(self, node, cpus, period):
        """The kernel's CFS quota range, as the actuator computes the quota
        (tagger.actions.cpu: min_cfs_quota_period, max_cfs_runtime)."""
        quota = cpu_limits.CpuMax.from_cpus(cpus, period).quota_us
        mnode = next((v for k, v in node.value if getattr(k, "value", None) == "max"), node)
        if quota < cpu_limits.MIN_QUOTA_US:
            self.error(mnode, f"cpu.max {cpus:g} CPUs at a {period * 1000:g}ms period is a quota of "
                              f"{quota}us, below the kernel's {cpu_limits.MIN_QUOTA_US}us minimum "
                              f"(min_cfs_quota_period): raise max or the period")
            raise _Skip
        if quota > cpu_limits.MAX_QUOTA_US:
            self.error(mnode, f"cpu.max is a quota of {quota}us, above the kernel's max_cfs_runtime")
            raise _Skip

    def _cpulist(self, node, what):
        # Quoted or not: YAML reads `cpuset: 3` as the number 3, the list "3".
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_INT, _STR):
            self.error(node, f'{what} must be a CPU list like "2-3,6"')
            raise _Skip
        try:
            cpus = parse_cpulist(node.value)
        except ValueError as err:
            self.error(node, f'{what}: {err} (a CPU list like "2-3,6")')
            raise _Skip from None
        if not cpus:
            self.error(node, f"{what} needs at least one CPU")
            raise _Skip
        problem = self.node.cpu_problem(cpus) if self.node is not None else None
        if problem:
            self.error(node, f"{what}: {problem}")
            raise _Skip
        return format_cpulist(cpus)

    def _period(self, node, what):
        value = self._duration(node, what)
        if not 0.001 <= value <= 1.0:   # the kernel's cpu.max period range: 1ms .. 1s
            self.error(node, f"{what} must be between 1ms and 1s")
            raise _Skip
        return value

    def _weight(self, node, what):
        value = self._number(node, what, integer=True)
        if not cpu_limits.WEIGHT_MIN <= value <= cpu_limits.WEIGHT_MAX:     # cgroup v2 cpu.weight
            self.error(node, f"{what} must be {cpu_limits.WEIGHT_MIN}..{cpu_limits.WEIGHT_MAX}")
            raise _Skip
        return value

    def _io(self, node) -> IoSpec:
        rate = lambda v, w: self._number(v, w, BYTES_UNITS, positive=True)
        iops = lambda v, w: self._number(v, w, (), positive=True, integer=True)
        f = self._sub(node, IO_KEYS, "io", {
            "device": lambda v, w: self._device(v, w),
            "read_bps": rate, "write_bps": rate, "read_iops": iops, "write_iops": iops})
        if not set(f) - {"device"}:
            self.error(node, "io action needs a limit: read_bps, write_bps, read_iops or write_iops")
            raise _Skip
        spec = IoSpec(**f)
        try:
            spec_limits(spec)           # the actuator's own floor (a limit of at least 1 per second)
        except ActionRefused as err:
            self.error(node, str(err))
            raise _Skip from None
        return spec

    def _device(self, node, what):
        device = self._scalar_text(node, what)
        problem = self.node.device_problem(device) if self.node is not None else None
        if problem:
            self.error(node, problem)
            raise _Skip
        return device

    def _rdt(self, node) -> RdtSpec:
        f = self._sub(node, RDT_KEYS, "rdt", {
            "group": lambda v, w: self._str(v, w),
            "l3": lambda v, w: self._l3(v, w),
            "mb": lambda v, w: self._mb(v, w)}, required=("group",))
        return RdtSpec(f["group"], f.get("l3"), int(f["mb"]) if "mb" in f else None)

    def _l3(self, node, what):
        text = self._scalar_text(node, what)
        if re.fullmatch(r"0x[0-9a-fA-F]+", text):
            if int(text, 16) == 0:
                self.error(node, f"{what}: an empty cache mask")
                raise _Skip
            return text
        if re.fullmatch(r"\d+(\.\d+)?%", text) and 0 < float(text[:-1]) <= 100:
            return text
        self.error(node, f'{what} must be a hex mask like "0x0f" or a percentage like "25%"')
        raise _Skip

    def _mb(self, node, what):
        value = self._number(node, what, ("%",), integer=False)
        if node.tag == _STR and node.value.endswith("%"):
            value *= 100
        if not 1 <= value <= 100 or value != int(value):
            self.error(node, f"{what} must be a whole percent 1..100")
            raise _Skip
        return value

    # --- policies --------------------------------------------------------------------------------
    def _policies(self) -> list[LatencySloSpec]:
        out = []
        names = {}
        for node, path, text in self.policy_nodes:
            self.path, self.text = path, text
            self.constructor = yaml.constructor.SafeConstructor()
            self.subject = f"policy #{len(out) + 1}"
            try:
                spec = self._policy(node, names)
                if spec is not None:
                    out.append(spec)
            except _Skip:
                pass
        self.subject = ""
        return out

    def _policy(self, node, names):
        if not isinstance(node, yaml.MappingNode):
            self.error(node, "a policy must be a mapping (name, kind, protect, slo, throttle)")
            raise _Skip
        fields = self._mapping(node, POLICY_KEYS, "policy key")
        bad = len(fields) != len(node.value)
        for key in ("name", "kind", "protect", "throttle", "slo"):
            if key not in fields:
                self.error(node, f'missing required key "{key}"')
                bad = True
        if "name" not in fields:
            raise _Skip
        name = self._str(fields["name"][1], "name")
        self.subject = f'policy "{name}"'
        if name in names:
            self.error(fields["name"][1], f"duplicate policy name (first defined at {names[name]})")
            bad = True
        m = fields["name"][1].start_mark
        names.setdefault(name, f"{self.path}:{m.line + 1}:{m.column + 1}")
        values = {}

        def get(key, fn):
            nonlocal bad
            if key in fields:
                try:
                    values[key] = fn(fields[key][1])
                except _Skip:
                    bad = True

        get("kind", lambda v: self._one_of(v, "policy kind", POLICY_KINDS))
        get("description", lambda v: self._str(v, "description"))
        get("enabled", lambda v: self._bool(v, "enabled"))
        get("protect", lambda v: self._selector(v, "protect"))
        get("throttle", lambda v: self._selector(v, "throttle"))
        get("slo", lambda v: self._slo(v))
        for key in ("alpha", "beta", "floor", "ceiling"):
            get(key, lambda v, key=key: self._number(v, key, positive=True))
        get("resources", lambda v: self._resources(v))
        get("demote", lambda v: self._demote(v))
        get("ladder", lambda v: self._ladder(v))
        get("persist", lambda v: int(self._number(v, "persist", positive=True, integer=True)))
        get("window", lambda v: int(self._number(v, "window", positive=True, integer=True)))
        get("judge", lambda v: int(self._number(v, "judge", positive=True, integer=True)))
        get("gain", lambda v: self._fraction(v, "gain"))
        get("cooldown", lambda v: self._duration(v, "cooldown"))
        if "demote" in fields and "ladder" in fields:
            self.error(fields["ladder"][0], "ladder and demote exclude each other (demote: [x] is "
                                            "ladder: [[x], quota]; write the ladder)")
            bad = True
        if bad:
            raise _Skip
        if values.get("enabled") is False:
            return None
        metric, target = values["slo"]
        kw = {k: values[k] for k in ("alpha", "beta", "floor", "ceiling", "resources", "demote", "ladder",
                                     "persist", "window", "judge", "gain", "cooldown")
              if k in values}
        return LatencySloSpec(name=name, protect=values["protect"], throttle=values["throttle"],
                              metric=metric, target=target, **kw)

    def _one_of(self, node, what, known):
        value = self._str(node, what)
        if value not in known:
            self.error(node, f"unknown {what} {value!r} (known: {', '.join(known)})")
            raise _Skip
        return value

    def _demote(self, node) -> tuple[str, ...]:
        """One demotion or a list of them, applied together; "none" alone."""
        items = tuple(self._one_of(v, "demote", DEMOTIONS) for v in
                      (node.value if isinstance(node, yaml.SequenceNode) else (node,)))
        if "none" in items:
            if len(items) > 1:
                self.error(node, 'demote "none" cannot be listed with others')
                raise _Skip
            return ()
        if {"weight", "idle"} <= set(items):
            self.error(node, "demote: weight and idle exclude each other (the kernel refuses a weight "
                             "while a group is idle)")
            raise _Skip
        return tuple(dict.fromkeys(items))

    def _ladder(self, node) -> tuple[tuple[str, ...], ...]:
        """The CPU levers in the order they are tried: each rung a lever or a
        list of levers applied together; each lever once."""
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.error(node, f"ladder must be a list of levers ({', '.join(CPU_LEVERS)}), "
                             f"cheapest first, e.g. [idle, weight, quota, cpuset]")
            raise _Skip
        rungs, seen = [], set()
        for item in node.value:
            rung = tuple(self._one_of(v, "lever", CPU_LEVERS)
                         for v in (item.value if isinstance(item, yaml.SequenceNode) else (item,)))
            if not rung:
                self.error(item, "ladder: an empty rung")
                raise _Skip
            for lever in rung:
                if lever in seen:
                    self.error(item, f"ladder: {lever} twice (each lever has one place)")
                    raise _Skip
                seen.add(lever)
            if {"weight", "idle"} <= set(rung):
                self.error(item, "ladder: weight and idle exclude each other in one rung (the kernel "
                                 "refuses a weight while a group is idle)")
                raise _Skip
            if "quota" in rung and len(rung) > 1:
                self.error(item, "ladder: quota is a rung of its own (it is cut step by step)")
                raise _Skip
            rungs.append(rung)
        return tuple(rungs)

    def _fraction(self, node, what) -> float:
        """0 < x < 1, as 0.2 or "20%"."""
        text = node.value if isinstance(node, yaml.ScalarNode) else ""
        percent = node.tag == _STR and text.endswith("%")
        if percent:
            try:
                value = float(text[:-1]) / 100
            except ValueError:
                self.error(node, f"{what} must be a fraction like 0.2 or 20%")
                raise _Skip from None
        else:
            value = self._number(node, what)
        if not 0 < value < 1:
            self.error(node, f"{what} must lie between 0 and 1 (or 0% and 100%), not both ends")
            raise _Skip
        return value

    def _resources(self, node):
        items = self._strings(node, "resources")
        for r in items:
            if r not in POLICY_RESOURCES:
                self.error(node, f"unknown resource {r!r} (known: {', '.join(POLICY_RESOURCES)})")
                raise _Skip
        return items

    def _slo(self, node):
        src = self._expression(node, self._str(node, "slo"), "slo")
        try:
            tree = ex.parse(src)
        except ex.ExprError as err:
            self._expr_error(node, err)
            raise _Skip from None
        if tree.kind != "cmp" or tree.value not in ("<", "<=") or tree.args[0].kind != "name" \
                or tree.args[1].kind != "num":
            self.error(node, 'slo must read "<latency metric> < <target>", e.g. "runq.p99 < 2ms"')
            raise _Skip
        metric = tree.args[0].value
        if metric not in METRICS or METRICS[metric].unit != "s":
            from tagger.snapshot import suggest
            latency = [k for k, v in METRICS.items() if v.unit == "s"]
            hint = suggest(metric, latency)
            base = self._expr_offset(node)
            self.error(node, f"slo needs a latency metric, not {metric!r}"
                       + (f": did you mean {hint}?" if hint else ""),
                       offset=None if base is None else base + tree.args[0].pos)
            raise _Skip
        target = tree.args[1].value
        if not target > 0:
            self.error(node, "slo target must be greater than 0")
            raise _Skip
        return metric, float(target)

    # --- across files -------------------------------------------------------------------------------
    def _cross_checks(self, rules: list[Rule]):
        """Warnings that need the whole directory: tags nobody sets, and two rules
        setting one tag key on cgroups that may overlap (the later wins)."""
        set_keys: dict[str, set[str]] = {}
        for r in rules:
            for k, v in r.tags.items():
                set_keys.setdefault(k, set()).add(v)

        for key, value, node, path, subject in self.selector_tags:
            msg = self._tag_msg(key, value, set_keys)
            if msg:
                self.warn(node, msg, path=path, subject=subject)
        for r in rules:
            for c in (r.when, r.clear_when):
                for key, value, _ in (ex.tag_refs(c.tree) if c is not None and c.tree else ()):
                    msg = self._tag_msg(key, value, set_keys)
                    if msg:
                        path, line, col = r.source.rsplit(":", 2)
                        self.problems.append(Problem(path, int(line), int(col), msg,
                                                     f'rule "{r.name}"', "warning"))

        by_key: dict[str, list[Rule]] = {}
        for r in rules:
            for k in r.tags:
                by_key.setdefault(k, []).append(r)
        for key, owners in by_key.items():
            for i, later in enumerate(owners):
                for earlier in owners[:i]:
                    if (earlier.tags[key] != later.tags[key] and not _one_classifier(earlier, later)
                            and _may_overlap(earlier.match, later.match)):
                        path, line, col = later.source.rsplit(":", 2)
                        self.problems.append(Problem(
                            path, int(line), int(col),
                            f'sets tag "{key}" like rule "{earlier.name}" on cgroups both may '
                            f"match; this later rule wins", f'rule "{later.name}"', "warning"))
                        break

    @staticmethod
    def _tag_msg(key, value, set_keys):
        if key not in set_keys:
            return f'tag "{key}" is set by no rule'
        if value not in (None, "*") and value not in set_keys[key]:
            return f"no rule sets tag {key}={value}"
        return None


def _kib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB" if size >= 1024 * 1024 else f"{size / 1024:.0f} KiB"


def _one_classifier(a: Rule, b: Rule) -> bool:
    """Conditional rules in one file that set one key to different values are
    written side by side as one choice (type=interactive / type=batch), their
    conditions meant to exclude each other: no overlap warning for them.  Static
    rules, or rules in different files, are still warned about."""
    return (a.when is not None and b.when is not None
            and a.source.rsplit(":", 2)[0] == b.source.rsplit(":", 2)[0])


def _may_overlap(a: Selector, b: Selector) -> bool:
    if not a.cgroup or not b.cgroup:
        return True
    for ga in a.cgroup:
        for gb in b.cgroup:
            pa, pb = literal_prefix(ga), literal_prefix(gb)
            if pa.startswith(pb) or pb.startswith(pa):
                return True
    return False
