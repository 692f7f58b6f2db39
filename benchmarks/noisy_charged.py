#!/usr/bin/env python3
"""Who holds the CPU while `web` waits: the unlabelled scenario's cgroups with
no agent, one line per 1 s tick of tagger's BPF collector (issue 16).

    sudo .venv/bin/python benchmarks/noisy_charged.py [--light S] [--hog S] [--demote n2]

`web` (the scenario's cyclictest and request/response probe) beside `n1`,
`n2`, `n3` running light work for --light seconds; then `n1` hogs the CPU for
--hog seconds while the others stay light (--demote NAME puts that neighbour
at cpu.idle for the hog part).  Each tick: web's run-queue p99, its whole
run-queue wait and the part another cgroup's task held the CPU for (s/s),
and per neighbour the CPU it used and the wait charged to it (runq.wait.by)
-- the figures the latency-slo policy blames culprits by
(tagger/policies/culprits.py).  Everything it starts is stopped and its
cgroups removed on every exit path (noisy_neighbor.Run.cleanup).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import noisy_neighbor as nn  # noqa: E402
from benchmarks.noisy.cgroups import Scenario  # noqa: E402
from benchmarks.noisy.sampler import Sampler  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--light", type=float, default=20.0, help="seconds of light work only (default 20)")
    ap.add_argument("--hog", type=float, default=20.0, help="seconds with n1 hogging (default 20)")
    ap.add_argument("--demote", choices=nn.NEIGHBOURS, help="this neighbour at cpu.idle while n1 hogs")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("noisy_charged: needs root (cgroups, BPF)")
    run = nn.UnlabelledRun(nn.parse_args(["--scenario", "unlabelled"]))
    demoted = None
    try:
        run.scenario = Scenario(names=("web",) + nn.NEIGHBOURS)
        web = run.scenario["web"]
        web.allow_rt()
        web.set_shares(run.args.web_shares)
        for n in nn.NEIGHBOURS:
            run.scenario[n].set_shares(run.args.batch_shares)
        run.sampler = Sampler(web, run.scenario["n1"], watch={n: run.scenario[n] for n in nn.NEIGHBOURS})
        run.sampler.start()
        run.start_web(a.light + a.hog + 10)
        time.sleep(1.0)
        for n in nn.NEIGHBOURS:
            light = a.light if n == "n1" else a.light + a.hog
            run.scenario[n].spawn(run.light_argv(light, run.workdir / f"light-{n}.yaml"))
        t0 = time.monotonic()
        time.sleep(a.light)
        if a.demote:
            demoted = run.scenario[a.demote]
            demoted.set_idle(True)
        run.scenario["n1"].spawn(run.hog_argv(a.hog, run.workdir / "hog-n1.yaml"))
        time.sleep(a.hog + 1.0)
        print(f"{'t':>5}  {'p99 ms':>6}  {'wait':>6}  {'foreign':>7}  "
              + "  ".join(f"{n + ' cpu':>6} {n + ' chg':>6}" for n in nn.NEIGHBOURS) + "   (ms/s)")
        for s in run.sampler.samples:
            if s.t < t0:
                continue
            print(f"{s.t - t0:5.1f}  {s.web_p99 * 1e3:6.2f}  {s.web_wait * 1e3:6.1f}  {s.web_foreign * 1e3:7.1f}  "
                  + "  ".join(f"{s.cpu.get(n, math.nan):6.2f} {s.charged.get(n, math.nan) * 1e3:6.1f}"
                              for n in nn.NEIGHBOURS))
        return 0
    finally:
        if demoted is not None:
            try:
                demoted.set_idle(False)
            except OSError as err:
                print(f"noisy_charged: {a.demote}: cpu.idle not reset: {err}", file=sys.stderr)
        for problem in run.cleanup():
            print(f"noisy_charged: clean-up: {problem}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
