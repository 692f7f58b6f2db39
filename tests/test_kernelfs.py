"""The one door to the kernel: its fast paths, its one errno mapping, the CPU
count, and the readers that go through it instead of opening files themselves."""

from __future__ import annotations

import errno
import os

import pytest

from tagger import errors
from tagger.kernelfs import HOST, KernelFS, from_oserror
from tagger.taskstats import SchedstatSource, _netlink_error


def _w(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- the one CPU count -----------------------------------------------------
def test_online_cpus_from_the_kernels_list(tmp_path):
    _w(tmp_path / "sys/devices/system/cpu/online", "0-3,6\n")
    assert KernelFS(tmp_path).online_cpus() == 5


def test_online_cpus_without_the_file_is_os_cpu_count(tmp_path):
    assert KernelFS(tmp_path).online_cpus() == (os.cpu_count() or 1)


def test_online_cpus_real_host_matches_sysconf():
    # glibc's _SC_NPROCESSORS_ONLN reads the same list: both must agree.
    assert HOST.online_cpus() == os.sysconf("SC_NPROCESSORS_ONLN")


# --- many small reads ------------------------------------------------------------
def test_read_small_many_in_order_none_where_gone(tmp_path):
    _w(tmp_path / "sys/fs/cgroup/a/cpu.stat", "usage_usec 5\n")
    _w(tmp_path / "sys/fs/cgroup/b/cpu.stat", "usage_usec 7\n")
    fs = KernelFS(tmp_path)
    got = fs.read_small_many(["/sys/fs/cgroup/a/cpu.stat", "/sys/fs/cgroup/gone/cpu.stat",
                              "/sys/fs/cgroup/a/cpu.stat/x", "/sys/fs/cgroup/b/cpu.stat"])
    # ENOENT and ENOTDIR (a path through a file) are the races of a vanished cgroup.
    assert got == [b"usage_usec 5\n", None, None, b"usage_usec 7\n"]


def test_read_small_many_raises_what_is_not_a_race(tmp_path):
    (tmp_path / "sys/fs/cgroup/a").mkdir(parents=True)
    with pytest.raises(errors.TaggerError) as got:
        KernelFS(tmp_path).read_small_many(["/sys/fs/cgroup/a"])     # EISDIR: a wrong path, not a race
    assert not isinstance(got.value, errors.Vanished)
    assert "/sys/fs/cgroup/a" in str(got.value)


def test_read_small_many_real_cgroup_file():
    own = HOST.read_text("/proc/self/cgroup")
    (got,) = HOST.read_small_many(["/proc/self/cgroup"])
    assert got.decode() == own


def test_subdirs_names_and_inodes(tmp_path):
    for d in ("sys/fs/cgroup/a", "sys/fs/cgroup/b/c"):
        (tmp_path / d).mkdir(parents=True)
    _w(tmp_path / "sys/fs/cgroup/cpu.stat", "")
    fs = KernelFS(tmp_path)
    got = sorted(fs.subdirs("/sys/fs/cgroup"))
    assert got == [("a", os.stat(tmp_path / "sys/fs/cgroup/a").st_ino),
                   ("b", os.stat(tmp_path / "sys/fs/cgroup/b").st_ino)]
    with pytest.raises(errors.Vanished):
        fs.subdirs("/sys/fs/cgroup/gone")
    with pytest.raises(errors.Vanished):
        fs.subdirs("/sys/fs/cgroup/cpu.stat")        # ENOTDIR


def test_read_bytes(tmp_path):
    _w(tmp_path / "sys/kernel/btf/vmlinux", "\x9f\xeb")
    assert KernelFS(tmp_path).read_bytes("/sys/kernel/btf/vmlinux") == "\x9f\xeb".encode()
    with pytest.raises(errors.NotFound):
        KernelFS(tmp_path).read_bytes("/sys/kernel/btf/none")


# --- the one errno mapping ----------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOENT, errno.ENODEV, errno.ENOTDIR, errno.ESRCH])
def test_gone_on_read_is_vanished(code):
    assert isinstance(from_oserror(OSError(code, os.strerror(code)), "/proc/1/stat"), errors.Vanished)


def test_unsupported_on_read_is_absent_not_vanished():
    # PSI files with psi=0: there, but the kernel keeps nothing in them.
    err = from_oserror(OSError(errno.EOPNOTSUPP, "x"), "/sys/fs/cgroup/a/cpu.pressure")
    assert isinstance(err, errors.NotFound) and not isinstance(err, errors.Vanished)


def test_enodev_on_write_is_the_kernel_refusing():
    err = from_oserror(OSError(errno.ENODEV, "x"), "/sys/fs/cgroup/a/cpu.max", "max")
    assert isinstance(err, errors.KernelRefused) and err.errno == errno.ENODEV


# --- readers through the door -------------------------------------------------------
def test_schedstat_source_sums_live_threads(tmp_path):
    _w(tmp_path / "proc/10/task/10/schedstat", "100 2000 3\n")
    _w(tmp_path / "proc/10/task/11/schedstat", "50 500 1\n")
    _w(tmp_path / "proc/10/task/12/schedstat", "garbled\n")       # half-written: skipped
    (tmp_path / "proc/11/task/13").mkdir(parents=True)            # thread exited after the listing
    got = SchedstatSource(KernelFS(tmp_path)).read([10, 11, 12])  # 12: the process exited
    assert got.keys() == {10} and got[10].run_delay_ns == 2500


def test_schedstat_source_real_host():
    got = SchedstatSource(HOST).read([os.getpid(), 1 << 30])
    assert got.keys() == {os.getpid()} and got[os.getpid()].run_delay_ns >= 0


def test_taskstats_errors_mapped_not_swallowed():
    from pyroute2.netlink.exceptions import NetlinkError
    assert isinstance(_netlink_error(NetlinkError(errno.ESRCH), 5), errors.Vanished)
    denied = _netlink_error(NetlinkError(errno.EPERM), 5)
    assert isinstance(denied, errors.PermissionDenied) and "CAP_NET_ADMIN" in str(denied)
    other = _netlink_error(NetlinkError(errno.EINVAL), 5)
    assert isinstance(other, errors.TaggerError) and not isinstance(other, errors.Vanished)
    assert "taskstats TGID 5" in str(other)
