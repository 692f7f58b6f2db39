#!/usr/bin/env python3
"""Does a neighbour's demotion starve the tasks outside its cgroup tree?

Why tagger run's tick loop is guarded (tagger.agent.loopguard: a starved
tick runs as SCHED_FIFO 1): the noisy-neighbour scenario's sampler thread and tagger run's own ticks were
seen starting seconds late, only while ``batch`` was demoted by ``cpu.idle``
or the lowest weight.  This reproduces it without either of them: the
scenario's ``web`` (cyclictest and the request/response probe) beside
``batch`` (``stress-ng --cpu 2``, with ``fio`` if asked), and a probe process
in the root cgroup -- where tagger run and the benchmark run -- that sleeps
10 ms at a time and records how late each sleep came back.  Per mode, for
``--seconds`` after the demotion: the worst lateness and the seconds in
which some sleep came back more than 100 ms late.

Modes (``--modes``, comma-separated): ``none`` (batch at its own weight),
``weight`` (the lowest: v1 cpu.shares 10, v2 cpu.weight 1), ``idle``
(cpu.idle 1); ``+fio`` adds the I/O writer; ``@fifo`` runs the probe as
SCHED_FIFO 1 (as a guarded loop when starved), ``@nice`` at nice -20.  Each mode runs
``--repeat`` times, interleaved.

Root, real kernel.  Cgroups under /tagger-nn-<pid>/ (benchmarks.noisy.cgroups),
removed on every exit path; processes stopped by pid.
Usage: benchmarks/bench_starvation.py [--seconds 25] [--repeat 2]
       [--modes none,weight,idle,weight+fio,idle+fio,idle@nice,idle@fifo,weight+fio@fifo]
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.noisy.cgroups import Scenario  # noqa: E402
from benchmarks.noisy_neighbor import (CYCLICTEST_INTERVAL_US, FIO_ARGS, PROBE_WORK_US,  # noqa: E402
                                       STRESS_CPUS, STRESS_METHOD)

PY = sys.executable
#: a sleep that came back later than this is a starved second
STARVED = 0.1
#: the probe: sleeps of 10 ms, the worst lateness of each second (ms), as a list
PROBE = r"""
import sys, time
end = time.monotonic() + float(sys.argv[1])
worst, sec, out = 0.0, time.monotonic() + 1, []
while time.monotonic() < end:
    t0 = time.monotonic()
    time.sleep(0.01)
    worst = max(worst, time.monotonic() - t0 - 0.01)
    if time.monotonic() >= sec:
        out.append(round(worst * 1000, 1))
        worst, sec = 0.0, time.monotonic() + 1
print(out)
"""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=25.0, help="probe seconds per mode")
    ap.add_argument("--repeat", type=int, default=2, help="rounds of every mode, interleaved")
    ap.add_argument("--modes", default="none,weight,idle,weight+fio,idle+fio,idle@nice,idle@fifo,weight+fio@fifo")
    return ap.parse_args(argv)


def run_mode(sc: Scenario, mode: str, seconds: float, workdir: str) -> list[float]:
    """One mode: batch started, demoted as the mode says, the probe's per-second worst lateness (s)."""
    batch = sc["batch"]
    lever, _, how = mode.partition("@")
    batch.set_idle(False)
    batch.set_shares(1536)
    t = str(int(seconds + 5))
    batch.spawn(["stress-ng", "--cpu", str(STRESS_CPUS), "--cpu-method", STRESS_METHOD, "-t", t, "--quiet"])
    if "+fio" in lever:
        batch.spawn(["fio", "--name=batch", f"--filename={workdir}/fio.dat", *FIO_ARGS, "--time_based",
                     f"--runtime={t}", "--output=/dev/null"])
    try:
        if lever.startswith("weight"):
            batch.set_shares(10)
        elif lever.startswith("idle"):
            batch.set_idle(True)
        pre = {"fifo": ["chrt", "-f", "1"], "nice": ["nice", "-n", "-20"]}.get(how, [])
        out = subprocess.run([*pre, PY, "-c", PROBE, str(seconds)], capture_output=True, text=True,
                             check=True, timeout=seconds * 4 + 60).stdout
        return [ms / 1000 for ms in ast.literal_eval(out.strip())]
    finally:
        batch.stop()
        batch.set_idle(False)
        batch.set_shares(1536)


def main(argv=None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (cgroups)", file=sys.stderr)
        return 2
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    results: dict[str, list[list[float]]] = {m: [] for m in modes}
    workdir = tempfile.mkdtemp(prefix="tagger-starve-")
    sc = Scenario()
    try:
        web = sc["web"]
        web.set_shares(256)
        sock = f"{workdir}/probe.sock"
        total = a.repeat * len(modes) * (a.seconds + 3) + 60
        web.spawn([PY, "-m", "benchmarks.noisy.probe", "server", sock, "--work-us", str(PROBE_WORK_US)], cwd=ROOT)
        web.spawn([PY, "-m", "benchmarks.noisy.probe", "client", sock, f"{workdir}/probe.txt", "--duration",
                   str(total), "--quiet", "50", "--busy", "1000", "--period", "15"], cwd=ROOT)
        web.spawn(["cyclictest", "-t", "1", "-i", str(CYCLICTEST_INTERVAL_US), "-d", "0", "--policy=other", "-q",
                   "--laptop", "-D", str(int(total))])
        for k in range(a.repeat):
            for mode in modes:
                late = run_mode(sc, mode, a.seconds, workdir)
                results[mode].append(late)
                print(f"[{time.strftime('%H:%M:%S')}] round {k + 1} {mode}: worst {max(late) * 1e3:.0f} ms, "
                      f"{sum(x > STARVED for x in late)} of {len(late)} s starved (> {STARVED * 1e3:.0f} ms late)",
                      flush=True)
    finally:
        problems = sc.close()
        for p in problems:
            print(f"clean-up: {p}", file=sys.stderr)
        subprocess.run(["rm", "-rf", workdir], check=False)
    print(f"\nkernel {os.uname().release}; probe in the root cgroup, 10 ms sleeps; {a.repeat} round(s) of "
          f"{a.seconds:.0f} s per mode\n")
    print("| mode | worst lateness | seconds with a sleep > 100 ms late |")
    print("|---|---|---|")
    for mode, runs in results.items():
        flat = [x for r in runs for x in r]
        print(f"| {mode} | {max(flat, default=0) * 1e3:.0f} ms | {sum(x > STARVED for x in flat)} of {len(flat)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
