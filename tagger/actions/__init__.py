"""Actions: control points tags drive (cpu quota, I/O limits, RDT masks), journaled and reversible.

``from tagger.actions import Actuator, AppliedAction, Safety``: see
:mod:`tagger.actions.actuator` for what a caller may rely on.
"""

from .actuator import DEFAULT_STATE_DIR, Actuator, AppliedAction, raise_on_termination
from .control import Safety
from .refusal import ActionRefused

__all__ = ["Actuator", "AppliedAction", "Safety", "DEFAULT_STATE_DIR", "raise_on_termination", "ActionRefused"]
