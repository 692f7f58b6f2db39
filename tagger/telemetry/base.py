"""What every collector offers, and the fixed-rate stream of its ticks."""

from __future__ import annotations

import time
from typing import Iterator

from .. import errors
from ..clock import Ticker
from ..snapshot import Snapshot


def stream_ticks(collector, interval: float, count: int | None) -> Iterator[Snapshot]:
    """A Snapshot every ``interval`` seconds on a fixed schedule (tagger.clock.Ticker:
    no drift; a late tick does not make the next ones burst to catch up).  The
    first comes one interval after the call: a tick's rates need that long."""
    if not interval > 0:
        raise errors.ConfigError(f"interval must be positive, not {interval}")
    ticker = Ticker(interval, first=time.monotonic() + interval)
    done = 0
    while count is None or done < count:
        ticker.sleep()
        ticker.begin()
        yield collector.tick()
        ticker.end()
        done += 1


class Collector:
    """What every collector offers: ``tick()`` (a Snapshot since the previous
    one), ``stream()``, ``health()``, and ``close()`` on every exit path (a
    context manager; also at garbage collection)."""

    source = "none"

    def tick(self) -> Snapshot:
        raise NotImplementedError

    def health(self) -> dict:
        raise NotImplementedError

    def refresh(self, paths) -> None:
        """The agent itself just changed these cgroups' knobs: a figure read
        only every few ticks (cpu.weight) is read again at the next tick.
        Collectors that read everything every tick need do nothing."""

    def close(self) -> None:
        raise NotImplementedError

    def stream(self, interval: float = 1.0, count: int | None = None) -> Iterator[Snapshot]:
        """A Snapshot every ``interval`` seconds (on a fixed schedule, no drift)."""
        return stream_ticks(self, interval, count)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
