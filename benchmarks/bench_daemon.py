"""Steady-state CPU of `tagger run` at a 1 s tick with 1,000 live cgroups.

Runs the real command in a subprocess (benchmarks/agent.py; dry run: it
decides but writes no knobs) and reads its CPU time from the scheduler's own
per-thread counts (/proc/PID/task/*/schedstat) over the measurement window,
twice in the same run:

  baseline   the machine's own cgroups only
  loaded     plus 1,000 cgroups under /tagger-bench-<pid>/ (v2, and the v1
             cpu,cpuacct hierarchy on a hybrid host), each with one sleeping
             process in it

and prints CPU as a share of one core, the ratio loaded / baseline, and the
daemon's own tick figures from its socket.  The bar: <= 2% of one core loaded.
Everything it makes is removed on every exit path.  Needs root.

    sudo .venv/bin/python benchmarks/bench_daemon.py [--seconds 60] [--cgroups 1000] [--cgroupfs-only]
                                                     [--scrape 15]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.agent import Agent as UserAgent  # noqa: E402
from tests.cgroup_fixture import _rmdir_tree, v1_root, v2_root, wait_for  # noqa: E402

RULES = """
macros:
  busy: cpu.usage > 0.8
rules:
  - name: cpu-intensive
    match: {cgroup: "/**", exclude: ["/system.slice/**"]}
    when: busy
    for: 10s
    keep_for: 5s
    tags: {resource: cpu-intensive}
  - name: bench-static
    match: {cgroup: "/tagger-bench-*/**"}
    tags: {team: bench}
  - name: cap-hogs
    match: {tags: {resource: cpu-intensive, team: bench}}
    actions:
      cpu: {max: 0.5}
"""



class BenchCgroups:
    def __init__(self, n: int):
        self.prefix = f"tagger-bench-{os.getpid()}"
        self.roots = [r for r in {v2_root(), v1_root("cpu")} if r is not None]
        self.dirs: list[Path] = []
        self.procs: list[subprocess.Popen] = []
        self.n = n

    def create(self):
        for root in self.roots:
            (root / self.prefix).mkdir()
        for i in range(self.n):
            files = []
            for root in self.roots:
                d = root / self.prefix / f"c{i:04d}"
                d.mkdir()
                self.dirs.append(d)
                files.append(str(d / "cgroup.procs"))

            def enter(files=files):
                for f in files:
                    with open(f, "w") as fh:
                        fh.write(str(os.getpid()))
            self.procs.append(subprocess.Popen(["sleep", "86400"], preexec_fn=enter,
                                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))

    def remove(self):
        for p in self.procs:            # only what we started, by pid
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for root in self.roots:
            _rmdir_tree(root / self.prefix)


class Agent(UserAgent):
    """The agent with the benchmark's rules, its own CPU measured."""

    def __init__(self, workdir: Path, cgroupfs_only: bool, scrape: float = 0.0):
        super().__init__(workdir, rules=RULES, extra=("--cgroupfs-only",) if cgroupfs_only else ())
        self.scrape = scrape

    def measure(self, seconds: float) -> dict:
        h0, c0, t0 = self.health(), self.cpu_seconds(), time.monotonic()
        tick_walls, stages = [], {}
        next_scrape = t0 + self.scrape if self.scrape else math.inf
        scrape_bytes = 0
        while time.monotonic() - t0 < seconds:
            time.sleep(min(1.0, seconds - (time.monotonic() - t0)))
            if time.monotonic() >= next_scrape:      # as a Prometheus server would
                with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
                    scrape_bytes = len(resp.read())
                next_scrape += self.scrape
            h = self.health()
            tick_walls.append(h.get("tick_seconds", float("nan")))
            for k, v in (h.get("tick_stage_seconds") or {}).items():
                stages.setdefault(k, []).append(v)
        h1, c1, t1 = self.health(), self.cpu_seconds(), time.monotonic()
        return {"cpu_share": (c1 - c0) / (t1 - t0), "seconds": t1 - t0, "cgroups": h1.get("cgroups"),
                "ticks": h1.get("ticks", 0) - h0.get("ticks", 0), "source": h1.get("source"),
                "tick_seconds": sorted(tick_walls)[len(tick_walls) // 2] if tick_walls else float("nan"),
                "jitter_max": h1.get("tick_jitter_max_seconds"), "overruns": h1.get("overruns"),
                "stages": {k: sum(v) / len(v) for k, v in stages.items()}, "scrape_bytes": scrape_bytes}


def report(name, m):
    print(f"{name:9s} cgroups={m['cgroups']:>5}  source={m['source']}  CPU={m['cpu_share'] * 100:6.3f}% of one core"
          f"  over {m['seconds']:.0f}s ({m['ticks']} ticks)  tick median={m['tick_seconds'] * 1e3:.1f}ms"
          f"  jitter max={(m['jitter_max'] or 0) * 1e3:.1f}ms  overruns={m['overruns']}")
    print(" " * 10 + "mean tick stages: " + ", ".join(f"{k} {v * 1e3:.1f}ms" for k, v in m["stages"].items())
          + (f"; scraped {m['scrape_bytes'] / 1e6:.1f} MB" if m["scrape_bytes"] else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--baseline-seconds", type=float, default=20)
    ap.add_argument("--cgroups", type=int, default=1000)
    ap.add_argument("--cgroupfs-only", action="store_true", help="measure the cgroupfs collector")
    ap.add_argument("--scrape", type=float, default=0.0, metavar="SECONDS",
                    help="also scrape /metrics every SECONDS (its cost lands in the agent's CPU)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_daemon: needs root (cgroups, BPF)")

    workdir = Path(tempfile.mkdtemp(prefix="tagger-bench-"))
    os.chmod(workdir, 0o755)
    cgroups = BenchCgroups(args.cgroups)
    agent = None
    try:
        agent = Agent(workdir, args.cgroupfs_only, args.scrape)
        agent.wait_ready()
        base = agent.measure(args.baseline_seconds)
        report("baseline", base)
        t0 = time.monotonic()
        cgroups.create()
        print(f"created {args.cgroups} cgroups with a process each in {time.monotonic() - t0:.1f}s")
        wait_for(lambda: (agent.health().get("cgroups") or 0) >= args.cgroups, timeout=60, interval=0.5,
                 what="the agent to see the cgroups")
        agent.wait_ticks(3)
        loaded = agent.measure(args.seconds)
        report("loaded", loaded)
        ratio = loaded["cpu_share"] / base["cpu_share"] if base["cpu_share"] > 0 else float("inf")
        verdict = "PASS" if loaded["cpu_share"] <= 0.02 else "FAIL"
        print(f"ratio loaded/baseline = {ratio:.2f}x;  bar <= 2.000% of one core: "
              f"{loaded['cpu_share'] * 100:.3f}%  {verdict}")
    finally:
        if agent is not None:
            agent.stop()
            if agent.proc.returncode not in (0, None):
                print(agent.log_tail(), file=sys.stderr)
        cgroups.remove()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
