"""tagger top's pure parts: rate methods, rows, sort/filter/selection state,
tree order, thresholds from rules, detail content, the render step, and the
socket source's decoding.  No Textual here (see test_top_app.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tagger.cli.top import render
from tagger.cli.top.model import (DEFAULT_THRESHOLDS, KEYS, ActionInfo, Frame, TopModel, per_second,
                                  quota_cpus, thresholds_from_rules, tree_order, wait_fraction)
from tagger.cli.top.sources import DemoSource, header_health
from tagger.publish.report import Health
from tagger.publish.wire import snapshot_from_plain
from tagger.snapshot import CULPRIT_DTYPE, PREEMPTION_DTYPE, Snapshot
from tagger.tags import Tag, TagEvent

NAN = math.nan


def make_frame(rows: dict[str, dict[str, float]], *, t=100.0, tags=None, actions=None, events=(),
               edges=None, histograms=None, preemptions=(), culprits=(), health=None, node=None) -> Frame:
    """A Frame from {path: {metric: value}}; metrics missing for a row are NaN."""
    paths = list(rows)
    metrics = sorted({m for vals in rows.values() for m in vals})
    cols = {m: [rows[p].get(m, NAN) for p in paths] for m in metrics}
    snap = Snapshot.synthetic(paths, cols, t=t, node=node or {"cpus": 8, "runq.p99": 1e-3})
    if edges is not None:
        snap.hist_edges = np.asarray(edges, dtype=np.float64)
    if histograms:
        snap.histograms = {k: np.asarray(v, dtype=np.float64) for k, v in histograms.items()}
    if preemptions:
        snap.preemptions = np.array([tuple(p) for p in preemptions], dtype=PREEMPTION_DTYPE)
    if culprits:
        snap.culprits = np.array([tuple(c) for c in culprits], dtype=CULPRIT_DTYPE)
    return Frame.build(snap, tags or {}, actions or {}, list(events), health or {})


THREE = {
    "/a": {"cpu.usage": 0.5, "runq.p99": 1e-3, "io.lat.p99": 4e-3},
    "/b": {"cpu.usage": 2.0, "runq.p99": 5e-4},
    "/c": {"cpu.usage": 0.1, "runq.p99": 3e-3, "io.lat.p99": 1e-3},
}


def shown_paths(model: TopModel) -> list[str]:
    return [model.rows.paths[i] for i in model.order]


# -- rate methods --------------------------------------------------------------

def test_wait_fraction_is_wait_over_runnable_time_and_unknown_when_idle():
    got = wait_fraction([0.5, 0.0, 0.0, NAN], [1.5, 2.0, 0.0, 1.0])
    assert got[0] == pytest.approx(0.25)
    assert got[1] == 0.0
    assert math.isnan(got[2])          # neither ran nor waited: unknown, not 0%
    assert math.isnan(got[3])


def test_per_second_guards_a_zero_or_negative_period():
    got = per_second([10.0, 10.0, 10.0], [2.0, 0.0, -1.0])
    assert got[0] == 5.0
    assert math.isnan(got[1]) and math.isnan(got[2])


@pytest.mark.parametrize("value, cpus", [
    ("50000 100000", 0.5), ("max 100000", NAN), (1.5, 1.5), ("200000 100000", 2.0),
    ((25000, 100000), 0.25), ("0.5 CPU", 0.5), ({"max": 0.75}, 0.75), ("garbage here x", NAN),
    ("10 0", NAN), (None, NAN),
])
def test_quota_cpus_reads_cpu_max_values(value, cpus):
    got = quota_cpus(value)
    assert (math.isnan(got) and math.isnan(cpus)) or got == pytest.approx(cpus)


# -- sorting, filtering, selection ---------------------------------------------

def test_default_sort_is_cpu_descending_and_the_same_key_reverses():
    m = TopModel()
    m.apply_frame(make_frame(THREE))
    assert shown_paths(m) == ["/b", "/a", "/c"]
    m.sort_by("cpu")
    assert shown_paths(m) == ["/c", "/a", "/b"]
    m.sort_by("runq")
    assert shown_paths(m) == ["/c", "/a", "/b"]     # a new key starts in its natural direction
    m.sort_by("name")
    assert shown_paths(m) == ["/a", "/b", "/c"]
    m.sort_by("name")
    assert shown_paths(m) == ["/c", "/b", "/a"]


def test_unknown_values_sort_last_in_both_directions():
    m = TopModel()
    m.apply_frame(make_frame(THREE))
    m.sort_by("io")
    assert shown_paths(m) == ["/a", "/c", "/b"]     # /b has no I/O (NaN)
    m.sort_by("io")
    assert shown_paths(m) == ["/c", "/a", "/b"]


def test_unknown_sort_key_is_refused_with_the_known_ones():
    m = TopModel()
    with pytest.raises(ValueError, match="cpu, runq, io, name, slowdown"):
        m.sort_by("memory")


def test_filter_matches_name_path_and_tags_case_insensitively():
    tags = {"/c": {"priority": Tag("priority", "low", "r1", 1.0)}}
    m = TopModel()
    m.apply_frame(make_frame(THREE, tags=tags))
    m.set_filter("priority=LOW")
    assert shown_paths(m) == ["/c"]
    m.set_filter("/A")
    assert shown_paths(m) == ["/a"]
    m.set_filter("nothing-like-this")
    assert shown_paths(m) == []
    assert "nothing-like-this" in m.empty_reason()
    m.set_filter("")
    assert len(shown_paths(m)) == 3


def test_selection_follows_its_cgroup_across_a_refresh_that_reorders():
    m = TopModel()
    m.apply_frame(make_frame(THREE))
    m.move(1)
    assert m.state.selected == "/a" and m.state.cursor == 1
    changed = {**THREE, "/a": {**THREE["/a"], "cpu.usage": 9.0}}
    m.apply_frame(make_frame(changed))
    assert shown_paths(m)[0] == "/a"
    assert m.state.selected == "/a" and m.state.cursor == 0
    m.sort_by("name")
    assert m.state.selected == "/a" and m.state.cursor == 0
    m.sort_by("name")
    assert m.state.selected == "/a" and m.state.cursor == 2


def test_selected_cgroup_vanishing_keeps_the_cursor_place_and_says_so():
    m = TopModel()
    m.apply_frame(make_frame(THREE))
    m.move(1)                                       # /a, in the middle
    m.apply_frame(make_frame({k: v for k, v in THREE.items() if k != "/a"}))
    assert m.state.cursor == 1
    assert m.state.selected == "/c"
    assert m.state.message == "/a vanished"
    assert m.detail().path == "/c"                  # the detail pane follows the new selection


def test_last_cgroup_vanishing_leaves_the_empty_state():
    m = TopModel()
    m.apply_frame(make_frame({"/only": {"cpu.usage": 1.0}}))
    m.apply_frame(make_frame({}))
    assert m.selected_row() is None
    assert m.state.message == "/only vanished"
    assert m.empty_reason() == "no cgroups in this snapshot"
    assert m.detail() is None


def test_empty_before_the_first_frame():
    m = TopModel()
    assert m.empty_reason().startswith("waiting for the first tick")
    m.move(1)                                        # keys before any frame are harmless
    assert m.selected_row() is None


def test_window_scrolls_to_keep_the_selection_visible():
    m = TopModel()
    m.apply_frame(make_frame({f"/w{i:03d}": {"cpu.usage": 100 - i} for i in range(100)}))
    assert list(m.window(10)) == list(range(10))
    m.move(15)
    win = m.window(10)
    assert m.order[m.state.cursor] in win and win[-1] == m.order[15]
    m.move_to(-1)
    assert m.window(10)[-1] == m.order[-1]
    m.move_to(0)
    assert m.window(10)[0] == m.order[0]


def test_tree_order_is_depth_first_with_siblings_in_sort_order():
    paths = ["/", "/a", "/a/x", "/a/y", "/b", "/orphan/z"]
    flat = np.array([0, 4, 1, 3, 2, 5])         # the sort: /, /b, /a, /a/y, /a/x, /orphan/z
    order, depth = tree_order(paths, flat)
    assert [paths[i] for i in order] == ["/", "/b", "/a", "/a/y", "/a/x", "/orphan/z"]
    assert list(depth) == [0, 1, 2, 2, 1, 0]


def test_tree_mode_in_the_model_keeps_the_filter():
    m = TopModel()
    m.apply_frame(make_frame({"/": {"cpu.usage": 3}, "/a": {"cpu.usage": 1}, "/a/web": {"cpu.usage": 1},
                              "/b": {"cpu.usage": 2}}))
    m.toggle_tree()
    assert shown_paths(m) == ["/", "/b", "/a", "/a/web"]
    m.set_filter("web")
    assert shown_paths(m) == ["/a/web"]
    assert m.depth[m.order[0]] == 2


# -- thresholds ------------------------------------------------------------------

def test_thresholds_come_from_the_lowest_rule_comparison(tmp_path):
    # From the loaded rules (tagger.rules), so every file must load: a rule tags.
    (tmp_path / "10-base.yaml").write_text(
        "macros:\n  busy: cpu.usage > 0.9 and node.runq.p99 > 1us\n"
        "rules:\n  - name: starved\n    when: runq.p99 > 4ms\n    tags: {latency: starved}\n")
    (tmp_path / "20-more.yaml").write_text(
        "rules:\n  - name: very-starved\n    when: runq.p99 >= 2500us or io.lat.p99 > 20ms\n"
        "    tags: {latency: very-starved}\n")
    th = thresholds_from_rules(tmp_path)
    assert th["cpu.usage"] == pytest.approx(0.9)
    assert th["runq.p99"] == pytest.approx(2.5e-3)      # node.runq.p99 > 1us is not a cgroup's
    assert th["io.lat.p99"] == pytest.approx(0.02)
    assert th["runq.slowdown"] == DEFAULT_THRESHOLDS["runq.slowdown"]


def test_thresholds_without_rules_are_the_defaults(tmp_path):
    assert thresholds_from_rules(None) == DEFAULT_THRESHOLDS
    assert thresholds_from_rules(tmp_path / "absent") == DEFAULT_THRESHOLDS
    # A directory that does not load only costs the colours (the view still starts).
    (tmp_path / "10-base.yaml").write_text("rules:\n  - name: starved\n    when: runq.p99 > 4ms\n"
                                           "    tags: {latency: starved}\n")
    (tmp_path / "30-broken.yaml").write_text("rules: [unclosed\n")
    assert thresholds_from_rules(tmp_path) == DEFAULT_THRESHOLDS


# -- detail -------------------------------------------------------------------

def test_detail_carries_histograms_history_preemptions_tags_actions_events():
    edges = [1e-6, 1e-5, 1e-4, 1e-3]
    tags = {"/a": {"priority": Tag("priority", "high", "latency-critical", 90.0)}}
    actions = {"/b": [ActionInfo("/b", "cpu.max", "50000 100000", "max 100000", "cap-hogs", 95.0)]}
    events = [TagEvent(99.0, "/a", "priority", "high", None, "latency-critical", "added"),
              TagEvent(99.0, "/b", "resource", "cpu-intensive", None, "cpu-intensive", "added")]
    m = TopModel()
    for t in (98.0, 99.0):
        m.apply_frame(make_frame(THREE, t=t))
    m.apply_frame(make_frame(
        THREE, t=100.0, tags=tags, actions=actions, events=events, edges=edges,
        histograms={"runq.wakeup": [[1, 2, 0], [0, 0, 0], [0, 0, 0]],
                    "runq.preempt": [[0, 3, 4], [0, 0, 0], [0, 0, 0]],
                    "io.lat": [[0, 0, 7], [0, 0, 0], [0, 0, 0]]},
        culprits=[(0, 1, 0.05), (0, 2, 0.08), (2, 0, 0.01)]))
    d = m.detail("/a")
    assert list(d.runq_hist) == [1, 5, 4]
    assert list(d.io_hist) == [0, 0, 7]
    assert d.waited_behind == [("c", 0.08), ("b", 0.05)]
    assert d.held_up == [("c", 0.01)]
    assert [t.rule for t in d.tags] == ["latency-critical"]
    assert [e.key for e in d.events] == ["priority"]
    assert list(d.history["cpu"]) == [0.5, 0.5, 0.5]
    assert m.detail("/b").actions[0].rule == "cap-hogs"
    assert m.rows.values["throttle"][1] == pytest.approx(0.5)


def test_history_has_gaps_where_the_cgroup_was_absent():
    m = TopModel()
    m.apply_frame(make_frame({"/a": {"cpu.usage": 1.0}}))
    m.apply_frame(make_frame({"/b": {"cpu.usage": 1.0}}))
    m.apply_frame(make_frame({"/a": {"cpu.usage": 3.0}, "/b": {"cpu.usage": 1.0}}))
    h = m.history("/a")["cpu"]
    assert h[0] == 1.0 and math.isnan(h[1]) and h[2] == 3.0


# -- frames from plain data (the socket) ------------------------------------------

def test_frame_build_accepts_the_sockets_plain_dicts():
    snap = Snapshot.synthetic(["/a"], {"cpu.usage": [1.0]})
    frame = Frame.build(
        snap, tags={"/a": {"priority": {"value": "low", "rule": "r", "since": 5.0}}},
        actions=[{"cgroup": "/a", "knob": "cpu.max", "value": "50000 100000", "rule": "cap",
                  "since": 6.0, "dry_run": True}],
        events=[{"t": 7.0, "cgroup": "/a", "key": "priority", "value": "low", "old": None,
                 "rule": "r", "kind": "added"}])
    assert frame.tags["/a"]["priority"] == Tag("priority", "low", "r", 5.0)
    assert frame.actions["/a"][0].dry_run is True
    assert frame.events[0].kind == "added"


def test_snapshot_round_trips_through_the_publishers_plain_form():
    from tagger.publish.wire import snapshot_to_plain
    snap = DemoSource(30, seed=3).next_frame().snapshot
    back = snapshot_from_plain(snapshot_to_plain(snap))
    assert back.cgroups.paths == snap.cgroups.paths
    np.testing.assert_array_equal(back.column("runq.p99"), snap.column("runq.p99"))
    assert back.node["cpus"] == snap.node["cpus"]


def test_preemptions_and_culprits_round_trip_in_detail():
    """runq.wait.by travels like the preemptions: [victim, culprit, wait]
    rows of the reply's table, pairs with a row filtered out dropped."""
    from tagger.publish.wire import snapshot_to_plain
    from tagger.snapshot import CULPRIT_DTYPE
    snap = Snapshot.synthetic(["/a", "/b", "/c"], {"cpu.usage": [1.0, 0.5, 0.1]})
    snap.preemptions = np.array([(0, 1, 30.0)], PREEMPTION_DTYPE)
    snap.culprits = np.array([(0, 1, 0.2), (0, 2, 0.05), (2, 1, 0.1)], CULPRIT_DTYPE)
    back = snapshot_from_plain(snapshot_to_plain(snap, detail=True))
    assert back.culprits.tolist() == snap.culprits.tolist()
    assert back.culprit_of().tolist() == [1, -1, 1]
    part = snapshot_from_plain(snapshot_to_plain(snap, patterns=["/a", "/c"], detail=True))
    assert part.culprits.tolist() == [(0, 1, 0.05)]      # /a -> /c, in the reply's rows


def test_health_keys_of_the_daemon_are_mapped():
    h = header_health(Health.from_plain({"events_per_second": 1200.0, "ringbuf_drops": 2, "map_full": 1,
                                         "rules_loaded": 7, "dry_run": False, "source": "bpf"}), actions=3)
    assert h == {"events_per_s": 1200.0, "drops": 3, "rules": 7, "actions": 3, "dry_run": False,
                 "source": "bpf"}


# -- the render step ---------------------------------------------------------------

def _line_text(segments) -> str:
    return "".join(s.text for s in segments)


def test_row_colours_values_past_the_threshold_and_shows_the_quota():
    actions = {"/b": [ActionInfo("/b", "cpu.max", "50000 100000", None, "cap", 1.0)]}
    m = TopModel({**DEFAULT_THRESHOLDS, "cpu.usage": 1.0})
    m.apply_frame(make_frame(THREE, actions=actions))
    widths = render.layout(140)
    b = m.rows.paths.index("/b")
    segs = render.row_segments(m, b, widths)
    cells = [s for s in segs if s.text.strip()]
    cpu = next(s for s in cells if s.text.strip() == "2.00")
    assert cpu.style.color.name == "red"
    assert any(s.text.strip() == "0.50 CPU" for s in cells)
    a = render.row_segments(m, m.rows.paths.index("/a"), widths)
    assert next(s for s in a if s.text.strip() == "0.50").style.color is None
    for line in render.screen_lines(m, 140, 10):
        assert sum(len(s.text) for s in line) <= 140


def test_screen_lines_draw_only_the_visible_rows():
    m = TopModel()
    m.apply_frame(DemoSource(500, seed=1).next_frame())
    lines = render.screen_lines(m, 120, 25)
    assert len(lines) == 25                          # the titles + 24 rows, not 500
    assert "CPU▼" in _line_text(lines[0])


def test_sparkline_scales_to_the_maximum_and_leaves_gaps():
    assert render.sparkline([0, 1, 2, NAN, 4]) == "▁▃▅ █"   # 1/4 of the top: 1.75 of 7 steps
    assert render.sparkline([0, 0]) == "▁▁"
    assert render.sparkline(range(100), width=10) == render.sparkline(range(90, 100))


def test_keys_table_covers_the_issue_and_has_no_duplicates():
    keys = [k for key in KEYS for k in key.key.split(",")]
    assert len(keys) == len(set(keys))
    shown = {k.key: k.action for k in KEYS if k.show}
    assert shown == {"c": "sort('cpu')", "r": "sort('runq')", "i": "sort('io')", "n": "sort('name')",
                     "s": "sort('slowdown')", "slash": "filter", "t": "tree", "enter": "detail",
                     "p": "pause", "q": "quit"}


def test_name_order_follows_a_changed_table():
    m = TopModel()
    m.sort_by("name")
    m.apply_frame(make_frame({"/b": {}, "/a": {}}))
    assert shown_paths(m) == ["/a", "/b"]
    m.apply_frame(make_frame({"/c": {}, "/b": {}, "/a": {}}))   # same names would reuse the order
    assert shown_paths(m) == ["/a", "/b", "/c"]


def test_tree_follows_a_changed_hierarchy():
    m = TopModel()
    m.toggle_tree()
    m.apply_frame(make_frame({"/a": {"cpu.usage": 1}, "/a/x": {"cpu.usage": 1}, "/b": {"cpu.usage": 2}}))
    assert shown_paths(m) == ["/b", "/a", "/a/x"]
    m.apply_frame(make_frame({"/a": {"cpu.usage": 1}, "/b": {"cpu.usage": 2}, "/b/x": {"cpu.usage": 1}}))
    assert shown_paths(m) == ["/b", "/b/x", "/a"]


def test_header_prefers_the_ticks_rates_over_the_agents_totals():
    m = TopModel()
    m.apply_frame(make_frame(THREE, node={"cpus": 4, "runq.p99": 1e-3, "events": 5000.0, "drops": 2.0},
                             health={"events_per_s": 1.0, "drops": 900, "rules": 3, "dry_run": False}))
    header = render.header_text(m).plain
    assert "5k events/s" in header and "2 drops/s" in header
    assert "900" not in header
    assert "live" in header and "DRY-RUN" not in header
