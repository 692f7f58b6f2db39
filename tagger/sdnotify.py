"""sd_notify(3) without libsystemd: READY, WATCHDOG, STATUS, STOPPING.

systemd passes ``$NOTIFY_SOCKET`` (a datagram socket path, ``@`` for the
abstract namespace) to a ``Type=notify`` service, and ``$WATCHDOG_USEC`` /
``$WATCHDOG_PID`` when ``WatchdogSec=`` is set.  Outside systemd every call is
a no-op, so the daemon can call these unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env=None):
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval = _watchdog_interval(env)
        self._sock = None
        if self.address:
            if self.address.startswith("@"):
                self.address = "\0" + self.address[1:]      # abstract namespace (sd_notify(3))
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            except OSError as err:
                log.warning("sd_notify: cannot make a socket: %s", err)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send ``"KEY=value"`` fields in one datagram; False (and a debug log) if it fails."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as err:
            log.debug("sd_notify %s: %s", fields, err)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec, as sd_watchdog_enabled(3) advises)."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None                    # meant for another process
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 / 2 if value > 0 else None
