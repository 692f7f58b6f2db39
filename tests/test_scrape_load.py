"""The tick loop is protected from its readers (issue 13, item 7): a crowd of
scrapers hammering /metrics of a large node does not cost the loop its ticks,
and the systemd watchdog is fed only while ticks complete.

Ticks are counted, not timed: the daemon counts the ticks it ran and the ones
it had to skip because a tick overran its interval.  The scrapers are a real
child process (its own GIL, as Prometheus is) fetching real HTTP; the node is a
fixture collector with many cgroups (the kernel part is not what is tested)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from tagger.agent.config import Config
from tagger.agent.daemon import Daemon
from tagger.sdnotify import Notifier
from tagger.snapshot import Snapshot
from tests.cgroup_fixture import wait_for
from tests.test_daemon import RecordingActuator

CGROUPS = 3000
COLUMNS = ("cpu.usage", "cpu.share", "runq.wait", "runq.p99", "io.ops", "mem.current")
INTERVAL = 0.25
WINDOW = 3.0               # seconds of scraping; the loop should run WINDOW / INTERVAL ticks
SCRAPERS = 8

RULES = """
rules:
  - name: busy
    match: {cgroup: "/kubepods/**"}
    when: cpu.usage > 0.5 and runq.p99 > 0.001
    tags: {resource: cpu-intensive}
"""


class ManyCgroups:
    """A node of CGROUPS cgroups with new figures every tick.  Like the real
    collector it makes system calls each tick (the real one reads cgroupfs
    files): each gives up the GIL, and getting it back from a thread that
    holds it for long (a scrape rendering) costs up to a 5 ms switch interval."""

    SYSCALLS = 300

    def __init__(self, n=CGROUPS):
        self.paths = [f"/kubepods/pod{i // 4:05d}/container{i % 4}" for i in range(n)]
        self.rng = np.random.default_rng(13)
        self.seq = 0

    def tick(self):
        self.seq += 1
        for _ in range(self.SYSCALLS):
            os.stat("/proc/self")
        cols = {c: self.rng.random(len(self.paths)) for c in COLUMNS}
        snap = Snapshot.synthetic(self.paths, cols, t=self.seq * INTERVAL, dt=INTERVAL)
        snap.seq = self.seq
        return snap

    def health(self):
        return {"source": "synthetic"}

    def close(self):
        pass


class FailingTicks(ManyCgroups):
    def tick(self):
        self.seq += 1
        raise OSError("the collector is broken")


@pytest.fixture
def rules_dir(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "busy.yaml").write_text(RULES)
    return d


class RunningDaemon:
    def __init__(self, tmp_path, rules_dir, collector, notifier=None, metrics="127.0.0.1:0"):
        config = Config(rules=str(rules_dir), interval=INTERVAL, socket=None, metrics=metrics,
                        state_dir=str(tmp_path / "state"), check_ownership=False)
        self.daemon = Daemon(config, collector=collector, actuator=RecordingActuator(), notifier=notifier)
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.daemon.run()
        except BaseException as err:
            self.error = err

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: self.daemon.ready or self.error, timeout=20, what="daemon ready")
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc):
        self.daemon.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "daemon did not stop"


SCRAPER = textwrap.dedent("""
    import sys, threading, time, urllib.request
    url, n = sys.argv[1], int(sys.argv[2])
    done = [0]
    def scrape():
        while True:
            try:
                req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})   # as Prometheus asks
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()
                done[0] += 1
            except OSError:
                pass
    for _ in range(n):
        threading.Thread(target=scrape, daemon=True).start()
    while not done[0]:
        time.sleep(0.01)
    print("scraping", flush=True)
    sys.stdin.read()                  # until the test closes our stdin
    print(done[0], flush=True)
""")


def _kept_its_ticks(ticks: int, overruns: int) -> bool:
    """A window of WINDOW seconds in which the loop ran its ticks: at most one
    overran, at most one missed."""
    return overruns <= 1 and ticks >= int(WINDOW / INTERVAL) - 1


def test_scrapers_do_not_cost_the_loop_its_ticks(tmp_path, rules_dir):
    with RunningDaemon(tmp_path, rules_dir, ManyCgroups()) as run:
        daemon = run.daemon
        wait_for(lambda: daemon.cost.ticks >= 2, timeout=20, what="two ticks")
        scrapers = subprocess.Popen([sys.executable, "-c", SCRAPER, daemon.metrics.url, str(SCRAPERS)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert scrapers.stdout.readline().strip() == "scraping"
            # Not a sleep standing in for synchronisation: the window is what is
            # measured (how many ticks the loop ran in it, and skipped).  Another
            # tenant taking a CPU for seconds makes ticks overrun with or without
            # scrapers, so one window of at most three must run its ticks; a loop
            # the scrapers starve fails all three.
            windows = []
            for _ in range(3):
                ticks0, overruns0 = daemon.cost.ticks, daemon.cost.overruns
                time.sleep(WINDOW)
                windows.append((daemon.cost.ticks - ticks0, daemon.cost.overruns - overruns0))
                if _kept_its_ticks(*windows[-1]):
                    break
            ticks, overruns = windows[-1]
            renders = daemon.metrics.exposition.renders
            total_ticks = daemon.cost.ticks
        finally:
            scrapers.stdin.close()
            scraped = int(scrapers.stdout.readline() or 0)
            scrapers.wait(timeout=30)
    expected = int(WINDOW / INTERVAL)
    assert scraped >= SCRAPERS, f"the scrapers fetched only {scraped} expositions"
    assert overruns <= 1, f"ticks overran with {SCRAPERS} scrapers: (ran, overran) per window {windows}"
    assert ticks >= expected - 1, f"of {expected} ticks, (ran, overran) per window {windows}"
    # Built once per tick at most (plus a first one), however many scrapes.
    assert renders <= total_ticks + 1 < scraped, (renders, total_ticks, scraped)


def test_watchdog_is_fed_only_while_ticks_complete(tmp_path, rules_dir):
    """Every tick failing: READY goes out (the loop runs) but never WATCHDOG=1,
    so systemd's WatchdogSec= restarts the agent; healthy ticks feed it."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)

    def received():
        got = []
        try:
            while True:
                got += sock.recv(4096).decode().split("\n")
        except TimeoutError:
            return got

    try:
        for collector, fed in ((FailingTicks(10), False), (ManyCgroups(10), True)):
            notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(int(INTERVAL * 1e6))})
            with RunningDaemon(tmp_path, rules_dir, collector, notifier, metrics=None) as run:
                wait_for(lambda: run.daemon.cost.ticks + run.daemon.cost.errors >= 6, timeout=20,
                         what="six ticks")
            got = received()
            assert "READY=1" in got
            assert ("WATCHDOG=1" in got) is fed, got
    finally:
        sock.close()


def test_cached_exposition_carries_what_generate_latest_does():
    """The exposition served from the cache (per-cgroup families written
    directly) parses to the same families and samples as prometheus_client's
    own rendering of the collector, awkward label values and numbers included."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from tagger.publish.exposition import Exposition
    from tagger.publish.prometheus import TaggerCollector
    from tagger.snapshot import CgroupTable

    paths = ["/a", '/q"uote', "/back\\slash", "/new\nline", "/kubepods/pod1/c1",
             b"/x\xfe\xff".decode("utf-8", "surrogateescape")]           # a name that is not UTF-8
    labels = [{}, {}, {}, {}, {"namespace": "web", "pod": 'front"1', "container": "nginx"}, {}]
    cols = {"cpu.usage": [1.5, float("nan"), float("inf"), 2.5e9, 1e-7, 0.5],
            "mem.current": [1024.0, 3e12, 0.0, float("nan"), 17.0, 1.0],
            "runq.p99": [0.002] * 6}
    snap = Snapshot(t=1.0, dt=1.0, cgroups=CgroupTable.from_paths(paths, labels=labels),
                    columns={k: np.asarray(v) for k, v in cols.items()}, node={"cpus": 2.0})
    collector = TaggerCollector(export=["/**"])             # every row, whatever its CPU
    collector.update(snap, {}, [], {"ticks": 3})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    def parsed(text):
        return {f.name: (f.type, f.documentation, sorted((s.name, sorted(s.labels.items()), s.value)
                                                         for s in f.samples))
                for f in text_string_to_metric_families(text)}

    served = Exposition(collector, registry).get()
    assert parsed(served.decode()) == parsed(generate_latest(registry).decode())
    assert len(parsed(served.decode())["tagger_mem_current_bytes"][2]) == 5    # the NaN is absent
    assert len(parsed(served.decode())["tagger_cgroup_cpu_seconds"][2]) == 5   # never measured: absent


def test_a_stuck_loop_still_has_its_last_tick_served():
    """Rendering is the loop's job, but when the loop stops publishing (stuck
    in a tick) a scrape renders the last tick itself rather than serving an
    older text for ever."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families

    from tagger.publish.exposition import Exposition
    from tagger.publish.prometheus import TaggerCollector

    now = [0.0]
    collector = TaggerCollector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    exposition = Exposition(collector, registry, max_wait=0.05, clock=lambda: now[0])

    def ticks_served():
        fams = {f.name: f for f in text_string_to_metric_families(exposition.get().decode())}
        return fams["tagger_ticks"].samples[0].value

    def tick(n):
        collector.update(Snapshot.synthetic(["/a"], {"cpu.usage": [0.5]}), {}, [], {"ticks": n})
        now[0] += 1.0

    tick(1)
    tick(2)
    assert ticks_served() == 2
    tick(3)                      # a scrape asked: the loop renders this one
    assert exposition.renders == 2 and ticks_served() == 3
    tick(4)                      # scraped lately: the loop renders every tick...
    assert exposition.renders == 3
    now[0] += 100.0              # ...while scrapes keep coming; then the loop hangs
    tick(5)
    assert exposition.renders == 4 and ticks_served() == 5
    now[0] += 200.0              # no scrape for 200 s: ticks are not rendered
    tick(6)
    tick(7)
    assert exposition.renders == 4
    now[0] += 10.0
    assert ticks_served() == 7 and exposition.renders == 5


def test_a_scrape_while_scraped_lately_is_served_at_once():
    """While scrapes come (Prometheus every 15-60 s), the loop renders each
    tick as it publishes it and a scrape is answered from the cache without
    waiting for the next tick (issue 17: a scrape <= 100 ms); a first scrape
    after a quiet spell waits for the loop's render of the next tick."""
    import threading

    from prometheus_client import CollectorRegistry

    from tagger.publish.exposition import Exposition
    from tagger.publish.prometheus import TaggerCollector

    now = [0.0]
    collector = TaggerCollector()
    exposition = Exposition(collector, CollectorRegistry(auto_describe=False), max_wait=30.0,
                            clock=lambda: now[0])

    def tick(n):
        now[0] += 1.0                 # a tick a second (renders are spaced to 20% of the time)
        collector.update(Snapshot.synthetic(["/a"], {"cpu.usage": [0.5]}), {}, [], {"ticks": n})

    tick(1)
    tick(2)
    exposition.get()                  # no loop activity yet to wait for: rendered here
    tick(3)                           # scraped lately: rendered as it is published
    assert exposition.renders == 2
    done = threading.Event()
    threading.Thread(target=lambda: (exposition.get(), done.set()), daemon=True).start()
    assert done.wait(10), "a scrape waited for a tick although the cache was fresh"
    now[0] += 1000.0                  # a quiet spell: the next scrape asks the loop
    tick(4)
    assert exposition.renders == 2
    waiter = threading.Event()
    threading.Thread(target=lambda: (exposition.get(), waiter.set()), daemon=True).start()
    wait_for(lambda: exposition._wanted, timeout=10, what="the scrape to ask for a render")
    assert not waiter.is_set()
    tick(5)
    assert waiter.wait(10) and exposition.renders == 3
