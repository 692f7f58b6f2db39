"""A 3,000-cgroup node for the exposition's size (tests/test_prometheus.py,
benchmarks/bench_exposition.py): 60 systemd services, 30 pods of two
containers (with the namespace, pod and container labels the kubelet's layout
gives them), and idle user cgroups; 15% of all busy, with run-queue and I/O
events over 7 of the kernel's log2 buckets, idle ones with no event (their
latency figures NaN, as the collector leaves them).  Ticks are 1 s apart and
end now on the monotonic clock, so the exposition carries its timestamps."""

from __future__ import annotations

import time

import numpy as np

from tagger.snapshot import METRICS, CgroupTable, Snapshot
from tagger.snapshot import hist_edges

BUCKETS = 24


def node_paths(n: int = 3000) -> list[str]:
    paths = ["/", "/system.slice", "/user.slice", "/kubepods", "/kubepods/burstable"]
    paths += [f"/system.slice/svc{i}.service" for i in range(60)]
    for p in range(30):
        pod = f"/kubepods/burstable/pod{p:04d}"
        paths += [pod, f"{pod}/ctr{p}a", f"{pod}/ctr{p}b"]
    paths += [f"/user.slice/idle{i}" for i in range(n - len(paths))]
    return paths


def node_labels(paths: list[str]) -> list[dict[str, str]]:
    """Workload labels as a kubelet names a pod's cgroups (namespace, pod, container)."""
    out = []
    for path in paths:
        parts = path.split("/")
        if len(parts) >= 4 and parts[3].startswith("pod"):
            labels = {"namespace": "shop-frontend", "pod": f"checkout-7d4b9c-{parts[3][3:]}x"}
            if len(parts) == 5:
                labels["container"] = f"checkout-{parts[4][-1]}"
            out.append(labels)
        else:
            out.append({})
    return out


def node_ticks(n: int = 3000, ticks: int = 3, seed: int = 1):
    """``ticks`` Snapshots of one node (same table, ids 1..n)."""
    rng = np.random.default_rng(seed)
    paths = node_paths(n)
    labels = node_labels(paths)
    now = time.monotonic()
    busy = rng.random(n) < 0.15
    unknown_when_idle = ("slowdown", ".p50", ".p95", ".p99", ".avg", ".max")
    for t in range(ticks):
        cols = {m: np.where(busy, rng.random(n), np.nan if any(u in m for u in unknown_when_idle) else 0.0)
                for m in METRICS}
        hist = (rng.poisson(2, size=(n, BUCKETS)) * busy[:, None]).astype(np.uint32)
        hist[:, :5] = 0
        hist[:, 12:] = 0
        zero = np.zeros_like(hist)
        yield Snapshot(t=now - (ticks - 1 - t), dt=1.0,
                       cgroups=CgroupTable.from_paths(paths, labels=labels, ids=np.arange(n) + 1),
                       columns=cols, hist_edges=hist_edges(BUCKETS),
                       histograms={"runq.wakeup": hist, "runq.new": zero, "runq.preempt": hist, "io.lat": hist})
