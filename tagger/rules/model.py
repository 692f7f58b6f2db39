"""What a loaded rules directory is: rules, macros, policies and the problems found."""

from __future__ import annotations

from dataclasses import dataclass, field

from tagger.errors import RulesError

from .expr import Compiled
from .spec import ActionSet, LatencySloSpec, Selector


@dataclass(frozen=True)
class Problem:
    """One finding, printed as ``path:line:col: rule "name": message``.
    ``line``/``col`` are 1-based; 0 when the finding is about a whole file or directory."""
    path: str
    line: int
    col: int
    message: str
    subject: str = ""          # 'rule "x"', 'macro "y"', 'policy "z"', "rule #3" or ""
    severity: str = "error"    # "error" | "warning"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.col}: " if self.line else f"{self.path}: "
        subject = f"{self.subject}: " if self.subject else ""
        sev = "warning: " if self.severity == "warning" else ""
        return f"{where}{subject}{sev}{self.message}"

    @property
    def sort_key(self):
        return (self.path, self.line, self.col, self.message)


class RulesLoadError(RulesError):
    """A rules directory with errors.  ``problems`` holds every error and warning
    found in it (sorted by file, line, column); ``errors`` only the errors."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: p.sort_key)
        self.errors = [p for p in self.problems if p.severity == "error"]
        self.warnings = [p for p in self.problems if p.severity == "warning"]
        n = len(self.errors)
        head = f"{n} error{'s' if n != 1 else ''} in rules"
        super().__init__(head + ":\n" + "\n".join(str(p) for p in self.errors))


@dataclass
class Rule:
    """One rule as loaded.  ``when`` is None for a static rule (tags its matches at once)."""
    name: str
    index: int                          # load order: later rules win a tag key
    source: str                         # "path:line:col" of the rule
    match: Selector = field(default_factory=Selector)
    description: str = ""
    when: Compiled | None = None
    when_src: str | None = None
    clear_when: Compiled | None = None
    clear_when_src: str | None = None
    for_: float = 0.0
    keep_for: float = 0.0
    tags: dict[str, str] = field(default_factory=dict)
    actions: ActionSet | None = None
    enabled: bool = True

    @property
    def static(self) -> bool:
        return self.when is None

    @property
    def fingerprint(self) -> tuple:
        """Equal fingerprints = same behaviour; a reload keeps such a rule's timers."""
        return (self.name, self.match.cgroup, self.match.exclude, self.match.names,
                tuple(sorted(self.match.tags.items())), self.when_src, self.clear_when_src,
                self.for_, self.keep_for, tuple(sorted(self.tags.items())), self.actions)


@dataclass
class RuleSet:
    """A complete, valid rules directory.  ``rules`` are in load order (files by
    name, then position); disabled rules are kept but never evaluated."""
    directory: str
    files: list[str]
    rules: list[Rule]
    macros: dict[str, str]                      # name -> expression source
    policies: list[LatencySloSpec]
    warnings: list[Problem] = field(default_factory=list)

    @property
    def active(self) -> list[Rule]:
        return [r for r in self.rules if r.enabled]

    def rule(self, name: str) -> Rule:
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(name)

    @classmethod
    def empty(cls, directory: str = "") -> "RuleSet":
        return cls(directory, [], [], {}, [])
