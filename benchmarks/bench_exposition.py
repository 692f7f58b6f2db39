"""Size and render time of the Prometheus exposition of a 3,000-cgroup node
(issue 17: <= 300 kB by default, scrape <= 100 ms), against exporting every
cgroup in the same run (the baseline: what tagger exported before the policy).

The node is tests/exposition_fixture.py's (services, pods, idle cgroups; 15%
busy).  A render is what the tick loop does once per tick; a scrape is then
the cached bytes (tagger.publish.exposition.Exposition), timed here over HTTP.

    .venv/bin/python benchmarks/bench_exposition.py [--cgroups 3000]
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tagger.publish.exposition import MetricsServer  # noqa: E402
from tagger.publish.prometheus import TaggerCollector  # noqa: E402
from tests.exposition_fixture import node_ticks  # noqa: E402


def measure(collector: TaggerCollector, cgroups: int) -> dict:
    for snap in node_ticks(cgroups):
        collector.update(snap, {}, [], {"ticks": 1})
    server = MetricsServer(collector, "127.0.0.1:0")
    try:
        started = time.perf_counter()
        body = server.exposition.get()             # the one render of this tick
        render = time.perf_counter() - started
        scrapes = []
        for _ in range(20):
            started = time.perf_counter()
            with urllib.request.urlopen(server.url, timeout=10) as resp:
                resp.read()
            scrapes.append(time.perf_counter() - started)
    finally:
        server.close()
    return {"bytes": len(body), "gzip": len(gzip.compress(body, 1)), "lines": body.count(b"\n"),
            "render": render, "scrape": statistics.median(scrapes)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cgroups", type=int, default=3000)
    args = ap.parse_args()
    default = measure(TaggerCollector(), args.cgroups)
    everything = measure(TaggerCollector(export=["/**"], cap=args.cgroups), args.cgroups)
    for name, m in (("default", default), ("every cgroup", everything)):
        print(f"{name:>13}: {m['bytes'] / 1e3:6.0f} kB ({m['gzip'] / 1e3:.0f} kB gzip), {m['lines']} lines; "
              f"render {m['render'] * 1e3:.0f} ms, scrape p50 {m['scrape'] * 1e3:.1f} ms")
    print(f"default / every cgroup: {default['bytes'] / everything['bytes']:.2f} of the bytes, "
          f"{default['render'] / everything['render']:.2f} of the render time")


if __name__ == "__main__":
    main()
