"""Cgroup names are bytes from the kernel (issue 13, item 5): one decoding rule
(tagger.names) from the cgroupfs walk and the BPF mkdir event out to every
reader: the Prometheus exposition, the socket, Redis, ``tagger top`` and
trace files.  A name that is not UTF-8 used to fail every scrape with HTTP 500.
"""

from __future__ import annotations

import io
import itertools
import os
import urllib.request

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tagger.actions.actuator import AppliedAction
from tagger.client import ApiClient
from tagger.publish.socket import ApiServer
from tagger.cgroups import Layout, Registry
from tagger.cli.top import render
from tagger.cli.top.model import Frame, TopModel
from tagger.cli.top.sources import SocketSource
from tagger.kernelfs import KernelFS
from tagger.names import display, from_kernel, parse
from tagger.publish.exposition import MetricsServer
from tagger.publish.prometheus import TaggerCollector
from tagger.publish.redis import RedisPublisher
from tagger.snapshot import Snapshot
from tagger.tags import Tag, TagEvent
from tagger.telemetry.events import c_string as _c_string
from tagger.publish.trace import read_trace, record
from tagger.publish.report import Health, TickReport
from tests.cgroup_fixture import wait_for

# Bytes that make the rule's edge cases likely: undecodable bytes, control
# characters, the pieces of an escape ("\\", "x", hex digits) and of UTF-8
# sequences cut short.
FRAGMENTS = [b"\\", b"x", b"8", b"f", b"e", b"0", b"1", b"7f", b"2d", b"\xfe", b"\xff", b"\x80", b"\xc3",
             b"\xc3\xa9", b"a", b".", b"-", b" ", b"\n", b"\t", b"\x1b", b"\x7f", b"\xe2\x82", b"\xed\xb3\xbe"]
raw_names = st.one_of(st.binary(min_size=1, max_size=24),
                      st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=10).map(b"".join))
# What mkdir(2) accepts as one path component.
dir_names = raw_names.filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))

BAD = b"x\xfe\xff"          # the reproducer


# --- the rule itself ------------------------------------------------------------

@given(raw_names)
@settings(max_examples=500)
def test_display_is_utf8_and_parse_undoes_it(raw):
    name = from_kernel(raw)
    shown = display(name)
    shown.encode("utf-8")                          # never raises: every encoder takes it
    assert not [c for c in shown if ord(c) < 0x20 or ord(c) == 0x7f]    # nothing moves a terminal
    assert parse(shown) == name
    assert os.fsencode(parse(shown)) == raw        # the kernel's very bytes come back


@given(raw_names, raw_names)
@settings(max_examples=500)
def test_no_two_names_display_alike(a, b):
    if a != b:
        assert display(from_kernel(a)) != display(from_kernel(b))


def test_readable_names_display_as_themselves():
    for name in ("/system.slice/systemd-fsck@dev-disk-by\\x2duuid-1.service", "/café/ünï", "/a b"):
        assert display(name) == name
    assert display(from_kernel(BAD)) == "x\\xfe\\xff"
    assert display("a\tb\x1b[2J") == "a\\x09b\\x1b[2J"
    # Text that reads like an escape is told apart from the byte it would stand for.
    assert display("x\\xfe") == "x\\\\xfe" != display(from_kernel(b"x\xfe"))


def test_bpf_events_decode_names_as_a_cgroupfs_walk_does(tmp_path):
    os.mkdir(os.fsencode(tmp_path) + b"/" + BAD)
    (walked,) = os.listdir(tmp_path)
    # A ring-buffer record: the path, a NUL, then whatever the buffer held before.
    assert _c_string(BAD + b"\0garbage\xfe") == walked


# --- every reader, over arbitrary byte names ------------------------------------------

MOUNTS_V2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"


def registry_of(tmp: str, raw: list[bytes]) -> Registry:
    """A Registry walking a fake v2 tree whose cgroups have the names ``raw``
    (each at the top and once nested under the first)."""
    os.makedirs(f"{tmp}/proc/self")
    with open(f"{tmp}/proc/self/mounts", "w") as f:
        f.write(MOUNTS_V2)
    root = os.fsencode(f"{tmp}/sys/fs/cgroup")
    os.makedirs(root)
    for name in raw:
        os.mkdir(root + b"/" + name)
    os.mkdir(root + b"/" + raw[0] + b"/" + raw[-1])
    fs = KernelFS(tmp)
    reg = Registry(Layout.detect(fs), fs)
    reg.scan()
    return reg


def snapshot_of(reg: Registry, seq: int) -> Snapshot:
    table = reg.table()
    n = len(table)
    return Snapshot(t=float(seq), dt=1.0, cgroups=table, seq=seq,
                    columns={"cpu.usage": np.linspace(0.1, 1.0, n), "runq.p99": np.full(n, 1e-3)},
                    node={"cpus": 2.0})


class Readers:
    """The long-lived readers one property test drives: a socket server and a Redis."""

    def __init__(self, tmp_path, redis_port):
        self.api = ApiServer(str(tmp_path / "api.sock")).start()
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self.seq = itertools.count(1)


@pytest.fixture(scope="module")
def readers(tmp_path_factory):
    from tests.test_redis import REDIS_SERVER, RedisInstance, free_port
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed")
    tmp = tmp_path_factory.mktemp("names")
    inst = RedisInstance(tmp, free_port())
    inst.client = inst.start()
    r = Readers(tmp, inst.port)
    r.redis = inst.client
    try:
        yield r
    finally:
        r.api.close()
        inst.stop()


@given(st.lists(dir_names, min_size=1, max_size=6, unique=True))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_byte_names_reach_every_reader_intact(readers, tmp_path_factory, raw):
    import tempfile

    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as tmp:
        reg = registry_of(tmp, raw)
    expected = {"/" + from_kernel(b) for b in raw} | {"/" + from_kernel(raw[0]) + "/" + from_kernel(raw[-1])}
    # The registry: the walk's paths are the names' bytes, one path per cgroup.
    assert set(reg.paths()) - {"/"} == expected
    assert {os.fsencode(p) for p in expected} == \
        {b"/" + b for b in raw} | {b"/" + raw[0] + b"/" + raw[-1]}
    seq = next(readers.seq)
    snap = snapshot_of(reg, seq)
    paths = list(snap.cgroups.paths)
    tags = {p: {"who": Tag("who", snap.cgroups.names[i], "r", 1.0)} for i, p in enumerate(paths)}
    events = [TagEvent(1.0, p, "who", tags[p]["who"].value, None, "r", "added") for p in paths]
    actions = [AppliedAction(p, "cpu.weight", "50", "100", "r", 1.0, False) for p in paths]

    # The exposition, parsed back by prometheus_client.
    col = TaggerCollector()
    col.update(snap, tags, actions, {"ticks": 1})
    reg_ = CollectorRegistry(auto_describe=False)
    reg_.register(col)
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg_).decode())}
    for family in ("tagger_cgroup_cpu_seconds", "tagger_tag", "tagger_action"):
        labels = [s.labels for s in fams[family].samples]
        assert sorted(parse(x["cgroup"]) for x in labels) == sorted(paths), family
    assert {parse(s.labels["value"]) for s in fams["tagger_tag"].samples} == set(snap.cgroups.names)

    # The socket: snapshot and tags replies, a glob naming one cgroup as the
    # client sees it, and top --connect reading it all back.
    readers.api.publish(TickReport(snap, tags, events, actions, Health.from_plain({"ticks": seq})))
    with ApiClient(readers.api.path) as c:
        wait_for(lambda: (c.request("snapshot") or {}).get("seq") == seq, timeout=5, what="the tick")
        got = c.request("snapshot")
        assert [parse(p) for p in got["cgroups"]["paths"]] == paths
        assert [parse(n) for n in got["cgroups"]["names"]] == list(snap.cgroups.names)
        assert {parse(p) for p in c.request("tags")} == set(paths)
        literal = [p for p in paths if p != "/" and not set("*?[]{}!\\") & set(p)]   # no glob syntax
        for one in literal[:1]:
            assert [parse(p) for p in c.request("tags", cgroup=display(one))] == [one]
    source = SocketSource(readers.api.path)
    try:
        frame = wait_for(source.next_frame, timeout=5, what="a frame")
    finally:
        source.close()
    assert frame.snapshot.cgroups.paths == paths
    assert set(frame.tags) == set(paths)
    assert {a.cgroup for acts in frame.actions.values() for a in acts} == set(paths)

    # top: every line of the table is text a terminal takes, all of one width.
    model = TopModel()
    model.apply_frame(Frame.build(snap, tags, actions, events, {}))
    lines = render.screen_lines(model, 400, len(paths) + 1)
    widths = set()
    for line in lines:
        text = "".join(s.text for s in line)
        text.encode("utf-8")
        widths.add(render.cell_len(text))
    assert len(widths) == 1, "columns shifted"
    shown = ["".join(s.text for s in line) for line in lines[1:]]
    assert all(any(display(n).strip() in t for t in shown) for n in snap.cgroups.names if n != "/")

    # The trace: record and replay give back the very names.
    buf = io.BytesIO()
    record([snap], buf)
    (back,) = read_trace(io.BytesIO(buf.getvalue()))
    assert back.cgroups.paths == paths
    assert back.cgroups.names == list(snap.cgroups.names)
    assert back.cgroups.labels == [dict(x) for x in snap.cgroups.labels]

    # Redis: one hash per cgroup, named as the exposition names it.
    host = f"names{seq}"
    pub = RedisPublisher(readers.redis_url, host=host).start()
    try:
        pub.publish(TickReport(tags=tags, events=events))
        index = f"tagger:{host}:cgroups"
        wait_for(lambda: len(readers.redis.smembers(index)) == len(paths), timeout=5,
                 what="every cgroup's hash")
        assert {parse(p) for p in readers.redis.smembers(index)} == set(paths)
        for p in paths:
            assert parse(readers.redis.hgetall(pub.hash_key(display(p)))["who"]) == tags[p]["who"].value
        stream = readers.redis.xrange("tagger:events")
        assert {parse(f["cgroup"]) for _, f in stream if f["host"] == host} == set(paths)
    finally:
        pub.close()
        assert pub.stats["errors"] == 0


# --- the real kernel ----------------------------------------------------------------

@pytest.mark.bpf
def test_a_byte_named_cgroup_is_one_cgroup_and_the_scrape_stays_up(make_cgroup):
    from tests.bpf_helpers import require_bpf
    require_bpf()
    from tagger.telemetry import BpfCollector

    with BpfCollector(cgroupfs_metrics=()) as coll:
        coll.tick()
        for _ in range(10):
            cg = make_cgroup(os.fsdecode(BAD))    # mkdir(2) with the bytes \xfe\xff in the name
            assert os.fsencode(cg.path).split(b"/")[-1].startswith(BAD)
            walks = coll.reconciles
            snap = coll.tick()                    # the mkdir event is in the ring buffer by now
            if coll.reconciles == walks:
                break                             # named by the event alone, not by a walk
        else:
            pytest.fail("every tick walked the tree: the event's naming went untested")
        # Named by the event as a cgroupfs walk names it: one cgroup, one path, its id.
        walk = Registry(Layout.detect())
        walk.scan()
        i = snap.cgroups.index(cg.path)
        assert i is not None, [p for p in snap.cgroups.paths if p.startswith(cg.path.rsplit("/", 1)[0])]
        assert snap.cgroups.ids[i] == walk.id_of(cg.path) == cg.id
        assert not [p for p in snap.cgroups.paths if "\ufffd" in p]

        col = TaggerCollector()
        col.update(snap, {cg.path: {"k": Tag("k", "v", "r", 1.0)}}, [], {"ticks": 1})
        server = MetricsServer(col, "127.0.0.1:0")
        try:
            for _ in range(3):
                with urllib.request.urlopen(server.url, timeout=10) as resp:
                    assert resp.status == 200
                    text = resp.read().decode("utf-8")
                fams = {f.name: f for f in text_string_to_metric_families(text)}
                cgroups = {parse(s.labels["cgroup"]) for s in fams["tagger_cgroup_cpu_seconds"].samples}
                assert cg.path in cgroups
        finally:
            server.close()
