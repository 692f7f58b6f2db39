"""The socket API under a crowd of idle connections (issue 13, item 8): they
cannot lock a client out, and the ones that never say hello, or go idle, are
closed after a timeout.  Real sockets, real ApiClient; the crowd that tests
the per-process limit lives in a child process, a peer of its own."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

from tagger.client import ApiClient
from tagger.publish.report import Health, TickReport
from tagger.publish.socket import ApiServer
from tagger.clock import epoch
from tagger.snapshot import Snapshot
from tagger.tags import Tag
from tests.cgroup_fixture import wait_for

CROWD = 200
TAGS = {"/a": {"resource": {"value": "cpu-intensive", "rule": "cpu-intensive", "since": epoch(1.0)}}}


def publish_tags(srv):
    snap = Snapshot.synthetic(["/a"], {"cpu.usage": [1.5]}, t=1.0)
    tags = {"/a": {"resource": Tag("resource", "cpu-intensive", "cpu-intensive", 1.0)}}
    srv.publish(TickReport(snap, tags, [], [], Health(ticks=1)))


def connect(path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)      # blocking: waits while the listen backlog is full (EAGAIN with a timeout)
    return sock


def closed_by_server(sock) -> bool:
    """True once the server has closed ``sock`` (EOF after whatever it sent)."""
    sock.setblocking(False)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "tagger.sock")


def test_idle_crowd_from_another_process_does_not_lock_out_tags(sock_path):
    """200 connections held by one other process: it keeps a few, `tags` answers."""
    crowd_src = textwrap.dedent(f"""
        import socket, sys
        socks = []
        for _ in range({CROWD}):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect({sock_path!r})
            socks.append(s)
        print("ready", flush=True)
        sys.stdin.read()          # hold them, idle, until the test ends
    """)
    with ApiServer(sock_path, handshake_timeout=600, idle_timeout=600) as srv:
        publish_tags(srv)
        crowd = subprocess.Popen([sys.executable, "-c", crowd_src], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert crowd.stdout.readline().strip() == "ready"
            # At once: the server may still be working through the crowd's backlog.
            with ApiClient(sock_path, timeout=5) as client:
                assert client.request("tags") == TAGS
            wait_for(lambda: srv.stats["clients"] + srv.stats["displaced"] + srv.stats["refused"] >= CROWD,
                     what="the server to have seen the whole crowd")
            assert srv.stats["clients"] <= srv.max_per_peer + 1
        finally:
            crowd.stdin.close()
            crowd.wait(timeout=10)


def test_idle_crowd_displaces_only_idle_connections(sock_path):
    """With no per-process limit in the way, 200 idle connections fill the
    server: a newcomer displaces one that never said hello, and a subscriber
    and a client mid-conversation are left alone."""
    with ApiServer(sock_path, max_clients=64, max_per_peer=10_000,
                   handshake_timeout=600, idle_timeout=600) as srv:
        publish_tags(srv)
        watcher = ApiClient(sock_path, timeout=5)
        watcher.subscribe(["tags"])
        crowd = [connect(sock_path) for _ in range(CROWD)]
        try:
            wait_for(lambda: srv.stats["clients"] == srv.max_clients, what="the server to be full")
            with ApiClient(sock_path, timeout=5) as client:
                assert client.request("tags") == TAGS
                assert client.request("tags") == TAGS
            assert srv.stats["displaced"] >= 1
            assert watcher.request("tags") == TAGS
        finally:
            watcher.close()
            for sock in crowd:
                sock.close()


def test_silent_and_idle_connections_are_closed_after_their_timeouts(sock_path):
    # Timeouts long enough that a stall of the test process between a client's
    # hello and its subscribe (a loaded host) does not time the watcher out.
    with ApiServer(sock_path, handshake_timeout=1.0, idle_timeout=2.0) as srv:
        publish_tags(srv)
        silent = [connect(sock_path) for _ in range(5)]           # never say hello
        idle = ApiClient(sock_path, timeout=5)                     # hello, then nothing
        watcher = ApiClient(sock_path, timeout=5)
        watcher.subscribe(["tags"])                                # waits for pushes: not idle
        try:
            wait_for(lambda: all(closed_by_server(s) for s in silent), timeout=10,
                     what="connections without a hello to be closed")
            wait_for(lambda: closed_by_server(idle.sock), timeout=10,
                     what="an idle connection to be closed")
            assert srv.stats["timed_out"] == len(silent) + 1
            # Long past both timeouts, the subscriber is still served.
            assert watcher.request("tags") == TAGS
        finally:
            for sock in silent:
                sock.close()
            idle.close()
            watcher.close()
