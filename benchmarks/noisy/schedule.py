"""The probe's request rate: a sine between a quiet and a busy rate, as WCA's
reference workloads vary their load, so an adaptive limit has idle half-periods
to give back and a static one must be sized for the peaks."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SineRate:
    """``rate(t)`` requests/s: ``quiet`` at t = 0, ``busy`` half a period later."""
    quiet: float = 50.0
    busy: float = 600.0
    period: float = 20.0

    def rate(self, t: float) -> float:
        return self.quiet + (self.busy - self.quiet) * (1 - math.cos(2 * math.pi * t / self.period)) / 2

    def send_times(self, duration: float, start: float = 0.0):
        """Request times in [start, start + duration): each gap is 1 / rate at the
        previous request (an open-loop schedule; it does not wait for replies)."""
        t = start
        while t < start + duration:
            yield t
            t += 1.0 / self.rate(t - start)
