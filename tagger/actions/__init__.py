"""Actions: control points tags drive (cpu quota, I/O limits, RDT masks), journaled and reversible.

``from tagger.actions import Actuator, AppliedAction, Safety`` — loaded on first
use, so importing the rules (which need only :mod:`tagger.actions.spec`) stays cheap.
"""

_LAZY = {
    "Actuator": "actuator", "AppliedAction": "actuator", "Protection": "actuator",
    "DEFAULT_STATE_DIR": "actuator", "raise_on_termination": "actuator",
    "Safety": "control", "ActionRefused": "refusal",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
