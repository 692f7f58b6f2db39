"""Shared fixtures: real cgroups for tests on the real kernel, and the rule that
with TAGGER_REQUIRE_BPF=1 (set by .ci/run) a skipped bpf/root test fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cgroup_fixture import CgroupFactory, cgroup_support_problem, v1_root, v2_root

REQUIRE_BPF = os.environ.get("TAGGER_REQUIRE_BPF") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # An xfail is reported as skipped too: it stays an xfail (it still ran).
    if (REQUIRE_BPF and report.skipped and not hasattr(report, "wasxfail")
            and (item.get_closest_marker("bpf") or item.get_closest_marker("root"))):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"TAGGER_REQUIRE_BPF=1: a bpf/root test may not skip ({reason})"


def cgroup_layouts() -> set[str]:
    """The cgroup_* markers this host can run: "cgroup_v1" where the cpu
    controller has a v1 hierarchy (hybrid), "cgroup_v2" where the v2 root
    offers it (pure v2)."""
    layouts = set()
    if v1_root("cpu") is not None:
        layouts.add("cgroup_v1")
    root = v2_root()
    try:
        if root is not None and "cpu" in (root / "cgroup.controllers").read_text().split():
            layouts.add("cgroup_v2")
    except OSError:
        pass
    return layouts


_LAYOUT_DESELECTED: dict[str, int] = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("bpf") and not item.get_closest_marker("root"):
            item.add_marker(pytest.mark.root)
    # Deselected, not skipped: each layout's tests run where it exists (v1 on the
    # hybrid host, v2 in the kernel VMs), and under TAGGER_REQUIRE_BPF=1 a
    # skipped root test would fail.
    here = cgroup_layouts()
    # The kernel VMs see the checkout read-only: what builds in it runs on the host.
    if os.access(Path(__file__).resolve().parent.parent, os.W_OK):
        here.add("writable_checkout")
    kept, dropped = [], []
    for item in items:
        needs = {m for m in ("cgroup_v1", "cgroup_v2", "writable_checkout") if item.get_closest_marker(m)}
        if needs - here:
            dropped.append(item)
            for m in needs - here:
                _LAYOUT_DESELECTED[m] = _LAYOUT_DESELECTED.get(m, 0) + 1
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


_LAYOUT_WHERE = {
    "cgroup_v1": "the v1 (hybrid) layout: deselected here, run by make test on a hybrid host",
    "cgroup_v2": "the pure-v2 layout: deselected here, run by make test-kernels",
    "writable_checkout": "a writable checkout (they build in it): deselected here, run by make test on the host",
}


def pytest_terminal_summary(terminalreporter):
    for marker, count in sorted(_LAYOUT_DESELECTED.items()):
        terminalreporter.write_line(f"{count} tests need {_LAYOUT_WHERE[marker]}")


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
