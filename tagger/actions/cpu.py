"""CPU control points: the CFS bandwidth quota, the weight and the idle flag.

cgroup v2: ``cpu.max`` ("$QUOTA $PERIOD" or "max $PERIOD", microseconds) and
``cpu.weight``.  cgroup v1 (hybrid hosts keep cpu there): ``cpu.cfs_quota_us``
(-1 = unlimited), ``cpu.cfs_period_us`` and ``cpu.shares`` at the same relative
path in the cpu hierarchy.

The kernel's limits (tagger.knobs; kernel/sched/core.c ``tg_set_cfs_bandwidth`` and
``tg_cfs_schedulable_down``, Documentation/scheduler/sched-bwc.rst) are checked
before writing, so a refusal names the limit instead of a bare EINVAL:
quota >= 1ms, 1ms <= period <= 1s, burst <= quota, and on v1 only a child's
quota/period ratio may not exceed its nearest limited ancestor's, nor may a
parent drop below a limited descendant.

``cpu.idle`` (v1 and v2, Linux 5.15+, "sched: Cgroup SCHED_IDLE support") makes a group's
tasks SCHED_IDLE towards their siblings: a waking non-idle task preempts them
at once.  Unlike a quota it costs the group nothing while the others leave a
CPU idle, which is why latency-slo reaches for it first.
"""

from __future__ import annotations

import math

from tagger import errors
from tagger.kernelfs import KernelFS
from tagger.knobs import (MAX_PERIOD_US, MAX_QUOTA_US, MIN_PERIOD_US, MIN_QUOTA_US, WEIGHT_MAX, WEIGHT_MIN,
                          CpuMax, cfs_ratio, weight_to_shares)

from .control import ControlPoint, Safety
from .refusal import ActionRefused

class CpuQuota(ControlPoint):
    """``cpu.max`` (v2) or ``cpu.cfs_quota_us`` + ``cpu.cfs_period_us`` (v1)."""

    knob = "cpu.max"

    def __init__(self, fs: KernelFS, cgroup: str, directory: str, version: int, node_cpus: float):
        super().__init__(fs, cgroup, directory)
        self.version = version
        self.node_cpus = node_cpus

    def _f(self, name):
        return f"{self.dir}/{name}"

    def read(self) -> str:
        if self.version == 2:
            return CpuMax.parse(self.read_knob("cpu.max", "cpu", 2)).text()
        quota = self.fs.read_int(self._f("cpu.cfs_quota_us"))
        period = self.fs.read_int(self._f("cpu.cfs_period_us"))
        return CpuMax(None if quota < 0 else quota, period).text()

    def _burst_us(self) -> int:
        name = "cpu.max.burst" if self.version == 2 else "cpu.cfs_burst_us"
        text = self.fs.read_optional(self._f(name))
        return int(text.split()[0]) if text else 0

    def check(self, value: CpuMax) -> None:
        """Raise ActionRefused naming the first kernel limit ``value`` breaks."""
        p, q = value.period_us, value.quota_us
        if not MIN_PERIOD_US <= p <= MAX_PERIOD_US:
            raise ActionRefused(f"{self.cgroup}: cpu period {p}us outside the kernel's 1ms..1s "
                                f"(min/max_cfs_quota_period)", "period 1ms..1s", self.dir)
        if q is None:
            return
        if q < MIN_QUOTA_US:
            raise ActionRefused(f"{self.cgroup}: cpu quota {q}us below the kernel's 1ms minimum "
                                f"(min_cfs_quota_period)", "quota >= 1ms", self.dir)
        if q > MAX_QUOTA_US:
            raise ActionRefused(f"{self.cgroup}: cpu quota {q}us above max_cfs_runtime",
                                "quota <= max_cfs_runtime", self.dir)
        burst = self._burst_us()
        if burst > q:
            bname = "cpu.max.burst" if self.version == 2 else "cpu.cfs_burst_us"
            raise ActionRefused(f"{self.cgroup}: {bname} {burst}us exceeds the new quota {q}us "
                                f"(the kernel requires burst <= quota)", "burst <= quota", self.dir)
        if self.version == 1:
            self._check_v1_hierarchy(value)

    def _check_v1_hierarchy(self, value: CpuMax) -> None:
        # v1 only: tg_cfs_schedulable_down() refuses a child whose ratio exceeds its
        # nearest limited ancestor's (v2 takes the minimum instead, no refusal).
        mine = cfs_ratio(value.quota_us, value.period_us)
        parts = self.dir.rstrip("/").split("/")
        for depth in range(len(parts) - 1, 0, -1):
            parent = "/".join(parts[:depth])
            if not self.fs.exists(parent + "/cpu.cfs_quota_us"):
                break           # above the hierarchy's root
            pq = self.fs.read_int(parent + "/cpu.cfs_quota_us")
            if pq >= 0:
                pp = self.fs.read_int(parent + "/cpu.cfs_period_us")
                if mine > cfs_ratio(pq, pp):
                    raise ActionRefused(
                        f"{self.cgroup}: quota {value.cpus:.3g} CPUs exceeds the parent's "
                        f"{pq / pp:.3g} CPUs ({parent}): on cgroup v1 a child may not exceed its parent",
                        "v1 child <= parent", self.dir)
                break
        for child_dir, cq, cp in self._limited_descendants(self.dir):
            if cfs_ratio(cq, cp) > mine:
                raise ActionRefused(
                    f"{self.cgroup}: quota {value.cpus:.3g} CPUs is below a child's {cq / cp:.3g} CPUs "
                    f"({child_dir}): on cgroup v1 a child may not exceed its parent",
                    "v1 child <= parent", self.dir)

    def _limited_descendants(self, d):
        try:
            names = self.fs.listdir(d)
        except errors.NotFound:
            return
        for name in names:
            sub = f"{d}/{name}"
            if not self.fs.is_dir(sub):
                continue
            try:
                q = self.fs.read_int(sub + "/cpu.cfs_quota_us")
                if q >= 0:
                    yield sub, q, self.fs.read_int(sub + "/cpu.cfs_period_us")
            except errors.NotFound:
                continue
            yield from self._limited_descendants(sub)

    def write(self, text: str) -> None:
        value = CpuMax.parse(text)
        self.check(value)
        try:
            if self.version == 2:
                self.fs.write_text(self._f("cpu.max"), value.text())
                return
            self._write_v1(value)
        except errors.KernelRefused as err:
            raise ActionRefused(f"{self.cgroup}: {err} — the kernel refused a CFS bandwidth "
                                f"setting (sched-bwc.rst limits: quota >= 1ms, period 1ms..1s, "
                                f"burst <= quota, v1 child <= parent)", "kernel refused", err.path) from err

    def _write_v1(self, value: CpuMax) -> None:
        qf, pf = self._f("cpu.cfs_quota_us"), self._f("cpu.cfs_period_us")
        quota = -1 if value.quota_us is None else value.quota_us
        old_q = self.fs.read_int(qf)
        old_p = self.fs.read_int(pf)
        if old_p == value.period_us:
            self.fs.write_text(qf, str(quota))
            return
        # Two files, two writes: go through the intermediate state with the
        # smaller quota/period ratio, so the v1 child <= parent check that the
        # final state passes also holds on the way.
        def r(q, p):
            return math.inf if q < 0 else q / p
        if r(quota, old_p) <= r(old_q, value.period_us):
            self.fs.write_text(qf, str(quota))
            self.fs.write_text(pf, str(value.period_us))
        else:
            self.fs.write_text(pf, str(value.period_us))
            self.fs.write_text(qf, str(quota))

    def paced(self, current: str, wanted: str, safety: Safety, held_for: float | None) -> str:
        cur, want = CpuMax.parse(current), CpuMax.parse(wanted)
        if want.quota_us is None:
            return want.text()
        cpus = max(want.cpus, safety.quota_floor)
        cur_cpus = min(cur.cpus, self.node_cpus)     # unlimited = the whole node
        if cpus < cur_cpus:
            if held_for is not None and held_for < safety.cooldown:
                return cur.text()
            if safety.max_step is not None:
                cpus = max(cpus, cur_cpus * (1 - safety.max_step))
        # Keep the quota the kernel accepts even for tiny floors.
        quota = max(MIN_QUOTA_US, int(round(cpus * want.period_us)))
        return CpuMax(quota, want.period_us).text()


    def tighter(self, old: str, new: str) -> bool:
        return CpuMax.parse(new).cpus < CpuMax.parse(old).cpus


class CpuWeight(ControlPoint):
    """``cpu.weight`` (v2) or ``cpu.shares`` (v1).  The text form is the file's own number."""

    knob = "cpu.weight"

    def __init__(self, fs, cgroup, directory, version: int):
        super().__init__(fs, cgroup, directory)
        self.version = version
        self.file = f"{directory}/{'cpu.weight' if version == 2 else 'cpu.shares'}"

    def native(self, weight: int) -> str:
        if not WEIGHT_MIN <= weight <= WEIGHT_MAX:
            raise ActionRefused(f"{self.cgroup}: cpu weight {weight} outside {WEIGHT_MIN}..{WEIGHT_MAX}",
                                "weight 1..10000", self.dir)
        return str(weight if self.version == 2 else weight_to_shares(weight))

    def read(self) -> str:
        return self.read_knob(self.file.rsplit("/", 1)[1], "cpu", self.version).strip()

    def write(self, value: str) -> None:
        try:
            self.fs.write_text(self.file, value)
        except errors.KernelRefused as err:
            raise ActionRefused(f"{self.cgroup}: {err}", "kernel refused", err.path) from err

    def tighter(self, old, new):
        return int(new) < int(old)

    def paced(self, current, wanted, safety, held_for):
        if int(wanted) < int(current) and held_for is not None and held_for < safety.cooldown:
            return current
        return wanted


class CpuIdle(ControlPoint):
    """``cpu.idle``.  Text form: "1" (idle), or "0 W" (not idle, with the group's
    weight W as its weight file says: v1 cpu.shares, v2 cpu.weight).

    The weight is part of the knob because the kernel forgets it: setting
    cpu.idle makes the weight read 3 (WEIGHT_IDLEPRIO) and refuses writes to
    it, and clearing cpu.idle sets the default (1024 / 100), not what the group
    had (kernel/sched/fair.c sched_group_set_idle).  Restoring "0 1536" clears
    the flag and then puts the weight back."""

    knob = "cpu.idle"

    def __init__(self, fs, cgroup, directory, version: int):
        super().__init__(fs, cgroup, directory)
        self.version = version
        self.file = f"{directory}/cpu.idle"
        self.weight_file = f"{directory}/{'cpu.weight' if version == 2 else 'cpu.shares'}"

    def native(self, idle: bool) -> str:
        return "1" if idle else "0"

    def read(self) -> str:
        try:
            idle = self.fs.read_text(self.file).strip()
        except errors.NotFound:
            if self.version == 2 and self.present() and not self.fs.exists(self.weight_file):
                raise self.not_delegated("cpu", "cpu.idle") from None
            if self.present():
                raise ActionRefused(f"{self.cgroup}: no cpu.idle (it needs Linux 5.15)",
                                    "no cpu.idle", self.file) from None
            raise
        if idle != "0":
            return idle
        return f"0 {self.fs.read_text(self.weight_file).strip()}"

    def write(self, value: str) -> None:
        idle, _, weight = value.partition(" ")
        try:
            self.fs.write_text(self.file, idle)
            if weight:
                self.fs.write_text(self.weight_file, weight)
        except errors.KernelRefused as err:
            raise ActionRefused(f"{self.cgroup}: {err}", "kernel refused", err.path) from err

    def paced(self, current, wanted, safety, held_for):
        # "not idle" is met by any weight: only the flag is asked for.
        if wanted == "0" and current.startswith("0 "):
            return current
        return wanted

    def tighter(self, old, new):
        return old.startswith("0") and new == "1"
