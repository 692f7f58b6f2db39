"""The agent's log lines: stderr, or under systemd the journal's own form."""

from __future__ import annotations

import logging
import os


def setup_logging(level: int = logging.INFO):
    """stderr logging; under systemd (JOURNAL_STREAM set) with sd-daemon(3)
    priority prefixes and no timestamps, which journald adds itself."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


class JournalFormatter(logging.Formatter):
    """``<priority>`` on every line (sd-daemon(3)), so journald files each at its level."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}

    def format(self, record):
        prio = self.PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        # One prefix per line, so a traceback keeps its level in the journal.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())
