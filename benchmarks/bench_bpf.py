#!/usr/bin/env python3
"""Cost of tagger's kernel side, as ratios against baselines measured in the same run.

1. ns per invocation of each BPF program under a context-switch storm
   (stress-ng --switch), beside empty tp_btf programs attached to the same
   hooks at the same time: run_time_ns / run_cnt with BPF run-time statistics
   on (kernel.bpf_stats_enabled, held as a file descriptor, so it is off again
   on every exit path).  Bars: sched_switch <= 2.5x, sched_wakeup <= 2.0x,
   for each program variant this kernel can load (tagger.native.variants:
   the kernel's own, then the variants older kernels get, forced here).
2. One tick's read of all counters (one call, summed over CPUs) at 100, 1,000
   and 10,000 live cgroups, beside a plain memory copy of the same bytes.
   Bar: <= 5 ms at 10,000.

Root, real kernel.  Makes its cgroups under /tagger-bench-<pid>/ in cgroup v2
and removes them on every exit path.  Usage: benchmarks/bench_bpf.py [--rounds N]
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

import numpy as np  # noqa: E402

from tagger.native import lib  # noqa: E402
from benchmarks.baseline import EmptyPrograms  # noqa: E402
from tagger.native.probes import bpf_stats_enabled  # noqa: E402
from tagger.native.variants import describe  # noqa: E402
from tagger.telemetry import BpfCollector  # noqa: E402
from tests.cgroup_fixture import _rmdir_tree, v2_root  # noqa: E402

BARS = {"tg_sched_switch": 2.5, "tg_sched_wakeup": 2.0}
#: our program -> the empty one on the same hook.  tagger has no sched_wakeup
#: program (waits come from the kernel's own sched_info stamps), so that row
#: reports 0 ns: nothing runs on wakeups.
BASELINE = {"tg_sched_switch": "empty_sched_switch", "tg_sched_wakeup": "empty_sched_wakeup"}


def storm(seconds: float):
    """Context switches as fast as two CPUs allow: stress-ng's pipe ping-pong."""
    subprocess.run(["stress-ng", "--switch", str(os.cpu_count() or 1), "--timeout", f"{seconds}s", "--quiet"],
                   check=True)


def _by_hook(stats: dict) -> dict:
    """tg_sched_switch_hash_state -> tg_sched_switch: one variant per hook is loaded."""
    out = {}
    for name, value in stats.items():
        hook = next((h for h in BASELINE if name.startswith(h)), name)
        out[hook] = value
    return out


def per_call(before, after, name):
    t = after[name][0] - before[name][0]
    n = after[name][1] - before[name][1]
    return (t / n if n else float("nan")), n


def variants_to_measure() -> list[int]:
    """features_off masks: this kernel's variants, then each older kernel's
    that this one can also load (hash map by cgroup id; then task state)."""
    have = int(lib.tg_probe_features())
    masks = [0]
    for off in (lib.TG_FEAT_CGRP_STORAGE, lib.TG_FEAT_CGRP_STORAGE | lib.TG_FEAT_PREV_STATE):
        if have & off and off not in masks:
            masks.append(off)
    return masks


def program_costs(rounds: int, seconds: float):
    ok = True
    for off in variants_to_measure():
        ok &= variant_costs(rounds, seconds, off)
    return ok


def variant_costs(rounds: int, seconds: float, features_off: int):
    ratios: dict[str, list[float]] = {name: [] for name in BASELINE}
    # The real collector: every cgroup has its slot, as in production.
    with BpfCollector(cgroupfs_metrics=(), features_off=features_off) as coll, EmptyPrograms() as empty:
        probes = coll.probes
        print(f"== ns per invocation, variants {describe(probes.features)}: "
              f"{rounds} rounds of a {seconds:g}s context-switch storm")
        with bpf_stats_enabled():
            for r in range(rounds):
                a, b = probes.prog_stats(), empty.prog_stats()
                storm(seconds)
                a2, b2 = probes.prog_stats(), empty.prog_stats()
                # Each hook's program under its name without the variant's suffix.
                a, a2 = _by_hook(a), _by_hook(a2)
                for name, base in BASELINE.items():
                    theirs, n = per_call(b, b2, base)
                    if name not in a2:             # no program on this hook: it costs nothing
                        ratios[name].append(0.0)
                        print(f"  round {r + 1}: {name:22s} (not loaded: no program on this hook)"
                              f"  {base:20s} {theirs:6.1f} ns  ratio 0.00")
                        continue
                    ours, n = per_call(a, a2, name)
                    if n:
                        ratios[name].append(ours / theirs)
                        print(f"  round {r + 1}: {name:22s} {ours:7.1f} ns  {base:20s} {theirs:6.1f} ns"
                              f"  ratio {ours / theirs:4.2f}  ({n} calls)")
    print(f"  kernel.bpf_stats_enabled after: {Path('/proc/sys/kernel/bpf_stats_enabled').read_text().strip()}")
    ok = True
    for name, values in ratios.items():
        if not values:
            continue
        med = statistics.median(values)
        bar = BARS.get(name)
        verdict = "" if bar is None else (f"  bar <= {bar}x: " + ("met" if med <= bar else "NOT MET"))
        ok &= bar is None or med <= bar
        print(f"  median {name:22s} {med:4.2f}x the empty program{verdict}")
    return ok


class ManyCgroups:
    """n empty cgroups under /tagger-bench-<pid>/ in cgroup v2."""

    def __init__(self, n: int):
        self.root = v2_root() / f"tagger-bench-{os.getpid()}"
        self.n = n

    def __enter__(self):
        self.root.mkdir(exist_ok=True)
        existing = sum(1 for _ in self.root.iterdir() if _.is_dir())
        for i in range(existing, self.n):
            (self.root / f"c{i:05d}").mkdir()
        return self

    def __exit__(self, *exc):
        _rmdir_tree(self.root)


def read_costs(sizes=(100, 1000, 10000), reads: int = 50):
    print(f"== one tick's read of all counters (median of {reads})")
    ok = True
    for n in sizes:
        with ManyCgroups(n):
            with BpfCollector(cgroupfs_metrics=()) as coll:
                p = coll.probes
                out = p.new_stats(coll.max_slots)
                copy_src = p.new_stats(coll.high_water)
                copy_dst = np.empty_like(copy_src)
                times, copies, ticks = [], [], []
                for _ in range(reads):
                    t0 = time.perf_counter()
                    p.read_stats(out, coll.high_water)
                    times.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    for _cpu in range(p.nr_cpus):           # the same bytes, copied once per CPU
                        np.copyto(copy_dst, copy_src)
                    copies.append(time.perf_counter() - t0)
                for _ in range(5):
                    t0 = time.perf_counter()
                    coll.tick()
                    ticks.append(time.perf_counter() - t0)
                read, copy = statistics.median(times), statistics.median(copies)
                verdict = ""
                if n == 10000:
                    verdict = "  bar <= 5 ms: " + ("met" if read <= 0.005 else "NOT MET")
                    ok &= read <= 0.005
                print(f"  {len(coll.path_slot):6d} cgroups ({coll.high_water} slots x {p.nr_cpus} CPUs): "
                      f"read {read * 1e3:6.3f} ms, memcpy of the same bytes {copy * 1e3:6.3f} ms "
                      f"(ratio {read / copy:4.2f}); whole tick {statistics.median(ticks) * 1e3:6.2f} ms{verdict}")
    return ok


def switch_overhead(rounds: int = 9, loops: int = 300000, pinned: bool = True):
    """perf bench sched pipe, interleaved without and with tagger's programs
    attached, and with an empty sched_switch program: the floor of tracing the
    one hook tagger uses on this path.  Pinned to one CPU it is the worst case
    (every switch is task to task, nothing else in the op); unpinned it is the
    command as people run it (both ends may land on either CPU)."""
    import re

    taskset = ["taskset", "-c", str((os.cpu_count() or 1) - 1)] if pinned else []

    def pipe():
        out = subprocess.run([*taskset, "perf", "bench", "sched", "pipe", "-l", str(loops)],
                             capture_output=True, text=True, check=True).stdout
        return float(re.search(r"([\d.]+) ops/sec", out).group(1))

    where = "one CPU" if pinned else "unpinned"
    print(f"== context-switch throughput (perf bench sched pipe, {where}), {rounds} interleaved rounds")
    none, empty, ours = [], [], []
    for _ in range(rounds):
        none.append(pipe())
        with EmptyPrograms(wakeup=False):
            empty.append(pipe())
        with BpfCollector(cgroupfs_metrics=()):
            ours.append(pipe())
    m = statistics.median
    print(f"  ops/s median: none {m(none):.0f}, empty sched_switch {m(empty):.0f}, tagger {m(ours):.0f}")
    print(f"  slowdown: tagger {100 * (1 - m(ours) / m(none)):.1f}%, empty sched_switch "
          f"{100 * (1 - m(empty) / m(none)):.1f}% (the floor of tracing that hook)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--skip-read", action="store_true")
    ap.add_argument("--overhead", action="store_true", help="also the perf bench sched pipe A/B")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_bpf: needs root (loads BPF programs, makes cgroups)")
    # SIGTERM takes the same exit path as an exception: everything is undone.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ok = program_costs(args.rounds, args.seconds)
    if not args.skip_read:
        ok &= read_costs()
    if args.overhead:
        switch_overhead()
        switch_overhead(loops=100000, pinned=False)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
