"""Rules: parse, validate, compile and evaluate the rules directory.

``load_directory(path)`` -> :class:`RuleSet` (or :class:`RulesLoadError` with
every problem), ``Engine(ruleset, store).evaluate(snapshot)`` -> :class:`TickResult`.
"""

from .engine import Engine, TickResult
from .loader import load_directory, load_text, rule_files
from .model import Problem, Rule, RuleSet, RulesLoadError

__all__ = ["Engine", "Problem", "Rule", "RuleSet", "RulesLoadError", "TickResult",
           "load_directory", "load_text", "rule_files"]
