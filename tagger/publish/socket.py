"""The socket API: a root-only Unix socket speaking length-prefixed msgpack.

Wire format, handshake and every request are documented in ``docs/api.md``;
this module is the reference for the requests, :mod:`tagger.publish.wire` for
the frames and :mod:`tagger.publish.connections` for what a client may take
(limits, timeouts, backlog).  The tick loop hands each tick to
:meth:`ApiServer.publish`, which only appends to a bounded deque and wakes
the server thread; requests are answered there.  Tag history is the
:class:`~tagger.tags.TagStore`'s (the only one).

:class:`tagger.client.ApiClient` is the other end, used by ``tagger tags`` and
``tagger top --connect``.
"""

from __future__ import annotations

import collections
import logging
import os

from tagger import __version__
from tagger.cgroupglob import GlobError, GlobSet
from tagger.clock import epoch
from tagger.names import parse
from tagger.publish.connections import Connection, Connections
from tagger.publish.report import TickReport
from tagger.publish.wire import (API_VERSIONS, DEFAULT_SOCKET, decode_body, encode_frame, event_plain,
                                 current_tags_plain, path_matches, snapshot_to_plain, to_plain)
from tagger.tags import TagStore

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024               # a request is small; anything bigger is refused
MAX_BACKLOG = 8 * 1024 * 1024         # unsent bytes a client may owe before it is dropped
MAX_CLIENTS = 64
MAX_PER_PEER = 8                      # connections one peer process (SO_PEERCRED pid) may hold
HANDSHAKE_TIMEOUT = 5.0               # seconds from connect to a successful hello
IDLE_TIMEOUT = 300.0                  # seconds a non-subscribed connection may go without a request
TOPICS = ("tags", "snapshots")
OPS = ("hello", "snapshot", "tags", "history", "actions", "rules", "health", "subscribe")

MAX_GLOBS = 16
#: Characters per glob.  Matching costs at most len(glob) x len(path) steps, whatever
#: the wildcards (tagger.cgroupglob), so the length alone bounds a request's cost per
#: cgroup (benchmarks/bench_glob.py measures the worst shapes at this size).
MAX_GLOB_CHARS = 256


class ApiServer:
    """Serve the daemon's latest tick on a Unix socket from a background thread
    (a :class:`~tagger.publish.report.Publisher`).

    ``store``: the agent's TagStore, whose history the ``history`` op serves;
    without one (a server on its own: tests, tools) the server keeps a store
    of ``history`` events fed by the events it is handed.
    ``allowed_uids``: peers (SO_PEERCRED) that may talk; default root and the
    server's own user.  The socket file is created mode 0600 and owned by the
    server's user (root in production)."""

    name = "socket API"

    def __init__(self, path: str = DEFAULT_SOCKET, *, store: TagStore | None = None, allowed_uids=None,
                 history: int = 10000, max_request: int = MAX_REQUEST, max_backlog: int = MAX_BACKLOG,
                 max_clients: int = MAX_CLIENTS, max_per_peer: int = MAX_PER_PEER,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT):
        self.path = str(path)
        self.conns = Connections(
            self.path, on_request=self._handle, on_wake=self._apply_pending,
            allowed_uids=frozenset(allowed_uids if allowed_uids is not None else {0, os.geteuid()}),
            max_request=max_request, max_backlog=max_backlog, max_clients=max_clients,
            max_per_peer=max_per_peer, handshake_timeout=handshake_timeout, idle_timeout=idle_timeout)
        self.stats = self.conns.stats
        self._own_store = store is None
        self._store = TagStore(history) if store is None else store
        # state owned by the server thread (applied from _pending in order)
        self._snapshot = None
        self._tags: dict = {}
        self._actions: list = []
        self._health: dict = {}
        self._rules: dict = {}
        # tick loop -> server thread
        self._pending: collections.deque = collections.deque(maxlen=256)

    @property
    def max_clients(self) -> int:
        return self.conns.max_clients

    @property
    def max_per_peer(self) -> int:
        return self.conns.max_per_peer

    # --- lifecycle ----------------------------------------------------------
    def start(self) -> "ApiServer":
        self.conns.start()
        log.info("socket API on %s (mode 0600)", self.path)
        return self

    def close(self):
        """Stop the thread, close every connection and remove the socket file."""
        self.conns.close()

    def __enter__(self):
        return self if self.conns.running else self.start()

    def __exit__(self, *exc):
        self.close()

    # --- called from the tick loop (never blocks) ------------------------------
    def publish(self, report: TickReport):
        """Hand one tick to the server thread: a TickReport whose parts are
        None when unchanged.  Its objects must not be changed afterwards."""
        health = None if report.health is None else report.health.to_plain()
        self._pending.append(("tick", report.snapshot, report.tags, list(report.events or ()),
                              report.actions, health))
        self.conns.wake()

    def set_rules(self, summary: dict):
        """The rules in force: {"dir", "loaded_at", "rules": [...], "policies": [...], "errors": [...]}."""
        self._pending.append(("rules", summary))
        self.conns.wake()

    # --- requests (server thread) ----------------------------------------------
    def _handle(self, conn: Connection, body: bytes):
        try:
            req = decode_body(body)
        except Exception as err:
            self.conns.reply_error(conn, None, "bad-request", f"not msgpack: {type(err).__name__}")
            return
        if not isinstance(req, dict):
            self.conns.reply_error(conn, None, "bad-request", "a request is a map with an 'op' key")
            return
        req_id = req.get("id")
        if not isinstance(req_id, (int, str, type(None))):
            req_id = None
        op = req.get("op")
        if op not in OPS:
            self.conns.reply_error(conn, req_id, "unknown-op", f"unknown op {op!r}; known: {', '.join(OPS)}")
            return
        if not conn.hello and op != "hello":
            self.conns.reply_error(conn, req_id, "handshake", "send {'op': 'hello', 'api': 1} first")
            return
        try:
            result = getattr(self, f"_op_{op}")(conn, req)
        except _BadArgs as err:
            self.conns.reply_error(conn, req_id, "bad-args", str(err))
            return
        self.conns.send(conn, {"id": req_id, "ok": True, "result": result})

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
        out = [e for e in self._store.history()
               if (since is None or epoch(e.t) > since) and path_matches(e.cgroup, glob)]
        return [event_plain(e) for e in (out[-limit:] if limit else out)]

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

    # --- ticks and pushes (server thread) ------------------------------------------
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
            if self._own_store:
                self._store.apply(events)
            self._push([event_plain(e) for e in events], snapshot)

    def _push(self, events, snapshot):
        subscribers = self.conns.subscribers()
        if not subscribers:
            return
        encoded_snap: dict = {}
        for conn in subscribers:
            if "tags" in conn.topics:
                for ev in events:
                    if path_matches(parse(ev.get("cgroup") or ""), conn.cgroup):
                        self.conns.send(conn, {"event": "tag", "data": ev})
            if "snapshots" in conn.topics and snapshot is not None:
                key = conn.cgroup
                frame = encoded_snap.get(key)
                if frame is None:      # one encoding per distinct filter, not per subscriber
                    frame = encoded_snap[key] = encode_frame(
                        {"event": "snapshot", "data": snapshot_to_plain(snapshot, conn.cgroup)})
                self.conns.send_frame(conn, frame)


class _BadArgs(Exception):
    pass


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
