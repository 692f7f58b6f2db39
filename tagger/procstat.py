"""The node's CPU time from /proc/stat's first line (all CPUs summed).

Both collectors read it: the fallback for the node's busy time, both for
steal -- time the hypervisor ran something else while this guest had work,
which no limit on a neighbour cgroup can give back.
"""

from __future__ import annotations

import math
import os

from .kernelfs import KernelFS

#: Fields of the "cpu" line, in USER_HZ ticks (Documentation/filesystems/proc.rst).
FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")


def cpu_seconds(fs: KernelFS) -> dict[str, float]:
    """Seconds since boot per field of the "cpu" line, plus ``busy`` (all
    but idle and iowait; guest time is already inside user time, so it is
    left out).  Empty when /proc/stat cannot be read."""
    text = fs.read_optional("/proc/stat")
    if not text:
        return {}
    ticks = [int(x) for x in text.split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    out = {name: ticks[i] / hz for i, name in enumerate(FIELDS) if i < len(ticks)}
    out["busy"] = (sum(ticks[:8]) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)) / hz
    return out


class CpuRates:
    """Rates of /proc/stat fields between calls, in CPUs (seconds per second)."""

    def __init__(self, fs: KernelFS):
        self.fs = fs
        self._prev = cpu_seconds(fs)

    def rates(self, dt: float, names=("steal",)) -> dict[str, float]:
        """``name`` -> CPUs over the last ``dt`` seconds; NaN where unknown."""
        now = cpu_seconds(self.fs)
        prev, self._prev = self._prev, now
        return {name: (now[name] - prev[name]) / dt if dt > 0 and name in now and name in prev else math.nan
                for name in names}
