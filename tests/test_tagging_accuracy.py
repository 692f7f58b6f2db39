"""The scoring of benchmarks/tagging_accuracy.py (benchmarks/accuracy/score.py):
the judged window, the majority, time to tag, changes, precision and recall.
No kernel, no processes."""

from __future__ import annotations

import pytest

from benchmarks.accuracy.score import PairScore, TagScore, score_pair
from benchmarks.tagging_accuracy import SCENARIOS, TAGS, rule_for, ROOT


def _ticks(states, t0=100.0, dt=1.0, path="/s/web", key="type"):
    """One tick a second from t0 + 1; states: a string, 'I' = type=interactive, '.' = none."""
    return [(t0 + dt * (i + 1), {path: {key: "interactive"}} if c == "I" else {}) for i, c in enumerate(states)]


def test_a_tag_set_after_for_and_held_is_tagged_with_one_change():
    ticks = _ticks("." * 9 + "I" * 21)                      # set at t0 + 10, phase of 30 s
    tagged, share, first, changes, window = score_pair(ticks, "/s/web", "type=interactive", 100.0, 130.0,
                                                       for_s=10, interval=1)
    assert (tagged, share, first, changes) == (True, 1.0, 10.0, 1)
    assert window == 19                                     # ticks at t0+12 .. t0+30


def test_majority_of_the_judged_window_decides_not_of_the_phase():
    # on for the first 20 ticks, off for the last 10: 9 of the 19 judged ticks
    ticks = _ticks("I" * 20 + "." * 10)
    tagged, share, first, changes, _ = score_pair(ticks, "/s/web", "type=interactive", 100.0, 130.0, 10, 1)
    assert not tagged and share == pytest.approx(9 / 19)
    assert first == 1.0 and changes == 2


def test_flapping_counts_every_change_and_other_values_do_not_count():
    ticks = _ticks("..II..II..II")
    assert score_pair(ticks, "/s/web", "type=interactive", 100.0, 112.0, 0, 1)[3] == 5   # on off on off on
    assert score_pair(ticks, "/s/web", "type=batch", 100.0, 112.0, 0, 1)[:4] == (False, 0.0, None, 0)
    assert score_pair(ticks, "/s/other", "type=interactive", 100.0, 112.0, 0, 1)[3] == 0


def test_ticks_outside_the_phase_are_ignored_but_the_state_before_it_counts():
    # set up to t0 + 4 (work done before the phase: a memory fill), off in the
    # phase, set again after it: the lapse is one change, the later ticks none
    ticks = _ticks("I" * 4 + "." * 21 + "I" * 5)
    tagged, _, first, changes, _ = score_pair(ticks, "/s/web", "type=interactive", 105.0, 125.0, 0, 1)
    assert (tagged, first, changes) == (False, None, 1)
    ticks = _ticks("." * 25 + "I" * 5)
    assert score_pair(ticks, "/s/web", "type=interactive", 105.0, 125.0, 0, 1)[3] == 0


def test_precision_recall_and_late_tags():
    def pair(truth, tagged, first=5.0):
        return PairScore("sc", "r", "cpu=intensive", truth, tagged, 1.0 if tagged else 0.0, first, 1, 10)
    s = TagScore("cpu=intensive", 10, 12, [pair(True, True), pair(True, True, first=15.0), pair(True, False, None),
                                           pair(False, True), pair(False, False), pair(None, True)])
    assert (s.tp, s.fp, s.fn, s.judged) == (2, 1, 1, 5)     # the unjudged pair counts for neither
    assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(2 / 3)
    assert [p.time_to_tag for p in s.late()] == [15.0, None]
    assert TagScore("x=y", 0, 2).precision is None and TagScore("x=y", 0, 2).recall is None


def test_every_issue_tag_is_set_by_a_packaged_rule_and_every_truth_names_one():
    fors = rule_for(ROOT / "rules")
    assert set(TAGS) <= set(fors)
    for roles in SCENARIOS.values():
        for role in roles.values():
            assert set(role.truth) <= set(TAGS)
