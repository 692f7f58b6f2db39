"""Redis publisher against a real redis-server that the test starts on loopback
(its own port and temp dir), including an outage in the middle of a run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from tagger.publish.redis import RedisPublisher
from tagger.publish.report import TickReport
from tagger.tags import Tag, TagEvent
from tests.cgroup_fixture import wait_for

redis = pytest.importorskip("redis")
REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisInstance:
    def __init__(self, tmp_path, port):
        self.dir, self.port, self.proc = tmp_path, port, None

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, decode_responses=True)

        def up():
            try:
                return client.ping()
            except redis.ConnectionError:
                assert self.proc.poll() is None, "redis-server exited"
                return False
        wait_for(up, timeout=10, what="redis-server to answer")
        return client

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path):
    inst = RedisInstance(tmp_path, free_port())
    inst.client = inst.start()
    try:
        yield inst
    finally:
        inst.stop()


def tagset(**by_path):
    return {path: {k: Tag(k, v, "r", 0.0) for k, v in tags.items()} for path, tags in by_path.items()}


def test_hashes_and_stream(redis_server):
    r = redis_server.client
    pub = RedisPublisher(f"redis://127.0.0.1:{redis_server.port}/0", host="node1").start()
    try:
        tags = {"/a": {"resource": Tag("resource", "cpu-intensive", "cpu", 1.0)}}
        pub.publish(TickReport(tags=tags, events=[TagEvent(1.0, "/a", "resource", "cpu-intensive", None, "cpu", "added")]))
        wait_for(lambda: r.hgetall("tagger:node1:tags:/a"), timeout=5, what="hash written")
        assert r.hgetall("tagger:node1:tags:/a") == {"resource": "cpu-intensive"}
        assert r.smembers("tagger:node1:cgroups") == {"/a"}
        [(_, fields)] = r.xrange("tagger:events")
        assert fields["host"] == "node1" and fields["kind"] == "added" and fields["old"] == ""

        pub.publish(TickReport(tags={}, events=[TagEvent(2.0, "/a", "resource", None, "cpu-intensive", "cpu", "removed")]))
        wait_for(lambda: not r.exists("tagger:node1:tags:/a"), timeout=5, what="hash removed")
        assert r.smembers("tagger:node1:cgroups") == set()
        assert r.xlen("tagger:events") == 2
    finally:
        pub.close()


def test_stream_is_capped(redis_server):
    r = redis_server.client
    pub = RedisPublisher(f"redis://127.0.0.1:{redis_server.port}", host="n", stream_maxlen=100).start()
    try:
        for i in range(30):
            pub.publish(TickReport(tags={}, events=[TagEvent(float(i * 100 + j), "/x", "k", "v", None, "r", "added")
                             for j in range(100)]))
        wait_for(lambda: pub.stats["published"] == 3000, timeout=10, what="all events written")
        # "~" trims by whole macro nodes: at most one node above the cap.
        assert r.xlen("tagger:events") < 300
    finally:
        pub.close()


def test_outage_never_stalls_and_recovers(redis_server):
    r = redis_server.client
    pub = RedisPublisher(f"redis://127.0.0.1:{redis_server.port}", host="n", queue_size=50,
                         backoff=(0.05, 0.2), timeout=2.0).start()
    try:
        pub.publish(TickReport(tags=tagset(**{"/old": {"k": "v"}}), events=[TagEvent(0.0, "/old", "k", "v", None, "r", "added")]))
        wait_for(lambda: r.exists("tagger:n:tags:/old"), timeout=5, what="first write")

        redis_server.stop()                                   # outage
        worst = 0.0
        for i in range(200):
            t0 = time.perf_counter()
            pub.publish(TickReport(tags=tagset(**{"/new": {"k": str(i)}}), events=[TagEvent(float(i + 1), "/new", "k", str(i), None, "r", "changed")]))
            worst = max(worst, time.perf_counter() - t0)
        # Far below the socket timeout a publish waiting on Redis would take;
        # not so low that a descheduled test process (a GC pause, another
        # tenant) fails it.  The timeout is long so that a slow reply on a
        # loaded host is not re-sent: the stream must hold exactly 50 below.
        assert worst < 0.25, f"publish blocked {worst:.3f}s during the outage"
        wait_for(lambda: pub.stats["connected"] == 0, timeout=5, what="outage noticed")
        assert pub.stats["dropped"] >= 150                    # bounded queue: drop + count

        r = redis_server.start()                              # back, empty (no persistence)
        wait_for(lambda: r.hgetall("tagger:n:tags:/new") == {"k": "199"}, timeout=10,
                 what="tags rewritten after reconnect")
        assert not r.exists("tagger:n:tags:/old")
        assert r.smembers("tagger:n:cgroups") == {"/new"}
        wait_for(lambda: r.xlen("tagger:events") == 50, timeout=5, what="queued events written")
        assert pub.stats["reconnects"] >= 2
    finally:
        pub.close()


def test_unreachable_at_start_is_not_fatal():
    pub = RedisPublisher(f"redis://127.0.0.1:{free_port()}", backoff=(0.05, 0.1), timeout=0.2).start()
    try:
        t0 = time.perf_counter()
        pub.publish(TickReport(tags=tagset(**{"/a": {"k": "v"}}), events=[]))
        assert time.perf_counter() - t0 < 0.1             # half the socket timeout: not waited on
        time.sleep(0.2)
        assert pub.stats["connected"] == 0
    finally:
        t0 = time.perf_counter()
        pub.close()
        assert time.perf_counter() - t0 < 3


def test_daemon_publishes_to_redis(redis_server, tmp_path):
    from tests.test_daemon import RULES, Running
    rules = tmp_path / "rules"
    rules.mkdir(mode=0o755)
    (rules / "10.yaml").write_text(RULES)
    os.chmod(rules / "10.yaml", 0o644)
    r = redis_server.client
    with Running(tmp_path, rules, {"/hog": 1.5}, redis=f"redis://127.0.0.1:{redis_server.port}") as run:
        host = run.daemon.redis.host
        wait_for(lambda: r.hgetall(f"tagger:{host}:tags:/hog") == {"resource": "cpu-intensive"},
                 timeout=5, what="tag hash from the daemon")
        assert r.xrange("tagger:events")[0][1]["cgroup"] == "/hog"
        wait_for(lambda: run.daemon.health().get("redis_connected") == 1, timeout=5, what="health")
