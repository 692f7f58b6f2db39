"""The policies' recent step outcomes in the state directory, for ``tagger
actions`` (which reads the state directory, with or without a running agent).

Informational, unlike the actions journal: nothing is restored from it, so it
is replaced atomically (write, rename) but not fsynced, and a damaged file
reads as empty.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

STEPS_NAME = "policy_steps.json"
#: Records kept in the file, over all policies.
KEEP = 50


def write_steps(state_dir, records: list[dict]) -> None:
    """Replace the file with the latest ``KEEP`` records (oldest first; ``t``
    in epoch seconds, as everything that leaves the agent: tagger.clock)."""
    path = Path(state_dir) / STEPS_NAME
    tmp = path.with_name(f".{STEPS_NAME}.{os.getpid()}")
    plain = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
             for r in records[-KEEP:]]
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "steps": plain}, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_steps(state_dir) -> list[dict]:
    """The records, oldest first; [] when there is no file or it cannot be read as one."""
    try:
        doc = json.loads((Path(state_dir) / STEPS_NAME).read_text())
    except FileNotFoundError:
        return []
    except (ValueError, UnicodeDecodeError):
        return []
    steps = doc.get("steps") if isinstance(doc, dict) else None
    return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []
