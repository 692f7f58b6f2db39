"""The kernel's cgroup knobs as facts: their limits and their text formats.

Everything that reads or writes a knob's text - the control points, the rules
loader checking a rule before it can run, the Prometheus exporter and the live
view showing what was applied - parses and formats it here, each format as a
paired ``parse_*``/``format_*`` (or a dataclass with ``parse``/``text``), and
checks the same kernel limits.  Nothing here touches the kernel.

Sources: Documentation/admin-guide/cgroup-v2.rst, cgroup-v1/{cpusets,blkio-controller}.rst,
Documentation/scheduler/sched-bwc.rst, kernel/sched/core.c (``tg_set_cfs_bandwidth``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# --- CFS bandwidth: cpu.max (v2), cpu.cfs_quota_us + cpu.cfs_period_us (v1) --

MIN_QUOTA_US = 1_000          # min_cfs_quota_period: 1ms
MIN_PERIOD_US = 1_000
MAX_PERIOD_US = 1_000_000     # max_cfs_quota_period: 1s
DEFAULT_PERIOD_US = 100_000   # the kernel's default_cfs_period(): 100ms
BW_SHIFT = 20
MAX_QUOTA_US = (1 << (64 - BW_SHIFT)) - 1   # max_cfs_runtime, in us (MAX_BW)


def cfs_ratio(quota_us: int, period_us: int) -> int:
    """The kernel's to_ratio(): fixed-point quota/period, compared exactly as it does."""
    return ((quota_us * 1000) << BW_SHIFT) // (period_us * 1000)


@dataclass(frozen=True)
class CpuMax:
    """A CFS bandwidth limit.  ``quota_us`` None is unlimited ("max", v1 -1).

    Text form: cpu.max's own, ``"50000 100000"`` or ``"max 100000"`` (microseconds)."""
    quota_us: int | None
    period_us: int = DEFAULT_PERIOD_US

    @classmethod
    def parse(cls, text: str) -> "CpuMax":
        """``"50000 100000"``, ``"max 100000"``, v1's ``"-1"`` -> CpuMax.  ValueError/IndexError
        on anything else."""
        parts = text.split()
        quota = None if parts[0] in ("max", "-1") else int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else DEFAULT_PERIOD_US
        return cls(quota, period)

    @classmethod
    def from_cpus(cls, cpus: float | None, period_s: float = DEFAULT_PERIOD_US / 1e6) -> "CpuMax":
        """A quota of ``cpus`` CPUs at a period of ``period_s`` seconds (None or inf: unlimited)."""
        period = int(round(period_s * 1e6))
        if cpus is None or math.isinf(cpus):
            return cls(None, period)
        return cls(int(round(cpus * period)), period)

    @property
    def cpus(self) -> float:
        """CPUs allowed (quota / period); inf when unlimited."""
        return math.inf if self.quota_us is None else self.quota_us / self.period_us

    def text(self) -> str:
        return f"{'max' if self.quota_us is None else self.quota_us} {self.period_us}"

    def __str__(self):
        return self.text()


def parse_cpu_max(text: str) -> CpuMax:
    """cpu.max text -> CpuMax (see :meth:`CpuMax.parse`)."""
    return CpuMax.parse(text)


def format_cpu_max(value: CpuMax) -> str:
    """CpuMax -> cpu.max text, the inverse of :func:`parse_cpu_max`."""
    return value.text()


def cpu_max_cpus(text: str) -> float:
    """CPUs a cpu.max text allows: ``"50000 100000"`` -> 0.5; inf for ``"max ..."``."""
    return CpuMax.parse(text).cpus


# --- cpu.weight (v2) / cpu.shares (v1) ---------------------------------------

#: cgroup v2 cpu.weight range and default (Documentation/admin-guide/cgroup-v2.rst).
WEIGHT_MIN, WEIGHT_MAX, WEIGHT_DEFAULT = 1, 10_000, 100
#: cgroup v1 cpu.shares range (MIN_SHARES, MAX_SHARES in kernel/sched/sched.h) and default.
SHARES_MIN, SHARES_MAX, SHARES_DEFAULT = 2, 1 << 18, 1024


def weight_to_shares(weight: int) -> int:
    """cpu.weight -> cpu.shares, as the kernel converts (weight 100 = 1024 shares)."""
    return max(SHARES_MIN, min(SHARES_MAX, round(weight * SHARES_DEFAULT / WEIGHT_DEFAULT)))


# --- CPU lists: cpuset.cpus, cpuset.cpus.effective, /sys/devices/system/cpu/online --

def parse_cpulist(text: str) -> list[int]:
    """The kernel's CPU list format ("0-3,8,10-11") -> sorted CPU numbers.
    ValueError on anything else."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            if text.strip():
                raise ValueError(f"empty item in CPU list {text!r}")
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad CPU range {part!r} in {text.strip()!r}")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"bad CPU range {part!r} in {text!r}")
        cpus.update(range(a, b + 1))
    return sorted(cpus)


def format_cpulist(cpus) -> str:
    """CPU numbers -> the kernel's compact list ("0-3,8"), the inverse of :func:`parse_cpulist`."""
    out, run = [], []
    for c in sorted(set(cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


# --- blk-throttle: io.max (v2), blkio.throttle.*_device (v1) -----------------

#: io.max's keys, in the kernel's order.
IO_KEYS = ("rbps", "wbps", "riops", "wiops")
#: The v1 file holding each key's rules ("MAJ:MIN N" per line, 0 removes the rule).
IO_V1_FILES = {
    "rbps": "blkio.throttle.read_bps_device",
    "wbps": "blkio.throttle.write_bps_device",
    "riops": "blkio.throttle.read_iops_device",
    "wiops": "blkio.throttle.write_iops_device",
}
#: The smallest limit a rule may ask for: v1 reads 0 as "no rule", and a
#: stopped disk is never what a rule means.
IO_LIMIT_MIN = 1
IO_UNLIMITED = " ".join(f"{k}=max" for k in IO_KEYS)


def parse_io_limits(text: str) -> dict[str, int | None]:
    """``"rbps=1048576 wbps=max"`` -> {"rbps": 1048576, "wbps": None, ...}; absent keys are None."""
    out: dict[str, int | None] = {k: None for k in IO_KEYS}
    for field in text.split():
        if "=" in field:
            k, v = field.split("=", 1)
            if k in out:
                out[k] = None if v == "max" else int(v)
    return out


def format_io_limits(limits: dict[str, int | None]) -> str:
    """{"rbps": 1048576, ...} -> ``"rbps=1048576 wbps=max riops=max wiops=max"`` (every key)."""
    return " ".join(f"{k}={'max' if limits.get(k) is None else int(limits[k])}" for k in IO_KEYS)


def parse_io_max_line(line: str) -> tuple[str, dict[str, int | None]]:
    """One io.max line ``"8:0 rbps=1048576 wbps=max ..."`` -> ("8:0", limits)."""
    device, _, rest = line.strip().partition(" ")
    return device, parse_io_limits(rest)


def format_io_max_line(device: str, limits: dict[str, int | None]) -> str:
    """("8:0", limits) -> the io.max line written for that device."""
    return f"{device} {format_io_limits(limits)}"


def io_max_device(text: str, device: str) -> str | None:
    """The rest of ``device``'s line in an io.max (or v1 ``*_device``) file; None if absent."""
    for line in text.splitlines():
        parts = line.split(None, 1)
        if parts and parts[0] == device:
            return parts[1] if len(parts) > 1 else ""
    return None
