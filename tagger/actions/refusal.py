"""The one exception an action raises when a value cannot be applied."""

from __future__ import annotations

from tagger.errors import TaggerError


class ActionRefused(TaggerError, ValueError):
    """A value the kernel would refuse (or did refuse), with the limit that refused it.

    ``limit`` names the rule in the field's words ("cpu.cfs_quota_us >= 1ms",
    "out of CLOSIDs", "Mask out of range"); ``str()`` is the whole message.
    """

    def __init__(self, message: str, limit: str = "", path: str = ""):
        super().__init__(message)
        self.limit = limit
        self.path = path
