"""tagger.knobs: each knob text format's parse and format are inverses, in the
kernel's spelling, and the limits are the kernel's (the control points check
them on real cgroups: test_actions_cpu's test_our_limits_agree_with_the_kernels)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tagger import knobs

CPUS = st.sets(st.integers(0, 511), max_size=40)
LIMIT = st.one_of(st.none(), st.integers(1, 1 << 40))


@given(CPUS)
def test_cpulist_round_trip_is_the_kernels_compact_form(cpus):
    text = knobs.format_cpulist(cpus)
    assert knobs.parse_cpulist(text) == sorted(cpus)
    # Compact as the kernel prints it: no two items that could be one range.
    runs = [tuple(map(int, p.split("-"))) if "-" in p else (int(p), int(p)) for p in text.split(",") if p]
    assert all(b[0] > a[1] + 1 for a, b in zip(runs, runs[1:]))


@pytest.mark.parametrize("text", ["1-", "-1", "a", "3-1", "1,,2", "0x3"])
def test_cpulist_refuses_what_the_kernel_would(text):
    with pytest.raises(ValueError):
        knobs.parse_cpulist(text)


@given(st.one_of(st.none(), st.integers(knobs.MIN_QUOTA_US, knobs.MAX_QUOTA_US)),
       st.integers(knobs.MIN_PERIOD_US, knobs.MAX_PERIOD_US))
def test_cpu_max_round_trip(quota, period):
    value = knobs.CpuMax(quota, period)
    text = knobs.format_cpu_max(value)
    assert text == (f"max {period}" if quota is None else f"{quota} {period}")
    assert knobs.parse_cpu_max(text) == value
    assert knobs.cpu_max_cpus(text) == (math.inf if quota is None else quota / period)


def test_cpu_max_reads_v1_unlimited_and_a_bare_quota():
    assert knobs.parse_cpu_max("-1") == knobs.CpuMax(None, knobs.DEFAULT_PERIOD_US)
    assert knobs.parse_cpu_max("50000") == knobs.CpuMax(50_000, 100_000)
    assert knobs.CpuMax.from_cpus(0.5, 0.1).text() == "50000 100000"
    assert knobs.CpuMax.from_cpus(math.inf).text() == "max 100000"


@given(st.fixed_dictionaries({k: LIMIT for k in knobs.IO_KEYS}),
       st.from_regex(r"\A[1-9][0-9]{0,2}:[0-9]{1,3}\Z"))
def test_io_max_line_round_trip(limits, device):
    line = knobs.format_io_max_line(device, limits)
    assert knobs.parse_io_max_line(line) == (device, limits)
    assert knobs.io_max_device(f"0:0 {knobs.IO_UNLIMITED}\n{line}\n", device) == line.split(" ", 1)[1]


def test_io_limits_absent_keys_are_unlimited():
    assert knobs.parse_io_limits("wbps=1048576") == {"rbps": None, "wbps": 1048576, "riops": None, "wiops": None}
    assert knobs.format_io_limits({}) == knobs.IO_UNLIMITED


def test_weight_to_shares_is_the_kernels_conversion_within_its_ranges():
    assert knobs.weight_to_shares(knobs.WEIGHT_DEFAULT) == knobs.SHARES_DEFAULT == 1024
    assert knobs.weight_to_shares(knobs.WEIGHT_MIN) == 10
    assert knobs.weight_to_shares(knobs.WEIGHT_MAX) == 102_400
    assert knobs.SHARES_MIN <= knobs.weight_to_shares(knobs.WEIGHT_MIN)
    assert knobs.weight_to_shares(knobs.WEIGHT_MAX) <= knobs.SHARES_MAX
