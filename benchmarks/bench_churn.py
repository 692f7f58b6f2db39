#!/usr/bin/env python3
"""Cgroup churn: do slots come back after the ring buffer drops lifecycle events?

Bar (issue 13): after 60 s of 2,000 cgroup mkdir/rmdir per second, 300 new
cgroups made slowly all get a slot within two ticks.

1. A child process makes and removes v2 cgroups at ``--rate`` pairs per
   second for ``--seconds`` (each lives ``--window`` pairs, so some are alive
   whenever the collector walks the tree), while the collector ticks every
   ``--interval`` seconds, as the daemon does.
   Then the free slots are counted (what leaked is missing from them).
2. Then ``--new`` cgroups are made slowly (``--per-tick`` per interval) and
   kept; each counts as served if it has a slot by the second tick after its
   mkdir (ticks counted, not timed).

The baseline, in the same run: the same two phases with the collector's
reclaiming of slots turned off (the behaviour before reconciling), so the
figures read as "x of 300 without, y of 300 with".  Without reclaiming, the
slots of the events a tick does deliver (the first ~800 of the ring buffer)
keep circulating, so how many of the 300 find one varies from run to run
(0 to 300 here); the free slots after the churn tell the leak itself.

Root, real kernel.  Cgroups under /tagger-bench-churn-<pid>/ in cgroup v2,
removed on every exit path; the churn process is stopped by its pid.
Usage: benchmarks/bench_churn.py [--seconds 60] [--rate 2000] [--new 300]
       [--features-off N] [--no-baseline]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tagger.native import lib  # noqa: E402
from tagger.native.variants import describe  # noqa: E402
from tagger.telemetry import BpfCollector  # noqa: E402
from tests.cgroup_fixture import _rmdir_tree, v2_root  # noqa: E402

#: The churn loop, run in its own process (so the collector ticks on time):
#: pairs paced in 10 ms batches; prints the pairs it made.
CHURN = r"""
import os, sys, time
parent, rate, seconds, window = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
live, n = [], 0
start = time.monotonic()
end = start + seconds
while True:
    now = time.monotonic()
    if now >= end:
        break
    due = int((now - start) * rate)
    while n < due:
        d = f"{parent}/c{n}"
        os.mkdir(d)
        live.append(d)
        n += 1
        if len(live) > window:
            os.rmdir(live.pop(0))
    time.sleep(0.01)
for d in live:
    os.rmdir(d)
print(n, time.monotonic() - start)
"""


def run(args, parent: Path, reclaim: bool) -> dict:
    """One churn phase and one slow phase with a fresh collector."""
    rel = "/" + str(parent.relative_to(v2_root()))
    with BpfCollector(cgroupfs_metrics=(), features_off=args.features_off) as coll:
        if not reclaim:
            coll.slots.leaked = lambda held: []          # the baseline: nothing comes back
        quiet = []                                       # tick work without churn: the baseline
        for _ in range(3):
            coll.tick()
            quiet.append(coll.health()["tick_seconds"])
        g0 = coll.probes.read_globals()
        lost0 = coll.probes.lifecycle_drops()
        churn = subprocess.Popen([sys.executable, "-c", CHURN, str(parent), str(args.rate),
                                  str(args.seconds), str(args.window)], stdout=subprocess.PIPE, text=True)
        busy = []
        try:
            deadline = time.monotonic()
            while churn.poll() is None:
                deadline += args.interval
                time.sleep(max(0.0, deadline - time.monotonic()))
                coll.tick()
                busy.append(coll.health()["tick_seconds"])
            out, _ = churn.communicate()
        finally:
            if churn.poll() is None:
                churn.kill()
                churn.wait()
        pairs, took = out.split()
        for _ in range(3):                               # what the churn left settles
            coll.tick()
        g1 = coll.probes.read_globals()
        coll.slots.mark()                                # the queue as it is now
        result = {
            "free": coll.slots.free, "slots": coll.max_slots - 1,
            "mkdir_per_s": int(pairs) / float(took),
            "lost_lifecycle": coll.probes.lifecycle_drops() - lost0,
            "ringbuf_drops": g1["ringbuf_drops"] - g0["ringbuf_drops"],
            "slots_exhausted": g1["slots_exhausted"] - g0["slots_exhausted"],
            "reclaimed": coll.slots_reclaimed,
            "tick_quiet": statistics.median(quiet),
            "tick_churn": statistics.median(busy),
            "tick_churn_max": max(busy),
        }

        # Slow phase: --per-tick new cgroups per interval, each given two ticks.
        made, served, ever = [], 0, 0
        waiting: dict[str, int] = {}                     # path -> ticks seen since its mkdir
        i = 0
        while i < args.new or waiting:
            for _ in range(min(args.per_tick, args.new - i)):
                d = parent / f"new-{i}"
                d.mkdir()
                made.append(d)
                waiting[f"{rel}/new-{i}"] = 0
                i += 1
                time.sleep(args.interval / args.per_tick)
            if i >= args.new:
                time.sleep(args.interval)
            coll.tick()
            for path in list(waiting):
                waiting[path] += 1
                if path in coll.path_slot:
                    served += waiting.pop(path) <= 2
                    ever += 1
                elif waiting[path] >= 10:
                    del waiting[path]
        result.update(served=served, ever=ever, new=args.new, variant=coll.variant)
        for d in made:
            d.rmdir()
        return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=2000.0, help="mkdir/rmdir pairs per second")
    ap.add_argument("--window", type=int, default=100, help="cgroups alive at once in the churn")
    ap.add_argument("--new", type=int, default=300)
    ap.add_argument("--per-tick", type=int, default=10)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--features-off", type=int, default=0,
                    help=f"TG_FEAT_* to do without ({lib.TG_FEAT_CGRP_STORAGE}: the hash map of older kernels)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run with reclaiming off")
    args = ap.parse_args(argv)

    parent = v2_root() / f"tagger-bench-churn-{os.getpid()}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))    # unwind through the cleanup
    parent.mkdir()
    try:
        runs = [("reconciled", True)] + ([] if args.no_baseline else [("reclaiming off", False)])
        results = []
        for name, reclaim in runs:
            r = run(args, parent, reclaim)
            results.append((name, r))
            print(f"{name:>15} [{r['variant']}]: {r['mkdir_per_s']:.0f} mkdir/s for {args.seconds:.0f} s, "
                  f"lifecycle events lost {r['lost_lifecycle']} (ring-buffer drops {r['ringbuf_drops']}), "
                  f"mkdirs without a free slot {r['slots_exhausted']}, slots reclaimed {r['reclaimed']}, "
                  f"free after the churn {r['free']}/{r['slots']}; "
                  f"new cgroups with a slot within 2 ticks: {r['served']}/{r['new']} "
                  f"(ever: {r['ever']}); tick work {r['tick_quiet'] * 1e3:.1f} ms quiet, "
                  f"{r['tick_churn'] * 1e3:.1f} ms median / {r['tick_churn_max'] * 1e3:.1f} ms max under churn "
                  f"({r['tick_churn'] / r['tick_quiet']:.1f}x)", flush=True)
        ours = results[0][1]
        ok = ours["served"] == ours["new"] and ours["mkdir_per_s"] >= 0.95 * args.rate
        print(f"bar: {ours['new']} new cgroups all get a slot within two ticks after "
              f"{args.seconds:.0f} s at {args.rate:.0f} mkdir/s: {'met' if ok else 'NOT met'}")
        return 0 if ok else 1
    finally:
        _rmdir_tree(parent)


if __name__ == "__main__":
    sys.exit(main())
