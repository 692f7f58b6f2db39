"""The socket API's connections: one thread running a ``selectors`` loop over
non-blocking sockets, so the tick loop never waits for a client.

What a crowd or a bad client can take is bounded here (issue 13: 64 idle
connections locked every client out): only allowed peers (SO_PEERCRED) are
kept; a connection must finish the handshake within ``handshake_timeout``
and, unless subscribed, send a request at least every ``idle_timeout``; one
peer process holds at most ``max_per_peer`` connections; at a limit the
newcomer displaces the idlest connection that owes nothing instead of being
refused; a client whose unsent output passes ``max_backlog`` is dropped; a
request over ``max_request`` bytes gets an error reply and the connection is
closed.  None of it stops the server.  What a request means is the
:class:`~tagger.publish.socket.ApiServer`'s business (``on_request``).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time

from tagger import __version__
from tagger.errors import ConfigError
from tagger.publish.wire import API_VERSIONS, FrameTooLarge, encode_frame, take_frame

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 128
_UCRED = struct.Struct("3i")          # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


def error_reply(req_id, code, message) -> dict:
    return {"id": req_id, "ok": False, "error": {"code": code, "message": message}}


class Connection:
    __slots__ = ("sock", "inbuf", "out", "out_bytes", "hello", "topics", "cgroup",
                 "closing", "uid", "pid", "last_active")

    def __init__(self, sock, uid, pid, now):
        self.sock = sock
        self.inbuf = bytearray()
        self.out: collections.deque[memoryview] = collections.deque()
        self.out_bytes = 0
        self.hello = False
        self.topics: frozenset = frozenset()
        self.cgroup = None
        self.closing = False           # close once the output is flushed
        self.uid = uid
        self.pid = pid
        self.last_active = now         # accept, then each complete request (monotonic)

    def idle(self) -> bool:
        """Owes nothing and is owed nothing: safe to close for a newcomer."""
        return not self.topics and not self.out and not self.inbuf


class Connections:
    """Accept, read frames, write with a backlog limit, expire; calls
    ``on_request(conn, body)`` for each whole request and ``on_wake()`` when
    :meth:`wake` was called (from any thread)."""

    def __init__(self, path: str, *, on_request, on_wake, allowed_uids, max_request: int, max_backlog: int,
                 max_clients: int, max_per_peer: int, handshake_timeout: float, idle_timeout: float):
        self.path = path
        self.on_request = on_request
        self.on_wake = on_wake
        self.allowed_uids = allowed_uids
        self.max_request = max_request
        self.max_backlog = max_backlog
        self.max_clients = max_clients
        self.max_per_peer = max_per_peer
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self._rfd = self._wfd = None
        self._sel = None
        self._listener = None
        self._conns: dict[int, Connection] = {}
        self._thread = None
        self._stop = False
        self.stats = {"clients": 0, "dropped": 0, "errors": 0, "refused": 0, "requests": 0,
                      "timed_out": 0, "displaced": 0}

    # --- lifecycle ----------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self):
        self._listener = _bind(self.path)
        self._listener.setblocking(False)
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._rfd, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name="tagger-api", daemon=True)
        self._thread.start()

    def close(self):
        """Stop the thread, close every connection and remove the socket file."""
        if self._thread is None:
            return
        self._stop = True
        self.wake()
        self._thread.join(timeout=5)
        self._thread = None
        for conn in list(self._conns.values()):
            self.drop(conn)
        self._sel.close()
        self._listener.close()
        os.close(self._rfd)
        os.close(self._wfd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def wake(self):
        try:
            os.write(self._wfd, b"x")
        except (BlockingIOError, TypeError, OSError):
            pass      # pipe full: a wake-up is already pending

    def subscribers(self) -> list[Connection]:
        return [c for c in self._conns.values() if c.topics]

    # --- the thread -------------------------------------------------------------
    def _serve(self):
        while not self._stop:
            try:
                events = self._sel.select(timeout=self._next_deadline())
            except InterruptedError:
                continue
            for key, mask in events:
                what = key.data
                try:
                    if what == "listen":
                        self._accept()
                    elif what == "wake":
                        self._drain_wake()
                        self.on_wake()
                    else:
                        conn = what
                        if mask & selectors.EVENT_READ and conn.sock.fileno() >= 0:
                            self._read(conn)
                        if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                            self._flush(conn)
                except Exception:       # one client's trouble never ends the server
                    log.exception("socket API: unexpected error (serving on)")
                    if isinstance(what, Connection):
                        self.drop(what)
            self._expire()

    def _deadline(self, conn: Connection) -> float | None:
        if not conn.hello:
            return conn.last_active + self.handshake_timeout
        if conn.topics or conn.out or conn.closing:
            return None                # a watcher may hear nothing for hours; a reply in
                                       # flight is bounded by the backlog limit instead
        return conn.last_active + self.idle_timeout

    def _next_deadline(self) -> float:
        """Seconds select() may wait: at most 1 s, less if a connection expires sooner."""
        deadlines = [d for d in map(self._deadline, self._conns.values()) if d is not None]
        if not deadlines:
            return 1.0
        return min(1.0, max(0.0, min(deadlines) - time.monotonic()))

    def _expire(self):
        now = time.monotonic()
        for conn in list(self._conns.values()):
            deadline = self._deadline(conn)
            if deadline is None or now < deadline or conn.sock.fileno() < 0:
                continue
            self.stats["timed_out"] += 1
            what = "no hello" if not conn.hello else "idle"
            log.info("socket API: closed pid %d's connection (%s for %gs)", conn.pid, what,
                     self.handshake_timeout if not conn.hello else self.idle_timeout)
            _try_send(conn.sock, encode_frame(error_reply(None, "timeout", f"{what} for too long")))
            self.drop(conn)

    def _make_room(self, pid: int) -> bool:
        """Close the idlest idle connection if a limit is reached; False if none can go."""
        mine = [c for c in self._conns.values() if c.pid == pid]
        if len(mine) >= self.max_per_peer:
            pool = mine                # a process's crowd displaces only itself
        elif len(self._conns) >= self.max_clients:
            pool = list(self._conns.values())
        else:
            return True
        idle = [c for c in pool if c.idle()]
        if not idle:
            return False
        victim = min(idle, key=lambda c: (c.hello, c.last_active))
        self.stats["displaced"] += 1
        log.info("socket API: closed pid %d's idle connection to make room for pid %d", victim.pid, pid)
        _try_send(victim.sock, encode_frame(error_reply(None, "busy", "closed to make room for a new client")))
        self.drop(victim)
        return True

    def _drain_wake(self):
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self):
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("socket API: cannot accept: %s", err)
                    return
                raise
            pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                           _UCRED.size))
            sock.setblocking(False)
            if uid not in self.allowed_uids:
                self.stats["refused"] += 1
                log.warning("socket API: refused pid %d uid %d (only root may connect)", pid, uid)
                _try_send(sock, encode_frame(error_reply(None, "forbidden", "only root may use the tagger socket")))
                sock.close()
                continue
            if not self._make_room(pid):
                self.stats["refused"] += 1
                _try_send(sock, encode_frame(error_reply(
                    None, "busy", f"{self.max_clients} clients ({self.max_per_peer} per process) all busy")))
                sock.close()
                continue
            conn = Connection(sock, uid, pid, time.monotonic())
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self.stats["clients"] = len(self._conns)
            self.send(conn, {"tagger": __version__, "api": list(API_VERSIONS)})

    def _read(self, conn: Connection):
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop(conn)
            return
        if not data:
            self.drop(conn)
            return
        if conn.closing:
            return                       # discarding input of a connection we are closing
        conn.inbuf += data
        while not conn.closing:
            try:
                body = take_frame(conn.inbuf, self.max_request)
            except FrameTooLarge as err:
                # The stream cannot be trusted past a bogus length: reply, then close.
                self.reply_error(conn, None, "too-large", f"request of {err.size} bytes exceeds {err.limit}")
                conn.closing = True
                conn.inbuf.clear()
                self._after_write(conn)
                return
            if body is None:
                return
            self.stats["requests"] += 1
            conn.last_active = time.monotonic()
            self.on_request(conn, body)
            if conn.sock.fileno() < 0:
                return

    # --- output -----------------------------------------------------------------
    def reply_error(self, conn, req_id, code, message):
        self.stats["errors"] += 1
        self.send(conn, error_reply(req_id, code, message))

    def send(self, conn, obj):
        self.send_frame(conn, encode_frame(obj))

    def send_frame(self, conn: Connection, frame: bytes):
        if conn.sock.fileno() < 0:
            return
        if conn.out_bytes + len(frame) > self.max_backlog:
            self.stats["dropped"] += 1
            log.warning("socket API: dropped pid %d: it reads too slowly (%d bytes unsent)",
                        conn.pid, conn.out_bytes)
            self.drop(conn)
            return
        conn.out.append(memoryview(frame))
        conn.out_bytes += len(frame)
        self._flush(conn)

    def _flush(self, conn: Connection):
        while conn.out:
            buf = conn.out[0]
            try:
                n = conn.sock.send(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.drop(conn)
                return
            conn.out_bytes -= n
            if n == len(buf):
                conn.out.popleft()
            else:
                conn.out[0] = buf[n:]
                break
        self._after_write(conn)

    def _after_write(self, conn: Connection):
        if conn.sock.fileno() < 0:
            return
        if not conn.out and conn.closing:
            self.drop(conn)
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        key = self._sel.get_key(conn.sock)
        if key.events != want:
            self._sel.modify(conn.sock, want, conn)

    def drop(self, conn: Connection):
        fd = conn.sock.fileno()
        if fd >= 0:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            self._conns.pop(fd, None)
            conn.sock.close()
        conn.out.clear()
        conn.out_bytes = 0
        self.stats["clients"] = len(self._conns)


def _try_send(sock, data):
    try:
        sock.send(data)
    except OSError:
        pass


def _bind(path: str) -> socket.socket:
    """Bind a Unix socket at ``path`` with mode 0600 from the start (no window
    where others could connect); a stale socket file is replaced, a live one or
    a non-socket file is refused."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{path} exists and is not a socket; remove it or pass --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(path)
        except OSError:
            os.unlink(path)             # stale, from a crash
        else:
            raise ConfigError(f"{path}: another tagger is serving there (stop it or pass --socket)")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(LISTEN_BACKLOG)
    return sock
