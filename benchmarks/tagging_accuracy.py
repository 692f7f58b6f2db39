"""Are the packaged rules' tags right?  (issue 15 part 3)

Scenarios with known ground truth, each in cgroups of its own
(``/tagger-acc-<pid>/<scenario>-<n>/<role>`` in the v2 hierarchy and in the v1
cpu, cpuacct, blkio, cpuset and memory hierarchies of a hybrid host), one after
another, while ``tagger run --dry-run`` runs with the packaged rules (rules/,
copied to a root-owned directory) - what users get.  The agent's tags are read
through its socket API (a ``subscribe`` to tags and snapshots: after each tick
the tag state of every scenario cgroup).  Root, real kernel, about 4.5 minutes
for the default run.

The tags are issue 15's, spelled as the packaged rules emit them (the same
names).  ``runq=starved`` and ``neighbour=noisy`` read the run-queue wait
attributed by cause (rules/30-contention.yaml); ``neighbour=noisy`` reads
``runq=starved``, so its ``for`` below includes that rule's (it cannot come
before there is a starved cgroup).

    sudo .venv/bin/python benchmarks/tagging_accuracy.py [--phase 35] [--scenarios web-hogs,idle] [--repeat 1]

Scenarios (roles -> what runs there -> the tags that are the truth):

    web-hogs    web: request/response service (probe server + a client at 200 req/s,
                     300 us of CPU per request), cpu.shares 256 (250m)
                     -> type=interactive, runq=starved (the victim)
                hog: stress-ng --cpu 4, cpu.shares 1536 (1500m)
                     -> cpu=intensive, type=batch, neighbour=noisy (the culprit)
    hogs        hog-a, hog-b: stress-ng --cpu 2 each (4 hogs on the node, no victim)
                     -> cpu=intensive, type=batch (and neither starved nor noisy)
    web-io      web -> type=interactive
                writer: fio, direct 64 KiB random writes, one at a time, each followed by
                        fsync, through a 32 MiB/s write limit of its own cgroup (blk-throttle:
                        each write waits in the block layer, whatever the disk and CPUs)
                     -> io=bound; type not judged (it wakes often in short bursts,
                        as the scheduler sees an I/O-bound task: neither answer is wrong)
    web-capped  web -> type=interactive
                capped: stress-ng --cpu 2 under its own quota of 0.2 CPU (below what
                        even a crowded host leaves it: the quota holds it back)
                     -> quota=throttled, cpu=intensive (it wants 2 CPUs), type=batch
    memory      mem: maps and fills 3 GiB (MAP_POPULATE), then sleeps -> memory=heavy.
                     The phase starts when the memory is resident: filling it is CPU
                     work (about 2 s of kernel time per GiB on this VM; stress-ng --vm
                     keeps rewriting and is a CPU hog as well), tagged - rightly -
                     cpu=intensive and type=batch if it lasts 10 s on a busy host.
    idle        sleeper: sleep -> nothing

Every other (cgroup, tag) pair of a scenario is truth False.  Tags and how a
pair is scored (benchmarks/accuracy/score.py):

* A (cgroup, phase) pair is **tagged** ``key=value`` if the tag is set in more
  than half of the ticks from ``t0 + for + 2 ticks`` to the phase's end, where
  ``t0`` is when the last workload's behaviour started (stress-ng, fio, sleep:
  when started; the web service: its first request; the memory one: filled)
  and ``for`` is the rule's hold time.
* **Time to tag**: from ``t0`` to the first tick with the tag set.  The bar is
  the rule's ``for`` plus two ticks.
* **Changes**: times the tag went on or off during the phase, from its state
  just before ``t0`` (set once: 1).
* **Precision** TP / (TP + FP) and **recall** TP / (TP + FN) over all judged
  (cgroup, phase) pairs, every scenario and repeat.

Each phase lasts ``--phase`` seconds, or longer where an expected tag can only
come late: ``for + 2 x lag + 5 s``, where lag is the bar's two ticks plus, for
tags whose rules read cgroupfs figures, the reads a new cgroup needs (one for
PSI and memory, two for the throttled rate; the agent reads a new cgroup at
once and every tick for its first ``--cgroupfs-every`` ticks): memory 41 s at
the defaults.  A tag set late still misses the time bar, but can hold most of
its judged window.

Writes benchmarks/results/tagging_accuracy.md.  Everything it starts is stopped
by pid, every cgroup it makes is removed, and the agent gets SIGTERM, on every
exit path (SIGINT and SIGTERM included).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.accuracy.score import PairScore, TagScore, score_pair  # noqa: E402
from benchmarks.agent import Agent  # noqa: E402
from benchmarks.noisy.cgroups import Workload  # noqa: E402
from tests.cgroup_fixture import _rmdir_tree, delegate, inherit_cpuset, v1_root, v2_root  # noqa: E402

PY = sys.executable
PREFIX = "tagger-acc"
CONTROLLERS = ("cpu", "cpuacct", "blkio", "cpuset", "memory")

#: The tags of issue 15, as the packaged rules spell them (rules/*.yaml).
TAGS = ("cpu=intensive", "runq=starved", "neighbour=noisy", "quota=throttled", "io=bound",
        "memory=heavy", "type=interactive", "type=batch")

WEB_RATE = 200.0          # requests/s, fixed
WEB_WORK_US = 300.0       # CPU per request
#: Tags whose rules read cgroupfs figures, which the agent reads every
#: --cgroupfs-every ticks: how many reads a new cgroup needs before the figure
#: is known (a gauge: one; a rate such as cpu.throttled: two).
CGROUPFS_READS = {"quota=throttled": 2, "io=bound": 1, "memory=heavy": 1}
#: The agent reads a new cgroup's cgroupfs figures at once and every tick for
#: its first --cgroupfs-every ticks (tagger.telemetry), so those reads come a
#: tick apart, not --cgroupfs-every ticks apart.
WRITER_BPS = 32 << 20     # the writer's own blk-throttle write limit
WRITER_FILE = 64 << 20
MEM_BYTES = 3 << 30       # 1.5 x memory-heavy's 2 GiB
# Maps MEM_BYTES and faults every page in (charged to the cgroup), says so, sleeps.
MEM_FILL = ("import mmap, signal, sys\n"
            "m = mmap.mmap(-1, {n}, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)\n"
            "print('filled', flush=True)\n"
            "signal.pause()\n")
BAR_PRECISION, BAR_RECALL, BAR_CHANGES = 0.95, 0.9, 1


@dataclass
class Role:
    start: str                        # key of Run.start_<start>
    truth: dict[str, bool | None]     # tag -> True / None (not judged); others False
    shares: int | None = None         # v1 cpu.shares (v2: weight converted)
    quota: float | None = None        # CPUs
    what: str = ""


SCENARIOS: dict[str, dict[str, Role]] = {
    "web-hogs": {
        "web": Role("web", {"type=interactive": True, "runq=starved": True}, shares=256,
                    what=f"request/response service, {WEB_RATE:.0f} req/s x {WEB_WORK_US:.0f} us, shares 256"),
        "hog": Role("hog4", {"cpu=intensive": True, "type=batch": True, "neighbour=noisy": True}, shares=1536,
                    what="stress-ng --cpu 4, shares 1536"),
    },
    "hogs": {
        "hog-a": Role("hog2", {"cpu=intensive": True, "type=batch": True}, what="stress-ng --cpu 2"),
        "hog-b": Role("hog2", {"cpu=intensive": True, "type=batch": True}, what="stress-ng --cpu 2"),
    },
    "web-io": {
        "web": Role("web", {"type=interactive": True}, what="request/response service"),
        "writer": Role("writer", {"io=bound": True, "type=interactive": None, "type=batch": None},
                       what="fio: direct 64 KiB random writes + fsync, iodepth 1, own 32 MiB/s write limit"),
    },
    "web-capped": {
        "web": Role("web", {"type=interactive": True}, what="request/response service"),
        # 0.2 CPU: below what even a crowded host leaves it, so the quota is what holds it back
        "capped": Role("hog2", {"quota=throttled": True, "cpu=intensive": True, "type=batch": True}, quota=0.2,
                       what="stress-ng --cpu 2, quota 0.2 CPU"),
    },
    "memory": {
        "mem": Role("mem", {"memory=heavy": True}, what=f"maps and fills {MEM_BYTES >> 30} GiB, then sleeps"),
    },
    "idle": {
        "sleeper": Role("sleeper", {}, what="sleep"),
    },
}


class Interrupted(Exception):
    pass


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rule_for(rules_dir: Path) -> dict[str, float]:
    """tag -> the `for` (s) of the rule that sets it, from the packaged rules,
    plus the `for` of the rules setting tags its condition reads: a tag about
    other tags (neighbour=noisy: the culprit of cgroups tagged runq=starved)
    cannot come before them, so its clock starts when they can first be set."""
    from tagger.rules import load_directory
    from tagger.rules.expr import tag_refs
    rules = load_directory(rules_dir).rules
    own, reads = {}, {}
    for r in rules:
        refs = {f"{k}={v}" for c in (r.when,) if c is not None and c.tree is not None
                for k, v, _ in tag_refs(c.tree) if v is not None}
        for k, v in r.tags.items():
            own.setdefault(f"{k}={v}", float(r.for_))
            reads.setdefault(f"{k}={v}", refs)

    def total(tag, seen=()):
        if tag in seen:
            return 0.0
        return own.get(tag, 0.0) + max([total(t, seen + (tag,)) for t in reads.get(tag, ()) if t in own] or [0.0])
    return {tag: total(tag) for tag in own}


class Cgroups:
    """``/tagger-acc-<pid>/`` in every hierarchy we use; one sub-directory per
    scenario phase with a Workload per role.  ``close()`` removes all of it."""

    def __init__(self):
        self.prefix = f"/{PREFIX}-{os.getpid()}"
        self.roots = {"v2": v2_root()}
        for ctrl in CONTROLLERS:
            self.roots[ctrl] = v1_root(ctrl) or self.roots["v2"]
        self.pure_v2 = v1_root("cpu") is None
        self.made: list[Path] = []          # directories to remove, parents first
        self.workloads: list[Workload] = []
        for root in dict.fromkeys(self.roots.values()):
            self._mkdir(root / self.prefix.lstrip("/"))

    def _mkdir(self, d: Path):
        if d.exists():
            return
        d.mkdir()
        self.made.append(d)
        inherit_cpuset(d)

    def phase(self, name: str, roles) -> dict[str, Workload]:
        base = f"{self.prefix}/{name}"
        for root in dict.fromkeys(self.roots.values()):
            self._mkdir(root / base.lstrip("/"))
        if self.pure_v2:     # a v2 child gets a controller only if every parent delegates it
            for d in (self.roots["v2"] / self.prefix.lstrip("/"), self.roots["v2"] / base.lstrip("/")):
                delegate(d)
        out = {}
        for role in roles:
            path = f"{base}/{role}"
            dirs = {}
            for ctrl, root in self.roots.items():
                d = root / path.lstrip("/")
                self._mkdir(d)
                dirs[ctrl] = d
            w = LimitedWorkload(path, dirs)
            self.workloads.append(w)
            out[role] = w
        return out

    def stop(self, workloads) -> list[str]:
        problems = []
        for w in workloads:
            try:
                w.stop(signal.SIGKILL)
            except Exception as err:      # keep stopping the rest
                problems.append(f"{w.path}: {err}")
        return problems

    def close(self) -> list[str]:
        problems = self.stop(self.workloads)
        for d in reversed(self.made):
            try:
                _rmdir_tree(d)
            except Exception as err:
                problems.append(f"{d}: {err}")
        return problems


def start_agent(workdir: Path, interval: float, trace: str | None, cgroupfs_every: int | None) -> Agent:
    """``tagger run --dry-run`` with the packaged rules, its socket in a temp dir,
    recording its ticks to ``trace`` if given."""
    rules = {f.name: f.read_text() for f in sorted((ROOT / "rules").glob("*.yaml"))}
    extra = (*(("--record", trace) if trace else ()),
             *(("--cgroupfs-every", str(cgroupfs_every)) if cgroupfs_every else ()))
    return Agent(workdir, rules=rules, interval=f"{interval}s", extra=extra, metrics=False, log_level="info")


#: Figures kept per tick for the report's explanation of each verdict.
FIGURES = ("cpu.usage", "runq.wait", "sched.switches", "sched.preempted", "runq.p99", "runq.wakeup.p99",
           "cpu.throttled", "mem.current", "psi.io.some", "io.ops", "io.lat.p99", "sched.preempts",
           "runq.wait.self", "runq.wait.foreign", "runq.wait.throttled", "runq.wait.other")


class Watcher(threading.Thread):
    """Subscribes to the agent's tags and snapshots under our prefix; after each
    tick records (t, {path: {key: value}}) and the figures of our cgroups."""

    def __init__(self, sock: str, prefix: str):
        super().__init__(daemon=True, name="watcher")
        from tagger.client import ApiClient
        self.client = ApiClient(sock, timeout=1.0)
        reply = self.client.subscribe(("tags", "snapshots"), cgroup=f"{prefix}/**")
        self.tags = {p: {k: v["value"] for k, v in ts.items()} for p, ts in (reply.get("tags") or {}).items()}
        self.ticks: list[tuple[float, dict]] = []
        self.figures: list[tuple[float, dict, dict]] = []    # (t, {path: {metric: v}}, node)
        self.first_seen: dict[str, float] = {}               # path -> t of its first snapshot row
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        from tagger.client import ApiError
        try:
            while not self.stopping.is_set():
                try:
                    for kind, data in self.client.events():
                        self._on(kind, data)
                        if self.stopping.is_set():
                            break
                except (TimeoutError, socket.timeout):
                    continue
        except ApiError as err:
            if not self.stopping.is_set():
                self.error = err
        except BaseException as err:   # reported by the main thread
            self.error = err

    def _on(self, kind, data):
        if kind == "tag":
            path, key = data["cgroup"], data["key"]
            if data.get("value") is None:
                self.tags.get(path, {}).pop(key, None)
            else:
                self.tags.setdefault(path, {})[key] = data["value"]
        elif kind == "snapshot":
            t = data["t"]
            self.ticks.append((t, {p: dict(ts) for p, ts in self.tags.items()}))
            cols = data.get("columns", {})
            rows = {}
            for i, p in enumerate(data["cgroups"]["paths"]):
                rows[p] = {m: cols[m][i] for m in FIGURES if m in cols}
                self.first_seen.setdefault(p, t)
            self.figures.append((t, rows, data.get("node", {})))

    def close(self):
        self.stopping.set()
        self.join(timeout=5)
        self.client.close()


@dataclass
class Phase:
    scenario: str
    n: int
    t0: float
    t1: float
    paths: dict[str, str]                   # role -> cgroup path
    load: tuple[float, float, float]
    notes: list[str] = field(default_factory=list)
    kernel: dict[str, dict[str, float]] = field(default_factory=dict)   # role -> the kernel's figures


def disk_of(path: Path) -> str:
    """MAJ:MIN of the whole disk holding ``path`` (blk-throttle refuses partitions)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sys_dev = Path(f"/sys/dev/block/{dev}")
    if (sys_dev / "partition").exists():
        return (sys_dev.resolve().parent / "dev").read_text().strip()
    return dev


class LimitedWorkload(Workload):
    def set_write_bps(self, device: str, bps: int) -> None:
        """A write limit on ``device`` for this cgroup: v1 blkio.throttle, or v2 io.max."""
        d = self.dirs["blkio"]
        if (d / "blkio.throttle.write_bps_device").exists():
            (d / "blkio.throttle.write_bps_device").write_text(f"{device} {bps}")
        else:
            (self.dirs["v2"] / "io.max").write_text(f"{device} wbps={bps}")


def kernel_counters(w: Workload) -> dict[str, float]:
    """The kernel's own cumulative figures for ``w`` (cgroupfs, read by us, not by
    the agent): CPU seconds, CFS periods and throttled periods, PSI io "some"
    total seconds, memory charged now.  NaN where this host has no such file."""
    out = {"cpu_s": w.cpu_seconds(), "periods": math.nan, "throttled": math.nan, "io_some_s": math.nan,
           "mem": math.nan}
    try:
        stat = dict(line.split() for line in (w.dirs["cpu"] / "cpu.stat").read_text().splitlines())
        out["periods"], out["throttled"] = float(stat["nr_periods"]), float(stat["nr_throttled"])
    except (OSError, KeyError, ValueError):
        pass
    try:
        for line in (w.dirs["v2"] / "io.pressure").read_text().splitlines():
            if line.startswith("some "):
                out["io_some_s"] = float(line.rsplit("total=", 1)[1]) * 1e-6
    except (OSError, IndexError, ValueError):
        pass
    for f in (w.dirs["memory"] / "memory.current", w.dirs["memory"] / "memory.usage_in_bytes"):
        try:
            out["mem"] = float(f.read_text())
            break
        except OSError:
            continue
    return out


def kernel_figures(before: dict, after: dict, seconds: float) -> dict[str, float]:
    """Rates over the phase from two kernel_counters readings."""
    periods = after["periods"] - before["periods"]
    return {"cpu": (after["cpu_s"] - before["cpu_s"]) / seconds,
            "throttled": (after["throttled"] - before["throttled"]) / periods if periods > 0 else math.nan,
            "psi_io": (after["io_some_s"] - before["io_some_s"]) / seconds,
            "mem": after["mem"]}


class Run:
    def __init__(self, args):
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="tagger-acc-"))
        os.chmod(self.workdir, 0o755)
        self.cgroups: Cgroups | None = None
        self.agent: Agent | None = None
        self.watcher: Watcher | None = None
        self.phases: list[Phase] = []
        self.fors = rule_for(ROOT / "rules")
        self.n = 0

    # --- workloads ------------------------------------------------------------------
    def start_web(self, w: Workload, seconds: float) -> float:
        """Returns when the first request was sent (epoch): two Python processes
        take seconds to start on a crowded node, and serving is the behaviour."""
        self.n += 1
        sock = self.workdir / f"probe{self.n}.sock"
        out = self.workdir / f"probe{self.n}.txt"
        w.spawn([PY, "-m", "benchmarks.noisy.probe", "server", str(sock), "--work-us", str(WEB_WORK_US)], cwd=ROOT)
        client = w.spawn([PY, "-m", "benchmarks.noisy.probe", "client", str(sock), str(out),
                          "--duration", str(seconds + 30), "--quiet", str(WEB_RATE), "--busy", str(WEB_RATE)],
                         cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.poll() is None:
            first = out.read_text().split("\n", 1)[0] if out.exists() else ""
            if first.strip():      # "send_monotonic latency": the client flushes once a second
                return time.time() - (time.monotonic() - float(first.split()[0]))
            time.sleep(0.05)
        raise RuntimeError(f"the probe client sent no request in 60 s (exit {client.poll()})")

    def start_hog4(self, w: Workload, seconds: float):
        w.spawn(["stress-ng", "--cpu", "4", "--cpu-method", "matrixprod", "-t", f"{int(seconds) + 30}"])

    def start_hog2(self, w: Workload, seconds: float):
        w.spawn(["stress-ng", "--cpu", "2", "--cpu-method", "matrixprod", "-t", f"{int(seconds) + 30}"])

    def start_writer(self, w: Workload, seconds: float):
        """fio writing through a write limit of its own cgroup (blk-throttle, as a
        provisioned cloud disk): each write waits in the block layer, not on fio's
        own rate timer, so the writer is I/O-bound however busy the CPUs are and
        however fast the disk - and stays a small load on a disk others share."""
        data = self.workdir / "fio.dat"
        with open(data, "wb") as fh:
            fh.truncate(WRITER_FILE)
        w.set_write_bps(disk_of(data), WRITER_BPS)
        w.spawn(["fio", "--name=writer", f"--filename={data}", "--rw=randwrite", "--bs=64k", "--direct=1",
                 "--fsync=1", f"--size={WRITER_FILE}", "--ioengine=psync", "--iodepth=1",
                 "--time_based", f"--runtime={int(seconds) + 30}"])

    def start_mem(self, w: Workload, seconds: float) -> float:
        """Returns once the memory is resident (the phase starts then)."""
        proc = w.spawn([PY, "-c", MEM_FILL.format(n=MEM_BYTES)], stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        if not ready or proc.stdout.readline().strip() != "filled":
            raise RuntimeError(f"the memory workload did not fill {MEM_BYTES >> 30} GiB in 120 s")
        return time.time()

    def start_sleeper(self, w: Workload, seconds: float):
        w.spawn(["sleep", f"{int(seconds) + 30}"])

    # --- phases -----------------------------------------------------------------------
    def length(self, roles: dict[str, Role]) -> float:
        """--phase, or longer where a tag the scenario expects can only come late:
        ``for + 2 x lag + 5 s`` leaves a tag set ``lag`` after its ``for`` (the
        bar's two ticks, and the agent's cgroupfs cadence) most of the window."""
        iv = self.args.interval
        need = [self.fors.get(t, 0.0) + 2 * (2 * iv + CGROUPFS_READS.get(t, 0) * iv) + 5
                for r in roles.values() for t, v in r.truth.items() if v]
        return max([self.args.phase, *need])

    def run_phase(self, name: str, rep: int):
        roles = SCENARIOS[name]
        seconds = self.length(roles)
        ws = self.cgroups.phase(f"{name}-{rep}", roles)
        for role, spec in roles.items():
            if spec.shares is not None:
                ws[role].set_shares(spec.shares)
            if spec.quota is not None:
                ws[role].set_quota(spec.quota)
        log(f"{name} (repeat {rep}): {seconds:.0f}s, load {os.getloadavg()[0]:.2f}")
        # The phase starts when every workload's behaviour has: C programs at once,
        # the web service at its first request, the memory one once filled.
        began = [getattr(self, f"start_{spec.start}")(ws[role], seconds) for role, spec in roles.items()]
        t0 = max([time.time() if b is None else b for b in began])
        before = {role: kernel_counters(w) for role, w in ws.items()}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if self.watcher.error is not None:
                raise RuntimeError(f"watching the agent failed: {self.watcher.error!r}")
            if self.agent.proc.poll() is not None:
                raise RuntimeError(f"tagger run exited with {self.agent.proc.returncode}")
        t1 = time.time()
        ph = Phase(name, rep, t0, t1, {r: w.path for r, w in ws.items()}, os.getloadavg())
        ph.kernel = {role: kernel_figures(before[role], kernel_counters(w), t1 - t0) for role, w in ws.items()}
        for role, w in ws.items():
            dead = [p.args[0] for p in w.procs if p.poll() is not None]
            if dead:
                ph.notes.append(f"{name}/{role}: {', '.join(map(str, dead))} exited early")
        problems = self.cgroups.stop(ws.values())
        ph.notes += problems
        self.phases.append(ph)

    def execute(self):
        a = self.args
        self.cgroups = Cgroups()
        log("starting tagger run --dry-run (packaged rules)")
        self.agent = start_agent(self.workdir, a.interval, a.trace, a.cgroupfs_every)
        self.agent.wait_ready(ticks=2)
        self.watcher = Watcher(self.agent.sock, self.cgroups.prefix)
        self.watcher.start()
        self.uptime_before = Path("/proc/loadavg").read_text().split()[:3]
        t_start = time.monotonic()
        for rep in range(1, a.repeat + 1):
            for name in a.scenarios:
                self.run_phase(name, rep)
        self.elapsed = time.monotonic() - t_start
        time.sleep(2 * a.interval)         # the last phase's final ticks
        self.uptime_after = Path("/proc/loadavg").read_text().split()[:3]

    def cleanup(self) -> list[str]:
        problems = []
        if self.watcher is not None:
            try:
                self.watcher.close()
            except Exception as err:
                problems.append(f"watcher: {err}")
        if self.cgroups is not None:
            problems += self.cgroups.close()
        if self.agent is not None:
            code = self.agent.stop()
            if code not in (0, None, -signal.SIGTERM):
                problems.append(f"tagger run exited with {code} (log: {self.agent.log_path})")
                return problems         # keep the workdir for its log
        shutil.rmtree(self.workdir, ignore_errors=True)
        return problems

    def dump(self, path: str):
        phases = [{"scenario": p.scenario, "n": p.n, "t0": p.t0, "t1": p.t1, "paths": p.paths} for p in self.phases]
        ticks = [{"t": t, "tags": tags, "figures": figs, "node": node}
                 for (t, tags), (_, figs, node) in zip(self.watcher.ticks, self.watcher.figures)]
        with open(path, "w") as fh:
            json.dump({"phases": phases, "ticks": ticks}, fh)

    # --- scoring ------------------------------------------------------------------------
    def score(self) -> dict[str, TagScore]:
        ticks = self.watcher.ticks
        iv = self.args.interval
        out = {t: TagScore(t, self.fors.get(t, 0.0), self.fors.get(t, 0.0) + 2 * iv) for t in TAGS}
        for i, ph in enumerate(self.phases):
            for role, path in ph.paths.items():
                truth = SCENARIOS[ph.scenario][role].truth
                for tag, ts in out.items():
                    tagged, share, first, changes, window = score_pair(ticks, path, tag, ph.t0, ph.t1, ts.for_s, iv)
                    ts.pairs.append(PairScore(ph.scenario, role, tag, truth.get(tag, False), tagged, share, first,
                                              changes, window, phase=i))
        return out

    def dark_ticks(self, ph: Phase) -> tuple[int, int] | None:
        """(ticks of the phase in which none of its CPU-using workloads ran at all,
        ticks), or None if there were none such ticks or it has no such workload."""
        busy = [p for r, p in ph.paths.items() if SCENARIOS[ph.scenario][r].start not in ("sleeper", "mem")]
        dark = total = 0
        for t, rows, _ in self.watcher.figures:
            if busy and ph.t0 <= t <= ph.t1:
                total += 1
                dark += all(rows.get(p, {}).get("cpu.usage", 0.0) < 0.005 for p in busy)
        return (dark, total) if dark else None

    def figures(self, ph: Phase) -> dict[str, dict[str, float]]:
        """Median figures per role over the phase (from 2 ticks in), and others' CPU."""
        rows = [(t, r, node) for t, r, node in self.watcher.figures if ph.t0 + 2 * self.args.interval <= t <= ph.t1]
        out = {}
        for role, path in ph.paths.items():
            med = {}
            for m in FIGURES:
                vals = [r[path][m] for _, r, _ in rows if path in r and m in r[path] and r[path][m] == r[path][m]]
                med[m] = statistics.median(vals) if vals else math.nan
            out[role] = med
        others = []
        for _, r, node in rows:
            ours = sum(r[p]["cpu.usage"] for p in ph.paths.values() if p in r and r[p].get("cpu.usage") == r[p].get("cpu.usage"))
            if "cpu.usage" in node:
                others.append(node["cpu.usage"] - ours)
        out["_others_cpu"] = {"cpu.usage": statistics.median(others) if others else math.nan}
        return out


# --- the report -------------------------------------------------------------------------
def _f(x, fmt="{:.2f}"):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _ms(x):
    return _f(x * 1e3 if x is not None and x == x else None, "{:.1f} ms")


def report(run: Run, scores: dict[str, TagScore], argv: list[str]) -> str:
    a = run.args
    lines = ["# Tagging accuracy (issue 15)", "",
             f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC:",
             "", "```", "sudo .venv/bin/python benchmarks/tagging_accuracy.py " + " ".join(argv), "```", "",
             f"`tagger run --dry-run` with the packaged rules (rules/), {a.interval:g} s ticks; "
             f"{len(run.phases)} phases ({', '.join(a.scenarios)} x {a.repeat}) in {run.elapsed:.0f} s. "
             "Scenarios, ground truth and the definitions of *tagged*, time to tag and changes: "
             "the docstring of `benchmarks/tagging_accuracy.py`.", "",
             "Machine: " + f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs, "
             + _meminfo() + ", cgroups " + ("v2" if run.cgroups.pure_v2 else "hybrid (v1 controllers, v2 unified)")
             + f". Shared with other engineers' VMs and tests: load average (1/5/15 min) "
             f"{' '.join(run.uptime_before)} before, {' '.join(run.uptime_after)} after.", "",
             "## Per tag", "",
             "| tag | judged pairs | should | TP | FP | FN | precision | recall | time to tag (median / max) "
             "| bar (for + 2 ticks) | max changes per phase | bars met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for tag, s in scores.items():
        times = s.times()
        met = []
        ok_p = s.precision is None or s.precision >= BAR_PRECISION
        ok_r = s.recall is None or s.recall >= BAR_RECALL
        ok_c = s.max_changes <= BAR_CHANGES
        ok_t = not s.late()
        for ok, name in ((ok_p, "precision"), (ok_r, "recall"), (ok_c, "flapping"), (ok_t, "time")):
            met.append(name if ok else f"**not {name}**")
        lines.append(f"| `{tag}` | {s.judged} | {s.tp + s.fn} | {s.tp} | {s.fp} | {s.fn} | {_f(s.precision)} | "
                     f"{_f(s.recall)} | {_f(statistics.median(times) if times else None, '{:.1f} s')} / "
                     f"{_f(max(times) if times else None, '{:.1f} s')} | {s.bar_s:.0f} s | {s.max_changes} | "
                     f"{', '.join(met)} |")
    every = a.cgroupfs_every or 10
    others = [run.figures(ph)["_others_cpu"]["cpu.usage"] for ph in run.phases]
    others = [x for x in others if x == x]
    lines += ["", "Precision or recall `–`: no pair was tagged, or none should have been. "
              f"`quota=throttled`, `io=bound` (PSI) and `memory=heavy` read cgroupfs figures, which the agent "
              f"reads every {every} tick(s) (`--cgroupfs-every`), and a new cgroup's at once and every tick for its "
              f"first {every} ticks (`quota=throttled` reads a rate: two reads). `neighbour=noisy` is read from "
              "`runq=starved` (the culprit of starved cgroups): its `for` counts from when `runq=starved` can be set "
              "(the bar adds that rule's `for`).", "",
              f"The rest of the host (other engineers' VMs and tests) used a median "
              f"{_f(statistics.median(others) if others else None)} of the {os.cpu_count()} CPUs during the "
              f"phases (per phase: {', '.join(_f(x) for x in others)}).", ""]

    wrong = [p for s in scores.values() for p in s.pairs
             if p.truth is not None and (p.tagged != p.truth or p.changes > BAR_CHANGES)]
    late = [(s, p) for s in scores.values() for p in s.late() if p.tagged]
    lines += ["## Mistakes", ""]
    if not wrong and not late:
        lines.append("None.")
    for p in wrong:
        what = ("false positive" if p.tagged and not p.truth else "missed" if p.truth and not p.tagged
                else "flapping")
        lines.append(f"- `{p.tag}` on {p.scenario}/{p.role}: {what} (set in {p.share * 100:.0f}% of the judged "
                     f"window, {p.changes} changes, first at {_f(p.time_to_tag, '{:.0f} s')})")
    for s, p in late:
        lines.append(f"- `{p.tag}` on {p.scenario}/{p.role}: set after {p.time_to_tag:.0f} s (bar {s.bar_s:.0f} s)")
    lines += ["", "## Per phase: the figures behind the verdicts", "",
              "Medians over the phase. Demand = usage + run-queue wait; foreign = run-queue wait behind other "
              "cgroups' tasks (s/s, `runq.wait.foreign`: what `runq=starved` reads, with the ratio to usage); "
              "CPU/wake = usage / voluntary switches.", "",
              "| phase | cgroup | seen after | tags held (share of judged window) | usage | demand | foreign (x usage) "
              "| sw/s | CPU/wake | runq p99 | wakeup p99 | throttled | mem | PSI io | IOPS | I/O p99 |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, ph in enumerate(run.phases):
        figs = run.figures(ph)
        for role in ph.paths:
            f = figs[role]
            held = [f"{p.tag} {p.share * 100:.0f}%" for s in scores.values() for p in s.pairs
                    if p.phase == i and p.role == role and p.share > 0]
            usage, wait, sw = f["cpu.usage"], f["runq.wait"], f["sched.switches"]
            foreign = f.get("runq.wait.foreign", math.nan)
            ratio = foreign / usage if usage and usage == usage and foreign == foreign else math.nan
            per_wake = usage / sw if sw and sw == sw and usage == usage else math.nan
            seen = run.watcher.first_seen.get(ph.paths[role])
            lines.append(f"| {ph.scenario} #{ph.n} | {role} | {_f(seen - ph.t0 if seen else None, '{:.1f} s')} | "
                         f"{', '.join(held) or '–'} | {_f(usage)} | "
                         f"{_f(usage + wait)} | {_f(foreign)} ({_f(ratio, '{:.1f}')}) | {_f(sw, '{:.0f}')} | {_ms(per_wake)} | {_ms(f['runq.p99'])} | "
                         f"{_ms(f['runq.wakeup.p99'])} | {_f(f['cpu.throttled'] * 100 if f['cpu.throttled'] == f['cpu.throttled'] else None, '{:.0f}%')} | "
                         f"{_f(f['mem.current'] / 2**30 if f['mem.current'] == f['mem.current'] else None, '{:.2f} GiB')} | "
                         f"{_f(f['psi.io.some'] * 100 if f['psi.io.some'] == f['psi.io.some'] else None, '{:.0f}%')} | "
                         f"{_f(f['io.ops'], '{:.0f}')} | {_ms(f['io.lat.p99'])} |")
        lines.append(f"| {ph.scenario} #{ph.n} | (everything else on the host) | | | "
                     f"{_f(figs['_others_cpu']['cpu.usage'])} | | | | | | | | | | | |")
    lines += ["", "## Did each scenario's premise hold?", "",
              "The kernel's own figures over each phase (cgroupfs, read by the benchmark at its start and end, "
              "not by the agent): on a crowded host a capped hog may not reach its quota and a writer may wait "
              "for a CPU more than for the disk.", ""]
    for ph in run.phases:
        dark = run.dark_ticks(ph)
        if dark:
            lines.append(f"- {ph.scenario} #{ph.n}: in {dark[0]} of its {dark[1]} ticks none of its running "
                         "workloads got any CPU (the rest of the host took all of it): behaviour that is not "
                         "there cannot be tagged.")
    lines += ["",
              "| phase | cgroup | truth | CPU | throttled periods | PSI io some | memory |", "|---|---|---|---|---|---|---|"]
    for ph in run.phases:
        for role, k in ph.kernel.items():
            truth = ", ".join(f"{t}" if v else f"({t}: not judged)"
                              for t, v in SCENARIOS[ph.scenario][role].truth.items() if v is not False) or "no tags"
            lines.append(f"| {ph.scenario} #{ph.n} | {role} | {truth} | {_f(k['cpu'])} | "
                         f"{_f(k['throttled'] * 100 if k['throttled'] == k['throttled'] else None, '{:.0f}%')} | "
                         f"{_f(k['psi_io'] * 100 if k['psi_io'] == k['psi_io'] else None, '{:.0f}%')} | "
                         f"{_f(k['mem'] / 2**30 if k['mem'] == k['mem'] else None, '{:.2f} GiB')} |")
    notes = [n for ph in run.phases for n in ph.notes]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _meminfo() -> str:
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.0f} GiB RAM"
    return "RAM unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="Scenarios: " + ", ".join(SCENARIOS) + ". See the module docstring "
                                        "for each one's ground truth and the scoring.")
    ap.add_argument("--phase", type=float, default=35.0,
                    help="seconds per scenario phase (default 35; longer where an expected tag can only come "
                         "late: memory 41 at the defaults)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma-separated scenarios to run, in order (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="run the scenarios this many times (default 1)")
    ap.add_argument("--interval", type=float, default=1.0, help="tagger's tick (s, default 1)")
    ap.add_argument("--cgroupfs-every", type=int, default=None,
                    help="pass to tagger run (default: the agent's own, 10 ticks)")
    ap.add_argument("--trace", help="also record the agent's snapshots to this trace file (tagger replay)")
    ap.add_argument("--dump", help="also write every tick's tags and figures of the scenario cgroups, and the "
                                   "phases, to this JSON file (to see why a verdict came out as it did)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                    help="directory for tagging_accuracy.md")
    args = ap.parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown or not args.scenarios:
        ap.error(f"--scenarios: unknown {', '.join(unknown) or '(none given)'} (known: {', '.join(SCENARIOS)})")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.phase < 12 + 5 * args.interval:
        ap.error(f"--phase must leave a judged window after the 10 s rules' for + 2 ticks "
                 f"(at least {12 + 5 * args.interval:g} s)")
    if os.geteuid() != 0:
        sys.exit("tagging_accuracy: needs root (cgroups, BPF)")
    for tool in ("stress-ng", "fio"):
        if shutil.which(tool) is None:
            sys.exit(f"tagging_accuracy: {tool} is not installed (make deps)")

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    run = Run(args)
    text = None
    try:
        run.execute()
        text = report(run, run.score(), argv)
        if args.dump:
            run.dump(args.dump)
    except Interrupted as err:
        print(f"tagging_accuracy: {err}: cleaning up", file=sys.stderr)
    finally:
        for s in old:                     # a second signal must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        problems = run.cleanup()
        for s, h in old.items():
            signal.signal(s, h)
        for p in problems:
            print(f"tagging_accuracy: clean-up: {p}", file=sys.stderr)
    if text is None:
        sys.exit(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tagging_accuracy.md").write_text(text)
    print(text)
    print(f"wrote {out / 'tagging_accuracy.md'}")


if __name__ == "__main__":
    main()
