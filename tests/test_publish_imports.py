"""The publish room imports nothing above it (issue 14): not the agent, the client
or the CLI, and not the actuator either (Prometheus reads knob text through
tagger.knobs)."""

import json
import pkgutil
import subprocess
import sys

import tagger.publish


def test_publish_loads_nothing_above_it():
    modules = [f"tagger.publish.{m.name}" for m in pkgutil.iter_modules(tagger.publish.__path__)]
    assert {"tagger.publish.report", "tagger.publish.wire", "tagger.publish.socket",
            "tagger.publish.prometheus", "tagger.publish.trace"} <= set(modules)
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules) +
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('tagger.'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    rooms = {m.split(".")[1] for m in loaded}
    assert not rooms & {"agent", "client", "cli", "doctor", "actions", "policies", "rules", "telemetry"}, rooms


#: What the publish room may import: the base (rank 0), the tag store and itself.
ALLOWED = {"errors", "units", "clock", "names", "kernelfs", "knobs", "snapshot", "cgroupglob", "slots",
           "tags", "publish"}


def test_every_import_statement_points_down():
    """Function-level imports too (the knob parsers were imported from tagger.actions in one)."""
    import ast
    import pathlib
    bad = []
    for path in sorted(pathlib.Path(tagger.publish.__path__[0]).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] if node.module != "tagger" else [f"tagger.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "tagger" and len(parts) > 1 and parts[1] not in ALLOWED | {"__version__"}:
                    bad.append(f"{path.name}:{node.lineno}: {name}")
    assert not bad, bad
