"""Take the README screenshot of ``tagger top`` (an SVG, Textual's own export).

    sudo .venv/bin/python -m tagger.cli.top.screenshot --local --out docs/top.svg
    .venv/bin/python -m tagger.cli.top.screenshot --demo 300 --out docs/top.svg
    .venv/bin/python -m tagger.cli.top.screenshot --connect /run/tagger/tagger.sock

It runs the real app headless, lets ``--ticks`` refreshes happen (a real
interval apart for live sources, so rates and sparklines are real), presses
``--keys`` and saves the screen.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from .app import TopApp
from .model import thresholds_from_rules
from .sources import DemoSource, LocalSource, SocketSource


async def take(source, out: str, ticks: int, interval: float, keys: list[str], size, thresholds,
               filter_text: str = ""):
    app = TopApp(source, interval=None, thresholds=thresholds)
    async with app.run_test(size=size) as pilot:
        for k in range(ticks):
            if k and not isinstance(source, DemoSource):
                time.sleep(interval)            # a live tick covers real time
            try:
                app.sample_now()
            except Exception as err:            # one bad tick should not lose the shot
                print(f"tick {k}: {type(err).__name__}: {err}", file=sys.stderr)
            await pilot.pause()
        if filter_text:
            app.action_filter()
            app.query_one("#filter").value = filter_text   # typed as-is, like an operator would
            await pilot.press("enter")
        for key in keys:
            await pilot.press(key)
        await pilot.pause()
        path = os.path.abspath(out)
        app.save_screenshot(os.path.basename(path), os.path.dirname(path))
    source.close()
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description="Save a tagger top screenshot (SVG).")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--demo", type=int, metavar="N", help="synthetic host of N cgroups (default 300)")
    which.add_argument("--local", action="store_true", help="standalone: BPF on this machine (root)")
    which.add_argument("--connect", metavar="SOCKET", help="a running agent's socket")
    ap.add_argument("--rules", help="rules directory (default: the packaged rules)")
    ap.add_argument("--out", default="docs/top.svg")
    ap.add_argument("--ticks", type=int, default=60)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--keys", default="r home enter",
                    help="keys to press before the shot, space-separated Textual key names")
    ap.add_argument("--size", default="150x46", help="COLSxROWS")
    ap.add_argument("--filter", default="", help="filter text to apply before the keys")
    args = ap.parse_args(argv)

    rules = args.rules
    if rules is None:
        from tagger.default_rules import DIRECTORY as rules
    if args.local:
        source = LocalSource(rules)
    elif args.connect:
        source = SocketSource(args.connect)
    else:
        source = DemoSource(args.demo or 300, seed=7)
    cols, rows = (int(x) for x in args.size.lower().split("x"))
    path = asyncio.run(take(source, args.out, args.ticks, args.interval, args.keys.split(),
                            (cols, rows), thresholds_from_rules(rules), args.filter))
    print(path)


if __name__ == "__main__":
    main()
