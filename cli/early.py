"""SIGTERM/SIGINT for ``tagger run`` from its first moment: a stop that comes
while tagger is still importing or starting is kept and handed to the daemon,
which ends start-up and reverts what the journal holds (issue 13: a stop in
the first ~0.4 s used to exit 143 and leave a crashed run's knobs changed).

Installed when the package ``tagger.cli`` is imported for ``tagger run``
(before click and the rest load); other commands keep Python's defaults.
"""

from __future__ import annotations

import signal

_installed: EarlyStop | None = None


class EarlyStop:
    """Remembers SIGTERM/SIGINT until a daemon is handed over, then stops it."""

    def __init__(self):
        self.signals: list[int] = []
        self.daemon = None
        self.previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _on_signal(self, signum, frame):
        self.signals.append(signum)
        if self.daemon is not None:
            self.daemon.stop()

    def hand_to(self, daemon) -> None:
        """``daemon.stop()`` now if a stop came already, and at the next one
        until the daemon's own handlers replace these (first thing in its run())."""
        self.daemon = daemon
        if self.signals:
            daemon.stop()


    def release(self) -> None:
        """The handlers there were before (the daemon has stopped and reverted)."""
        global _installed
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        _installed = None


def install() -> EarlyStop:
    """The handlers, installed once."""
    global _installed
    if _installed is None:
        _installed = EarlyStop()
    return _installed


def install_for(argv: list[str]) -> None:
    """install() if ``argv`` is a ``tagger [-v...] run ...`` command line."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    if words[:1] == ["run"]:
        install()
