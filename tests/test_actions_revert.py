"""Revert on the real kernel: after SIGTERM every knob tagger changed holds its
original value; after SIGKILL, a restart's recover() puts them back (or
re-adopts them, keeping the true original); vanished cgroups are dropped."""

from __future__ import annotations

import os
import signal

import pytest

from tagger.actions.journal import JOURNAL_NAME, read_entries
from tests.actuator_helpers import start_driver, wait_line

CPU_FILES = ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares", "cpu.idle")
BLKIO_FILES = ("blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device",
               "blkio.throttle.read_iops_device", "blkio.throttle.write_iops_device")


def knobs(cg):
    """Every file tagger may change for ``cg``, as text."""
    out = {f: (cg.dir("cpu") / f).read_text() for f in CPU_FILES}
    out.update({f: (cg.dir("blkio") / f).read_text() for f in BLKIO_FILES})
    out["cpuset.cpus"] = (cg.dir("cpuset") / "cpuset.cpus").read_text()
    return out


@pytest.fixture
def workloads(make_cgroup):
    dev = open("/sys/block/vda/dev").read().strip()
    cgs = [make_cgroup(n, controllers=("cpu", "blkio", "cpuset")) for n in ("a", "b")]
    # Not the defaults: an operator's settings, which must come back exactly.
    (cgs[0].dir("cpu") / "cpu.cfs_quota_us").write_text("150000")
    (cgs[0].dir("cpu") / "cpu.shares").write_text("2048")
    (cgs[0].dir("blkio") / "blkio.throttle.write_bps_device").write_text(f"{dev} 7000000")
    doc = {cg.path: {"cpu": {"max": 0.3, "period": 0.05, "weight": 50},
                     "io": {"device": "/dev/vda", "read_bps": 5_000_000, "write_bps": 2_000_000,
                            "read_iops": 100, "write_iops": 80}} for cg in cgs}
    # A third made SCHED_IDLE: the kernel then reads its shares as 3 and, when
    # idle is cleared, sets 1024 -- its own 1536 must come back all the same.
    # And confined to one CPU (cpuset.cpus), which must widen again.
    idle = make_cgroup("c", controllers=("cpu", "blkio", "cpuset"))
    (idle.dir("cpu") / "cpu.shares").write_text("1536")
    doc[idle.path] = {"cpu": {"max": 0.5, "idle": True, "cpuset": 1}}
    return cgs + [idle], doc


def _changed(before, cgs):
    return {(cg.path, f) for cg in cgs for f, v in knobs(cg).items() if v != before[cg.path][f]}


def _assert_all_restored(before, cgs, changed, state, how):
    """Every knob back to what it was, and the journal gone with nothing left to restore."""
    after = {cg.path: knobs(cg) for cg in cgs}
    restored = sum(after[p][f] == before[p][f] for p, f in changed)
    print(f"\n{how}: {restored}/{len(changed)} changed knobs restored")
    assert after == before
    assert not (state / JOURNAL_NAME).exists()


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.cgroup_v1
def test_sigterm_restores_every_knob(workloads, tmp_path, sig):
    cgs, doc = workloads
    before = {cg.path: knobs(cg) for cg in cgs}
    proc = start_driver(tmp_path / "state", doc)
    try:
        wait_line(proc, "applied")
        changed = _changed(before, cgs)
        # quota, period, shares, four throttle files for a and b; quota, idle, shares, cpuset for c
        assert len(changed) == 2 * 7 + 4
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
    _assert_all_restored(before, cgs, changed, tmp_path / "state", sig.name)


@pytest.mark.root
@pytest.mark.cgroup_v1
def test_sigkill_then_recover_restores_every_knob(workloads, tmp_path):
    cgs, doc = workloads
    before = {cg.path: knobs(cg) for cg in cgs}
    proc = start_driver(tmp_path / "state", doc)
    wait_line(proc, "applied")
    changed = _changed(before, cgs)
    proc.kill()
    proc.wait(timeout=10)
    # Killed: nothing was put back, but the journal holds every original.
    assert _changed(before, cgs) == changed
    entries = read_entries(tmp_path / "state" / JOURNAL_NAME, quarantine=False)
    assert {(e.cgroup, e.knob) for e in entries} == {(cg.path, k) for cg in cgs[:2]
                                                     for k in ("cpu.max", "cpu.weight", "io.max 254:0")} | {
        (cgs[2].path, "cpu.max"), (cgs[2].path, "cpu.idle"), (cgs[2].path, "cpuset.cpus")}
    assert {e.original for e in entries if e.knob == "cpu.idle"} == {"0 1536"}
    assert {e.original for e in entries if e.cgroup == cgs[0].path and e.knob == "cpu.max"} == {"150000 100000"}

    proc = start_driver(tmp_path / "state", doc, "--recover-only")
    assert wait_line(proc, "recovered").split() == ["recovered", str(len(entries))]
    assert proc.wait(timeout=20) == 0
    _assert_all_restored(before, cgs, changed, tmp_path / "state", "SIGKILL + recover")


@pytest.mark.root
@pytest.mark.cgroup_v1
def test_restart_readopts_keeping_the_true_original_and_drops_vanished(workloads, make_cgroup, tmp_path):
    cgs, doc = workloads
    gone = make_cgroup("gone", controllers=("cpu", "blkio"))
    doc = dict(doc, **{gone.path: {"cpu": {"max": 0.5}}})
    before = {cg.path: knobs(cg) for cg in cgs}
    proc = start_driver(tmp_path / "state", doc)
    wait_line(proc, "applied")
    proc.kill()
    proc.wait(timeout=10)
    for d in set(gone.dirs.values()):
        os.rmdir(d)                        # the workload ended while tagger was down
    del doc[gone.path]

    # The rules still want the limits: the restart keeps them in place (no flap)
    # and remembers the values from before the first run, not the limited ones.
    proc = start_driver(tmp_path / "state", doc)
    try:
        assert wait_line(proc, "recovered").split() == ["recovered", "9"]   # gone's knob dropped
        wait_line(proc, "applied")
        assert (cgs[0].dir("cpu") / "cpu.cfs_quota_us").read_text().strip() == "15000"
        entries = read_entries(tmp_path / "state" / JOURNAL_NAME, quarantine=False)
        assert all(e.cgroup != gone.path for e in entries)
        assert {e.original for e in entries if e.cgroup == cgs[0].path and e.knob == "cpu.max"} == {"150000 100000"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert {cg.path: knobs(cg) for cg in cgs} == before
