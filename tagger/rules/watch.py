"""When to reload a rules directory: after it has been still for a settle time.

An editor or ``cp`` writes a rule file in pieces; a reload that reads it
half-way can find valid YAML holding only some of the rules and act on it.
So a change is loaded only once the directory's signature (name, inode, size
and mtime of every rule file, and the directory's own inode and mtime) has
stayed the same for ``settle`` seconds (the agent's ``rules_settle``), measured between the daemon's own
polls: :meth:`RulesWatcher.poll` is one ``scandir`` and never waits, so the
tick loop is not held up.  The safe way to change rules is still an atomic
rename (write ``.name.tmp``, then ``mv`` it to ``name.yaml``): the signature
changes once, complete.
"""

from __future__ import annotations

import os
import time


def rules_signature(directory: str):
    """Cheap change detector: (name, inode, size, mtime) of every rule file, and
    the directory's inode and mtime; None when the directory cannot be read."""
    try:
        with os.scandir(directory) as it:
            files = []
            for e in it:
                if e.name.endswith((".yaml", ".yml")):
                    st = e.stat()
                    files.append((e.name, e.inode(), st.st_size, st.st_mtime_ns))
        st = os.stat(directory)
        return (st.st_ino, st.st_mtime_ns, tuple(sorted(files)))
    except OSError:
        return None


class RulesWatcher:
    """Polled once per tick; says when a settled change should be loaded.

    ``poll()`` returns the signature to load (truthy) once the directory has
    differed from what was loaded and then kept one signature for ``settle``
    seconds on ``clock``; otherwise None.  After loading, the caller reports
    the signature it read before loading to :meth:`loaded`, and calls
    :meth:`unchanged_since` to learn whether the files moved under the load
    (then the result must be thrown away: it may be half-written)."""

    def __init__(self, directory: str, settle: float, clock=time.monotonic):
        if not settle >= 0:
            raise ValueError(f"rules settle time must be >= 0, not {settle}")
        self.directory = directory
        self.settle = float(settle)
        self.clock = clock
        self.current = rules_signature(directory)   # what is in force
        self._pending = self.current                # the last signature seen
        self._pending_since = clock()
        self.polls = 0
        self.deferred = 0                            # polls that saw an unsettled change

    def poll(self):
        """One look at the directory; the signature to load now, or None."""
        self.polls += 1
        now = self.clock()
        sig = rules_signature(self.directory)
        if sig != self._pending:
            self._pending, self._pending_since = sig, now
        if sig == self.current:
            return None
        if now - self._pending_since < self.settle:
            self.deferred += 1
            return None
        return sig if sig is not None else ("unreadable",)

    def snapshot(self):
        """The signature now (taken just before a load)."""
        return rules_signature(self.directory)

    def unchanged_since(self, sig) -> bool:
        """Whether the directory still has signature ``sig`` (checked after a load)."""
        return rules_signature(self.directory) == sig

    def loaded(self, sig) -> None:
        """``sig`` is what is in force now (or was refused: either way, not new)."""
        self.current = sig
