"""Load a rules directory: strict decode, every problem with its line and column.

Every ``*.yaml``/``*.yml`` file, in name order, is composed into YAML nodes
(``yaml.compose``) so each key and value keeps its position; typed readers
(:mod:`tagger.rules.yamlnode`) and one schema per section
(:mod:`tagger.rules.schema`: macros, rules, actions, policies) check the fixed
set of keys (Prometheus ``rulefmt`` style: unknown keys are errors) and collect
every problem in the directory instead of stopping at the first.  Loading is
atomic: :func:`load_directory` returns a complete :class:`RuleSet` or raises
:class:`RulesLoadError` listing everything wrong.

It runs in passes, because a file may use what a later one declares: each file
is read (macros, each rule's keys and name, policy nodes), then the macros are
compiled, then the rules and policies built, then the directory-wide warnings.

Sizes are bounded (:mod:`tagger.rules.limits`, docs/rules.md "Limits") so a
huge file is refused before it is parsed, and kernel ranges (cpu quota floor,
weights, io rates) are checked with the control points' own limits
(:mod:`tagger.knobs`).  ``node=`` adds the checks against this node's CPUs and
devices (:mod:`tagger.rules.node`), which ``tagger rules check`` runs and
``tagger run`` leaves to the actuator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .limits import (MAX_DIRECTORY_BYTES, MAX_EXPRESSION, MAX_FILE_BYTES, MAX_MACROS,  # noqa: F401
                     MAX_POLICIES, MAX_RULES, Tally)
from .model import Problem, RuleSet, RulesLoadError
from .schema.actions import ActionsSchema
from .schema.crosscheck import cross_check
from .schema.macros import MacroDef, compile_macros, read_macros
from .schema.policies import read_policies
from .schema.rules import RuleDef, RuleSchema, read_rule
from .schema.selector import TagRef
from .yamlnode import NULL, Problems, Reader, Source, is_null

TOP_KEYS = ("macros", "rules", "policies")

# libyaml's composer, when PyYAML has it, is ~8x faster than the pure-Python one
# (the bulk of a check's cost) and keeps the same marks (line, column, index).
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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
    problems = Problems()
    directory = str(directory)
    return _load(directory, _read_directory(directory, problems), problems, node)


def load_text(text: str, name: str = "<rules>.yaml") -> RuleSet:
    """Load one rules document given as text (tests, `tagger rules test` inline rules)."""
    problems = Problems()
    files = [(name, text)] if _size_ok(problems, name, len(text.encode("utf-8", "surrogatepass"))) else []
    return _load(os.path.dirname(name) or ".", files, problems)


@dataclass
class Declared:
    """What the files declare, gathered file by file before anything is built."""
    macros: dict[str, MacroDef] = field(default_factory=dict)
    rules: list[RuleDef] = field(default_factory=list)
    rule_names: dict[str, str] = field(default_factory=dict)     # name -> where first defined
    policies: list[tuple[yaml.Node, Reader]] = field(default_factory=list)
    tag_refs: list[TagRef] = field(default_factory=list)         # selectors' tags, for warnings
    tally: Tally = field(default_factory=Tally)


def _load(directory: str, files: list[tuple[str, str]], problems: Problems, node=None) -> RuleSet:
    declared = Declared()
    for path, text in files:
        _read_file(Reader(problems, Source(path, text)), declared)
    macros = compile_macros(declared.macros)
    schema = RuleSchema(macros, ActionsSchema(node), declared.tag_refs)
    rules = []
    for d in declared.rules:
        rule = schema.build(d, len(rules))
        if rule is not None:
            rules.append((rule, d))
    policies = read_policies(declared.policies, declared.tag_refs)
    cross_check(rules, declared.tag_refs)
    if problems.has_errors:
        raise RulesLoadError(problems.found)
    warnings = sorted(problems.found, key=lambda p: p.sort_key)
    return RuleSet(directory, [f for f, _ in files], [r for r, _ in rules],
                   {name: d.src for name, d in macros.defs.items()}, policies, warnings)


# --- one file -----------------------------------------------------------------------

def _read_file(reader: Reader, declared: Declared) -> None:
    """Compose one file and hand each top-level section to its schema."""
    root = _compose(reader)
    if root is None:
        return
    top = reader.mapping(root, TOP_KEYS, "key")
    if "macros" in top:
        read_macros(reader, top["macros"][1], declared.macros, declared.tally)
    for key, limit, found in (("rules", MAX_RULES, declared.rules),
                              ("policies", MAX_POLICIES, declared.policies)):
        if key not in top or is_null(top[key][1]):
            continue
        node = top[key][1]
        if not isinstance(node, yaml.SequenceNode):
            reader.error(node, f'"{key}" must be a list of {key}')
            continue
        for i, item in enumerate(node.value):
            if not declared.tally.room(reader, item, len(found), limit, key):
                break
            if key == "policies":
                found.append((item, reader))
                continue
            d = read_rule(reader, item, i + 1, declared.rule_names)
            if d is not None:
                found.append(d)


def _compose(reader: Reader) -> yaml.MappingNode | None:
    """The file's root mapping node, or None (a problem recorded, or an empty file)."""
    text = reader.source.text
    try:
        try:
            root = yaml.compose(text, Loader=_COMPOSER)
        except yaml.YAMLError:
            # a broken file: the pure-Python composer's messages are the clearer ones
            root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        reader.problems.add_problem(Problem(reader.source.path, mark.line + 1 if mark else 0,
                                            mark.column + 1 if mark else 0,
                                            f"bad YAML: {err.problem or err.context}"))
        return None
    except yaml.YAMLError as err:
        reader.error(None, f"bad YAML: {err}")
        return None
    except RecursionError:
        reader.error(None, "bad YAML: nested too deeply")
        return None
    if root is None or (root.tag == NULL and isinstance(root, yaml.ScalarNode)):
        reader.warn(None, "empty file")
        return None
    if not isinstance(root, yaml.MappingNode):
        reader.error(root, "a rules file is a mapping with keys: " + ", ".join(TOP_KEYS))
        return None
    return root


# --- reading files, bounded -----------------------------------------------------------

def _read_directory(directory: str, problems: Problems) -> list[tuple[str, str]]:
    """(path, text) of each rule file that could be read within the size limits."""
    try:
        paths = rule_files(directory)
    except OSError as err:
        problems.add(directory, None, f"cannot read rules directory: {err.strerror or err}")
        raise RulesLoadError(problems.found) from None
    files = []
    total = 0
    for p in paths:
        try:
            text = _read_bounded(problems, p, MAX_DIRECTORY_BYTES - total)
        except (OSError, UnicodeDecodeError) as err:
            problems.add(str(p), None, f"cannot read file: {getattr(err, 'strerror', None) or err}")
            continue
        if text is not None:
            total += len(text.encode("utf-8", "surrogateescape"))
            files.append((str(p), text))
    if not paths:
        problems.add(directory, None, "no rule files (*.yaml, *.yml) in the directory", severity="warning")
    return files


def _read_bounded(problems: Problems, p: Path, room: int) -> str | None:
    """The file's text, or None (an error recorded) when it is over a size
    limit; never reads more than the limit, whatever the file grows to."""
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not _size_ok(problems, str(p), size, room):
            return None
        data = f.read(min(MAX_FILE_BYTES, max(room, 0)) + 1)
    if not _size_ok(problems, str(p), len(data), room):      # grew after the fstat
        return None
    return data.decode("utf-8")


def _size_ok(problems: Problems, path: str, size: int, room: int | None = None) -> bool:
    # The limits are read at each call (tests lower them).
    room = MAX_DIRECTORY_BYTES if room is None else room
    if size > MAX_FILE_BYTES:
        problems.add(path, None, f"file is {_kib(size)}, over the {_kib(MAX_FILE_BYTES)} limit for a "
                                 f"rule file (split it, or trim it)")
        return False
    if size > room:
        problems.add(path, None, f"the rule files add up to over the {_kib(MAX_DIRECTORY_BYTES)} limit "
                                 f"for a rules directory at this file")
        return False
    return True


def _kib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB" if size >= 1024 * 1024 else f"{size / 1024:.0f} KiB"
