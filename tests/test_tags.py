"""TagStore: current tags with their rule and since, and the bounded history."""

from __future__ import annotations

import threading

import pytest

from tagger.cgroupglob import compile_glob
from tagger.tags import Tag, TagEvent, TagStore


def test_set_change_remove_make_events_and_keep_since():
    s = TagStore()
    e1 = s.set("/a", "cpu", "hot", "r1", 1.0)
    assert e1 == TagEvent(1.0, "/a", "cpu", "hot", None, "r1", "added")
    assert s.set("/a", "cpu", "hot", "r1", 2.0) is None            # no change, no event
    assert s.tags_of("/a")["cpu"] == Tag("cpu", "hot", "r1", 1.0)
    e2 = s.set("/a", "cpu", "warm", "r2", 3.0)
    assert (e2.kind, e2.old, e2.value) == ("changed", "hot", "warm")
    assert s.tags_of("/a")["cpu"].since == 3.0
    e3 = s.remove("/a", "cpu", 4.0)
    assert (e3.kind, e3.old, e3.value, e3.rule) == ("removed", "warm", None, "r2")
    assert s.remove("/a", "cpu", 5.0) is None
    assert s.current() == {}
    assert [e.kind for e in s.history()] == ["added", "changed", "removed"]


def test_same_value_from_another_rule_moves_ownership_silently():
    s = TagStore()
    s.set("/a", "k", "v", "r1", 1.0)
    assert s.set("/a", "k", "v", "r2", 2.0) is None
    assert s.tags_of("/a")["k"] == Tag("k", "v", "r2", 1.0)


def test_drop_removes_every_tag_of_a_cgroup_in_key_order():
    s = TagStore()
    s.set("/a", "z", "1", "r", 0.0)
    s.set("/a", "b", "2", "r", 0.0)
    s.set("/b", "b", "2", "r", 0.0)
    events = s.drop("/a", 9.0)
    assert [(e.key, e.kind, e.old) for e in events] == [("b", "removed", "2"), ("z", "removed", "1")]
    assert list(s.current()) == ["/b"]


def test_history_is_bounded_and_filters_by_time_and_limit():
    s = TagStore(history=3)
    for i in range(5):
        s.set("/a", "n", str(i), "r", float(i))
    assert [e.value for e in s.history()] == ["2", "3", "4"]
    assert [e.value for e in s.history(since=2.0)] == ["3", "4"]
    assert [e.value for e in s.history(limit=1)] == ["4"]
    assert s.history(limit=0) == []
    with pytest.raises(ValueError):
        TagStore(history=-1)


def test_history_per_cgroup_before_the_limit():
    s = TagStore()
    for i, path in enumerate(["/k/a", "/b", "/k/c", "/b", "/k/a/x"]):
        s.set(path, "n", str(i), "r", float(i))
    under_k = compile_glob("/k/**").match
    assert [e.cgroup for e in s.history(cgroup=under_k)] == ["/k/a", "/k/c", "/k/a/x"]
    # The filter comes first: the newest one of /k's, not the newest event if it is /k's.
    assert [e.value for e in s.history(cgroup=lambda p: p == "/b", limit=1)] == ["3"]
    assert [e.value for e in s.history(since=1.0, cgroup=under_k)] == ["2", "4"]


def test_current_is_a_copy():
    s = TagStore()
    s.set("/a", "k", "v", "r", 0.0)
    cur = s.current()
    cur["/a"]["k"] = None
    cur["/b"] = {}
    assert s.tags_of("/a")["k"].value == "v"
    assert s.paths() == ["/a"]


def test_apply_is_atomic_for_readers():
    # A reader never sees half of an applied batch: both keys or neither.
    s = TagStore()
    batch = [TagEvent(0.0, "/a", "x", "1", None, "r", "added"),
             TagEvent(0.0, "/a", "y", "1", None, "r", "added")]
    undo = [TagEvent(0.0, "/a", "x", None, "1", "r", "removed"),
            TagEvent(0.0, "/a", "y", None, "1", "r", "removed")]
    seen = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(tuple(sorted(s.tags_of("/a"))))

    th = threading.Thread(target=reader)
    th.start()
    for _ in range(2000):
        s.apply(batch)
        s.apply(undo)
    stop.set()
    th.join()
    assert seen <= {(), ("x", "y")}


def test_event_as_dict_round_trips():
    e = TagEvent(1.5, "/a", "k", "v", None, "r", "added")
    assert TagEvent(**e.as_dict()) == e
