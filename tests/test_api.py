"""The socket API: handshake, requests, subscriptions, and a server that bad
clients cannot stop (malformed, oversized, slow, not root)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time

import msgpack
import pytest

from tagger.client import ApiClient, ApiError
from tagger.publish.report import Health, TickReport
from tagger.publish.socket import ApiServer
from tagger.publish.wire import HEADER, encode_frame
from tagger.clock import epoch
from tagger.snapshot import Snapshot
from tagger.actions.actuator import AppliedAction
from tagger.tags import Tag, TagEvent, TagStore
from tests.cgroup_fixture import wait_for


@pytest.fixture
def server(tmp_path):
    srv = ApiServer(str(tmp_path / "run" / "tagger.sock")).start()
    try:
        yield srv
    finally:
        srv.close()


def publish_tick(srv, t=1.0, busy="/a"):
    snap = Snapshot.synthetic(["/a", "/b/c"], {"cpu.usage": [1.5, float("nan")]}, t=t)
    tags = {busy: {"resource": Tag("resource", "cpu-intensive", "cpu-intensive", t)}}
    events = [TagEvent(t, busy, "resource", "cpu-intensive", None, "cpu-intensive", "added")]
    acts = [AppliedAction(busy, "cpu.max", 0.5, "max", "cap", t, False)]
    srv.publish(TickReport(snap, tags, events, acts, Health(ticks=1, tick_seconds=0.003)))


def raw_connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def read_frame(sock):
    buf = b""
    while len(buf) < HEADER.size:
        chunk = sock.recv(HEADER.size - len(buf))
        if not chunk:
            return None
        buf += chunk
    (n,) = HEADER.unpack(buf)
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            return None
        body += chunk
    return msgpack.unpackb(body, raw=False)


def test_history_is_the_tag_stores(tmp_path):
    """The agent's TagStore is the one tag history: the server reads it, it keeps none of its own."""
    store = TagStore(history=3)
    store.set("/a", "resource", "cpu-intensive", "cpu", 1.0)
    with ApiServer(str(tmp_path / "t.sock"), store=store) as srv, ApiClient(srv.path) as c:
        [ev] = c.request("history")
        assert (ev["cgroup"], ev["kind"], ev["t"]) == ("/a", "added", epoch(1.0))
        srv.publish(TickReport(events=[TagEvent(2.0, "/b", "k", "v", None, "r", "added")]))
        store.set("/b", "k", "v", "r", 3.0)
        wait_for(lambda: len(c.request("history")) == 2, timeout=5, what="the store's second event")
        assert [e["cgroup"] for e in c.request("history", since=epoch(1.5))] == ["/b"]
        assert [e["t"] for e in c.request("history", limit=1)] == [epoch(3.0)]


def test_socket_is_0600(server):
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()


def test_requests(server):
    publish_tick(server)
    with ApiClient(server.path) as c:
        assert c.hello["api"] == 1
        wait_for(lambda: c.request("tags"), timeout=5, what="tick to arrive")
        assert c.request("tags") == {"/a": {"resource": {"value": "cpu-intensive",
                                                         "rule": "cpu-intensive", "since": epoch(1.0)}}}
        assert c.request("tags", cgroup="/b/**") == {}
        snap = c.request("snapshot")
        assert snap["cgroups"]["paths"] == ["/a", "/b/c"]
        assert snap["columns"]["cpu.usage"][0] == 1.5
        assert snap["columns"]["cpu.usage"][1] != snap["columns"]["cpu.usage"][1]   # NaN stays NaN
        assert c.request("snapshot", cgroup="/b/*")["cgroups"]["paths"] == ["/b/c"]
        assert "histograms" not in snap
        detail = c.request("snapshot", detail=True)
        assert detail["histograms"] == {} and detail["preemptions"] == []
        [ev] = c.request("history")
        assert ev["kind"] == "added" and ev["cgroup"] == "/a"
        assert ev["t"] == epoch(1.0) > 1e9          # epoch seconds, not the tick's monotonic 1.0
        assert snap["t"] == epoch(1.0)
        assert c.request("history", since=epoch(1.0)) == []
        assert c.request("history", since=epoch(1.0) - 0.5) == [ev]
        [act] = c.request("actions")
        assert act["knob"] == "cpu.max" and act["value"] == 0.5
        assert c.request("health")["ticks"] == 1
        server.set_rules({"dir": "/etc/tagger/rules", "rules": [{"name": "r"}], "errors": []})
        wait_for(lambda: c.request("rules"), timeout=5, what="rules summary")
        assert c.request("rules")["rules"] == [{"name": "r"}]
        with pytest.raises(ApiError) as err:
            c.request("frobnicate")
        assert err.value.code == "unknown-op"
        with pytest.raises(ApiError) as err:
            c.request("history", limit="lots")
        assert err.value.code == "bad-args"
        with pytest.raises(ApiError) as err:
            c.request("tags", cgroup="**a" * 40 + "b")     # a backtracking bomb is refused
        assert err.value.code == "bad-args"


def test_handshake_required_and_versioned(server):
    s = raw_connect(server.path)
    try:
        greeting = read_frame(s)
        assert greeting["api"] == [1] and "tagger" in greeting
        s.sendall(encode_frame({"id": 1, "op": "tags"}))
        assert read_frame(s)["error"]["code"] == "handshake"
        s.sendall(encode_frame({"id": 2, "op": "hello", "api": 99}))
        reply = read_frame(s)
        assert reply["ok"] is False and "speaks [1]" in reply["error"]["message"]
        s.sendall(encode_frame({"id": 3, "op": "hello", "api": [1, 2]}))
        assert read_frame(s) == {"id": 3, "ok": True, "result": {"api": 1, "tagger": greeting["tagger"],
                                                                  "pid": os.getpid()}}
    finally:
        s.close()


def test_subscribe_streams_tag_events_and_snapshots(server):
    with ApiClient(server.path) as c:
        reply = c.subscribe(["tags", "snapshots"])
        assert reply["tags"] == {}
        publish_tick(server, t=2.0)
        events = c.events()
        got = [next(events), next(events)]
        kinds = sorted(k for k, _ in got)
        assert kinds == ["snapshot", "tag"]
        tag = dict(got)["tag"]
        assert tag["t"] == epoch(2.0) and tag["value"] == "cpu-intensive"


def test_subscribe_filters_by_cgroup(server):
    with ApiClient(server.path) as c:
        c.subscribe(["tags"], cgroup="/b/**")
        publish_tick(server, busy="/a")
        publish_tick(server, t=3.0, busy="/b/c")
        kind, data = next(c.events())
        assert (kind, data["cgroup"], data["t"]) == ("tag", "/b/c", epoch(3.0))


def test_thousand_malformed_requests_leave_it_serving(server):
    publish_tick(server)
    rng = random.Random(5)
    s = raw_connect(server.path)
    try:
        read_frame(s)
        s.sendall(encode_frame({"id": 0, "op": "hello", "api": 1}))
        assert read_frame(s)["ok"]
        junk = [b"", b"\xc1", b"\x93\x01", msgpack.packb([1, 2, 3]), msgpack.packb("op"),
                msgpack.packb({"op": None}), msgpack.packb({"op": "tags", "cgroup": 5}),
                msgpack.packb({"op": "history", "since": "x"}), msgpack.packb({1: 2}),
                msgpack.packb({"op": "subscribe", "topics": ["nope"]}), b"\x81\xa2op\xa4ta"]
        for i in range(1000):
            body = junk[i % len(junk)] if i < 500 else bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            s.sendall(HEADER.pack(len(body)) + body)
            reply = read_frame(s)
            assert reply is not None, f"server closed after malformed request {i}"
            assert reply.get("ok") is False or reply.get("ok") is True   # ok for random valid msgpack maps
    finally:
        s.close()
    with ApiClient(server.path) as c:
        wait_for(lambda: c.request("tags"), timeout=5, what="tags")
        assert "/a" in c.request("tags")
    assert server.stats["errors"] >= 500


def test_oversized_request_gets_error_then_close(server):
    s = raw_connect(server.path)
    try:
        read_frame(s)
        s.sendall(struct.pack(">I", 100 * 1024 * 1024) + b"\x80" * 1000)
        reply = read_frame(s)
        assert reply["error"]["code"] == "too-large"
        assert read_frame(s) is None      # closed: the stream cannot be trusted
    finally:
        s.close()
    with ApiClient(server.path) as c:
        assert c.request("health")["api"]["errors"] >= 1


def test_slow_subscriber_is_dropped_not_waited_for(tmp_path):
    srv = ApiServer(str(tmp_path / "t.sock"), max_backlog=256 * 1024).start()
    slow = None
    try:
        slow = ApiClient(srv.path)
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.subscribe(["snapshots"])
        paths = [f"/w{i}" for i in range(2000)]
        snap = Snapshot.synthetic(paths, {"cpu.usage": [0.5] * len(paths)})
        t0 = time.monotonic()
        for i in range(200):                       # the slow client never reads
            srv.publish(TickReport(snap, {}, [], [], Health()))
        publish_cost = time.monotonic() - t0
        wait_for(lambda: srv.stats["dropped"] >= 1, timeout=10, what="slow subscriber dropped")
        assert publish_cost < 2.0                  # publish never waited for the client
        with ApiClient(srv.path) as fast:          # and others are served
            assert fast.request("health") is not None
    finally:
        if slow:
            slow.close()
        srv.close()


def test_stale_socket_replaced_live_one_refused(tmp_path):
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()                                   # leaves a dead socket file behind
    with ApiServer(path):
        with pytest.raises(ValueError, match="another tagger"):
            ApiServer(path).start()
    assert not os.path.exists(path)                 # close() removed it
    open(path, "w").close()
    with pytest.raises(ValueError, match="not a socket"):
        ApiServer(path).start()


def test_many_clients_one_slow_does_not_block_others(server):
    publish_tick(server)
    hog = raw_connect(server.path)                  # connects, never handshakes nor reads
    try:
        results = []

        def worker():
            with ApiClient(server.path) as c:
                for _ in range(20):
                    results.append(c.request("health") is not None)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert results.count(True) == 80
    finally:
        hog.close()


@pytest.fixture
def open_server():
    """A server in a directory anyone may traverse (pytest's tmp dirs are 0700)."""
    d = tempfile.mkdtemp(prefix="tagger-api-test-")
    os.chmod(d, 0o755)
    srv = ApiServer(os.path.join(d, "tagger.sock")).start()
    try:
        yield srv
    finally:
        srv.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.root
def test_non_root_client_refused(open_server):
    if os.geteuid() != 0:
        pytest.skip("needs root to setuid() a child to nobody")
    import pwd
    server = open_server
    nobody = pwd.getpwnam("nobody")

    def child_connects(expect_code):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                # child: become nobody, try to talk
            code = 99
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                try:
                    ApiClient(server.path, timeout=5).request("tags")
                    code = 0
                except ApiError as err:
                    code = {"forbidden": 3, "permission": 5}.get(err.code, 4)
                os.write(w, str(code).encode())
            finally:
                os._exit(code)
        os.close(w)
        try:
            _, status = os.waitpid(pid, 0)
            out = os.read(r, 16).decode()
        finally:
            os.close(r)
        assert out == str(expect_code), f"child got {out!r}"
        assert os.waitstatus_to_exitcode(status) == expect_code

    # The file mode alone keeps nobody out ...
    child_connects(5)
    assert server.stats["refused"] == 0
    # ... and if the mode were loosened, SO_PEERCRED still refuses.
    os.chmod(server.path, 0o666)
    child_connects(3)
    wait_for(lambda: server.stats["refused"] >= 1, timeout=5, what="refusal counted")
