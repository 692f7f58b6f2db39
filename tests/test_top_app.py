"""tagger top through Textual's headless pilot, against scripted frames:
keys, sorting, filtering, selection across refreshes, the detail pane, the
empty state, a cgroup vanishing while selected, pause, the sampler thread,
and quitting.  pytest-asyncio is not installed: each test runs its own loop."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

from tagger.cli.top.app import TopApp
from tagger.cli.top.model import KEYS, ActionInfo
from tagger.cli.top.sources import DemoSource, FakeSource
from tagger.cli.top.widgets import CgroupTable
from tagger.tags import Tag, TagEvent
from tests.test_top_model import THREE, make_frame

SIZE = (140, 40)


def run(coro):
    return asyncio.run(coro)


def table_lines(app) -> list[str]:
    """What the table shows, line by line (titles first), trailing blanks cut."""
    table = app.query_one(CgroupTable)
    lines = [table.render_line(y).text.rstrip() for y in range(table.size.height)]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def row_names(app) -> list[str]:
    return [line.split()[0] for line in table_lines(app)[1:] if line.strip()]


def selected_line(app) -> str:
    """The table line drawn with the selection background."""
    table = app.query_one(CgroupTable)
    for y in range(1, table.size.height):
        strip = table.render_line(y)
        if any(seg.style is not None and seg.style.bgcolor is not None for seg in strip):
            return strip.text.strip()
    return ""


def text_of(app, selector) -> str:
    """A Static's content as plain text, rendered at the widget's width."""
    widget = app.query_one(selector)
    console = Console(width=max(40, widget.size.width or SIZE[0]), file=io.StringIO(), color_system=None)
    console.print(widget.content)
    return console.file.getvalue()


async def until(pilot, condition, what, ticks=200):
    """Wait for ``condition`` by letting the app run, not by sleeping."""
    for _ in range(ticks):
        if condition():
            return
        await pilot.pause(0.01)
    raise AssertionError(f"timed out waiting for {what}: {pilot.app.query_one('#status').content}")


def scripted(*frames) -> tuple[TopApp, FakeSource]:
    source = FakeSource(frames)
    return TopApp(source, interval=None), source


# -- sorting keys ---------------------------------------------------------------

def test_sort_keys_reorder_and_the_same_key_reverses():
    async def go():
        app, _ = scripted(make_frame(THREE))
        async with app.run_test(size=SIZE) as pilot:
            app.sample_now()
            await pilot.pause()
            assert row_names(app) == ["b", "a", "c"]
            assert "CPU▼" in table_lines(app)[0]
            await pilot.press("r")
            assert row_names(app) == ["c", "a", "b"]
            assert "RUNQ p99▼" in table_lines(app)[0]
            await pilot.press("r")
            assert row_names(app) == ["b", "a", "c"]
            assert "RUNQ p99▲" in table_lines(app)[0]
            await pilot.press("n")
            assert row_names(app) == ["a", "b", "c"]
            await pilot.press("i")
            assert row_names(app) == ["a", "c", "b"]     # b has no I/O: last
            await pilot.press("s", "c")
            assert row_names(app) == ["b", "a", "c"]
    run(go())


def test_footer_lists_the_key_table():
    async def go():
        app, _ = scripted()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            footer = {(k.key, k.description) for k in app.query("FooterKey")}
            assert footer == {(k.key, k.description) for k in KEYS if k.show}
    run(go())


# -- filter -----------------------------------------------------------------------

def test_filter_by_name_and_by_tag_then_escape_clears():
    tags = {"/c": {"priority": Tag("priority", "low", "best-effort", 90.0)}}

    async def go():
        app, _ = scripted(make_frame(THREE, tags=tags))
        async with app.run_test(size=SIZE) as pilot:
            app.sample_now()
            await pilot.pause()
            await pilot.press("slash", *"priority=low")
            assert row_names(app) == ["c"]                 # narrows as you type
            assert app.model.state.sort == "cpu"          # the "c" and "r" typed were text, not keys
            await pilot.press("enter")
            assert not app.query_one("#filter").has_class("open")
            assert app.model.state.detail is False        # Enter in the box did not open the detail
            assert "filter priority=low" in text_of(app, "#status")
            await pilot.press("escape")
            assert row_names(app) == ["b", "a", "c"]
            await pilot.press("slash", "x", "y", "z")
            assert "no cgroup matches the filter 'xyz'" in "\n".join(table_lines(app))
            await pilot.press("escape")                   # abandons the typed filter
            assert row_names(app) == ["b", "a", "c"]
            assert app.focused is app.query_one(CgroupTable)
    run(go())


# -- selection -----------------------------------------------------------------------

def test_selection_survives_a_refresh_that_reorders():
    async def go():
        app, source = scripted(make_frame(THREE))
        async with app.run_test(size=SIZE) as pilot:
            app.sample_now()
            await pilot.pause()
            await pilot.press("down")
            assert selected_line(app).startswith("a ")
            source.push(make_frame({**THREE, "/a": {**THREE["/a"], "cpu.usage": 7.0}}, t=101.0))
            app.sample_now()
            await pilot.pause()
            assert row_names(app) == ["a", "b", "c"]
            assert selected_line(app).startswith("a ")
            assert app.model.state.selected == "/a"
            await pilot.press("t")                         # tree mode keeps it too
            assert app.model.state.selected == "/a"
            assert selected_line(app).startswith("a ")
    run(go())


def test_cgroup_vanishing_while_selected_moves_to_its_place_and_says_so():
    async def go():
        app, source = scripted(make_frame(THREE))
        async with app.run_test(size=SIZE) as pilot:
            app.sample_now()
            await pilot.pause()
            await pilot.press("down", "enter")
            assert "/a" in text_of(app, "#detail-body")
            source.push(make_frame({k: v for k, v in THREE.items() if k != "/a"}, t=101.0))
            app.sample_now()
            await pilot.pause()
            assert row_names(app) == ["b", "c"]
            assert selected_line(app).startswith("c ")
            assert "/a vanished" in text_of(app, "#status")
            body = text_of(app, "#detail-body")
            assert "/a vanished" in body and "/c" in body
            await pilot.press("up")                        # moving on clears the notice
            assert "vanished" not in text_of(app, "#status")
    run(go())


def test_ten_thousand_cgroups_draw_only_the_screen_and_end_reaches_the_last():
    async def go():
        frame = DemoSource(10_000, seed=5).next_frame()
        app, _ = scripted(frame)
        async with app.run_test(size=SIZE) as pilot:
            app.sample_now()
            await pilot.pause()
            assert len(table_lines(app)) == app.query_one(CgroupTable).size.height
            assert "10,000/10,000 cgroups" in text_of(app, "#status")
            await pilot.press("end")
            last = app.model.rows.names[app.model.order[-1]]
            assert selected_line(app).startswith(last)
            await pilot.press("pageup")
            assert app.model.state.cursor == 10_000 - 1 - app.query_one(CgroupTable).page_rows
    run(go())


# -- detail pane ------------------------------------------------------------------------

def test_detail_shows_histograms_sparklines_culprits_tags_actions_events():
    edges = [1e-6, 1e-5, 1e-4, 1e-3]
    tags = {"/b": {"resource": Tag("resource", "cpu-intensive", "cpu-intensive", 95.0)}}
    actions = {"/b": [ActionInfo("/b", "cpu.max", "50000 100000", "max 100000", "cap-low-priority-hogs",
                                 96.0, dry_run=True)]}
    events = [TagEvent(95.0, "/b", "resource", "cpu-intensive", None, "cpu-intensive", "added")]
    hist = {"runq.wakeup": [[0, 0, 0], [5, 40, 2], [0, 0, 0]], "io.lat": [[0, 0, 0], [0, 3, 9], [0, 0, 0]]}

    async def go():
        app, source = scripted(make_frame(THREE, t=99.0))
        source.push(make_frame(THREE, t=100.0, tags=tags, actions=actions, events=events, edges=edges,
                               histograms=hist, culprits=[(1, 2, 0.12), (0, 1, 0.033)]))
        async with app.run_test(size=SIZE) as pilot:
            app.sample_now()
            app.sample_now()
            await pilot.pause()
            assert not app.query_one("#detail").display
            await pilot.press("enter")
            assert app.query_one("#detail").display
            body = text_of(app, "#detail-body")
            assert "run-queue latency" in body and "block I/O latency" in body
            assert "10us–100us" in body and "40" in body
            assert "last 2 ticks" in body and "2.00 CPUs" in body
            assert "waited most behind" in body and "120ms/s  c" in body
            assert "held up most" in body and "33ms/s  a" in body
            assert "resource=cpu-intensive  rule cpu-intensive  since 5s" in body
            assert "cpu.max = 50000 100000" in body and "cap-low-priority-hogs" in body
            assert "dry-run" in body
            assert "+resource=cpu-intensive" in body
            assert "0.50 CPU" in selected_line(app)          # THROTTLE column
            await pilot.press("escape")
            assert not app.query_one("#detail").display
    run(go())


# -- empty state, pause, header ------------------------------------------------------------

def test_empty_state_before_the_first_tick_and_with_no_cgroups():
    async def go():
        app, source = scripted()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert "waiting for the first tick" in "\n".join(table_lines(app))
            await pilot.press("enter", "down", "c", "t")        # keys on nothing do nothing
            assert not app.query_one("#detail").display
            source.push(make_frame({}))
            app.sample_now()
            await pilot.pause()
            assert "no cgroups in this snapshot" in "\n".join(table_lines(app))
            assert "0/0 cgroups" in text_of(app, "#status")
    run(go())


def test_pause_holds_the_view_and_resume_shows_the_newest_frame():
    async def go():
        app, source = scripted(make_frame(THREE, t=100.0))
        async with app.run_test(size=SIZE) as pilot:
            app.sample_now()
            await pilot.press("p")
            assert "PAUSED" in text_of(app, "#status")
            source.push(make_frame({"/new": {"cpu.usage": 1.0}}, t=101.0))
            source.push(make_frame({"/newer": {"cpu.usage": 1.0}}, t=102.0))
            app.sample_now()
            app.sample_now()
            await pilot.pause()
            assert row_names(app) == ["b", "a", "c"]
            await pilot.press("p")
            assert row_names(app) == ["newer"]
            assert "PAUSED" not in text_of(app, "#status")
    run(go())


def test_header_shows_node_and_agent_health():
    health = {"events_per_s": 125000.0, "drops": 3, "rules": 12, "actions": 2, "dry_run": True}

    async def go():
        app, _ = scripted(make_frame(THREE, health=health, node={"cpus": 32, "runq.p99": 4e-3}))
        async with app.run_test(size=SIZE) as pilot:
            app.sample_now()
            await pilot.pause()
            header = text_of(app, "#header")
            for part in ("32 CPUs", "runq p99 4ms", "125k events/s", "3 drops", "12 rules",
                         "2 actions", "DRY-RUN"):
                assert part in header, part
    run(go())


# -- the sampler thread and quitting --------------------------------------------------------

def test_sampler_thread_feeds_frames_and_q_closes_the_source():
    async def go():
        source = FakeSource([make_frame(THREE, t=100.0 + i) for i in range(3)])
        app = TopApp(source, interval=0.02)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.frames_shown >= 1 and source.calls >= 4, "three frames sampled")
            assert row_names(app) == ["b", "a", "c"]
            await pilot.press("q")
            await until(pilot, lambda: not app.is_running, "the app to exit")
        assert source.closed
        assert not app._sampler.is_alive()
    run(go())


def test_a_failing_source_is_reported_and_the_view_keeps_running():
    class Flaky(FakeSource):
        """Fails on its second call, then has nothing until the test lets it recover."""
        recovered = False

        tries = 0

        def next_frame(self):
            self.tries += 1
            if self.tries == 2:
                raise ConnectionResetError("agent restarted")
            if self.tries > 2 and not self.recovered:
                return None
            return super().next_frame()

    async def go():
        source = Flaky([make_frame(THREE), make_frame(THREE, t=101.0)])
        app = TopApp(source, interval=0.02)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: "agent restarted" in text_of(app, "#status"), "the error shown")
            assert row_names(app) == ["b", "a", "c"]            # the last good frame stays up
            source.recovered = True
            await until(pilot, lambda: app.frames_shown >= 2, "recovery")
            assert "agent restarted" not in text_of(app, "#status")
            await pilot.press("ctrl+c")
            await until(pilot, lambda: not app.is_running, "ctrl+c to quit")
        assert source.closed
    run(go())


@pytest.mark.parametrize("width", [60, 200])
def test_narrow_and_wide_terminals_fit_every_line(width):
    async def go():
        app, _ = scripted(DemoSource(50, seed=2).next_frame())
        async with app.run_test(size=(width, 30)) as pilot:
            app.sample_now()
            await pilot.pause()
            table = app.query_one(CgroupTable)
            for y in range(table.size.height):
                assert table.render_line(y).cell_length == table.size.width
    run(go())


def test_click_selects_the_row_under_the_pointer():
    async def go():
        app, _ = scripted(make_frame(THREE))
        async with app.run_test(size=SIZE) as pilot:
            app.sample_now()
            await pilot.pause()
            await pilot.click(CgroupTable, offset=(3, 3))     # line 0 is the titles: row 3 is "c"
            assert app.model.state.selected == "/c"
            assert selected_line(app).startswith("c ")
            await pilot.click(CgroupTable, offset=(3, 0))     # the titles select nothing
            assert app.model.state.selected == "/c"
    run(go())
