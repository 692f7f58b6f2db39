"""Which cgroups the Prometheus exposition carries (issue 17): a node with
3,000 cgroups must not cost 3,000 series per metric.

By default: tagged cgroups, Kubernetes pods and containers (under
``/kubepods`` or ``/kubepods.slice``), systemd services (``*.service``), and
the top N by CPU time used since tagger started (cumulative, so the set does
not churn with every tick's noise); ``--export`` globs add to that.  At most
``cap`` cgroups in all, chosen in that order of value (globs and tags first,
then pods and services, then CPU); how many were left out is exported
(``tagger_cgroups_unexported``), so a capped exposition says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tagger.cgroupglob import GlobSet

#: Busy cgroups that are neither pods nor services (user sessions, system
#: daemons outside units): a handful on a node.  Each costs ~2.5 kB (counters,
#: both latency histograms, timestamps), as much as ~3 idle pods; with 30 pods
#: of 2 containers (their namespace/pod/container labels), 60 services and
#: 3,000 cgroups in all, the default exposition is ~283 kB, under issue 17's
#: 300 kB (benchmarks/bench_exposition.py).  --export-top widens it.
DEFAULT_TOP = 10
DEFAULT_CAP = 1000
#: Kubernetes' pod cgroups under both kubelet drivers (cgroupfs, systemd).
KUBE_GLOBS = ("/kubepods/**", "/kubepods.slice/**")
#: The CPU counter the top N is ranked by (tagger.publish.cumulative).
RANK_BY = "tagger_cgroup_cpu_seconds_total"


@dataclass
class ExportPolicy:
    globs: GlobSet
    top: int = DEFAULT_TOP
    cap: int = DEFAULT_CAP
    _static: tuple = field(default=(None, None), repr=False)   # (paths, rank per row before tags)

    def _static_rank(self, paths: list[str]) -> np.ndarray:
        """Per row: 0 matched by --export, 1 pod or service, 2 neither (kept per table)."""
        cached_paths, rank = self._static
        if cached_paths is not paths and cached_paths != paths:
            kube = GlobSet(KUBE_GLOBS)
            rank = np.full(len(paths), 2, np.int8)
            for i, path in enumerate(paths):
                if self.globs and self.globs.match(path):
                    rank[i] = 0
                elif path.endswith(".service") or kube.match(path):
                    rank[i] = 1
            self._static = (paths, rank)
        return rank

    def select(self, paths: list[str], tagged, cpu_seconds: np.ndarray | None) -> tuple[np.ndarray, int]:
        """(rows exported in table order, how many cgroups were left out)."""
        n = len(paths)
        rank = self._static_rank(paths).copy()
        for i, path in enumerate(paths):
            if rank[i] and path in tagged:
                rank[i] = 0
        cpu = np.zeros(n) if cpu_seconds is None or len(cpu_seconds) != n else np.nan_to_num(cpu_seconds)
        wanted = rank < 2
        rest = np.flatnonzero(~wanted)
        if self.top > 0 and rest.size:
            rest = rest[cpu[rest] > 0]            # a cgroup that used no CPU is nobody's top
            wanted[rest[np.argsort(-cpu[rest], kind="stable")[: self.top]]] = True
        rows = np.flatnonzero(wanted)
        if rows.size > self.cap:
            # The cap's choice: by rank, then by CPU.
            order = np.lexsort((-cpu[rows], rank[rows]))
            rows = np.sort(rows[order[: self.cap]])
        return rows, n - int(rows.size)
