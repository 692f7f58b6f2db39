"""Shared fixtures: real cgroups for tests on the real kernel, and the rule that
with TAGGER_REQUIRE_BPF=1 (set by .ci/run) a skipped bpf/root test fails."""

from __future__ import annotations

import os

import pytest

from tests.cgroup_fixture import CgroupFactory, cgroup_support_problem

REQUIRE_BPF = os.environ.get("TAGGER_REQUIRE_BPF") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_BPF and report.skipped and (item.get_closest_marker("bpf") or item.get_closest_marker("root")):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"TAGGER_REQUIRE_BPF=1: a bpf/root test may not skip ({reason})"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("bpf") and not item.get_closest_marker("root"):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def cgroup_factory():
    """Makes cgroups under a unique tagger-test-* prefix in the v2 hierarchy and
    the v1 hierarchies asked for; removes them all at the end, also on failure."""
    problem = cgroup_support_problem()
    if problem:
        pytest.skip(problem)
    factory = CgroupFactory()
    try:
        yield factory
    finally:
        factory.remove_all()


@pytest.fixture
def make_cgroup(cgroup_factory):
    """``make_cgroup("name", controllers=("cpu", "cpuacct"))`` -> TestCgroup, removed after the test."""
    made = []

    def make(name="w", controllers=()):
        cg = cgroup_factory.create(name, controllers)
        made.append(cg)
        return cg

    yield make
    for cg in reversed(made):
        cgroup_factory.remove(cg)
