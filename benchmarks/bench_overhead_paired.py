#!/usr/bin/env python3
"""What tagger's probes cost, measured pair by pair (issue 16, part 5).

bench_overhead.py runs the whole agent, started and stopped for each
condition: a round takes ~40 s, and on this shared host two runs a few
seconds apart differ by up to 15%, so its ten rounds leave the bars "not
resolved".  Here the conditions alternate run by run instead, a fraction of
a second apart, in one process that loads everything once:

  none    nothing of ours attached;
  empty   an empty tp_btf program on sched_switch (benchmarks.baseline);
  tagger  tagger's own programs (tagger.telemetry.BpfCollector, the agent's
          collector, every cgroup registered as the agent registers them),
          attached for the run (or window) and read every --tick seconds of
          its attached time (checkpoint IPIs, counters, ring buffer: the
          agent's reads); detached between runs (Probes.detach, maps kept).

Each round runs the three once, in the order of benchmarks.interleave (A B C,
then C B A), and every figure is a ratio to the same round's `none`: a
drift of the host weighs on each condition alike.

The pipe, two methods (--method):

  windows  (default) one long run of perf bench for the whole session, the
           conditions switched under it: a round is three windows of
           --window seconds, each the kernel's own count of the ops done in
           it (the parent's switch-ins, /proc/<pid>/schedstat pcount, one
           per op).
  runs     one whole `perf bench` run per condition.

Redis is measured by runs only.  It uses both CPUs, so switching condition
(loading the empty program, attaching, detaching) competes with it inside
the windows: with 1 s windows its rate with nothing attached fell to half
of what whole runs measure and varied ±40%.

A 0.2 s window of the pipe varies about as much as a whole run here (±5%:
the noise is the host's, at every time scale), so what narrows the interval
is the number of rounds, and windows give three to four times as many per
minute: 1,000 pipe rounds take ~12 minutes where 300 runs took 13
(docs/telemetry.md, "Cost").

What this leaves out is the agent's Python loop beyond its reads (rules,
tags, the API: ~0.3% of one CPU in bench_overhead's rounds, which measure it).

    sudo .venv/bin/python benchmarks/bench_overhead_paired.py [--method windows] [--rounds 1000]
        [--redis-rounds 150] [--out FILE] [--raw FILE.json]
    .venv/bin/python benchmarks/bench_overhead_paired.py --pool A.json B.json ...

--raw keeps every round's figures; --pool judges the rounds of several such
files together (one build, different hours: redis's ±1% bar wants more
rounds than one sitting gives).

Exit status 0 if both bars are met, 1 otherwise.  On every exit path
(SIGINT and SIGTERM included) the collector and the empty program are
detached and closed through their own handles, the long pipe run (its
process group) and redis-server stopped by their pid, the temp dir removed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.baseline import EmptyPrograms  # noqa: E402
from benchmarks.agent import at_nice  # noqa: E402
from benchmarks.bench_overhead import (AGENT_NICE, PIPE_BAR_POINTS, PIPE_PAUSE, REDIS_BAR_LOSS,  # noqa: E402
                                       RedisServer, machine, paired, pipe_ops, redis_cpus, redis_rps,
                                       uptime, verdict)
from benchmarks.interleave import round_order  # noqa: E402

CONDITIONS = ("none", "empty", "tagger")
#: between switching condition and a window: the attach's own work done
SETTLE = 0.02


class Ticker:
    """The agent's reads while tagger's programs are attached: collector.tick()
    every ``interval`` seconds on a thread, from start() to stop()."""

    def __init__(self, collector, interval: float):
        self.collector, self.interval = collector, interval
        self.ticks, self.busy_s = 0, 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            self.read()

    def read(self):
        """One read, its CPU time counted (the windows method calls it itself)."""
        t0 = time.thread_time()
        self.collector.tick()
        self.busy_s += time.thread_time() - t0
        self.ticks += 1

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class Conditions:
    """Switches between none, empty and tagger in a few milliseconds."""

    def __init__(self, stack: ExitStack, tick: float):
        from tagger.telemetry import BpfCollector

        self.collector = stack.enter_context(BpfCollector())
        self.collector.probes.detach()
        self.ticker = Ticker(self.collector, tick)
        stack.callback(self.ticker.stop)
        self._empty: EmptyPrograms | None = None
        stack.callback(self._leave)
        self.current = "none"

    def enter(self, cond: str, ticker: bool = True):
        """``ticker=False``: the caller does the reads (the windows method)."""
        self._leave()
        if cond == "empty":
            self._empty = EmptyPrograms(wakeup=False)
        elif cond == "tagger":
            self.collector.probes.attach()
            self.collector.tick()               # counts from here, as a running agent's would
            if ticker:
                self.ticker.start()
        self.current = cond

    def _leave(self):
        if self.current == "tagger":
            self.ticker.stop()
            self.collector.probes.detach()
        if self._empty is not None:
            self._empty.close()
            self._empty = None
        self.current = "none"


class PipeRun:
    """perf bench sched pipe for the whole session, pinned to ``cpu`` at
    ``nice`` (CFS: SCHED_FIFO for minutes would meet RT throttling), in a
    process group of its own; :meth:`count` is its parent's switch-ins so
    far, one per op."""

    def __init__(self, cpu: str | None, nice: int):
        pin = ["taskset", "-c", cpu] if cpu is not None else []
        self.proc = subprocess.Popen([*pin, "perf", "bench", "sched", "pipe", "-l", str(2**31 - 1)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=at_nice(nice))
        self._schedstat = Path(f"/proc/{self.proc.pid}/schedstat")

    def count(self) -> int:
        if self.proc.poll() is not None:
            raise RuntimeError(f"perf bench sched pipe exited with {self.proc.returncode} under the windows")
        return int(self._schedstat.read_text().split()[2])

    def close(self):
        # perf bench's parent and the child it forked: the group this object
        # started, by its pid.  The parent is waited for; the child, reparented
        # as the parent dies, may still be dying then: it is waited for too
        # (by its pid, remembered before the kill), so nothing runs on after.
        kids = children_of(self.proc.pid) if self.proc.poll() is None else []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(k) for k in kids):
            for k in kids:
                if _running(k):
                    try:
                        os.kill(k, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.01)


def children_of(pid: int) -> list[int]:
    """The processes ``pid`` forked that are still its children."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def proc_state(pid: int) -> str | None:
    """``pid``'s state letter (/proc/PID/stat: R, S, T, Z, ...), None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (one is gone but for its exit status)."""
    return proc_state(pid) not in (None, "Z")


def window_rate(load: PipeRun, seconds: float, during=None) -> float:
    """Work per second in the next ``seconds`` (by the clock, whatever the sleep
    lasted); ``during()`` runs inside the window (the agent's read)."""
    c0, t0 = load.count(), time.monotonic_ns()
    if during is not None:
        during()
    time.sleep(max(0.0, seconds - (time.monotonic_ns() - t0) / 1e9))
    c1, t1 = load.count(), time.monotonic_ns()
    return (c1 - c0) * 1e9 / (t1 - t0)


def windows(args, bench: str) -> bool:
    return bench == "pipe" and args.method == "windows"


def reads_every(args) -> int:
    """One `tagger` window in this many holds a read: one per --tick."""
    return max(1, round(args.tick / args.window))


def rounds_of(args, bench: str) -> int:
    return args.rounds if bench == "pipe" else args.redis_rounds


def run(args, log=print) -> dict:
    """Per benchmark, a list of rounds: {condition: figure}."""
    out: dict[str, list[dict]] = {"pipe": [], "redis": []}
    pipe_cpu = None if args.pipe_cpu == "none" else args.pipe_cpu
    server_cpu, client_cpu = redis_cpus(args.redis_pin)
    workdir = Path(tempfile.mkdtemp(prefix="tagger-overhead-paired-"))
    os.chmod(workdir, 0o755)
    try:
        with ExitStack() as stack:
            cond = Conditions(stack, args.tick)
            log(f"tagger's collector loaded ({cond.collector.variant}); "
                f"{len(cond.collector.path_slot)} cgroups registered")
            server = None
            if "redis" in args.bench:
                server = RedisServer(workdir, server_cpu, args.nice)
                stack.callback(server.close)

            loads: dict = {}

            def long_run(bench):
                if bench not in loads:
                    loads[bench] = PipeRun(pipe_cpu, args.nice)
                    stack.callback(loads[bench].close)
                    time.sleep(1.0)                  # past its start-up
                return loads[bench]

            def measure(bench):
                nonlocal tagger_windows
                if windows(args, bench):
                    load = long_run(bench)
                    time.sleep(SETTLE)
                    during = None
                    if cond.current == "tagger":
                        # The agent reads once per --tick: in one window of so many.
                        during = cond.ticker.read if tagger_windows % reads_every(args) == 0 else None
                        tagger_windows += 1
                    return window_rate(load, args.window, during)
                if bench == "pipe":
                    ops = pipe_ops(args.pipe_loops, pipe_cpu, args.nice, args.pipe_fifo)
                    time.sleep(PIPE_PAUSE)          # past RT throttling's window (bench_overhead)
                    return ops
                return redis_rps(server.port, args.redis_requests, args.redis_clients, client_cpu,
                                 args.nice)["both"]

            for bench in args.bench:
                measure(bench)                       # warm-up
                tagger_windows, rounds = 0, rounds_of(args, bench)
                for i in range(rounds):
                    rnd = {}
                    for c in round_order(CONDITIONS, i):
                        cond.enter(c, ticker=not windows(args, bench))
                        rnd[c] = measure(bench)
                    cond.enter("none")
                    out[bench].append(rnd)
                    if (i + 1) % (100 if windows(args, bench) else 10) == 0 or i + 1 == rounds:
                        log(f"{bench} round {i + 1}/{rounds}: "
                            + ", ".join(f"{c} {rnd[c]:.0f}" for c in CONDITIONS))
                if bench in loads:                   # the next benchmark runs alone
                    loads.pop(bench).close()
            out["ticks"] = cond.ticker.ticks
            out["tick_cpu_ms"] = 1e3 * cond.ticker.busy_s / max(cond.ticker.ticks, 1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def table(figs: dict) -> list[str]:
    rows = ["| figure (per round, against `none` in the same round) | median | 95% interval of the median "
            "| IQR | rounds | bar |", "|---|---:|---:|---:|---:|---|"]

    def row(name, s, unit, bar=""):
        f = "{:.0f}" if not unit else f"{{:+.1f}}{unit}"
        ci = f"{f.format(s['ci_low'])} – {f.format(s['ci_high'])}" if unit else ""
        rows.append(f"| {name} | {f.format(s['median'])} | {ci} | {f.format(s['q1'])} – {f.format(s['q3'])} "
                    f"| {s['n']} | {bar} |")

    if "pipe" in figs:
        p = figs["pipe"]
        row("pipe: ops/s with nothing attached", p["none"], "")
        row("pipe: slowdown, empty program on sched_switch", p["empty"], "%")
        row("pipe: slowdown, tagger's programs (and its reads)", p["tagger"], "%")
        row("pipe: **tagger's share above the empty program**", p["share"], " pt",
            f"≤ {PIPE_BAR_POINTS:g} pt: {verdict(p['share'], PIPE_BAR_POINTS)}")
    if "redis" in figs:
        r = figs["redis"]
        row("redis: requests/s with nothing attached (SET+GET)", r["none"], "")
        row("redis: throughput loss, empty program", r["empty"], "%")
        row("redis: **throughput loss, tagger's programs (and its reads)**", r["tagger"], "%",
            f"≤ {REDIS_BAR_LOSS:g}%: {verdict(r['tagger'], REDIS_BAR_LOSS)}")
        row("redis: tagger's share above the empty program", r["share"], " pt")
    return rows


def what_runs(args, bench: str) -> list[str]:
    return [f"{bench}: {rounds_of(args, bench)} rounds; each round runs `none`, `empty` and `tagger` once, one run "
            "each, the order alternating (none, empty, tagger; then tagger, empty, none), switching condition "
            "in milliseconds (tagger's programs detached and attached again, maps kept)."]


def what_windows(args) -> list[str]:
    return [f"pipe: {args.rounds} rounds under one long run of it; each round is three windows of "
            f"{args.window:g} s, `none`, `empty` and `tagger`, the order alternating (none, empty, tagger; "
            "then tagger, empty, none), the condition switched in milliseconds between windows (tagger's "
            f"programs detached and attached again, maps kept) and {SETTLE * 1e3:.0f} ms left before each. "
            "A window's figure is the kernel's count of the work done in it over its length by the clock."]


def how_runs(args, bench: str, redis_where: str) -> str:
    if bench == "pipe":
        return (f"- `perf bench sched pipe -l {args.pipe_loops}`, both ends on CPU {args.pipe_cpu}, "
                + (f"SCHED_FIFO priority {args.pipe_fifo}" if args.pipe_fifo > 0 else f"nice {args.nice}") + ".")
    return (f"- `redis-benchmark -t set,get -n {args.redis_requests} -c {args.redis_clients} -P 1` against "
            f"`redis-server` on loopback, {redis_where}, both at nice {args.nice}; SET+GET is all requests "
            "over the run's time.")


def how_windows(args) -> str:
    return (f"- `perf bench sched pipe -l {2**31 - 1}`, both ends on CPU {args.pipe_cpu} at nice {args.nice} "
            "(CFS: SCHED_FIFO for minutes meets RT throttling); ops/s = its parent's switch-ins per second "
            "(/proc/<pid>/schedstat, one per op).")


def report(args, argv, result, figs, started, load_before, load_after) -> str:
    server_cpu, client_cpu = redis_cpus(args.redis_pin)
    redis_where = "unpinned" if server_cpu is None else f"server on CPU {server_cpu}, client on CPU {client_cpu}"
    return "\n".join([
        "# Overhead, pair by pair: what tagger's probes cost the workloads beside them",
        "",
        f"Written by `benchmarks/bench_overhead_paired.py` (issue 16, part 5), {started}.",
        "",
        "```", "sudo " + " ".join(shlex.quote(a) for a in argv), "```",
        "",
        "## Machine and load", "",
        *[f"- {m}" for m in machine()],
        f"- load before: `{load_before}`", f"- load after: `{load_after}`",
        "- the host is shared: other engineers' VMs and tests ran at the same time",
        "",
        "## What was run", "",
        *[line for b in args.bench for line in [*(what_windows(args) if windows(args, b) else what_runs(args, b)), ""]],
        "- `tagger`: tagger's programs as the agent loads them (tagger.telemetry.BpfCollector, every cgroup "
        f"registered), read every {args.tick:g} s of its attached time"
        + (f" (in one `tagger` window of {reads_every(args)} of the pipe)" if windows(args, "pipe")
           and "pipe" in args.bench else "") + f" ({result['ticks']} reads, "
        f"{result['tick_cpu_ms']:.1f} ms of CPU each); the agent's rules, tags and API are not run "
        "(bench_overhead.py's rounds run the whole agent and give its own CPU).",
        *[how_windows(args) if windows(args, b) else how_runs(args, b, redis_where) for b in args.bench],
        f"- this process (the reads) at nice {args.nice + AGENT_NICE}, as deploy/tagger.service runs the agent.",
        "",
        "A bar is met or NOT MET only where the median's 95% interval lies on one side of it.",
        "",
        "## Figures", "",
        *table(figs), "",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=("windows", "runs"), default="windows",
                    help="the pipe's: windows, one long run with the conditions switched under it every "
                         "--window seconds; runs, one whole run per condition (default windows; redis is "
                         "always measured by runs)")
    ap.add_argument("--window", type=float, default=0.2, help="seconds per window of the pipe (default 0.2)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="pipe rounds, each one window (or run) of none, empty and tagger (default 1000 "
                         "windows, ~12 minutes; or 150 runs, ~5 minutes)")
    ap.add_argument("--redis-rounds", type=int, default=150,
                    help="redis rounds, each one run of none, empty and tagger (default 150, ~12 minutes)")
    ap.add_argument("--bench", default="pipe,redis", help="which benchmarks, comma-separated (default pipe,redis)")
    ap.add_argument("--tick", type=float, default=1.0, help="seconds between the reads while attached (default 1)")
    ap.add_argument("--pipe-loops", type=int, default=100000, help="perf bench sched pipe -l, --method runs (default 100000)")
    ap.add_argument("--pipe-cpu", default=str((os.cpu_count() or 1) - 1),
                    help="CPU both pipe ends are pinned to (default: the last)")
    ap.add_argument("--pipe-fifo", type=int, default=10,
                    help="--method runs: SCHED_FIFO priority of the pipe pair, 0 for CFS at --nice (default 10; "
                         "windows run it at --nice)")
    ap.add_argument("--redis-requests", type=int, default=60000, help="redis-benchmark -n per test (default 60000)")
    ap.add_argument("--redis-clients", type=int, default=50, help="redis-benchmark -c (default 50)")
    ap.add_argument("--redis-pin", choices=("none", "same", "split"), default="none",
                    help="where redis-server and redis-benchmark run (default unpinned)")
    ap.add_argument("--nice", type=int, default=-10,
                    help="nice of the benchmarks; this process runs 5 lower (default -10)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "overhead_paired.md",
                    help="the report (default benchmarks/results/overhead_paired.md); '-' for none")
    ap.add_argument("--raw", type=Path, metavar="FILE",
                    help="also write every round's figures (JSON), for --pool later")
    ap.add_argument("--pool", type=Path, nargs="+", metavar="FILE",
                    help="run nothing: the figures of the rounds of these --raw files together (runs of "
                         "one build on different hours), printed")
    args = ap.parse_args(argv)
    if args.pool:
        return pool(args.pool)
    args.bench = [b.strip() for b in args.bench.split(",") if b.strip()]
    if args.rounds is None:
        args.rounds = 1000 if args.method == "windows" else 150
    if not args.bench or set(args.bench) - {"pipe", "redis"}:
        ap.error("--bench: pipe, redis or both")
    if min(args.rounds, args.redis_rounds, args.pipe_loops, args.redis_requests, args.redis_clients) < 1 \
            or min(args.tick, args.window) <= 0:
        ap.error("--rounds, --redis-rounds, --pipe-loops, --redis-requests, --redis-clients, --tick and "
                 "--window must be positive")
    if os.geteuid() != 0:
        sys.exit("bench_overhead_paired: needs root (loads BPF programs)")
    for tool in ("perf", "taskset", *(("redis-server", "redis-benchmark") if "redis" in args.bench else ())):
        if shutil.which(tool) is None:
            sys.exit(f"bench_overhead_paired: {tool} not found (make deps installs linux-perf and redis-server)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.setpriority(os.PRIO_PROCESS, 0, args.nice + AGENT_NICE)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = uptime()
    print(f"{started}; {load_before}")
    result = run(args, log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True))
    load_after = uptime()
    if args.raw is not None:
        args.raw.write_text(json.dumps({"started": started, "argv": sys.argv if argv is None else argv,
                                        **{b: result[b] for b in args.bench}}))
        print(f"wrote {args.raw}")
    figs = {b: paired(result[b], lambda r, c: r[c], ours="tagger") for b in args.bench}
    print("\n".join(table(figs)))
    if str(args.out) != "-":
        shown = ["benchmarks/bench_overhead_paired.py", *(sys.argv[1:] if argv is None else argv)]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report(args, [".venv/bin/python", *shown], result, figs, started, load_before,
                                   load_after))
        print(f"\nwrote {args.out}")
    return 0 if bars_met(figs) else 1


def bars_met(figs: dict) -> bool:
    verdicts = [verdict(figs["pipe"]["share"], PIPE_BAR_POINTS)] if "pipe" in figs else []
    verdicts += [verdict(figs["redis"]["tagger"], REDIS_BAR_LOSS)] if "redis" in figs else []
    return all(v == "met" for v in verdicts)


def pool(files: list[Path]) -> int:
    """The figures of several --raw files' rounds together."""
    rounds: dict[str, list[dict]] = {}
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as err:
            sys.exit(f"bench_overhead_paired: --pool {f}: {err}")
        print(f"{f}: {data.get('started', '?')}, "
              + ", ".join(f"{len(data[b])} {b} rounds" for b in ("pipe", "redis") if data.get(b)))
        for b in ("pipe", "redis"):
            rounds.setdefault(b, []).extend(data.get(b) or [])
    figs = {b: paired(r, lambda r, c: r[c], ours="tagger") for b, r in rounds.items() if r}
    if not figs:
        sys.exit("bench_overhead_paired: --pool: no rounds in those files")
    print("\n".join(table(figs)))
    return 0 if bars_met(figs) else 1


if __name__ == "__main__":
    sys.exit(main())
