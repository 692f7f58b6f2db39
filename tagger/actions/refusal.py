"""The one exception an action raises when a value cannot be applied, and the
notices that report refusals once."""

from __future__ import annotations

import logging

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


class Notices:
    """What could not be done, each said once in the log: refusals by journal
    key (kept until the knob is applied again, for :meth:`Actuator.refusals`)
    and one-off warnings by a key of the caller's choosing."""

    def __init__(self, log: logging.Logger):
        self.log = log
        self.refused: dict[str, str] = {}
        self._warned: set[str] = set()

    def refuse(self, key: str, err: Exception | str) -> None:
        msg = str(err)
        if self.refused.get(key) != msg:
            self.log.warning("action refused: %s", msg)
        self.refused[key] = msg

    def warn_once(self, key: str, fmt: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log.warning(fmt, *args)
