"""The rules room imports only downward (issue 14): the rules files' types live
in tagger.rules.spec, and the actions and policies import them from there, not
the other way round."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tagger
from tests.test_architecture import RANKS

RULES = Path(tagger.__file__).parent / "rules"
#: What the rules may use: the rooms below them (tests/test_architecture.py's
#: ranks, the one list of rooms), never telemetry beside them.
ALLOWED = tuple(f"tagger.{room}" for room, rank in RANKS.items() if rank < RANKS["rules"]) + ("tagger.rules",)


def _imports(path: Path):
    """(line, module) of every import in a module, function-level ones too,
    relative ones resolved against its package."""
    package = "tagger." + ".".join(path.relative_to(RULES.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            yield node.lineno, module
            if module == "tagger":       # from tagger import knobs
                for alias in node.names:
                    yield node.lineno, f"tagger.{alias.name}"


def test_the_rules_import_nothing_above_them():
    upward = [f"{p.relative_to(RULES.parent.parent)}:{line}: {module}"
              for p in sorted(RULES.rglob("*.py")) for line, module in _imports(p)
              if (module.startswith("tagger.") or module.startswith("cli"))
              and not module.startswith(ALLOWED)]
    assert upward == []


def test_loading_rules_loads_no_room_above():
    # What a fresh interpreter has loaded after the whole rules room.
    code = ("import sys, pkgutil, importlib, tagger.rules\n"
            "for m in pkgutil.walk_packages(tagger.rules.__path__, 'tagger.rules.'):\n"
            "    importlib.import_module(m.name)\n"
            "print('\\n'.join(sorted(m for m in sys.modules if m.startswith(('tagger', 'cli')))))\n")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True).stdout.split()
    assert "tagger.rules.loader" in loaded and "tagger.rules.schema.policies" in loaded
    above = [m for m in loaded if m not in ("tagger",) and not m.startswith(ALLOWED)]
    assert above == []
