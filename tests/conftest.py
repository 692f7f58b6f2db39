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


def _tagger_bpf_programs() -> list[str]:
    """Names of loaded BPF programs that are tagger's (tg_*, empty_*), via bpftool."""
    import json
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("bpftool"):
        return []
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    if out.returncode != 0:
        return []
    return [p.get("name", "") for p in json.loads(out.stdout or "[]")
            if p.get("name", "").startswith(("tg_", "empty_"))]


def _leftover_cgroups() -> list[str]:
    import glob

    return sorted(glob.glob("/sys/fs/cgroup/*/tagger-test-*") + glob.glob("/sys/fs/cgroup/tagger-test-*"))


_AT_START: dict = {}


def pytest_sessionstart(session):
    _AT_START["bpf_stats"] = _read_optional("/proc/sys/kernel/bpf_stats_enabled")
    _AT_START["programs"] = set(_tagger_bpf_programs())
    _AT_START["cgroups"] = set(_leftover_cgroups())


def _read_optional(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def pytest_sessionfinish(session, exitstatus):
    """Nothing a test made may outlive the run: cgroups, BPF programs, sysctls.
    Other engineers' or CI's own runs in parallel are not counted (only what
    appeared during this session and is still there)."""
    if not _AT_START:
        return
    leaks = []
    # Another pytest run on the same machine may hold its own; only this
    # process's prefix is ours for certain.
    mine = [c for c in set(_leftover_cgroups()) - _AT_START["cgroups"] if f"tagger-test-{os.getpid()}-" in c]
    if mine:
        leaks.append(f"test cgroups left behind: {mine[:5]}")
    if _read_optional("/proc/sys/kernel/bpf_stats_enabled") != _AT_START["bpf_stats"]:
        leaks.append("kernel.bpf_stats_enabled changed")
    if os.environ.get("TAGGER_CHECK_BPF_LEAKS", "1") == "1" and os.environ.get("CI"):
        progs = set(_tagger_bpf_programs()) - _AT_START["programs"]
        if progs:
            leaks.append(f"BPF programs still loaded: {sorted(progs)}")
    if leaks:
        print("\nLEAKS: " + "; ".join(leaks))
        session.exitstatus = 1
