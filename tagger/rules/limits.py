"""How much a rules directory may hold (docs/rules.md, "Limits").

Far above any real rule set (the packaged one is 4 KiB, 12 rules, 76-character
expressions), low enough that checking the worst case stays in seconds and tens
of MB (benchmarks/bench_rules_limits.py); the pure-Python YAML composer is the
cost, so the file size is refused before parsing.
"""

MAX_FILE_BYTES = 256 * 1024         # one rule file
MAX_DIRECTORY_BYTES = 1024 * 1024   # all rule files together
MAX_RULES = 1000                    # rules in the directory
MAX_MACROS = 1000                   # macros in the directory
MAX_POLICIES = 100                  # policies in the directory
MAX_EXPRESSION = 1024               # characters in one expression (when, clear_when, a macro, slo)


class Tally:
    """Items counted against a limit across the directory: one error, at the
    first item over, per kind of item."""

    def __init__(self):
        self._reported: set[str] = set()

    def room(self, reader, node, have: int, limit: int, what: str) -> bool:
        """False (one error, at ``node``) once ``have`` reached ``limit``."""
        if have < limit:
            return True
        if what not in self._reported:
            self._reported.add(what)
            reader.about("").error(node, f"more than {limit} {what} in the rules directory (the limit); "
                                         f"the rest are not read")
        return False
