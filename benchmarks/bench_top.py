"""tagger top on a large host: build the rows for a 10,000-cgroup snapshot and
render one screen.  Bar: <= 50 ms.

Figures are medians over repeated runs.  Baselines measured in the same run:

- a plain rich Table of the same visible rows (what the render step replaces);
- Textual's DataTable re-populated with every row each tick, against our
  virtual table, both as a full tick in a headless app (apply the frame and
  wait for the screen to be composed) -- the "is DataTable fast enough" question.

Usage:  .venv/bin/python benchmarks/bench_top.py [--cgroups 10000] [--repeat 15] [--no-app]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time

from rich.console import Console
from rich.table import Table
from textual.strip import Strip

from tagger.cli.top import render
from tagger.cli.top.model import COLUMNS, TopModel
from tagger.cli.top.sources import DemoSource

BAR_MS = 50.0
WIDTH, HEIGHT = 200, 50            # a big terminal: 49 table rows on screen


def median_ms(fn, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def our_tick(model: TopModel, frame) -> list[Strip]:
    """What one refresh costs us: rows for the whole snapshot, then one screen."""
    model.apply_frame(frame)
    render.header_text(model)
    render.status_text(model)
    return [Strip(segs).adjust_cell_length(WIDTH) for segs in render.screen_lines(model, WIDTH, HEIGHT - 2)]


def rich_table_screen(model: TopModel, console: Console):
    """Baseline: the same visible rows as a plain rich Table, rendered to lines."""
    table = Table(*[c.title for c in COLUMNS], box=None, pad_edge=False, expand=True)
    rows = model.rows
    for i in model.window(HEIGHT - 3):
        table.add_row(rows.names[i], *[c.fmt(float(rows.values[c.key][i])) for c in COLUMNS[1:-1]],
                      rows.tag_text[i])
    return console.render_lines(table, console.options.update(width=WIDTH))


def all_rows_formatted(model: TopModel) -> list[tuple]:
    rows = model.rows
    return [(rows.names[i], *[c.fmt(float(rows.values[c.key][i])) for c in COLUMNS[1:-1]], rows.tag_text[i])
            for i in model.order]


async def app_tick(frames, repeat: int) -> float:
    """A full tick in a headless app with our virtual table: show the frame and
    wait until Textual has composed the screen."""
    from tagger.cli.top.app import TopApp
    from tagger.cli.top.sources import FakeSource

    app = TopApp(FakeSource(), interval=None)
    times = []
    async with app.run_test(size=(WIDTH, HEIGHT)) as pilot:
        for k in range(repeat + 2):
            t0 = time.perf_counter()
            app.show_frame(frames[k % len(frames)])
            await pilot.pause()
            if k >= 2:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


async def datatable_tick(frames, repeat: int) -> float:
    """The alternative: Textual's DataTable cleared and refilled with every row."""
    from textual.app import App
    from textual.widgets import DataTable

    class DataTableTop(App):
        def compose(self):
            yield DataTable()

    dt_app = DataTableTop()
    model = TopModel()
    times = []
    async with dt_app.run_test(size=(WIDTH, HEIGHT)) as pilot:
        table = dt_app.query_one(DataTable)
        table.add_columns(*[c.title for c in COLUMNS])
        for k in range(min(repeat, 5) + 1):
            t0 = time.perf_counter()
            model.apply_frame(frames[k % len(frames)])
            table.clear()
            table.add_rows(all_rows_formatted(model))
            await pilot.pause()
            if k >= 1:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cgroups", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--no-app", action="store_true", help="skip the headless-app comparison")
    args = ap.parse_args()

    t0 = time.perf_counter()
    source = DemoSource(args.cgroups, seed=11)
    frames = [source.next_frame() for _ in range(4)]
    gen_ms = (time.perf_counter() - t0) * 1e3 / 4
    n = len(frames[0].snapshot)
    print(f"tagger top benchmark: {n:,} cgroups, screen {WIDTH}x{HEIGHT}, median of {args.repeat}")
    print(f"  (synthetic frame generation, not timed below: {gen_ms:.1f} ms/frame)")

    model = TopModel()
    k = iter(range(10**9))
    rows_ms = median_ms(lambda: model.apply_frame(frames[next(k) % 4]), args.repeat)
    screen_ms = median_ms(lambda: [Strip(s).adjust_cell_length(WIDTH)
                                   for s in render.screen_lines(model, WIDTH, HEIGHT - 2)], args.repeat)
    tick_ms = median_ms(lambda: our_tick(model, frames[next(k) % 4]), args.repeat)

    model.set_filter("priority=low")
    filt_ms = median_ms(lambda: our_tick(model, frames[next(k) % 4]), args.repeat)
    model.set_filter("")
    model.toggle_tree()
    tree_ms = median_ms(lambda: our_tick(model, frames[next(k) % 4]), args.repeat)
    model.toggle_tree()
    model.sort_by("name")
    name_ms = median_ms(lambda: our_tick(model, frames[next(k) % 4]), args.repeat)
    model.sort_by("cpu")

    console = Console(file=io.StringIO(), width=WIDTH, color_system="truecolor")
    base_ms = median_ms(lambda: rich_table_screen(model, console), args.repeat)

    print(f"  build rows (sort, selection)           {rows_ms:7.2f} ms")
    print(f"  render one screen (our render step)    {screen_ms:7.2f} ms")
    print(f"  rich Table of the same rows (baseline) {base_ms:7.2f} ms   ours/baseline = "
          f"{screen_ms / base_ms:.2f}")
    print(f"  rows + one screen, sort cpu            {tick_ms:7.2f} ms   bar {BAR_MS:.0f} ms: "
          f"{'PASS' if tick_ms <= BAR_MS else 'FAIL'}")
    print(f"  rows + one screen, filter by tag       {filt_ms:7.2f} ms   "
          f"{'PASS' if filt_ms <= BAR_MS else 'FAIL'}")
    print(f"  rows + one screen, tree mode           {tree_ms:7.2f} ms   "
          f"{'PASS' if tree_ms <= BAR_MS else 'FAIL'}")
    print(f"  rows + one screen, sort name           {name_ms:7.2f} ms   "
          f"{'PASS' if name_ms <= BAR_MS else 'FAIL'}")

    if not args.no_app:
        small = [DemoSource(10, seed=11).next_frame() for _ in range(2)]
        small_ms = asyncio.run(app_tick(small, args.repeat))
        ours_ms = asyncio.run(app_tick(frames, args.repeat))
        dt_ms = asyncio.run(datatable_tick(frames, args.repeat))
        print(f"  headless app tick, 10 cgroups          {small_ms:7.2f} ms   (Textual's own cost)")
        print(f"  headless app tick, virtual table       {ours_ms:7.2f} ms")
        print(f"  headless app tick, DataTable refilled  {dt_ms:7.2f} ms   DataTable/ours = "
              f"{dt_ms / ours_ms:.1f}x")


if __name__ == "__main__":
    main()
