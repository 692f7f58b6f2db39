#!/usr/bin/env python3
"""What tagger run's own tick costs a latency-critical task on its CPU, with
and without stepping off the CPU between the tick's steps (tagger.clock.cede).

A tick is a few milliseconds of Python; a task waking on the same CPU in the
meantime may wait for the rest of it, because the scheduler lets a task it
has just picked run on (EEVDF's run-to-parity slice, CFS's wake-up
granularity).  Here ``web`` is cyclictest (SCHED_OTHER, a wake-up every
2 ms) in a cgroup of its own, and ``tagger run`` (the packaged rules, a dry
run, its loop unguarded) runs beside it, both pinned to one CPU.  The agent
ticks about every 0.1 s (``--interval``: each tick does the work of a 1 s
tick, and a run sees ten times as many).  Conditions, interleaved over ``--repeat``
rounds: ``none`` (no agent), ``cede`` (tagger run as shipped) and
``no cede`` (the same agent with tagger.clock.CEDE_AFTER set to infinity, so
it never cedes).  Per condition: cyclictest's wake-ups later than 0.5 ms and
1 ms, per 1000 of the agent's ticks, and its p99 / p99.9 / max; each round
against its own ``none``.

Root, real kernel.  Cgroups under /tagger-nn-<pid>/ (benchmarks.noisy.cgroups),
removed on every exit path; processes stopped by pid; temp dirs removed.
Usage: benchmarks/bench_cede.py [--seconds 15] [--repeat 3] [--cpu 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.noisy.cgroups import Scenario  # noqa: E402
from benchmarks.agent import Agent  # noqa: E402
from benchmarks.noisy import report as rp  # noqa: E402
from benchmarks.noisy_neighbor import CYCLICTEST_INTERVAL_US  # noqa: E402
from tagger import clock  # noqa: E402

PY = sys.executable
CONDITIONS = ("none", "cede", "no cede")
#: tagger run with tagger.clock.CEDE_AFTER set first (argv[1]), then its CLI
AGENT = ("import sys, tagger.clock as c; c.CEDE_AFTER = float(sys.argv[1]); "
         "from tagger.cli.main import main; sys.argv = ['tagger', *sys.argv[2:]]; main()")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="cyclictest seconds per condition and round")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of every condition, interleaved")
    ap.add_argument("--cpu", type=int, default=1, help="the CPU both are pinned to")
    ap.add_argument("--interval", type=float, default=0.1013,
                    help="the agent's tick (s); not a multiple of cyclictest's 2 ms, or every tick of a run "
                         "would land at the same point of its cycle (both keep exact schedules), and a run "
                         "would show all or none of the collisions")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cede.md"))
    return ap.parse_args(argv)


def agent(cede_after: float, cpu: int, interval: float, workdir: str) -> Agent:
    """tagger run pinned to ``cpu``, in the root cgroup (where the agent runs), a
    dry run with the packaged rules, its loop unguarded, tagger.clock.CEDE_AFTER
    set first."""
    return Agent(Path(workdir), interval=f"{interval}s", extra=("--rt-priority", "0"),
                 launch=("taskset", "-c", str(cpu), PY, "-c", AGENT, repr(cede_after)))


def cyclictest(web, cpu: int, seconds: float, out: str) -> np.ndarray:
    """cyclictest in ``web`` on ``cpu``; every wake-up's latency (s)."""
    with open(out, "w") as fh:
        p = web.spawn(["taskset", "-c", str(cpu), "cyclictest", "-t", "1", "-i", str(CYCLICTEST_INTERVAL_US),
                       "-d", "0", "--policy=other", "-q", "-v", "--laptop", "-D", str(int(seconds))],
                      stdout=fh, stderr=subprocess.DEVNULL)
        p.wait(timeout=seconds * 4 + 60)
    return rp.parse_cyclictest(Path(out).read_text(), 0.0)[:, 1]


def one(web, cond: str, a, workdir: str) -> dict:
    """One condition: cyclictest's figures, and the agent's ticks while it ran."""
    running = None
    ticks = 0
    try:
        if cond != "none":
            running = agent(clock.CEDE_AFTER if cond == "cede" else float("inf"), a.cpu, a.interval, workdir)
            before = running.wait_ready(3)["ticks"]
        lat = cyclictest(web, a.cpu, a.seconds, f"{workdir}/cyclictest.txt")
        if running is not None:
            ticks = running.health().get("ticks", 0) - before
    finally:
        if running is not None:
            running.stop()
    if len(lat) == 0:
        raise RuntimeError("cyclictest measured nothing")
    per = 1000 / ticks if ticks else float("nan")
    return {"n": len(lat), "ticks": ticks, "over_05": int((lat > 0.0005).sum()), "over_1": int((lat > 0.001).sum()),
            "per1k_05": (lat > 0.0005).sum() * per, "per1k_1": (lat > 0.001).sum() * per,
            "p99": float(np.quantile(lat, 0.99)), "p999": float(np.quantile(lat, 0.999)), "max": float(lat.max())}


def report(results: dict, a) -> str:
    def med(cond, key):
        return float(np.median([r[key] for r in results[cond]]))

    def spread(cond, key, scale=1.0, fmt="{:.1f}"):
        xs = [r[key] * scale for r in results[cond]]
        return f"{fmt.format(np.median(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"

    lines = [
        "# tagger run's tick beside a latency-critical task on its CPU: ceding between steps",
        "",
        f"Written by `benchmarks/bench_cede.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — kernel "
        f"{os.uname().release}, {os.cpu_count()} CPUs, load average before {results['load']}.",
        "",
        "```",
        f"sudo .venv/bin/python benchmarks/bench_cede.py --seconds {a.seconds:g} --repeat {a.repeat} --cpu {a.cpu}",
        "```",
        "",
        f"cyclictest (SCHED_OTHER, a wake-up every {CYCLICTEST_INTERVAL_US} µs) in a cgroup of its own and "
        f"`tagger run` (the packaged rules, a dry run, a tick every {a.interval:g} s, `--rt-priority 0`) in the "
        f"root cgroup, both pinned to CPU {a.cpu}; {a.repeat} round(s) of {a.seconds:g} s per condition, "
        "interleaved. *cede*: tagger run as shipped; *no cede*: the same with tagger.clock.CEDE_AFTER = ∞. "
        "Figures are median (min–max) over the rounds.",
        "",
        "| condition | wake-ups | agent ticks | > 0.5 ms per 1000 ticks | > 1 ms per 1000 ticks | p99 (ms) "
        "| p99.9 (ms) | max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cond in CONDITIONS:
        ticks = "–" if cond == "none" else spread(cond, "ticks", fmt="{:.0f}")
        per05 = "–" if cond == "none" else spread(cond, "per1k_05", fmt="{:.0f}")
        per1 = "–" if cond == "none" else spread(cond, "per1k_1", fmt="{:.0f}")
        lines.append(f"| {cond} | {med(cond, 'n'):.0f} | {ticks} | {per05} | {per1} | "
                     f"{spread(cond, 'p99', 1e3, '{:.2f}')} | {spread(cond, 'p999', 1e3, '{:.2f}')} | "
                     f"{spread(cond, 'max', 1e3, '{:.2f}')} |")
    lines += ["", "Wake-ups later than 0.5 ms and 1 ms, counted (not per tick):", "",
              "| condition | " + " | ".join(f"round {k + 1}" for k in range(a.repeat)) + " |",
              "|---|" + "---:|" * a.repeat]
    for cond in CONDITIONS:
        lines.append(f"| {cond} | " + " | ".join(f"{r['over_05']} / {r['over_1']}" for r in results[cond]) + " |")
    c, n = med("cede", "per1k_1"), med("no cede", "per1k_1")
    lines += ["", f"Wake-ups later than 1 ms per 1000 ticks: **{c:.0f} ceding against {n:.0f} not** "
                  f"(none: {med('none', 'over_1'):.0f} in a whole run without the agent)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (cgroups, BPF)", file=sys.stderr)
        return 2
    if not shutil.which("cyclictest"):
        print("needs cyclictest (rt-tests; make deps installs it)", file=sys.stderr)
        return 2
    results: dict = {c: [] for c in CONDITIONS}
    results["load"] = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    workdir = tempfile.mkdtemp(prefix="tagger-cede-")
    sc = Scenario(names=("web",))
    try:
        web = sc["web"]
        web.allow_rt()
        web.set_shares(256)
        for k in range(a.repeat):
            order = CONDITIONS if k % 2 == 0 else tuple(reversed(CONDITIONS))
            for cond in order:
                r = one(web, cond, a, workdir)
                results[cond].append(r)
                print(f"[{time.strftime('%H:%M:%S')}] round {k + 1} {cond}: {r['over_1']} wake-ups > 1 ms in "
                      f"{r['n']} ({r['ticks']} agent ticks), p99 {r['p99'] * 1e3:.2f} ms", flush=True)
    finally:
        for p in sc.close():
            print(f"clean-up: {p}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
    text = report(results, a)
    Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
