"""The one fixed-rate schedule (tagger.clock.Ticker), on a clock the test
steps; and how a tick shares its CPU (tagger.clock.cede)."""

from __future__ import annotations

import threading

import pytest

import tagger.clock as clock
from tagger.clock import Ticker


class Steps:
    """A clock that moves only when told."""

    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def test_ticks_fall_on_a_fixed_schedule_without_drift():
    clock = Steps()
    ticker = Ticker(1.0, clock=clock)
    starts = []
    for _ in range(5):
        clock.t = max(clock.t, ticker.next)          # sleep until due
        assert ticker.due_in() <= 0
        starts.append(ticker.begin())
        clock.t += 0.3                                # the work takes 0.3 s
        ticker.end()
    assert starts == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert ticker.overruns == 0 and ticker.ticks == 5


def test_late_start_is_jitter_and_does_not_shift_the_next_tick():
    clock = Steps()
    ticker = Ticker(1.0, clock=clock)
    ticker.begin(); ticker.end()
    clock.t = 101.25                                  # woke 0.25 s late
    assert ticker.begin() == 101.25
    assert ticker.last_jitter == pytest.approx(0.25)
    ticker.end()
    assert ticker.next == 102.0
    clock.t = 102.05
    ticker.begin()
    assert ticker.last_jitter == pytest.approx(0.05) and ticker.max_jitter == pytest.approx(0.25)


def test_an_overrun_skips_the_missed_slots_instead_of_bursting():
    clock = Steps()
    ticker = Ticker(1.0, clock=clock)
    ticker.begin()
    clock.t = 103.5                                   # a 3.5 s tick: slots 101, 102, 103 missed
    ticker.end()
    assert ticker.overruns == 1
    assert ticker.next == 104.0 and ticker.due_in() == pytest.approx(0.5)
    clock.t = 104.0
    ticker.begin()
    clock.t = 105.0                                   # ends exactly on the next slot: overrun too
    ticker.end()
    assert ticker.overruns == 2 and ticker.next == 106.0


def test_first_tick_can_be_put_off_and_sleep_waits_until_due():
    clock = Steps()
    ticker = Ticker(0.5, first=clock() + 0.5, clock=clock)
    slept = []

    def sleep(s):
        slept.append(s)
        clock.t += s
    ticker.sleep(sleep)
    assert slept == [pytest.approx(0.5)]
    ticker.sleep(sleep)                               # due already: no sleep
    assert len(slept) == 1


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_interval_must_be_positive(bad):
    with pytest.raises(ValueError, match="positive"):
        Ticker(bad)


class Naps:
    """Counts cede()'s naps, on a clock the test steps."""

    def __init__(self, monkeypatch):
        self.count, self.t = 0, 1000.0
        monkeypatch.setattr(clock.time, "sleep", self._sleep)
        monkeypatch.setattr(clock.time, "perf_counter", lambda: self.t)
        monkeypatch.setattr(clock, "_ceded", threading.local())     # no earlier test's nap

    def _sleep(self, seconds):
        assert seconds == clock.CEDE_NAP
        self.count += 1


def test_cede_naps_at_most_once_per_cede_after(monkeypatch):
    y = Naps(monkeypatch)
    clock.cede()
    assert y.count == 1                       # the first call of a thread naps
    y.t += clock.CEDE_AFTER * 0.4
    clock.cede()
    clock.cede()
    assert y.count == 1                       # too soon: back at once
    y.t += clock.CEDE_AFTER * 0.7
    clock.cede()
    assert y.count == 2


def test_cede_is_counted_per_thread(monkeypatch):
    y = Naps(monkeypatch)
    clock.cede()
    other = threading.Thread(target=clock.cede)
    other.start()
    other.join()
    assert y.count == 2                       # the other thread had not napped yet
    clock.cede()
    assert y.count == 2


def test_cede_after_infinity_never_naps(monkeypatch):
    y = Naps(monkeypatch)
    monkeypatch.setattr(clock, "CEDE_AFTER", float("inf"))
    for _ in range(3):
        clock.cede()
        y.t += 1.0
    assert y.count == 0
