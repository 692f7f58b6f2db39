"""The socket API's client end: ``tagger tags``, ``tagger top --connect``,
``tagger explain`` and scripts talk to a running agent through
:class:`ApiClient` (frames and plain forms: :mod:`tagger.publish.wire`;
the server: :mod:`tagger.publish.socket`; requests: docs/api.md)."""

from __future__ import annotations

import socket
import time

from tagger.errors import TaggerError
from tagger.publish.wire import API_VERSION, DEFAULT_SOCKET, FrameTooLarge, decode_body, encode_frame, take_frame

__all__ = ["DEFAULT_SOCKET", "MAX_REPLY", "ApiClient", "ApiError", "wait_for_socket"]

MAX_REPLY = 256 * 1024 * 1024         # refuse absurd frames


class ApiError(TaggerError):
    """An error reply from the server (``code`` is machine-readable), or a broken connection."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


class ApiClient:
    """A blocking client: ``with ApiClient(path) as c: c.request("tags")``."""

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float | None = 5.0, api: int = API_VERSION):
        self.path = path
        self._next_id = 0
        self._buf = bytearray()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            _connect(self.sock, path, timeout)
        except FileNotFoundError:
            self.sock.close()
            raise ApiError("no-server", f"{path}: no such socket (is `tagger run` running?)") from None
        except PermissionError:
            self.sock.close()
            raise ApiError("permission", f"{path}: permission denied (the socket is root's; use sudo)") from None
        except OSError as err:
            self.sock.close()
            raise ApiError("no-server", f"{path}: {err.strerror}") from None
        try:
            greeting = self._recv()
            if greeting.get("ok") is False:
                raise ApiError(greeting["error"]["code"], greeting["error"]["message"])
            self.server = greeting
            self.hello = self.request("hello", api=api)
        except BaseException:
            self.sock.close()
            raise

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, op: str, **args):
        """Send one request and return its ``result``; an error reply raises ApiError."""
        self._next_id += 1
        req_id = self._next_id
        self.sock.sendall(encode_frame({"id": req_id, "op": op, **args}))
        while True:
            reply = self._recv()
            if "event" in reply:
                continue           # a push racing a request on a subscribed connection
            if reply.get("ok"):
                return reply.get("result")
            err = reply.get("error") or {}
            raise ApiError(err.get("code", "error"), err.get("message", "error"))

    def subscribe(self, topics=("tags",), cgroup=None):
        """Subscribe; returns the reply (with the current tags).  Then read
        pushes with :meth:`events`."""
        args = {"topics": list(topics)}
        if cgroup:
            args["cgroup"] = cgroup
        return self.request("subscribe", **args)

    def events(self):
        """Iterate (kind, data) pushes: ("tag", TagEvent map) or ("snapshot", map)."""
        while True:
            msg = self._recv()
            if "event" in msg:
                yield msg["event"], msg.get("data")

    def _recv(self) -> dict:
        while True:
            try:
                body = take_frame(self._buf, MAX_REPLY)
            except FrameTooLarge as err:
                raise ApiError("protocol", f"reply of {err.size} bytes is not believable") from None
            if body is not None:
                msg = decode_body(body, strict_map_key=False)
                if not isinstance(msg, dict):
                    raise ApiError("protocol", "server sent a non-map frame")
                return msg
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ApiError("closed", "the server closed the connection")
            self._buf += chunk


def _connect(sock: socket.socket, path: str, timeout: float | None):
    """connect(2) that waits out a full listen backlog: with a timeout a Unix
    socket fails at once with EAGAIN there (a crowd connecting at the same
    moment), where TCP would wait."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def wait_for_socket(path: str, timeout: float = 10.0) -> bool:
    """True once a server answers on ``path`` (for scripts and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with ApiClient(path, timeout=1.0):
                return True
        except (ApiError, OSError):
            time.sleep(0.05)
    return False
