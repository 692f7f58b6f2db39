"""Trace files: round trip, streaming, truncation, bad input, and replay output."""

from __future__ import annotations

import io
import json
import warnings

import msgpack
import numpy as np
import pytest
from click.testing import CliRunner

from tagger.cli.trace import replay
from tagger.snapshot import CULPRIT_DTYPE, PREEMPTION_DTYPE, CgroupTable, Snapshot
from tagger.publish.report import TickReport
from tagger.publish.trace import (VERSION, TraceError, TraceReader, TraceTruncated, TraceWriter, read_trace,
                                  record, snapshot_record)

PATHS = ["/", "/kubepods/besteffort/p1/c", "/work/web", "/work/batch"]


def synthetic_run(n=30, seed=1):
    """A scripted run: batch goes busy and web, which wakes often in short
    bursts, waits behind it (runq.wait.foreign, charged to batch): it starves."""
    rng = np.random.default_rng(seed)
    table = CgroupTable.from_paths(PATHS, labels=[{}, {"pod": "p1"}, {}, {}], ids=[1, 2, 3, 4])
    out = []
    for k in range(n):
        busy = 8 <= k < 22
        cols = {
            "cpu.usage": np.array([3.0, 0.1, 0.3, 2.9 if busy else 0.2]) + rng.uniform(0, .01, 4),
            "runq.events": np.array([900, 5, 500, 40.0]),
            "runq.wait": np.array([0.5, 0, 0.8 if busy else 0.001, 0.01]),
            "runq.wait.foreign": np.array([0.1, 0, 0.75 if busy else 0.001, 0.005]),
            "sched.switches": np.array([0, 2, 500, 0.0]),
            "runq.p99": np.array([0.01, np.nan, 0.012 if busy else 0.0002, 0.001]),
            "mem.current": np.array([8e9, 1e8, 3e9, 5e8]),
        }
        hist = {"runq.wakeup": rng.integers(0, 50, (4, 8)).astype(float)}
        pre = np.array([(2, 3, 400.0 if busy else 5.0), (2, 1, 10.0)], PREEMPTION_DTYPE)
        by = np.array([(2, 3, 0.7 if busy else 0.001)], CULPRIT_DTYPE)
        out.append(Snapshot(t=1000.0 + k, dt=1.0, cgroups=table, columns=cols,
                            node={"cpus": 4.0, "cpu.usage": 3.2, "cpu.steal": 0.0}, histograms=hist,
                            hist_edges=np.geomspace(1e-6, 1, 9), preemptions=pre, culprits=by, seq=k))
    # a cgroup appears near the end: the table changes mid-trace
    t2 = CgroupTable.from_paths(PATHS + ["/work/late"])
    last = out[-1]
    out.append(Snapshot(t=last.t + 1, dt=1.0, cgroups=t2,
                        columns={k: np.append(v, 0.5) for k, v in last.columns.items()},
                        node=last.node, seq=n))
    return out


def test_writer_as_a_publisher_records_each_ticks_snapshot():
    """The agent's --record: ticks as TickReports; one without a snapshot records nothing."""
    snaps = synthetic_run(3)
    buf = io.BytesIO()
    w = TraceWriter(buf)
    for snap in snaps:
        w.publish(TickReport(snapshot=snap))
        w.publish(TickReport(tags={}))
    assert w.count == len(snaps) == 4
    buf.seek(0)
    for a, b in zip(read_trace(buf), snaps, strict=True):
        assert_same(a, b)


def assert_same(a: Snapshot, b: Snapshot):
    assert (a.t, a.dt, a.seq, a.source) == (b.t, b.dt, b.seq, b.source)
    assert a.cgroups.paths == b.cgroups.paths
    assert a.cgroups.names == b.cgroups.names
    assert a.cgroups.labels == b.cgroups.labels
    assert np.array_equal(a.cgroups.ids, b.cgroups.ids)
    assert a.columns.keys() == b.columns.keys()
    for k in a.columns:
        assert np.array_equal(a.columns[k], b.columns[k], equal_nan=True)
    assert a.node == b.node
    assert a.histograms.keys() == b.histograms.keys()
    for k in a.histograms:
        assert np.array_equal(a.histograms[k], b.histograms[k])
    assert np.array_equal(a.hist_edges, b.hist_edges)
    assert a.preemptions.tolist() == b.preemptions.tolist()
    assert a.culprits.tolist() == b.culprits.tolist()


def test_round_trip_keeps_every_field(tmp_path):
    snaps = synthetic_run()
    path = tmp_path / "t.tgr"
    assert record(iter(snaps), path) == len(snaps)
    back = list(read_trace(path))
    assert len(back) == len(snaps)
    for a, b in zip(snaps, back):
        assert_same(a, b)


def test_unchanged_cgroup_table_is_written_once_per_change(tmp_path):
    path = tmp_path / "t.tgr"
    record(synthetic_run(), path)
    recs = list(msgpack.Unpacker(open(path, "rb"), raw=False))
    assert recs[0]["type"] == "header" and recs[0]["version"] == VERSION
    tables = [r["cgroups"] is not None for r in recs[1:]]
    assert tables == [True] + [False] * 29 + [True]


def test_records_are_flushed_as_written(tmp_path):
    # Streamed: what is written so far is readable while the writer is still open.
    path = tmp_path / "t.tgr"
    w = TraceWriter(path)
    for s in synthetic_run(3)[:3]:
        w.write(s)
    assert len(list(read_trace(path))) == 3
    w.close()


@pytest.mark.parametrize("cut", [1, 17, 100])
def test_truncated_trace_replays_whole_records_with_a_warning(tmp_path, cut):
    snaps = synthetic_run(10)
    path = tmp_path / "t.tgr"
    record(snaps, path)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.warns(TraceTruncated, match="truncated trace: replayed 10 whole"):
        back = list(read_trace(path))
    assert len(back) == 10          # the 11th record (the changed table) was cut
    for a, b in zip(snaps, back):
        assert_same(a, b)


def test_cut_exactly_between_records_is_not_a_truncation(tmp_path):
    path = tmp_path / "t.tgr"
    buf = io.BytesIO()
    w = TraceWriter(buf)
    for s in synthetic_run(3)[:3]:
        w.write(s)
    path.write_bytes(buf.getvalue())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(read_trace(path))) == 3


def test_not_a_trace_and_future_versions_are_refused(tmp_path):
    p = tmp_path / "x.tgr"
    p.write_bytes(msgpack.packb({"hello": 1}))
    with pytest.raises(TraceError, match="not a tagger trace"):
        read_trace(p)
    p.write_bytes(msgpack.packb({"type": "header", "format": "tagger-trace", "version": 99}))
    with pytest.raises(TraceError, match="version 99"):
        read_trace(p)
    p.write_bytes(b"")
    with pytest.raises(TraceError, match="empty"):
        read_trace(p)


def test_malformed_record_is_a_trace_error(tmp_path):
    p = tmp_path / "x.tgr"
    hdr = {"type": "header", "format": "tagger-trace", "version": VERSION}
    bad = {"type": "snapshot", "t": 0, "dt": 1, "cgroups": {"ids": b"\0" * 8, "paths": ["/"],
           "names": ["/"], "labels": [{}]}, "columns": {"cpu.usage": b"\0" * 12}}
    p.write_bytes(msgpack.packb(hdr) + msgpack.packb(bad, use_bin_type=True))
    with pytest.raises(TraceError, match="cpu.usage"):
        list(read_trace(p))


def test_traces_from_before_the_culprits_still_read(tmp_path):
    """A record without ``culprits`` (written before runq.wait.by) reads
    with none; one whose rows point outside its table is refused."""
    p = tmp_path / "old.tgr"
    hdr = {"type": "header", "format": "tagger-trace", "version": VERSION}
    old = snapshot_record(synthetic_run(1)[0])
    del old["culprits"]
    p.write_bytes(msgpack.packb(hdr) + msgpack.packb(old, use_bin_type=True))
    (snap,) = read_trace(p)
    assert len(snap.culprits) == 0 and snap.culprits.dtype == CULPRIT_DTYPE
    assert snap.culprit_of().tolist() == [-1, -1, -1, -1]
    assert snap.preempted_by().tolist() == [-1, -1, 1, -1]

    bad = snapshot_record(synthetic_run(1)[0])
    bad["culprits"]["culprit"] = np.array([7], "<i4").tobytes()
    p.write_bytes(msgpack.packb(hdr) + msgpack.packb(bad, use_bin_type=True))
    with pytest.raises(TraceError, match="culprits"):
        list(read_trace(p))


def test_unknown_record_types_are_skipped(tmp_path):
    buf = io.BytesIO()
    w = TraceWriter(buf)
    w.write(synthetic_run(1)[0])
    buf.write(msgpack.packb({"type": "annotation", "text": "later versions may add these"}))
    w.write(synthetic_run(2)[1])
    p = tmp_path / "t.tgr"
    p.write_bytes(buf.getvalue())
    assert [s.seq for s in read_trace(p)] == [0, 1]


def test_replay_twice_is_byte_identical_and_shows_the_story(tmp_path):
    path = tmp_path / "t.tgr"
    record(synthetic_run(), path)
    runner = CliRunner()
    one = runner.invoke(replay, [str(path)])
    two = runner.invoke(replay, [str(path)])
    assert one.exit_code == 0, one.output
    assert one.stdout_bytes == two.stdout_bytes
    out = one.output
    assert "added    /kubepods/besteffort/p1/c  priority=low  [qos-besteffort]" in out
    assert "/work/web  runq=starved  [runq-starved]" in out
    assert "/work/batch  neighbour=noisy  [noisy-neighbour]" in out
    js1 = runner.invoke(replay, [str(path), "--json"])
    js2 = runner.invoke(replay, [str(path), "--json"])
    assert js1.stdout_bytes == js2.stdout_bytes
    lines = [json.loads(x) for x in js1.output.splitlines()]
    assert lines[-1]["type"] == "summary" and lines[-1]["snapshots"] == 31
    events = [x for x in lines if x["type"] == "event"]
    assert len(events) == lines[-1]["events"] > 0
    assert all(set(e) == {"t", "cgroup", "key", "value", "old", "rule", "kind", "type"} for e in events)


def test_replay_with_other_rules_and_a_truncated_trace(tmp_path):
    path = tmp_path / "t.tgr"
    record(synthetic_run(), path)
    path.write_bytes(path.read_bytes()[:-5])
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text("rules:\n  - {name: big, when: mem.current > 1GiB, tags: {mem: big}}\n")
    res = CliRunner().invoke(replay, [str(path), "--rules", str(rules)])
    assert res.exit_code == 0
    assert "warning:" in res.stderr and "truncated" in res.stderr
    assert "/  mem=big" in res.output and "/work/web  mem=big" in res.output
    assert "priority" not in res.output


def test_replay_refuses_bad_rules(tmp_path):
    path = tmp_path / "t.tgr"
    record(synthetic_run(2), path)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text("rules:\n  - {name: bad, when: cpu.usag > 1, tags: {a: b}}\n")
    res = CliRunner().invoke(replay, [str(path), "--rules", str(rules)])
    assert res.exit_code == 1
    assert "did you mean cpu.usage?" in res.output


class _FakeCollector:
    """Stands in for tagger.telemetry's collector: same context-manager and
    stream(interval, count) shape (docs/interfaces.md)."""

    def __init__(self, snaps, log):
        self.snaps, self.log = snaps, log

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.log.append("closed")

    def stream(self, interval, count=None):
        self.log.append(("stream", interval, count))
        yield from self.snaps[:count]


def test_record_command_writes_what_the_collector_streams(tmp_path, monkeypatch):
    import sys
    import types

    from tagger.cli.trace import record as record_cmd

    log = []
    snaps = synthetic_run(10)
    fake = types.ModuleType("tagger.telemetry")
    fake.open_collector = lambda prefer_bpf=True, **kw: (log.append(("open", prefer_bpf)),
                                                         _FakeCollector(snaps, log))[1]
    monkeypatch.setitem(sys.modules, "tagger.telemetry", fake)
    out = tmp_path / "r.tgr"
    res = CliRunner().invoke(record_cmd, ["-o", str(out), "--duration", "5s", "--interval",
                                          "500ms", "--cgroupfs-only"])
    assert res.exit_code == 0, res.output
    assert log == [("open", False), ("stream", 0.5, 10), "closed"]
    back = list(read_trace(out))
    assert len(back) == 10
    for a, b in zip(snaps, back):
        assert_same(a, b)
    assert TraceReader(out).header["meta"] == {"interval": 0.5}


def test_replay_in_separate_processes_is_byte_identical(tmp_path):
    # Different hash seeds in different processes: nothing may depend on set or
    # dict iteration of strings.
    import os
    import subprocess
    import sys
    path = tmp_path / "t.tgr"
    record(synthetic_run(), path)
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.append(subprocess.run([sys.executable, "-m", "tagger.cli.main", "replay", str(path),
                                    "--json"], capture_output=True, env=env, check=True,
                                   timeout=120).stdout)
    assert outs[0] == outs[1]
    assert b'"kind": "added"' in outs[0]
