"""What ends or reloads the agent: SIGTERM/SIGINT, SIGHUP, or a call from
another thread; and the wait between ticks that any of them cuts short."""

from __future__ import annotations

import logging
import os
import select
import signal

log = logging.getLogger(__name__)


class Signals:
    """``stop`` and ``reload`` flags, set by the handlers or by :meth:`request_stop`
    and :meth:`request_reload` (thread- and signal-safe).  Inside ``with``: the
    handlers are installed (from the main thread only) and a self-pipe makes
    :meth:`wait` return at once when a flag is set."""

    def __init__(self):
        self.stop = False
        self.reload = False
        self._r = self._w = None
        self._old: dict = {}
        self._old_fd = None

    def __enter__(self):
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        except ValueError:        # not the main thread (tests driving run() from a thread)
            return self
        for sig, handler in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop),
                             (signal.SIGHUP, self._on_hup)):
            self._old[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc):
        if self._old_fd is not None:
            for sig, handler in self._old.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(self._old_fd)
        r, w, self._r, self._w = self._r, self._w, None, None
        os.close(r)
        os.close(w)

    def request_stop(self):
        self.stop = True
        self._wake()

    def request_reload(self):
        self.reload = True
        self._wake()

    def wait(self, seconds: float):
        """Sleep up to ``seconds``; a signal or a request ends it at once."""
        try:
            ready, _, _ = select.select([self._r], [], [], max(seconds, 0))
        except InterruptedError:
            return
        if ready:
            try:
                while os.read(self._r, 512):
                    pass
            except BlockingIOError:
                pass

    def _on_stop(self, signum, frame):
        if self.stop:            # a second signal while reverting: say we heard it
            log.warning("%s again: still reverting actions, please wait", signal.Signals(signum).name)
        self.stop = True

    def _on_hup(self, signum, frame):
        self.reload = True

    def _wake(self):
        if self._w is not None:
            try:
                os.write(self._w, b"\0")
            except OSError:
                pass
