"""Scoring tags against ground truth, from the agent's per-tick tag states.

Pure functions over plain data, so they are tested without a kernel
(tests/test_tagging_accuracy.py).  Definitions (also in the benchmark's
docstring):

* A **tick** is one Snapshot the agent published: its time and the tags then
  set on each cgroup of the scenario.
* A (cgroup, phase) pair is **tagged** with ``key=value`` if the tag is set in
  more than half of the phase's ticks at or after ``t0 + for + 2 ticks`` (the
  rule's ``for`` plus two ticks of grace: the **judged window**, up to the
  phase's end ``t1``).  Before that a correct rule cannot have fired yet.
* **Time to tag**: from ``t0`` (the workloads started) to the first tick of the
  phase with the tag set; None if it never was.
* **Changes**: how many times the tag went on or off between ticks of the
  phase, counting from its state at the last tick before ``t0`` ("off" if the
  cgroup had none: the cgroups are new): a tag set once and held is 1 change,
  never set is 0.  (A workload made ready before ``t0`` - memory filled - may
  carry a tag of that work into the phase; its lapse is one change.)
* Truth per pair is True (should carry the tag), False (should not) or None
  (not judged: neither answer would be wrong).  Precision = TP / (TP + FP),
  recall = TP / (TP + FN) over the judged pairs; None when the denominator is 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PairScore:
    """One (cgroup, phase, tag)."""
    scenario: str
    role: str
    tag: str                    # "key=value"
    truth: bool | None
    tagged: bool
    share: float                # fraction of the judged window's ticks with the tag set
    time_to_tag: float | None   # seconds from t0
    changes: int
    window_ticks: int
    phase: int = 0              # index of the phase in the run


@dataclass
class TagScore:
    tag: str
    for_s: float
    bar_s: float                # for + 2 ticks
    pairs: list[PairScore] = field(default_factory=list)

    def _count(self, truth, tagged):
        return sum(1 for p in self.pairs if p.truth is truth and p.tagged is tagged)

    @property
    def tp(self):
        return self._count(True, True)

    @property
    def fp(self):
        return self._count(False, True)

    @property
    def fn(self):
        return self._count(True, False)

    @property
    def judged(self):
        return sum(1 for p in self.pairs if p.truth is not None)

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def max_changes(self) -> int:
        return max((p.changes for p in self.pairs), default=0)

    def times(self) -> list[float]:
        """Time to tag of the pairs that should carry it and were tagged at all."""
        return [p.time_to_tag for p in self.pairs if p.truth and p.time_to_tag is not None]

    def late(self) -> list[PairScore]:
        """Pairs that should carry the tag and were not set within the bar."""
        return [p for p in self.pairs if p.truth and (p.time_to_tag is None or p.time_to_tag > self.bar_s)]


def split_tag(tag: str) -> tuple[str, str]:
    key, _, value = tag.partition("=")
    return key, value


def score_pair(ticks, path: str, tag: str, t0: float, t1: float, for_s: float, interval: float):
    """(tagged, share, time_to_tag, changes, window_ticks) of ``path`` over the
    phase [t0, t1] from ``ticks``: [(t, {path: {key: value}})] in time order."""
    key, value = split_tag(tag)
    start = t0 + for_s + 2 * interval
    on_prev = False
    changes = 0
    first = None
    window = held = 0
    for t, tags in ticks:
        on = tags.get(path, {}).get(key) == value
        if t < t0:
            on_prev = on
            continue
        if t > t1:
            continue
        if on != on_prev:
            changes += 1
            on_prev = on
        if on and first is None:
            first = t - t0
        if t >= start:
            window += 1
            held += on
    share = held / window if window else 0.0
    return share > 0.5, share, first, changes, window
