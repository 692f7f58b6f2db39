"""What the actuator tests share: a safety that lets every change through at
once, an empty tick, an Actuator on a fixture tree; and, for the tests on the
real kernel (v1 on the hybrid host, v2 in the kernel VMs), workloads, the
kernel's own measures of them, a disk to throttle and the stand-in daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tagger.actions.actuator import Actuator
from tagger.actions.control import Safety
from tagger.kernelfs import KernelFS
from tagger.snapshot import Snapshot
from tests.cgroup_fixture import wait_for

#: No step limit, no cool-down: each apply() writes what is asked.
FREE = Safety(quota_floor=0.1, max_step=None, cooldown=0)


def tick(t):
    """A snapshot with no cgroups: the actuator only needs its time."""
    return Snapshot.synthetic([], t=t)


def act_on_tree(tmp_path, layout, **kw) -> Actuator:
    """An Actuator on the fixture tree under ``tmp_path`` (FREE unless ``safety=``)."""
    kw.setdefault("safety", FREE)
    return Actuator(layout, fs=KernelFS(tmp_path), state_dir=tmp_path / "state", durable=False, **kw)


# --- on the real kernel ---------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
#: A busy loop: one CPU's worth of demand.
BUSY = ["sh", "-c", "while :; do :; done"]


def cpus_used(pid) -> set[int]:
    """The CPUs a task's threads last ran on (/proc/PID/task/*/stat field 39)."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        out.add(int(stat.rsplit(")", 1)[1].split()[36]))
    return out


def quota_reached(window, quota: float, tolerance: float, min_periods: int) -> bool:
    """A window (CPUs used, periods, throttled periods) of busy loops capped at
    ``quota`` CPUs: the quota used, and the kernel throttling nearly every
    period (the quota is the cause).  A window the shared host starves falls
    short on both, so the tests measure up to three and need one."""
    usage, periods, throttled = window
    return abs(usage - quota) <= tolerance and periods >= min_periods and throttled >= 0.8 * periods


def cpus_allowed(pid) -> str:
    """The task's affinity as the kernel keeps it (/proc/PID/status Cpus_allowed_list)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for pid {pid}")


def v2_cpu_stat(cg) -> dict[str, int]:
    """A v2 cgroup's cpu.stat (usage_usec always; nr_periods, nr_throttled with the cpu controller)."""
    return {k: int(v) for k, v in (line.split() for line in (cg.v2 / "cpu.stat").read_text().splitlines())}


def v2_cpus(cgs, seconds):
    """CPUs each of ``cgs`` used over a window of at least ``seconds`` (cpu.stat
    usage_usec over the elapsed monotonic time, whatever the sleep really lasted)."""
    u0, t0 = [v2_cpu_stat(cg)["usage_usec"] for cg in cgs], time.monotonic()
    time.sleep(seconds)
    u1, t1 = [v2_cpu_stat(cg)["usage_usec"] for cg in cgs], time.monotonic()
    return [(b - a) / 1e6 / (t1 - t0) for a, b in zip(u0, u1)]


def data_disk(tmp_path) -> tuple[Path, str, str]:
    """(a directory on a real block device, that disk's "MAJ:MIN", its /dev path).

    O_DIRECT reads of a file there go through blk-throttle.  In the kernel VMs the
    guest mounts a scratch virtio disk and names it in TAGGER_TEST_DATA_DIR (tmpfs
    and overlayfs have no disk); elsewhere ``tmp_path``'s own disk.  blk-throttle
    limits whole disks, so a partition is resolved to its disk."""
    d = Path(os.environ.get("TAGGER_TEST_DATA_DIR") or tmp_path)
    st = os.stat(d)
    sysdev = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    assert sysdev.exists(), (f"{d} is not on a block device (st_dev {os.major(st.st_dev)}:"
                             f"{os.minor(st.st_dev)}): set TAGGER_TEST_DATA_DIR to a directory on a disk")
    disk = sysdev.resolve()
    if (disk / "partition").exists():
        disk = disk.parent
    return d, (disk / "dev").read_text().strip(), f"/dev/{disk.name}"


def start_driver(state_dir, doc, *extra) -> subprocess.Popen:
    """The stand-in daemon (tests/fixtures/actions_driver.py) acting on ``doc``."""
    return subprocess.Popen([sys.executable, "-m", "tests.fixtures.actions_driver", str(state_dir),
                             json.dumps(doc), *extra], cwd=REPO, stdout=subprocess.PIPE, text=True)


def wait_line(proc, prefix, timeout=60):
    """The driver's next line starting with ``prefix`` (it died: AssertionError)."""
    lines = []

    def got():
        line = proc.stdout.readline()
        lines.append(line)
        return line.startswith(prefix) or proc.poll() is not None
    wait_for(got, timeout, what=f"driver to print {prefix!r}")
    assert lines[-1].startswith(prefix), lines
    return lines[-1]
