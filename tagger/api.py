"""The socket API: a root-only Unix socket speaking length-prefixed msgpack.

Wire format, handshake and every request are documented in ``docs/api.md``;
this module is the reference.  One server thread runs a ``selectors`` loop
over non-blocking sockets, so the tick loop never waits for a client: the
daemon calls :meth:`ApiServer.publish` once a tick, which only appends to a
bounded deque and wakes the server thread through a pipe.  A client that reads
too slowly is dropped once its unsent output passes a limit; a bad or
oversized request gets an error reply; neither stops the server.

A crowd of idle connections cannot lock clients out (issue 13: 64 of them
did): a connection must finish the handshake within ``handshake_timeout`` and,
unless subscribed, send a request at least every ``idle_timeout``; one peer
process holds at most ``max_per_peer`` connections; and when a limit is
reached the newcomer displaces the idlest connection that owes nothing (not
yet said hello first) instead of being refused.

:class:`ApiClient` is the other end, used by ``tagger tags`` and
``tagger top --connect``.
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

import msgpack

from tagger import __version__
from tagger.cgroupglob import GlobError, GlobSet
from tagger.errors import ConfigError, TaggerError
from tagger.names import parse
from tagger.publish import current_tags_plain, event_plain, path_matches, snapshot_to_plain, to_plain

log = logging.getLogger(__name__)

#: Versions of the wire protocol this server speaks (docs/api.md "Handshake").
API_VERSIONS = (1,)
API_VERSION = API_VERSIONS[-1]
DEFAULT_SOCKET = "/run/tagger/tagger.sock"

HEADER = struct.Struct(">I")          # big-endian u32 body length, then a msgpack map
MAX_REQUEST = 64 * 1024               # a request is small; anything bigger is refused
MAX_REPLY = 256 * 1024 * 1024         # client side: refuse absurd frames
MAX_BACKLOG = 8 * 1024 * 1024         # unsent bytes a client may owe before it is dropped
MAX_CLIENTS = 64
MAX_PER_PEER = 8                      # connections one peer process (SO_PEERCRED pid) may hold
HANDSHAKE_TIMEOUT = 5.0               # seconds from connect to a successful hello
IDLE_TIMEOUT = 300.0                  # seconds a non-subscribed connection may go without a request
LISTEN_BACKLOG = 128
TOPICS = ("tags", "snapshots")
_UCRED = struct.Struct("3i")          # struct ucred {pid_t pid; uid_t uid; gid_t gid;}

OPS = ("hello", "snapshot", "tags", "history", "actions", "rules", "health", "subscribe")


class ApiError(TaggerError):
    """An error reply from the server (``code`` is machine-readable), or a broken connection."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


def encode_frame(obj) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def _error(req_id, code, message) -> dict:
    return {"id": req_id, "ok": False, "error": {"code": code, "message": message}}


class _Conn:
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


class ApiServer:
    """Serve the daemon's latest tick on a Unix socket from a background thread.

    ``allowed_uids``: peers (SO_PEERCRED) that may talk; default root and the
    server's own user.  The socket file is created mode 0600 and owned by the
    server's user (root in production)."""

    def __init__(self, path: str = DEFAULT_SOCKET, *, allowed_uids=None, history: int = 10000,
                 max_request: int = MAX_REQUEST, max_backlog: int = MAX_BACKLOG,
                 max_clients: int = MAX_CLIENTS, max_per_peer: int = MAX_PER_PEER,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT):
        self.path = str(path)
        self.allowed_uids = frozenset(allowed_uids if allowed_uids is not None else {0, os.geteuid()})
        self.max_request = max_request
        self.max_backlog = max_backlog
        self.max_clients = max_clients
        self.max_per_peer = max_per_peer
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        # state owned by the server thread (applied from _pending in order)
        self._snapshot = None
        self._tags: dict = {}
        self._actions: list = []
        self._health: dict = {}
        self._rules: dict = {}
        self._history: collections.deque = collections.deque(maxlen=history)
        # tick loop -> server thread
        self._pending: collections.deque = collections.deque(maxlen=256)
        self._rfd = self._wfd = None
        self._sel = None
        self._listener = None
        self._conns: dict[int, _Conn] = {}
        self._thread = None
        self._stop = False
        self.stats = {"clients": 0, "dropped": 0, "errors": 0, "refused": 0, "requests": 0,
                      "timed_out": 0, "displaced": 0}

    # --- lifecycle ----------------------------------------------------------
    def start(self) -> "ApiServer":
        self._listener = _bind(self.path)
        self._listener.setblocking(False)
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._rfd, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name="tagger-api", daemon=True)
        self._thread.start()
        log.info("socket API on %s (mode 0600)", self.path)
        return self

    def close(self):
        """Stop the thread, close every connection and remove the socket file."""
        if self._thread is None:
            return
        self._stop = True
        self._wake()
        self._thread.join(timeout=5)
        self._thread = None
        for conn in list(self._conns.values()):
            self._drop(conn, None)
        self._sel.close()
        self._listener.close()
        os.close(self._rfd)
        os.close(self._wfd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self.start() if self._thread is None else self

    def __exit__(self, *exc):
        self.close()

    # --- called from the tick loop (never blocks) ------------------------------
    def publish(self, snapshot=None, tags=None, events=(), actions=None, health=None):
        """Hand one tick to the server thread.  ``tags``: {path: {key: Tag}};
        ``events``: TagEvents of this tick; ``actions``: AppliedActions.  The
        objects must not be changed afterwards."""
        self._pending.append(("tick", snapshot, tags, list(events), actions, health))
        self._wake()

    def set_rules(self, summary: dict):
        """The rules in force: {"dir", "loaded_at", "rules": [...], "policies": [...], "errors": [...]}."""
        self._pending.append(("rules", summary))
        self._wake()

    def _wake(self):
        try:
            os.write(self._wfd, b"x")
        except (BlockingIOError, TypeError, OSError):
            pass      # pipe full: a wake-up is already pending

    # --- server thread ---------------------------------------------------------
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
                        self._apply_pending()
                    else:
                        conn = what
                        if mask & selectors.EVENT_READ and conn.sock.fileno() >= 0:
                            self._read(conn)
                        if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                            self._flush(conn)
                except Exception:       # one client's trouble never ends the server
                    log.exception("socket API: unexpected error (serving on)")
                    if isinstance(what, _Conn):
                        self._drop(what, None)
            self._expire()

    def _deadline(self, conn: _Conn) -> float | None:
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
            _try_send(conn.sock, encode_frame(_error(None, "timeout", f"{what} for too long")))
            self._drop(conn, None)

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
        _try_send(victim.sock, encode_frame(_error(None, "busy", "closed to make room for a new client")))
        self._drop(victim, None)
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
                _try_send(sock, encode_frame(_error(None, "forbidden", "only root may use the tagger socket")))
                sock.close()
                continue
            if not self._make_room(pid):
                self.stats["refused"] += 1
                _try_send(sock, encode_frame(_error(
                    None, "busy", f"{self.max_clients} clients ({self.max_per_peer} per process) all busy")))
                sock.close()
                continue
            conn = _Conn(sock, uid, pid, time.monotonic())
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self.stats["clients"] = len(self._conns)
            self._send(conn, {"tagger": __version__, "api": list(API_VERSIONS)})

    def _read(self, conn: _Conn):
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn, None)
            return
        if not data:
            self._drop(conn, None)
            return
        if conn.closing:
            return                       # discarding input of a connection we are closing
        conn.inbuf += data
        while len(conn.inbuf) >= HEADER.size and not conn.closing:
            (n,) = HEADER.unpack_from(conn.inbuf)
            if n > self.max_request:
                # The stream cannot be trusted past a bogus length: reply, then close.
                self._reply_error(conn, None, "too-large",
                                  f"request of {n} bytes exceeds {self.max_request}")
                conn.closing = True
                conn.inbuf.clear()
                self._after_write(conn)
                return
            if len(conn.inbuf) < HEADER.size + n:
                return
            body = bytes(conn.inbuf[HEADER.size:HEADER.size + n])
            del conn.inbuf[:HEADER.size + n]
            self._handle(conn, body)
            if conn.sock.fileno() < 0:
                return

    def _handle(self, conn: _Conn, body: bytes):
        self.stats["requests"] += 1
        conn.last_active = time.monotonic()
        try:
            req = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception as err:
            self._reply_error(conn, None, "bad-request", f"not msgpack: {type(err).__name__}")
            return
        if not isinstance(req, dict):
            self._reply_error(conn, None, "bad-request", "a request is a map with an 'op' key")
            return
        req_id = req.get("id")
        if not isinstance(req_id, (int, str, type(None))):
            req_id = None
        op = req.get("op")
        if op not in OPS:
            self._reply_error(conn, req_id, "unknown-op",
                              f"unknown op {op!r}; known: {', '.join(OPS)}")
            return
        if not conn.hello and op != "hello":
            self._reply_error(conn, req_id, "handshake", "send {'op': 'hello', 'api': 1} first")
            return
        try:
            result = getattr(self, f"_op_{op}")(conn, req)
        except _BadArgs as err:
            self._reply_error(conn, req_id, "bad-args", str(err))
            return
        self._send(conn, {"id": req_id, "ok": True, "result": result})

    # --- ops ----------------------------------------------------------------
    def _op_hello(self, conn, req):
        api = req.get("api")
        wanted = api if isinstance(api, list) else [api]
        common = [v for v in wanted if v in API_VERSIONS]
        if not common:
            raise _BadArgs(f"api version {api!r} not supported; this server speaks {list(API_VERSIONS)}")
        conn.hello = True
        return {"api": max(common), "tagger": __version__, "pid": os.getpid()}

    def _op_snapshot(self, conn, req):
        if self._snapshot is None:
            return None
        return snapshot_to_plain(self._snapshot, _glob_arg(req), detail=bool(req.get("detail")))

    def _op_tags(self, conn, req):
        return current_tags_plain(self._tags, _glob_arg(req))

    def _op_history(self, conn, req):
        glob, since, limit = _glob_arg(req), req.get("since"), req.get("limit")
        if since is not None and not isinstance(since, (int, float)):
            raise _BadArgs("'since' is a time in epoch seconds")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise _BadArgs("'limit' is a non-negative integer")
        out = [e for e in self._history
               if (since is None or e.get("t", 0) > since) and path_matches(parse(e.get("cgroup") or ""), glob)]
        return out[-limit:] if limit else out

    def _op_actions(self, conn, req):
        glob = _glob_arg(req)
        return [a for a in (to_plain(x) for x in self._actions or ())
                if path_matches(parse(str(a.get("cgroup") or "")), glob)]

    def _op_rules(self, conn, req):
        return self._rules

    def _op_health(self, conn, req):
        return {**to_plain(self._health), "api": dict(self.stats)}

    def _op_subscribe(self, conn, req):
        topics = req.get("topics", ["tags"])
        if isinstance(topics, str):
            topics = [topics]
        if not isinstance(topics, list) or not topics or any(t not in TOPICS for t in topics):
            raise _BadArgs(f"'topics' is a list of {', '.join(TOPICS)}")
        conn.topics = frozenset(topics)
        conn.cgroup = _glob_arg(req)
        # The current tags come with the reply so a watcher needs no second request
        # (and sees no gap: events after this point are all pushed).
        return {"topics": sorted(conn.topics), "tags": self._op_tags(conn, req)}

    # --- publishing to subscribers ----------------------------------------------
    def _apply_pending(self):
        while self._pending:
            item = self._pending.popleft()
            if item[0] == "rules":
                self._rules = to_plain(item[1])
                continue
            _, snapshot, tags, events, actions, health = item
            if snapshot is not None:
                self._snapshot = snapshot
            if tags is not None:
                self._tags = tags
            if actions is not None:
                self._actions = actions
            if health is not None:
                self._health = health
            plain_events = [event_plain(e) for e in events]
            self._history.extend(plain_events)
            self._push(plain_events, snapshot)

    def _push(self, events, snapshot):
        subscribers = [c for c in self._conns.values() if c.topics]
        if not subscribers:
            return
        encoded_snap: dict = {}
        for conn in subscribers:
            if "tags" in conn.topics:
                for ev in events:
                    if path_matches(parse(ev.get("cgroup") or ""), conn.cgroup):
                        self._send(conn, {"event": "tag", "data": ev})
            if "snapshots" in conn.topics and snapshot is not None:
                key = conn.cgroup
                frame = encoded_snap.get(key)
                if frame is None:      # one encoding per distinct filter, not per subscriber
                    frame = encoded_snap[key] = encode_frame(
                        {"event": "snapshot", "data": snapshot_to_plain(snapshot, conn.cgroup)})
                self._send_frame(conn, frame)

    # --- output -----------------------------------------------------------------
    def _reply_error(self, conn, req_id, code, message):
        self.stats["errors"] += 1
        self._send(conn, _error(req_id, code, message))

    def _send(self, conn, obj):
        self._send_frame(conn, encode_frame(obj))

    def _send_frame(self, conn: _Conn, frame: bytes):
        if conn.sock.fileno() < 0:
            return
        if conn.out_bytes + len(frame) > self.max_backlog:
            self.stats["dropped"] += 1
            log.warning("socket API: dropped pid %d: it reads too slowly (%d bytes unsent)",
                        conn.pid, conn.out_bytes)
            self._drop(conn, None)
            return
        conn.out.append(memoryview(frame))
        conn.out_bytes += len(frame)
        self._flush(conn)

    def _flush(self, conn: _Conn):
        while conn.out:
            buf = conn.out[0]
            try:
                n = conn.sock.send(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(conn, None)
                return
            conn.out_bytes -= n
            if n == len(buf):
                conn.out.popleft()
            else:
                conn.out[0] = buf[n:]
                break
        self._after_write(conn)

    def _after_write(self, conn: _Conn):
        if conn.sock.fileno() < 0:
            return
        if not conn.out and conn.closing:
            self._drop(conn, None)
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        key = self._sel.get_key(conn.sock)
        if key.events != want:
            self._sel.modify(conn.sock, want, conn)

    def _drop(self, conn: _Conn, _reason):
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


class _BadArgs(Exception):
    pass


MAX_GLOBS = 16
#: Characters per glob.  Matching costs at most len(glob) x len(path) steps, whatever
#: the wildcards (tagger.cgroupglob), so the length alone bounds a request's cost per
#: cgroup (benchmarks/bench_glob.py measures the worst shapes at this size).
MAX_GLOB_CHARS = 256


def _glob_arg(req):
    glob = req.get("cgroup")
    if glob is None:
        return None
    globs = [glob] if isinstance(glob, str) else glob
    if not isinstance(globs, list) or not all(isinstance(g, str) for g in globs):
        raise _BadArgs("'cgroup' is a glob or a list of globs")
    if len(globs) > MAX_GLOBS or any(len(g) > MAX_GLOB_CHARS for g in globs):
        raise _BadArgs(f"at most {MAX_GLOBS} globs of at most {MAX_GLOB_CHARS} characters each")
    try:    # clients write names as they see them (tagger.names)
        return GlobSet(parse(g) for g in globs)
    except GlobError as err:
        raise _BadArgs(str(err)) from None


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
            if len(self._buf) >= HEADER.size:
                (n,) = HEADER.unpack_from(self._buf)
                if n > MAX_REPLY:
                    raise ApiError("protocol", f"reply of {n} bytes is not believable")
                if len(self._buf) >= HEADER.size + n:
                    body = bytes(self._buf[HEADER.size:HEADER.size + n])
                    del self._buf[:HEADER.size + n]
                    msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
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
