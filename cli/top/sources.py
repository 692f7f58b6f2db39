"""Where frames come from.  A :class:`FrameSource` has ``next_frame()`` (the
next Frame, or None when nothing new has arrived) and ``close()``.

- :class:`FakeSource`: frames a test scripts with ``push()``.
- :class:`DemoSource`: a synthetic host that changes every tick (``--demo``, the
  README screenshot, the benchmark).  Needs nothing: no root, no BPF.
- :class:`LocalSource`: standalone; loads the BPF programs itself through
  :mod:`tagger.telemetry` (root) and runs the rules over them without acting.
- :class:`SocketSource`: ``--connect SOCKET``, a running ``tagger run``'s API.

``next_frame()`` runs on the sampler thread, never on the UI thread, so it may
block for a tick's worth of time.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from typing import Protocol

import numpy as np

from tagger.errors import TaggerError
from tagger.publish.report import CollectorHealth, Health
from tagger.publish.wire import from_display, snapshot_from_plain
from tagger.snapshot import CULPRIT_DTYPE, PREEMPTION_DTYPE, CgroupTable, Snapshot
from tagger.tags import Tag, TagEvent

from .model import ActionInfo, Frame

log = logging.getLogger(__name__)


class SourceUnavailable(TaggerError):
    """This source cannot run here; the message says what to do instead."""


class FrameSource(Protocol):
    #: what the header calls this source ("demo", "bpf", "socket /run/...")
    name: str

    def next_frame(self) -> Frame | None: ...

    def close(self) -> None: ...


def header_health(health: Health, **extra) -> dict:
    """The header's figures (``events_per_s``, ``drops``, ``rules``, ``actions``,
    ``dry_run``, ``source``) from the agent's :class:`Health`; ``extra`` adds
    or overrides (the source's own ``actions`` count, a ``note``)."""
    coll = health.collector or CollectorHealth()
    drops = None
    if coll.ringbuf_drops is not None or coll.map_full is not None:
        drops = (coll.ringbuf_drops or 0) + (coll.map_full or 0)
    out = {"events_per_s": coll.events_per_second, "drops": drops, "rules": health.rules_loaded,
           "dry_run": health.dry_run, "source": coll.source}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------------------

class FakeSource:
    """Frames scripted by a test: ``push(frame)``; ``next_frame()`` hands them
    out in order, then None.  ``closed`` tells a test the app closed it."""

    name = "fake"

    def __init__(self, frames=()):
        self._frames: deque[Frame] = deque(frames)
        self.closed = False
        self.calls = 0

    def push(self, frame: Frame) -> None:
        self._frames.append(frame)

    def next_frame(self) -> Frame | None:
        self.calls += 1
        return self._frames.popleft() if self._frames else None

    def close(self) -> None:
        self.closed = True


# ---------------------------------------------------------------------------

#: Histogram bucket edges of the demo host: powers of two from 1us to ~1s.
DEMO_EDGES = np.array([2.0 ** k * 1e-6 for k in range(21)])

_SERVICES = ("sshd", "systemd-journald", "nginx", "postgresql", "containerd", "kubelet",
             "dockerd", "chronyd", "rsyslog", "node-exporter", "cron", "dbus")
_APPS = ("web", "api", "checkout", "search", "cache", "batch", "etl", "ml-train", "report",
         "indexer", "worker", "mailer")
_CONTAINERS = ("app", "sidecar", "envoy")


class DemoSource:
    """A synthetic host: systemd services, a user session and Kubernetes pods in
    three QoS classes, with best-effort batch pods that hog CPU and the
    guaranteed pods next to them suffering run-queue latency.  Tags and a
    dry-run cpu.max come from a few built-in rules that mirror the default ones.
    Deterministic for a given ``seed``."""

    name = "demo"

    def __init__(self, cgroups: int = 120, seed: int = 7, interval: float = 1.0, cpus: int = 16):
        self.rng = np.random.default_rng(seed)
        self.interval = interval
        self.cpus = cpus
        paths, names, labels = self._layout(max(8, cgroups))
        self.table = CgroupTable.from_paths(paths, names, labels,
                                            ids=np.arange(1, len(paths) + 1))
        n = len(paths)
        qos = np.array([lab.get("qos", "") for lab in labels])
        leaf = np.array([("container" in lab) or p.endswith((".service", ".scope")) for p, lab in
                         zip(paths, labels)])
        self.guaranteed = (qos == "guaranteed") & leaf
        self.besteffort = (qos == "besteffort") & leaf
        # A handful of CPU hogs, however big the host: that is what makes a neighbour noisy.
        self.noisy = np.zeros(n, bool)
        candidates = np.flatnonzero(self.besteffort)
        self.noisy[self.rng.permutation(candidates)[:max(2, cpus // 3)]] = True
        # Everyone else shares a third of the machine; the hogs take up to
        # another half at the peak of their swing.
        quiet = leaf & ~self.noisy
        weights = np.where(quiet, self.rng.lognormal(0, 1.2, n), 0.0)
        self.base_cpu = weights / max(weights.sum(), 1e-9) * cpus * 0.33
        hogs = self.rng.uniform(1.5, 3.0, self.noisy.sum())
        self.base_cpu[self.noisy] = hogs * min(1.0, cpus * 0.5 / 1.6 / max(hogs.sum(), 1e-9))
        self.has_io = leaf & (self.rng.random(n) < 0.6)
        self.parent = np.array([self.table.index(p.rsplit("/", 1)[0] or "/") if p != "/" else -1
                                for p in paths])
        self.depth = np.array([0 if p == "/" else p.count("/") for p in paths])
        self.seq = 0
        self.t = 1000.0
        self.tags: dict[str, dict[str, Tag]] = {}
        self.closed = False

    def _layout(self, count):
        paths, names, labels = ["/"], ["/"], [{}]

        def add(path, name, **lab):
            paths.append(path)
            names.append(name)
            labels.append(lab)

        add("/system.slice", "system.slice")
        for s in _SERVICES:
            add(f"/system.slice/{s}.service", f"{s}.service", unit=f"{s}.service")
        add("/user.slice", "user.slice")
        add("/user.slice/user-1000.slice", "user-1000.slice")
        add("/user.slice/user-1000.slice/session-3.scope", "session-3.scope", unit="session-3.scope")
        add("/kubepods", "kubepods")
        for q in ("guaranteed", "burstable", "besteffort"):
            add(f"/kubepods/{q}", q, qos=q)
        k = 0
        while len(paths) < count:
            q = ("guaranteed", "burstable", "besteffort")[k % 3]
            app = _APPS[(k // 3) % len(_APPS)]
            ns = ("prod", "shop", "batch", "default")[k % 4] if q != "besteffort" else "batch"
            pod = f"{app}-{k:04x}{'abcdef'[k % 6]}"
            uid = f"pod{k:08x}"
            add(f"/kubepods/{q}/{uid}", pod, pod=pod, namespace=ns, qos=q)
            for c in _CONTAINERS[: 1 + k % 3]:
                if len(paths) >= count:
                    break
                add(f"/kubepods/{q}/{uid}/{c}", f"{ns}/{pod}/{c}", pod=pod, namespace=ns,
                    container=c, qos=q)
            k += 1
        return paths[:count], names[:count], labels[:count]

    def next_frame(self) -> Frame:
        rng, n = self.rng, len(self.table)
        self.seq += 1
        self.t += self.interval
        # The batch pods come and go over a minute (at full strength on ticks 0, 60, ...).
        swing = 1 + 0.6 * math.cos(2 * math.pi * self.seq / 60)
        cpu = self.base_cpu * rng.lognormal(0, 0.15, n)
        cpu[self.noisy] *= swing
        # Keep the leaves within the machine, then let parents carry their
        # children's CPU (cgroup accounting is hierarchical), deepest first.
        cpu *= min(1.0, self.cpus * 0.9 / max(cpu.sum(), 1e-9))
        for depth in range(self.depth.max(), 0, -1):
            rows = np.flatnonzero(self.depth == depth)
            np.add.at(cpu, self.parent[rows], cpu[rows])
        noisy_load = float(cpu[self.noisy].sum()) / self.cpus
        victim_factor = np.where(self.guaranteed, 1 + 14 * noisy_load, 1 + noisy_load)
        p50 = rng.lognormal(math.log(40e-6), 0.4, n) * victim_factor
        p99 = p50 * rng.uniform(6, 14, n)
        wait = cpu * (p50 / 4e-4) * rng.uniform(0.5, 1.5, n)
        io_p99 = np.where(self.has_io, rng.lognormal(math.log(3e-3), 0.7, n), np.nan)
        iops = np.where(self.has_io, rng.lognormal(4, 1.2, n), np.nan)
        events = (cpu * 4000 + 10) * rng.uniform(0.8, 1.2, n)
        cols = {
            "cpu.usage": cpu,
            "cpu.share": cpu / self.cpus,
            "runq.wait": wait,
            "runq.p50": p50,
            "runq.p95": p99 * 0.6,
            "runq.p99": p99,
            "runq.max": p99 * rng.uniform(1.5, 4, n),
            "runq.slowdown": np.where(cpu > 0, (wait + cpu) / np.where(cpu > 0, cpu, 1), np.nan),
            "runq.events": events,
            "sched.preempted": np.where(self.guaranteed, 200 * noisy_load, 20) * rng.uniform(0.5, 1.5, n),
            "io.ops": iops,
            "io.read_bytes": iops * rng.uniform(4096, 65536, n),
            "io.write_bytes": iops * rng.uniform(4096, 131072, n),
            "io.lat.p99": io_p99,
            "io.slowdown": np.where(self.has_io, rng.uniform(1.0, 2.5, n), np.nan),
            "mem.current": np.where(self.base_cpu > 0, rng.lognormal(19, 1.2, n), np.nan),
            "psi.cpu.some": np.clip(wait / 10, 0, 1),
        }
        # Histograms: counts spread around each row's median bucket.
        centre = np.log2(np.maximum(p50, 1e-6) / 1e-6)
        buckets = np.arange(len(DEMO_EDGES) - 1)
        shape = np.exp(-0.5 * ((buckets[None, :] - centre[:, None]) / 1.6) ** 2)
        runq_hist = np.round(shape / shape.sum(1, keepdims=True) * events[:, None])
        io_centre = np.log2(np.nan_to_num(io_p99, nan=1e-6) / 4 / 1e-6)
        io_shape = np.exp(-0.5 * ((buckets[None, :] - io_centre[:, None]) / 1.2) ** 2)
        io_hist = np.where(self.has_io[:, None],
                           np.round(io_shape / io_shape.sum(1, keepdims=True) * np.nan_to_num(iops)[:, None]), 0)
        # Each guaranteed container preempted by, and waiting behind, two noisy pods.
        noisy_rows, victims = np.flatnonzero(self.noisy), np.flatnonzero(self.guaranteed)
        pre, by = np.zeros(0, PREEMPTION_DTYPE), np.zeros(0, CULPRIT_DTYPE)
        if len(noisy_rows) and len(victims):
            v = np.repeat(victims, 2)
            pre = np.zeros(len(v), PREEMPTION_DTYPE)
            pre["victim"] = v
            pre["preemptor"] = rng.choice(noisy_rows, len(v))
            pre["count"] = rng.uniform(20, 400, len(v)) * swing
            by = np.zeros(len(v), CULPRIT_DTYPE)
            by["victim"], by["culprit"] = v, pre["preemptor"]
            by["wait"] = pre["count"] * rng.uniform(2e-5, 2e-4, len(v))     # 20-200 us a preemption
        snap = Snapshot(
            t=self.t, dt=self.interval, cgroups=self.table, columns=cols,
            node={"cpus": float(self.cpus), "cpu.usage": float(cpu[0]),
                  "runq.p99": float(np.nanpercentile(p99, 90)), "events": float(events.sum()),
                  "drops": 0.0, "cgroups": float(n)},
            histograms={"runq.wakeup": runq_hist * 0.7, "runq.preempt": runq_hist * 0.3,
                        "io.lat": io_hist},
            hist_edges=DEMO_EDGES, preemptions=pre, culprits=by, source="demo", seq=self.seq)
        tags, events_out, actions = self._rules(snap)
        health = {"events_per_s": float(events.sum()), "drops": 0, "rules": 4,
                  "actions": sum(len(a) for a in actions.values()), "dry_run": True, "source": "demo"}
        return Frame(snap, tags, actions, events_out, health)

    def _rules(self, snap):
        """The demo's stand-in for the rules engine (same shapes, four rules)."""
        cpu, p99 = snap.columns["cpu.usage"], snap.columns["runq.p99"]
        new: dict[str, dict[str, Tag]] = {}
        for i, path in enumerate(snap.cgroups.paths):
            lab = snap.cgroups.labels[i]
            want = {}
            if lab.get("qos") == "guaranteed" and "container" in lab:
                want["priority"] = ("high", "latency-critical-by-path")
            elif lab.get("qos") == "besteffort" and "container" in lab:
                want["priority"] = ("low", "best-effort-is-low")
            if cpu[i] > 0.8 and "container" in lab:
                want["resource"] = ("cpu-intensive", "cpu-intensive")
            if p99[i] > 2e-3 and "container" in lab:
                want["latency"] = ("runq-starved", "runq-starved")
            if want:
                old = self.tags.get(path, {})
                new[path] = {k: (old[k] if k in old and old[k].value == v else
                                 Tag(k, v, rule, self.t)) for k, (v, rule) in want.items()}
        events = []
        for path in set(self.tags) | set(new):
            before, after = self.tags.get(path, {}), new.get(path, {})
            for k in set(before) | set(after):
                b, a = before.get(k), after.get(k)
                if b == a:
                    continue
                kind = "added" if b is None else "removed" if a is None else "changed"
                events.append(TagEvent(self.t, path, k, a.value if a else None,
                                           b.value if b else None, (a or b).rule, kind))
        self.tags = new
        actions = {}
        for path, tags in new.items():
            if tags.get("priority", Tag("", "", "", math.nan)).value == "low" and "resource" in tags:
                since = max(tags["priority"].since, tags["resource"].since)
                actions[path] = [ActionInfo(path, "cpu.max", "50000 100000", "max 100000",
                                            "cap-low-priority-hogs", since, dry_run=True)]
        return new, sorted(events, key=lambda e: (e.cgroup, e.key)), actions

    def close(self) -> None:
        self.closed = True


# ---------------------------------------------------------------------------

NEEDS_ROOT = ("standalone `tagger top` loads tagger's BPF programs and needs root: "
              "run `sudo tagger top`, or attach to a running agent with "
              "`tagger top --connect /run/tagger/tagger.sock` (or try the keys with `tagger top --demo`)")


class LocalSource:
    """Standalone: the agent's own :class:`~tagger.agent.pipeline.Pipeline` over
    :func:`tagger.telemetry.open_collector`, with a dry-run actuator and no
    publishers: the tags are the agent's, the actions what the rules *would*
    do.  ``ruleset``: the rules loaded (for the colour thresholds too)."""

    name = "local"

    def __init__(self, rules_dir=None):
        from tagger.agent.dryrun import DryRunActuator
        from tagger.agent.pipeline import Pipeline
        from tagger.rules import Engine, load_directory
        from tagger.tags import TagStore

        if os.geteuid() != 0:
            raise SourceUnavailable(NEEDS_ROOT)
        self.note = ""
        if rules_dir is None:
            from tagger.default_rules import DIRECTORY as rules_dir
        self.ruleset = load_directory(rules_dir)  # RulesError lists every problem; the CLI prints it
        self._cm = self._open_collector()
        store = TagStore(history=1000)
        # No policies: they judge each step by what the applied limit changed,
        # and a dry run applies none.
        self._pipeline = Pipeline(self._cm.__enter__(), Engine(self.ruleset, store), store,
                                  DryRunActuator(), dry_run=True, health_parts=self._rules_health)

    @staticmethod
    def _open_collector():
        from tagger.kubelet import KubeletLogs
        from tagger.telemetry import open_collector
        try:
            return open_collector(prefer_bpf=True, workload_names=KubeletLogs())   # pod names
        except PermissionError as err:          # tagger.errors.PermissionDenied subclasses it
            raise SourceUnavailable(f"{err}\n{NEEDS_ROOT}") from None

    def _rules_health(self) -> dict:
        return {"rules_loaded": len(self.ruleset.rules)}

    def next_frame(self) -> Frame:
        report = self._pipeline.tick()
        if self._pipeline.last_error is not None:      # the view shows why
            raise self._pipeline.last_error
        health = header_health(report.health, actions=len(report.actions))
        if report.snapshot.source == "cgroupfs" or health.get("source") == "cgroupfs":
            self.note = "no BPF: cgroupfs figures only (no run-queue or I/O latency)"
        if self.note:
            health["note"] = self.note
        return Frame.build(report.snapshot, report.tags, report.actions, report.events, health)

    def close(self) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(None, None, None)       # detaches the BPF programs


# ---------------------------------------------------------------------------

class SocketSource:
    """``--connect SOCKET``: poll a running agent's API once a tick (snapshot,
    tags, actions, health and the tag events since the last poll).  Polling
    rather than subscribing keeps one connection and one request/response
    rhythm; a Unix-socket round trip is far below a tick."""

    def __init__(self, path: str, timeout: float = 5.0):
        from tagger.client import ApiClient, ApiError
        self._connect = lambda: ApiClient(path, timeout=timeout)
        self.path = path
        self.name = f"socket {path}"
        try:
            self._client = self._connect()
        except ApiError as err:
            raise SourceUnavailable(str(err)) from None
        self._last_t = None
        self._last_seq = None

    def next_frame(self) -> Frame | None:
        """The agent's newest tick, or None if it has not ticked since the last
        call.  A broken connection raises (the view shows it) and the next call
        connects again, so an agent restart costs a tick or two, not the view."""
        if self._client is None:
            self._client = self._connect()
            self._last_seq = None
        try:
            return self._poll(self._client)
        except Exception:                # ApiError, OSError, a garbled frame: start afresh
            self._client.close()
            self._client = None
            raise

    def _poll(self, c) -> Frame | None:
        plain = c.request("snapshot")
        if plain is None:                    # the agent has not finished its first tick
            return None
        snap = snapshot_from_plain(plain)
        if snap.seq and snap.seq == self._last_seq:
            return None                      # polled faster than the agent ticks
        self._last_seq = snap.seq
        tags = from_display(c.request("tags") or {})
        actions = from_display(c.request("actions") or [])
        health = c.request("health") or {}
        since = self._last_t
        events = from_display(c.request("history", since=since, limit=200) if since is not None else
                         c.request("history", limit=200))
        if events:
            self._last_t = max(e.get("t", 0) for e in events)
        elif self._last_t is None:
            self._last_t = snap.t
        info = header_health(Health.from_plain(health))
        info.setdefault("source", snap.source)
        # The agent's health does not count its actions.
        info["actions"] = sum(1 for a in actions if not (isinstance(a, dict) and a.get("dry_run")))
        return Frame.build(snap, tags, actions, events or (), info)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
