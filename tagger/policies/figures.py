"""W's figures: the SLO metric of the protected cgroups per tick, over a
window of ticks, and aggregated over a step's judgment window."""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from tagger.rules.spec import LatencySloSpec
from tagger.snapshot import Snapshot, hist_percentiles

#: SLO metrics that are percentiles of per-tick histograms: metric stem ->
#: the histograms it is computed from (as tagger.telemetry does).
HISTOGRAMS = {"runq": ("runq.wakeup", "runq.new", "runq.preempt"), "runq.wakeup": ("runq.wakeup", "runq.new"),
              "runq.preempt": ("runq.preempt",), "io.lat": ("io.lat",)}


def aggregate(samples) -> float:
    """The SLO metric over a window of samples: the percentile of the summed
    histograms, or the median of the values (NaN if none is known)."""
    hists = [s for s in samples if isinstance(s, tuple)]
    if hists:
        total = np.sum([h for h, _, _ in hists], axis=0)
        if total.sum() == 0:
            return math.nan
        _, edges, q = hists[-1]
        return float(hist_percentiles(total[None, :], edges, (q,))[0, 0])
    values = [s for s in samples if not math.isnan(s)]
    return float(np.median(values)) if values else math.nan


class SloFigures:
    """The protected cgroups' recent samples: the last ``window`` histograms
    (a windowed percentile SLO) and the (sample, missed) ticks since the last
    change (a step's baseline)."""

    def __init__(self, spec: LatencySloSpec):
        self.spec = spec
        self._recent: dict[str, deque] = {}   # protected path -> its last `window` histograms
        self._since: dict[str, deque] = {}    # protected path -> (sample, missed) since the last change

    def clear(self) -> None:
        """A new setting: the windows judge the ticks under it, not the misses
        that asked for it (they would ask again at once)."""
        self._recent.clear()
        self._since.clear()

    def _histogram_names(self, snap: Snapshot):
        stem, _, pct = self.spec.metric.rpartition(".")
        names = HISTOGRAMS.get(stem)
        if (names is None or not pct.startswith("p") or not len(snap.hist_edges)
                or not all(n in snap.histograms for n in names)):
            return None, None
        return names, float(pct[1:]) / 100

    def sample(self, snap: Snapshot, row: int):
        """W's figure of one tick, to aggregate over a window: its histogram
        (with the edges and quantile) when the SLO metric is a histogram
        percentile, else the metric's value."""
        names, q = self._histogram_names(snap)
        if names is None:
            return float(snap.column(self.spec.metric)[row])
        return (sum(snap.histograms[n][row].astype(np.int64) for n in names), snap.hist_edges, q)

    def record(self, snap: Snapshot, protect: list[int], lat: np.ndarray) -> None:
        paths = snap.cgroups.paths
        for i in protect:
            since = self._since.setdefault(paths[i], deque(maxlen=self.spec.judge))
            missed = not math.isnan(lat[i]) and lat[i] > self.spec.target
            since.append((self.sample(snap, i), missed))
        live = {paths[i] for i in protect}
        for gone in [p for p in self._since if p not in live]:
            del self._since[gone]

    def baseline(self, victim: str) -> float:
        """W's SLO metric over the misses in a row that ask for a step (at most
        ``judge`` ticks of them, under the settings in force)."""
        streak = []
        for sample, missed in reversed(self._since.get(victim, ())):
            if not missed:
                break
            streak.append(sample)
        return aggregate(streak) if streak else math.nan

    def latency(self, snap: Snapshot, protect: list[int]) -> np.ndarray:
        """The SLO metric per row: this tick's, or for the protected rows over
        the last ``window`` ticks when it is a histogram percentile."""
        spec = self.spec
        lat = snap.column(spec.metric)
        names, q = self._histogram_names(snap)
        if spec.window <= 1 or names is None:
            return lat
        paths = snap.cgroups.paths
        lat = lat.copy()
        for i in protect:
            recent = self._recent.setdefault(paths[i], deque(maxlen=spec.window))
            recent.append(sum(snap.histograms[n][i].astype(np.int64) for n in names))
            total = np.sum(recent, axis=0)[None, :]
            lat[i] = hist_percentiles(total, snap.hist_edges, (q,))[0, 0]
        live = {paths[i] for i in protect}
        for gone in [p for p in self._recent if p not in live]:
            del self._recent[gone]
        return lat
