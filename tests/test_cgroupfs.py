"""cgroupfs columns: fixture trees for v2 (with controllers) and hybrid (v1
controllers), missing optional files as NaN, only the needed files read, and
the real kernel's cpu.stat for real."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest

from tagger.telemetry.cgroupfs import CGROUPFS_METRICS, CgroupfsReader, PeriodicReader, plan, read_columns, read_raw
from tagger.cgroups import Layout
from tagger.kernelfs import HOST, KernelFS
from tests.test_cgroups import MOUNTS_HYBRID, MOUNTS_V2, make_tree

PSI = "some avg10={:.2f} avg60=0.00 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


def write(root, rel, name, text):
    d = root / rel.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)


def v2_cgroup(root, rel, usage_us=0, periods=0, throttled=0, mem=0, psi=(0, 0, 0), io=(0, 0, 0, 0)):
    write(root, rel, "cpu.stat", f"usage_usec {usage_us}\nuser_usec 0\nsystem_usec 0\n"
                                 f"nr_periods {periods}\nnr_throttled {throttled}\nthrottled_usec 0\n")
    write(root, rel, "memory.current", f"{mem}\n")
    for res, v in zip(("cpu", "io", "memory"), psi):
        write(root, rel, f"{res}.pressure", PSI.format(v))
    rb, wb, rios, wios = io
    write(root, rel, "io.stat", f"8:0 rbytes={rb} wbytes={wb} rios={rios} wios={wios} dbytes=0 dios=0\n"
                                f"253:0 rbytes={rb} wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n")


@pytest.fixture
def v2_fs(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_V2, "/sys/fs/cgroup", "cpu io memory pids")
    return fs, tmp_path / "sys/fs/cgroup"


def test_v2_columns_and_rates(v2_fs):
    fs, root = v2_fs
    layout = Layout.detect(fs)
    v2_cgroup(root, "/a", usage_us=1_000_000, periods=10, throttled=0, mem=4096, psi=(1.5, 2.0, 50.0),
              io=(1000, 2000, 3, 4))
    reader = CgroupfsReader(layout, ncpus=4)
    first = reader.read(["/a"], t=10.0)
    assert math.isnan(first["cpu.usage"][0])            # no previous read: rate unknown
    assert first["mem.current"][0] == 4096
    assert first["psi.cpu.some"][0] == pytest.approx(0.015)
    assert first["psi.mem.some"][0] == pytest.approx(0.5)

    v2_cgroup(root, "/a", usage_us=2_500_000, periods=30, throttled=5, mem=8192, io=(5000, 2000, 13, 4))
    cols = reader.read(["/a"], t=12.0)
    assert cols["cpu.usage"][0] == pytest.approx(0.75)
    assert cols["cpu.share"][0] == pytest.approx(0.75 / 4)
    assert cols["cpu.throttled"][0] == pytest.approx(0.25)
    assert cols["cpu.periods"][0] == pytest.approx(20 / 2)
    assert cols["cpu.throttled_periods"][0] == pytest.approx(5 / 2)
    assert cols["mem.current"][0] == 8192
    assert cols["io.read_bytes"][0] == pytest.approx(2 * 4000 / 2)   # summed over both devices
    assert cols["io.write_bytes"][0] == 0
    assert cols["io.ops"][0] == pytest.approx(10 / 2)
    assert set(cols) == set(CGROUPFS_METRICS)


def test_missing_optional_files_are_nan(v2_fs):
    """The v2 root has no memory.current or io.stat; a kernel without PSI has no
    *.pressure; a cgroup may vanish: all NaN, never 0, and no exception."""
    fs, root = v2_fs
    layout = Layout.detect(fs)
    write(root, "/", "cpu.stat", "usage_usec 5\nnr_periods 0\nnr_throttled 0\n")
    write(root, "/only-cpu", "cpu.stat", "usage_usec 5\nnr_periods 0\nnr_throttled 0\n")
    raw = read_raw(layout, ["/", "/only-cpu", "/gone"])
    assert raw["cpu.usage_s"][0] == pytest.approx(5e-6)
    for f in ("mem.current", "psi.cpu.some", "psi.io.some", "psi.mem.some",
              "io.ops_total", "io.read_bytes_total", "io.write_bytes_total"):
        assert np.isnan(raw[f]).all(), f
    assert np.isnan(raw["cpu.usage_s"][2])
    reader = CgroupfsReader(layout)
    reader.read(["/only-cpu"], t=0.0)
    cols = reader.read(["/only-cpu"], t=1.0)
    assert cols["cpu.usage"][0] == 0.0 and cols["cpu.throttled"][0] == 0.0
    assert np.isnan(cols["mem.current"][0]) and np.isnan(cols["io.ops"][0])


def test_counter_reset_is_nan_not_negative(v2_fs):
    fs, root = v2_fs
    reader = CgroupfsReader(Layout.detect(fs), metrics=("cpu.usage",))
    v2_cgroup(root, "/a", usage_us=9_000_000)
    reader.read(["/a"], t=0.0)
    v2_cgroup(root, "/a", usage_us=1_000)                # removed and made again
    assert np.isnan(reader.read(["/a"], t=1.0)["cpu.usage"][0])


def test_a_partial_read_keeps_the_others_and_rates_are_per_path(v2_fs):
    """A new cgroup read between full reads: its rate is over its own two
    reads, and a later full read still rates the others since their last."""
    fs, root = v2_fs
    reader = CgroupfsReader(Layout.detect(fs), metrics=("cpu.usage", "cpu.throttled"))
    v2_cgroup(root, "/old", usage_us=1_000_000)
    reader.read(["/old"], t=0.0)
    v2_cgroup(root, "/new", usage_us=0, periods=0, throttled=0)
    assert np.isnan(reader.read(["/new"], t=3.0, partial=True)["cpu.throttled"][0])   # a first read
    v2_cgroup(root, "/new", usage_us=500_000, periods=10, throttled=8)
    cols = reader.read(["/new"], t=4.0, partial=True)
    assert cols["cpu.usage"][0] == pytest.approx(0.5) and cols["cpu.throttled"][0] == pytest.approx(0.8)
    v2_cgroup(root, "/old", usage_us=3_000_000)
    v2_cgroup(root, "/new", usage_us=1_500_000, periods=20, throttled=18)
    cols = reader.read(["/old", "/new"], t=10.0)
    assert cols["cpu.usage"][0] == pytest.approx(2.0 / 10)          # since t=0
    assert cols["cpu.usage"][1] == pytest.approx(1.0 / 6)           # since t=4
    assert cols["cpu.throttled"][1] == pytest.approx(1.0)


def test_a_partial_read_refuses_exclusive_figures(v2_fs):
    fs, _ = v2_fs
    reader = CgroupfsReader(Layout.detect(fs), metrics=("cpu.usage",), exclusive=True)
    with pytest.raises(ValueError, match="children"):
        reader.read(["/a"], partial=True)


def test_exclusive_subtracts_children(v2_fs):
    fs, root = v2_fs
    reader = CgroupfsReader(Layout.detect(fs), metrics=("cpu.usage",), exclusive=True)
    for rel, us in (("/p", 0), ("/p/c1", 0), ("/p/c2", 0)):
        v2_cgroup(root, rel, usage_us=us)
    reader.read(["/p", "/p/c1", "/p/c2"], t=0.0)
    for rel, us in (("/p", 3_000_000), ("/p/c1", 1_000_000), ("/p/c2", 1_500_000)):
        v2_cgroup(root, rel, usage_us=us)
    cols = reader.read(["/p", "/p/c1", "/p/c2"], t=1.0)
    assert cols["cpu.usage"].tolist() == pytest.approx([0.5, 1.0, 1.5])


HYBRID_DIRS = {
    "cpu": ("cpu.stat", "nr_periods 100\nnr_throttled 40\nthrottled_time 123\n"),
    "cpuacct": ("cpuacct.usage", "3000000000\n"),
    "memory": ("memory.usage_in_bytes", "1048576\n"),
    "blkio": None,
}


def hybrid_cgroup(root, rel, usage_ns, periods, throttled, read_b, write_b, ops_r, ops_w):
    write(root / "cpu", rel, "cpu.stat", f"nr_periods {periods}\nnr_throttled {throttled}\nthrottled_time 1\n")
    write(root / "cpuacct", rel, "cpuacct.usage", f"{usage_ns}\n")
    write(root / "memory", rel, "memory.usage_in_bytes", "1048576\n")
    write(root / "blkio", rel, "blkio.throttle.io_service_bytes_recursive",
          f"8:0 Read {read_b}\n8:0 Write {write_b}\n8:0 Sync 0\n8:0 Async 0\n8:0 Discard 0\n"
          f"8:0 Total {read_b + write_b}\nTotal {read_b + write_b}\n")
    write(root / "blkio", rel, "blkio.throttle.io_serviced_recursive",
          f"8:0 Read {ops_r}\n8:0 Write {ops_w}\n8:0 Total {ops_r + ops_w}\nTotal {ops_r + ops_w}\n")
    write(root / "unified", rel, "cpu.stat", f"usage_usec {usage_ns // 1000}\n")
    write(root / "unified", rel, "cpu.pressure", PSI.format(3.0))


def test_cpu_weight_in_v2_units_from_cpu_weight_or_v1_shares(v2_fs, tmp_path):
    """cpu.weight as the file says on v2; on v1, cpu.shares on the kernel's
    own scale (1024 shares = weight 100); absent (no cpu controller there): NaN."""
    fs, root = v2_fs
    write(root, "/a", "cpu.weight", "250\n")
    write(root, "/b", "cpu.stat", "usage_usec 1\n")
    cols = read_columns(Layout.detect(fs), ["/a", "/b"], metrics=("cpu.weight",))
    assert cols["cpu.weight"][0] == 250 and np.isnan(cols["cpu.weight"][1])
    hybrid = make_tree(tmp_path / "h", MOUNTS_HYBRID, "/sys/fs/cgroup/unified", "")
    write(tmp_path / "h/sys/fs/cgroup/cpu", "/w", "cpu.shares", "2048\n")
    assert read_columns(Layout.detect(hybrid), ["/w"], metrics=("cpu.weight",))["cpu.weight"][0] == 200


def test_a_refreshed_cgroup_is_read_again_at_the_next_tick(v2_fs):
    """Figures read every ``every`` ticks carry over in between -- except for
    a cgroup the agent asked to refresh (it changed its knobs): read again
    at the next tick, alone, and then carried over as before."""
    from tagger.snapshot import Snapshot

    fs, root = v2_fs
    for p in ("/a", "/b"):
        write(root, p, "cpu.weight", "100\n")
    reader = PeriodicReader(CgroupfsReader(Layout.detect(fs), ("cpu.weight",)), every=10)
    table = Snapshot.synthetic(["/a", "/b"], {}).cgroups
    assert list(reader.columns(table, 0)["cpu.weight"]) == [100, 100]
    for p in ("/a", "/b"):
        write(root, p, "cpu.weight", "1\n")                 # the agent demoted both
    assert list(reader.columns(table, 1)["cpu.weight"]) == [100, 100]     # carried over
    reader.refresh(["/a"])
    assert list(reader.columns(table, 2)["cpu.weight"]) == [1, 100]       # /a read again
    write(root, "/a", "cpu.weight", "100\n")
    assert list(reader.columns(table, 3)["cpu.weight"]) == [1, 100]       # once


@pytest.mark.root
def test_real_cpu_weight_is_what_the_kernel_was_given(make_cgroup):
    """A real cgroup's weight set through its own file (v2 cpu.weight, or v1
    cpu.shares on a hybrid host) reads back in v2 units."""
    layout = Layout.detect(HOST)
    v1 = layout.controller_version("cpu") == 1
    cg = make_cgroup("weight", controllers=("cpu",) if v1 else ())
    if v1:
        (cg.dir("cpu") / "cpu.shares").write_text("512\n")
    else:
        (cg.v2 / "cpu.weight").write_text("50\n")       # the fixture enables cpu for test cgroups
    assert read_columns(layout, [cg.path], metrics=("cpu.weight",))["cpu.weight"][0] == 50


def test_psi_is_the_share_of_time_stalled_since_the_previous_read(v2_fs):
    """PSI "some total" (us) as a rate: a stall shows at the next read, where
    avg10 (a 10 s average) would take seconds to rise; never below avg10;
    avg10 on a first read."""
    fs, root = v2_fs
    reader = CgroupfsReader(Layout.detect(fs), metrics=("psi.io.some",))
    write(root, "/w", "io.pressure", "some avg10=1.00 avg60=0 avg300=0 total=1000000\n"
                                     "full avg10=0.00 avg60=0 avg300=0 total=0\n")
    assert reader.read(["/w"], t=0.0)["psi.io.some"][0] == pytest.approx(0.01)
    write(root, "/w", "io.pressure", "some avg10=4.00 avg60=0 avg300=0 total=1600000\n"
                                     "full avg10=0.00 avg60=0 avg300=0 total=0\n")
    assert reader.read(["/w"], t=1.0)["psi.io.some"][0] == pytest.approx(0.6)
    # A read interval with no growth of the total: the 10 s average still holds.
    write(root, "/w", "io.pressure", "some avg10=20.00 avg60=0 avg300=0 total=1600000\n"
                                     "full avg10=0.00 avg60=0 avg300=0 total=0\n")
    assert reader.read(["/w"], t=2.0)["psi.io.some"][0] == pytest.approx(0.2)


def test_hybrid_reads_v1_controllers(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_HYBRID, "/sys/fs/cgroup/unified", "")
    root = tmp_path / "sys/fs/cgroup"
    layout = Layout.detect(fs)
    reads, missing = plan(layout, CGROUPFS_METRICS)
    files = {(r.root, r.name) for r in reads}
    assert ("/sys/fs/cgroup/cpu", "cpu.stat") in files
    assert ("/sys/fs/cgroup/unified", "cpu.stat") in files          # usage_usec: in every v2 cgroup
    assert ("/sys/fs/cgroup/memory", "memory.usage_in_bytes") in files
    assert ("/sys/fs/cgroup/blkio", "blkio.throttle.io_serviced_recursive") in files
    assert not missing
    reader = CgroupfsReader(layout)
    hybrid_cgroup(root, "/w", 1_000_000_000, 10, 0, 0, 0, 0, 0)
    reader.read(["/w"], t=0.0)
    hybrid_cgroup(root, "/w", 3_000_000_000, 110, 40, 4096, 8192, 1, 2)
    cols = reader.read(["/w"], t=2.0)
    assert cols["cpu.usage"][0] == pytest.approx(1.0)
    assert cols["cpu.throttled"][0] == pytest.approx(0.4)
    assert cols["mem.current"][0] == 1048576
    assert cols["io.read_bytes"][0] == 2048 and cols["io.write_bytes"][0] == 4096
    assert cols["io.ops"][0] == 1.5
    assert cols["psi.cpu.some"][0] == pytest.approx(0.03)   # its total did not grow: avg10
    assert np.isnan(cols["psi.io.some"][0])          # io.pressure absent in this fixture


def test_reads_only_the_files_needed(v2_fs, monkeypatch):
    """Per-tick syscalls stay proportional to what is asked: one open per file
    per cgroup, only for the requested metrics."""
    fs, root = v2_fs
    paths = [f"/c{i}" for i in range(5)]
    for p in paths:
        v2_cgroup(root, p, usage_us=1)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (opened.append(os.path.basename(p)), real_open(p, *a, **k))[1])
    layout = Layout.detect(fs)
    read_raw(layout, paths, metrics=("mem.current",))
    assert opened == ["memory.current"] * 5
    opened.clear()
    read_raw(layout, paths, metrics=("cpu.usage", "cpu.throttled"))   # one cpu.stat serves both
    assert opened == ["cpu.stat"] * 5
    opened.clear()
    read_raw(layout, paths, metrics=("psi.io.some",))
    assert opened == ["io.pressure"] * 5


def test_unavailable_metrics_named(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_V2, "/sys/fs/cgroup", "pids")
    reader = CgroupfsReader(Layout.detect(fs))
    assert set(reader.unavailable) == {"cpu.throttled", "cpu.periods", "cpu.throttled_periods", "cpu.weight",
                                       "mem.current", "io.ops", "io.read_bytes", "io.write_bytes"}


def test_unknown_metric_is_an_error(v2_fs):
    with pytest.raises(KeyError, match="runq.p99"):
        plan(Layout.detect(v2_fs[0]), ["runq.p99"])


@pytest.mark.root
def test_real_cpu_usage_matches_cpu_stat(make_cgroup):
    """A short busy loop in a real cgroup: the reader's CPU seconds are the
    cgroup's own v2 cpu.stat usage_usec."""
    layout = Layout.detect(HOST)
    cg = make_cgroup("cgfs", controllers=("cpuacct", "memory") if layout.kind == "hybrid" else ())
    reader = CgroupfsReader(layout, metrics=("cpu.usage", "mem.current"))
    reader.read([cg.path])
    usage0 = int((cg.v2 / "cpu.stat").read_text().split()[1])
    t0 = time.monotonic()
    # Until it has used 0.5 s of CPU, however long that takes on a loaded host.
    proc = cg.spawn(["python3", "-c", "import time\nwhile time.process_time() < 0.5: pass"])
    proc.wait(timeout=30)
    usage1 = int((cg.v2 / "cpu.stat").read_text().split()[1])
    cols = reader.read([cg.path])
    dt = max(reader._prev_t.values()) - t0           # when the second read was made
    assert usage1 - usage0 >= 500_000                 # the loop ran 0.5 s of CPU
    assert cols["cpu.usage"][0] * dt == pytest.approx((usage1 - usage0) / 1e6, rel=0.05, abs=0.01)
    assert cols["mem.current"][0] >= 0 and not np.isnan(cols["mem.current"][0])


@pytest.mark.root
def test_read_columns_real_root():
    cols = read_columns(Layout.detect(HOST), ["/"], metrics=("psi.cpu.some",))
    assert cols["psi.cpu.some"].shape == (1,)
