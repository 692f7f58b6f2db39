#!/usr/bin/env python3
"""Whom a workload's long run-queue waits began behind, from a `perf sched`
recording: for each wait of the watched tasks over ``--over`` (from the
wake-up, or the preemption, to the switch-in), the task on that CPU when the
wait began, counted by group.  How docs/noisy_neighbor.md found that tagger
run's own tick was where more of web's waits over 1 ms began than batch.

    perf sched record -a -o perf.data -- sleep 30      # while the scenario runs
    perf script -i perf.data -F comm,tid,cpu,time,event,trace > perf.txt
    benchmarks/waits_behind.py perf.txt --group web=PID,PID --group batch=PID,... [--over 1]

The tids of a group are its cgroup's ``tasks`` (v1) or ``cgroup.threads``
(v2), read while it runs.  Tasks in no group are counted by ``comm:tid``.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

LINE = re.compile(r"\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:(\w+):\s+(.*)")
FIELD = re.compile(r"(\w+)=(\S+)")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("script", help="`perf script -F comm,tid,cpu,time,event,trace` output")
    ap.add_argument("--group", action="append", default=[], metavar="NAME=TID,TID",
                    help="a group of tasks; the first is the one whose waits are looked at")
    ap.add_argument("--over", type=float, default=1.0, help="waits longer than this (ms)")
    return ap.parse_args(argv)


def waits_behind(lines, groups: dict[str, set[str]], watched: str, over_s: float):
    """(switch-ins of the watched tasks, Counter of who held the CPU as each long wait began)."""
    group_of = {tid: name for name, tids in groups.items() for tid in tids}
    since: dict[str, float] = {}       # tid -> when it became runnable
    holder: dict[int, tuple[str, str]] = {}   # cpu -> (comm, tid) on it now
    began_behind: dict[str, tuple[str, str]] = {}   # tid -> holder of its CPU when its wait began
    switch_ins, behind = 0, collections.Counter()
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        _, _, cpu, t, event, rest = m.groups()
        t, cpu = float(t), int(cpu)
        if event in ("sched_waking", "sched_wakeup", "sched_wakeup_new"):
            f = dict(FIELD.findall(rest))
            tid, target = f.get("pid"), int(f.get("target_cpu", cpu))
            if tid and tid not in since:
                since[tid] = t
                began_behind[tid] = holder.get(target, ("?", "?"))
        elif event == "sched_switch":
            f = dict(FIELD.findall(rest.replace(" ==> ", " ")))
            prev, nxt = f["prev_pid"], f["next_pid"]
            if f["prev_state"].startswith("R"):      # preempted: waits from now, behind next
                since[prev] = t
                began_behind[prev] = (f["next_comm"], nxt)
            else:
                since.pop(prev, None)
            holder[cpu] = (f["next_comm"], nxt)
            start = since.pop(nxt, None)
            comm, tid = began_behind.pop(nxt, ("?", "?"))
            if group_of.get(nxt) == watched and start is not None:
                switch_ins += 1
                if t - start > over_s:
                    behind[group_of.get(tid, f"{comm}:{tid}")] += 1
    return switch_ins, behind


def main(argv=None) -> int:
    a = parse_args(argv)
    groups = {}
    for g in a.group:
        name, _, tids = g.partition("=")
        groups[name] = set(filter(None, re.split(r"[,\s]+", tids)))
    if not groups:
        print("waits_behind: name the watched tasks with --group NAME=TID,...", file=sys.stderr)
        return 2
    watched = next(iter(groups))
    with open(a.script) as fh:
        n, behind = waits_behind(fh, groups, watched, a.over / 1000)
    print(f"{watched}: {n} switch-ins, {sum(behind.values())} after waits over {a.over:g} ms")
    print(f"| who held the CPU when the wait began | waits over {a.over:g} ms |\n|---|---:|")
    for who, count in behind.most_common():
        print(f"| {who} | {count} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
