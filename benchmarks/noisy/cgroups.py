"""The scenario's cgroups: ``/tagger-nn-<pid>/{web,batch}`` in the v2 hierarchy
(BPF's cgroup ids) and in the v1 cpu, cpuacct, blkio and cpuset hierarchies (where this
hybrid host keeps its controllers), with processes started inside all of them
before they exec.  Everything is removed on close; processes are only ever
killed by pid, and only those we started or that live in our cgroups."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tagger.knobs import weight_to_shares
from tests.cgroup_fixture import _rmdir_tree, inherit_cpuset, spawn_in, v1_root, v2_root, wait_for

CONTROLLERS = ("cpu", "cpuacct", "blkio", "cpuset")
PREFIX = "tagger-nn"


class Workload:
    """One cgroup path, present in every hierarchy we use."""

    def __init__(self, path: str, dirs: dict[str, Path]):
        self.path = path             # "/tagger-nn-123/web"
        self.dirs = dirs             # "v2" / controller -> directory
        self.procs: list[subprocess.Popen] = []

    def spawn(self, argv, **kw) -> subprocess.Popen:
        """Start ``argv`` already inside every hierarchy's cgroup (no window outside)."""
        proc = spawn_in(self.dirs.values(), argv, **kw)
        self.procs.append(proc)
        return proc

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs.values():
            try:
                out.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except FileNotFoundError:
                pass
        return out

    def stop(self, sig=signal.SIGTERM, timeout: float = 5.0) -> None:
        """Stop what we started here (by pid), then whatever is left in the cgroups
        (stress-ng workers, fio jobs: our processes' children)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs = [p for p in self.procs if p.poll() is None]
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not self.pids(), timeout, what=f"{self.path} to empty")

    # --- the CPU quota (v1 cpu.cfs_quota_us on this host) ---------------------------
    @property
    def _cpu_dir(self) -> Path:
        return self.dirs["cpu"]

    def quota(self) -> float | None:
        """The CFS quota in CPUs, None for no limit (-1 / "max")."""
        d = self._cpu_dir
        if (d / "cpu.max").exists():
            q, _, p = (d / "cpu.max").read_text().split()[:2] + [""]
            return None if q == "max" else int(q) / int(p or 100000)
        q = int((d / "cpu.cfs_quota_us").read_text())
        p = int((d / "cpu.cfs_period_us").read_text())
        return None if q < 0 else q / p

    def raw_quota(self) -> str:
        d = self._cpu_dir
        if (d / "cpu.max").exists():
            return (d / "cpu.max").read_text().strip()
        return (d / "cpu.cfs_quota_us").read_text().strip()

    def set_quota(self, cpus: float | None, period_us: int = 100000) -> None:
        """A static limit, as WCA's static allocator would set it (None: no limit)."""
        d = self._cpu_dir
        if (d / "cpu.max").exists():
            (d / "cpu.max").write_text("max" if cpus is None else f"{int(cpus * period_us)} {period_us}")
            return
        (d / "cpu.cfs_period_us").write_text(str(period_us))
        (d / "cpu.cfs_quota_us").write_text("-1" if cpus is None else str(int(cpus * period_us)))

    def idle(self) -> bool:
        """cpu.idle is set (False where the kernel has no such file)."""
        f = self._cpu_dir / "cpu.idle"
        return f.exists() and f.read_text().strip() == "1"

    def set_idle(self, idle: bool) -> None:
        (self._cpu_dir / "cpu.idle").write_text("1" if idle else "0")

    def allow_rt(self, runtime_us: int = 10000) -> None:
        """A little real-time runtime for this cgroup and its parent: cyclictest's
        main thread briefly takes SCHED_FIFO, and with RT group scheduling (v1)
        a new cpu cgroup has none.  Nothing to do where there is no such file."""
        for d in (self._cpu_dir.parent, self._cpu_dir):
            if (d / "cpu.rt_runtime_us").exists():
                (d / "cpu.rt_runtime_us").write_text(str(runtime_us))

    def set_shares(self, shares: int | None) -> None:
        """v1 cpu.shares (v2: cpu.weight, converted as the kernel does); None: the default."""
        d = self._cpu_dir
        if (d / "cpu.weight").exists():
            (d / "cpu.weight").write_text(str(100 if shares is None else max(1, round(shares * 100 / 1024))))
        else:
            (d / "cpu.shares").write_text(str(1024 if shares is None else shares))

    def shares(self) -> int:
        """The weight as v1 cpu.shares (v2 cpu.weight converted as the kernel does)."""
        d = self._cpu_dir
        if (d / "cpu.weight").exists():
            return weight_to_shares(int((d / "cpu.weight").read_text()))
        return int((d / "cpu.shares").read_text())

    def cpuset(self) -> str:
        """The CPUs the cgroup may run on (cpuset.cpus; "" where there is no cpuset)."""
        d = self.dirs.get("cpuset")
        f = d / "cpuset.cpus" if d is not None else None
        return f.read_text().strip() if f is not None and f.exists() else ""

    def set_cpuset(self, cpus: str | None) -> None:
        """Confine the cgroup to ``cpus`` (a kernel CPU list); None: its parent's CPUs."""
        d = self.dirs["cpuset"]
        (d / "cpuset.cpus").write_text(cpus if cpus is not None else (d.parent / "cpuset.cpus").read_text().strip())

    def allowed_cpus(self) -> int:
        """How many CPUs the cgroup may run on (its cpuset; all where there is none)."""
        from tagger.knobs import parse_cpulist
        return len(parse_cpulist(self.cpuset())) or (os.cpu_count() or 1)

    def confined(self) -> bool:
        """Its cpuset holds fewer CPUs than its parent's."""
        mine = self.cpuset()
        return bool(mine) and mine != (self.dirs["cpuset"].parent / "cpuset.cpus").read_text().strip()

    def demoted(self) -> bool:
        """SCHED_IDLE, at the lowest weight tagger sets (cpu.weight 1 = 10 shares), or confined."""
        return self.idle() or self.shares() <= 10 or self.confined()

    def cpu_seconds(self) -> float:
        """cpuacct.usage (v1) or cpu.stat usage_usec (v2), seconds."""
        acct = self.dirs.get("cpuacct")
        if acct is not None and (acct / "cpuacct.usage").exists():
            return int((acct / "cpuacct.usage").read_text()) * 1e-9
        for line in (self.dirs["v2"] / "cpu.stat").read_text().splitlines():
            k, v = line.split()
            if k == "usage_usec":
                return int(v) * 1e-6
        return float("nan")


class Scenario:
    """``/tagger-nn-<pid>/`` with its workloads in every hierarchy; ``close()``
    stops their processes and removes every directory."""

    def __init__(self, names=("web", "batch")):
        self.prefix = f"/{PREFIX}-{os.getpid()}"
        roots = {"v2": v2_root()}
        for ctrl in CONTROLLERS:
            roots[ctrl] = v1_root(ctrl) or roots["v2"]
        self.roots = roots
        self.prefix_dirs: list[Path] = []
        self.workloads: dict[str, Workload] = {}
        try:
            for root in dict.fromkeys(roots.values()):
                d = root / self.prefix.lstrip("/")
                d.mkdir()
                self.prefix_dirs.append(d)
                inherit_cpuset(d)
            for name in names:
                path = f"{self.prefix}/{name}"
                dirs = {}
                for ctrl, root in roots.items():
                    d = root / path.lstrip("/")
                    if not d.exists():
                        d.mkdir()
                    dirs[ctrl] = d
                inherit_cpuset(dirs.get("cpuset"))
                self.workloads[name] = Workload(path, dirs)
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name: str) -> Workload:
        return self.workloads[name]

    def close(self) -> list[str]:
        """Stop and remove everything; returns problems (never raises)."""
        problems = []
        for w in self.workloads.values():
            try:
                w.stop(signal.SIGKILL)
            except Exception as err:   # keep removing the rest
                problems.append(f"{w.path}: {err}")
        for d in self.prefix_dirs:
            try:
                _rmdir_tree(d)
            except Exception as err:
                problems.append(f"{d}: {err}")
        return problems
