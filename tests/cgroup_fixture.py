"""Real cgroups for tests: one relative path made in the v2 hierarchy and in each
v1 hierarchy a test needs, with processes started inside all of them, and
everything removed afterwards.

Both layouts the tests run on:

* hybrid (this development host): controllers on v1 hierarchies, v2 at
  /sys/fs/cgroup/unified with none of them; ``controllers=("cpu", "blkio")``
  makes the path in each of those v1 hierarchies too.
* pure v2 (the kernel VMs, ``make test-kernels``): every controller lives in
  the one v2 tree, so a request for a v1 controller ("blkio", "cpuacct", ...)
  is the v2 directory itself.  A controller acts on a cgroup only if its parent
  delegates it (``cgroup.subtree_control``), so the test prefix delegates every
  controller it is offered: test cgroups get cpu.max, io.max, cpuset.cpus, and
  their I/O is charged to them, not to the prefix (cgroup-v2.rst, "Top-down
  Constraint").

Processes are only ever killed by pid, and only those inside the test's own
cgroups (started by the test or their children).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def v2_root() -> Path | None:
    """Where cgroup v2 is mounted: /sys/fs/cgroup (pure v2) or .../unified (hybrid)."""
    for mnt in open("/proc/self/mounts"):
        dev, where, fstype, *_ = mnt.split()
        if fstype == "cgroup2":
            return Path(where)
    return None


def v1_root(controller: str) -> Path | None:
    for mnt in open("/proc/self/mounts"):
        dev, where, fstype, opts, *_ = mnt.split()
        if fstype == "cgroup" and controller in opts.split(","):
            return Path(where)
    return None


#: Controllers the test prefix delegates to test cgroups on a pure-v2 host.
V2_DELEGATED = ("cpu", "io", "cpuset", "memory", "pids")


def delegate(d: Path, controllers=V2_DELEGATED) -> list[str]:
    """Enable for ``d``'s children those of ``controllers`` that ``d`` itself is
    given (its cgroup.controllers); returns them.  ``d`` must hold no tasks
    (the v2 "no internal processes" rule)."""
    offered = set((d / "cgroup.controllers").read_text().split())
    enabled = [c for c in controllers if c in offered]
    for c in enabled:
        (d / "cgroup.subtree_control").write_text(f"+{c}")
    return enabled


def cgroup_support_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root to make cgroups"
    if v2_root() is None:
        return "no cgroup v2 mount"
    return None


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll ``predicate`` until true; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def spawn_in(dirs, argv, **kw) -> subprocess.Popen:
    """Start ``argv`` already inside each cgroup directory of ``dirs`` (the
    child writes its own pid into each cgroup.procs before exec: no window
    outside).  Output goes to /dev/null unless the caller says otherwise."""
    procs_files = [str(d / "cgroup.procs") for d in dict.fromkeys(dirs)]

    def enter():
        pid = str(os.getpid())
        for f in procs_files:
            with open(f, "w") as fh:
                fh.write(pid)

    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen(argv, preexec_fn=enter, **kw)


def inherit_cpuset(d: Path | None) -> None:
    """A new v1 cpuset starts with no CPUs and no memory nodes, and takes no
    task until it has both: give it its parent's (v2 cpusets inherit)."""
    if d is None or not (d / "cpuset.cpus").exists() or (d / "cpuset.cpus.effective").exists():
        return          # no cpuset here, or v2 (where "" means the parent's)
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not (d / name).read_text().strip():
            (d / name).write_text((d.parent / name).read_text().strip())


class TestCgroup:
    """One workload path, present in v2 and in the v1 hierarchies asked for."""

    __test__ = False   # not a pytest test class

    def __init__(self, relpath: str, dirs: dict[str, Path]):
        self.path = relpath          # e.g. "/tagger-test-1a2b/w"
        self.dirs = dirs             # "v2" / controller name -> directory
        self.procs: list[subprocess.Popen] = []

    @property
    def v2(self) -> Path:
        return self.dirs["v2"]

    def dir(self, controller: str) -> Path:
        return self.dirs[controller]

    @property
    def id(self) -> int:
        """cgroup v2 id: the inode number of its directory (what BPF sees)."""
        return os.stat(self.v2).st_ino

    def spawn(self, argv, **kw) -> subprocess.Popen:
        """Start ``argv`` already inside every hierarchy's cgroup (no window outside)."""
        proc = spawn_in(self.dirs.values(), argv, **kw)
        self.procs.append(proc)
        return proc

    def pids(self, controller="v2") -> list[int]:
        try:
            return [int(p) for p in (self.dirs[controller] / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def stop(self, timeout=10.0):
        """Kill what the test started here (by pid) and wait until the cgroup is empty."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # Children of our workloads (stress-ng workers, fio jobs) live here too.
        for ctrl in self.dirs:
            for pid in self.pids(ctrl):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        wait_for(lambda: all(not self.pids(c) for c in self.dirs), timeout, what=f"{self.path} to empty")


class CgroupFactory:
    """Creates test cgroups under /tagger-test-<unique>/ and removes them all."""

    def __init__(self):
        self.prefix = f"/tagger-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.roots = {"v2": v2_root()}
        self.made: list[TestCgroup] = []
        self.prefix_dirs: list[Path] = []

    def _root(self, controller: str) -> Path:
        if controller not in self.roots:
            # v1 calls the io controller blkio.
            root = v1_root({"io": "blkio"}.get(controller, controller))
            if root is None:
                # Pure v2 host: the controller (whatever its v1 name) lives in the v2 hierarchy.
                root = self.roots["v2"]
            self.roots[controller] = root
        return self.roots[controller]

    def create(self, name: str, controllers=()) -> TestCgroup:
        relpath = f"{self.prefix}/{name}-{uuid.uuid4().hex[:4]}"
        dirs = {}
        for ctrl in ("v2", *controllers):
            root = self._root(ctrl)
            prefix_dir = root / self.prefix.lstrip("/")
            if not prefix_dir.exists():
                prefix_dir.mkdir()
                self.prefix_dirs.append(prefix_dir)
                inherit_cpuset(prefix_dir)
                if root == self.roots["v2"]:
                    delegate(prefix_dir)
            d = root / relpath.lstrip("/")
            if d not in dirs.values():
                d.mkdir()
                inherit_cpuset(d)
            dirs[ctrl] = d
        cg = TestCgroup(relpath, dirs)
        self.made.append(cg)
        return cg

    def remove(self, cg: TestCgroup):
        if cg not in self.made:
            return
        try:
            cg.stop()
        finally:
            for d in set(cg.dirs.values()):
                _rmdir_tree(d)
            self.made.remove(cg)

    def remove_all(self):
        for cg in list(self.made):
            try:
                self.remove(cg)
            except Exception:  # keep removing the rest; the hook reports leftovers
                pass
        for d in self.prefix_dirs:
            _rmdir_tree(d)


def _rmdir_tree(d: Path):
    """rmdir children first (a test may have made sub-cgroups)."""
    if not d.exists():
        return
    for child in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _retry_rmdir(child)
    _retry_rmdir(d)


def _retry_rmdir(d: Path, timeout=5.0):
    # rmdir races with the kernel's last task exit (EBUSY for a moment).
    deadline = time.monotonic() + timeout
    while True:
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
