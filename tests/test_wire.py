"""tagger.publish.wire: each encoder beside its decoder, round trips exact."""

import math

import numpy as np
import pytest

from tagger.clock import epoch
from tagger.publish.wire import (HEADER, FrameTooLarge, current_tags_from_plain, current_tags_plain,
                                 decode_body, encode_frame, event_from_plain, event_plain, from_display,
                                 snapshot_from_plain, snapshot_to_plain, take_frame, to_plain)
from tagger.snapshot import CULPRIT_DTYPE, PREEMPTION_DTYPE, CgroupTable, Snapshot
from tagger.tags import Tag, TagEvent

ODD = "/weird\udcff.slice"          # a cgroup name that is not UTF-8 (tagger.names internal form)


def full_snapshot() -> Snapshot:
    paths = ["/", "/a", ODD]
    table = CgroupTable.from_paths(paths, ids=[1, 2, 3],
                                   labels=[{}, {"pod": "web"}, {"container": ODD}])
    edges = np.array([0.0, 1e-6, 2e-6, 4e-6])
    return Snapshot(t=12.5, dt=1.0, cgroups=table,
                    columns={"cpu.usage": np.array([2.0, 1.5, math.nan]), "runq.p99": np.array([1e-3, 0, 5e-6])},
                    node={"cpus": 4.0, "events": 1200.0},
                    histograms={"runq": np.array([[1, 2, 3], [0, 0, 1], [4, 0, 0]], dtype=np.float64)},
                    hist_edges=edges,
                    preemptions=np.array([(1, 2, 30.0)], PREEMPTION_DTYPE),
                    culprits=np.array([(1, 2, 0.25), (2, 1, 0.5)], CULPRIT_DTYPE),
                    source="bpf", seq=7)


def test_snapshot_plain_round_trip_is_exact():
    snap = full_snapshot()
    back = snapshot_from_plain(decode_body(take_frame(bytearray(encode_frame(
        snapshot_to_plain(snap, detail=True))), 1 << 20)))
    assert back.t == epoch(snap.t)                 # on the wire and back: epoch seconds
    assert (back.dt, back.seq, back.source) == (snap.dt, snap.seq, snap.source)
    assert back.cgroups.paths == snap.cgroups.paths and back.cgroups.names == snap.cgroups.names
    assert back.cgroups.labels == snap.cgroups.labels
    assert back.cgroups.ids.tolist() == snap.cgroups.ids.tolist()
    assert back.columns.keys() == snap.columns.keys()
    for name, col in snap.columns.items():
        np.testing.assert_array_equal(back.columns[name], col)
    assert back.node == snap.node
    np.testing.assert_array_equal(back.histograms["runq"], snap.histograms["runq"])
    np.testing.assert_array_equal(back.hist_edges, snap.hist_edges)
    assert back.preemptions.tolist() == snap.preemptions.tolist()
    assert back.culprits.tolist() == snap.culprits.tolist()
    # and again: the plain form of the decoded snapshot is the same plain form
    again = snapshot_to_plain(back, detail=True)
    first = snapshot_to_plain(snap, detail=True)
    again["t"] = first["t"]
    assert encode_frame(again) == encode_frame(first)


def test_pairs_as_maps_are_read_too():
    plain = snapshot_to_plain(full_snapshot(), detail=True)
    plain["culprits"] = [{"victim": 1, "culprit": 2, "wait": 0.25}]
    assert snapshot_from_plain(plain).culprits.tolist() == [(1, 2, 0.25)]


def test_display_form_round_trip():
    plain = to_plain({ODD: [ODD, 1, np.float64(2.5)]})
    plain["x"] = None
    assert from_display(plain) == {ODD: [ODD, 1, 2.5], "x": None}


def test_frames_whole_partial_and_too_large():
    buf = bytearray(encode_frame({"op": "hello"}) + encode_frame({"op": "tags"})[:-1])
    assert decode_body(take_frame(buf, 1024)) == {"op": "hello"}
    assert take_frame(buf, 1024) is None          # the second is not whole yet
    buf += encode_frame({"op": "tags"})[-1:]
    assert decode_body(take_frame(buf, 1024)) == {"op": "tags"} and not buf
    big = bytearray(HEADER.pack(2048) + b"x")
    with pytest.raises(FrameTooLarge, match="2048 bytes exceeds 1024"):
        take_frame(big, 1024)


def wire(obj):
    return decode_body(take_frame(bytearray(encode_frame(obj)), 1 << 20), strict_map_key=False)


def test_tag_event_round_trip():
    for ev in (TagEvent(5.0, ODD, "resource", "cpu-intensive", None, "cpu", "added"),
               TagEvent(6.0, "/a", "resource", None, "cpu-intensive", "cpu", "removed")):
        back = event_from_plain(wire(event_plain(ev)))
        assert back == TagEvent(epoch(ev.t), *[getattr(ev, f) for f in ("cgroup", "key", "value", "old",
                                                                          "rule", "kind")])


def test_current_tags_round_trip():
    current = {ODD: {"resource": Tag("resource", "cpu-intensive", "cpu", 5.0)},
               "/a": {"owner": Tag("owner", ODD, "", 2.0), "k": Tag("k", "v", "r", 1.0)}}
    back = current_tags_from_plain(wire(current_tags_plain(current)))
    assert back == {path: {key: Tag(t.key, t.value, t.rule, epoch(t.since)) for key, t in tags.items()}
                    for path, tags in current.items()}
    assert current_tags_from_plain(wire(current_tags_plain(current, ["/a"]))).keys() == {"/a"}
