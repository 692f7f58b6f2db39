"""What pod and container names from the kubelet's logs (tagger.kubelet) cost
the tick, on a fixture node of 3,000 cgroups (300 pods of two containers and a
sandbox, systemd driver, plus 2,000 systemd services), each beside a baseline
timed in the same run.

  1. the per-tick refresh when nothing changed (two stat(2) calls), against one
     os.stat of a cgroup directory;
  2. the refresh when a pod's logs appeared (both directories listed and
     parsed), against the same;
  3. relabelling after that change (the registry forgets only pods' and
     containers' descriptions), against describing the whole table cold.

    .venv/bin/python benchmarks/bench_kubelet.py [--repeat 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tagger.cgroups import Layout, Registry, _describe_cached  # noqa: E402
from tagger.kernelfs import KernelFS  # noqa: E402
from tagger.kubelet import KubeletLogs  # noqa: E402
from tests.kubelet_fixture import (Pod, node_cgroups, remove_pod_logs, write_cgroups,  # noqa: E402
                                   write_logs, write_pod_logs)


def median_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def settle(*dirs):
    past = time.time() - 10            # older than tagger.kubelet's racy window
    for d in dirs:
        os.utime(d, (past, past))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-kubelet-"))
    try:
        pods = [Pod(f"ns{i % 10}", f"app-{i}", f"{i:08x}-aaaa-4bbb-8ccc-{i:012x}",
                    ("guaranteed", "burstable", "besteffort")[i % 3], ["main", "sidecar"]) for i in range(300)]
        paths, _ = node_cgroups("systemd", "containerd", pods)
        services = [f"/system.slice/s{i}.service" for i in range(2000)]
        write_cgroups(tmp / "root", "v2", paths + services)
        logs = tmp / "log"
        write_logs(logs, pods)
        dirs = (logs / "pods", logs / "containers")
        settle(*dirs)
        names = KubeletLogs(str(logs))
        reg = Registry(Layout.detect(KernelFS(tmp / "root")), workload_names=names)
        reg.scan()
        reg.refresh_names()
        n = len(reg.paths())
        one_stat = str(tmp / "root/sys/fs/cgroup/system.slice")
        base = median_of(lambda: os.stat(one_stat), args.repeat * 20)
        print(f"fixture node: {n} cgroups, {len(pods)} pods, {len(names.containers())} containers with logs")
        print(f"baseline  os.stat of one directory                  {base * 1e6:8.1f} us")

        unchanged = median_of(lambda: reg.refresh_names(), args.repeat * 20)
        print(f"1. refresh, nothing changed                         {unchanged * 1e6:8.1f} us"
              f"  ({unchanged / base:.1f}x one stat)")

        last = pods[-1]

        def changed():
            remove_pod_logs(logs, last)
            settle(*dirs)
            t = time.perf_counter()
            assert reg.refresh_names()
            took = time.perf_counter() - t
            write_pod_logs(logs, last)
            settle(*dirs)
            reg.refresh_names()
            return took
        listed = statistics.median(changed() for _ in range(args.repeat))
        print(f"2. refresh, a pod's logs came or went               {listed * 1e6:8.1f} us"
              f"  ({listed / base:.0f}x one stat)")

        def relabel():
            remove_pod_logs(logs, last)
            settle(*dirs)
            reg.refresh_names()
            t = time.perf_counter()
            reg.table()
            took = time.perf_counter() - t
            write_pod_logs(logs, last)
            settle(*dirs)
            reg.refresh_names()
            reg.table()
            return took

        def cold():
            _describe_cached.cache_clear()
            fresh = Registry(reg.layout, workload_names=names)
            fresh.scan()
            t = time.perf_counter()
            fresh.table()
            return time.perf_counter() - t
        again = statistics.median(relabel() for _ in range(max(5, args.repeat // 5)))
        whole = statistics.median(cold() for _ in range(max(5, args.repeat // 5)))
        print(f"3. the table after a change (pods relabelled)       {again * 1e3:8.1f} ms"
              f"  vs {whole * 1e3:.1f} ms describing all {n} cold ({again / whole:.2f}x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
