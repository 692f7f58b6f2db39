"""Write-ahead under faults: ENOSPC, EIO and torn writes injected at every
write point of the journal (open, write, fsync, rename, the directory's
fsync), with crashes (the agent dropped without reverting) between ticks.
After every knob write and every tick, no knob differs from its original
unless the journal on disk holds that original; a restart without faults
puts everything back.  And the same on a real full filesystem (tmpfs)."""

from __future__ import annotations

import errno
import logging
import os
import random
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tagger.actions import journal as journal_module
from tagger.actions.actuator import Actuator
from tagger.actions.control import Safety
from tagger.actions.journal import JOURNAL_NAME, read_journal
from tagger.cgroups import Layout
from tagger.kernelfs import KernelFS
from tagger.rules.spec import ActionSet, CpuSpec
from tagger.snapshot import Snapshot
from tests.cgroup_fixture import wait_for
from tests.fixtures.kernel_trees import cgroup_v2_tree

CGROUPS = [f"/pods/p{i}" for i in range(6)]
KNOBS = ("cpu.max", "cpu.weight", "cpuset.cpus")
FREE = Safety(max_step=None, cooldown=0)


class FaultyOS:
    """``os`` as the journal module sees it, failing some of its write points:
    ENOSPC, EIO, or a torn write (part of the data written, then ENOSPC)."""

    def __init__(self, rng: random.Random, rate: float):
        self.rng = rng
        self.rate = rate
        self.injected: dict[str, int] = {}

    def __getattr__(self, name):
        return getattr(os, name)

    def _fault(self, point: str) -> str | None:
        if self.rate and self.rng.random() < self.rate:
            kind = self.rng.choice(("ENOSPC", "EIO", "torn") if point == "write" else ("ENOSPC", "EIO"))
            self.injected[f"{point} {kind}"] = self.injected.get(f"{point} {kind}", 0) + 1
            return kind
        return None

    @staticmethod
    def _raise(kind):
        code = errno.EIO if kind == "EIO" else errno.ENOSPC
        raise OSError(code, os.strerror(code))

    def open(self, path, flags, *args, **kw):
        # The journal's temporary file and its directory (not the lock file).
        if flags & os.O_TRUNC or flags & os.O_DIRECTORY:
            kind = self._fault("open")
            if kind:
                self._raise(kind)
        return os.open(path, flags, *args, **kw)

    def write(self, fd, data):
        kind = self._fault("write")
        if kind == "torn":
            os.write(fd, bytes(data[: self.rng.randrange(len(data) + 1)]))
            self._raise("ENOSPC")
        if kind:
            self._raise(kind)
        return os.write(fd, data)

    def fsync(self, fd):
        kind = self._fault("fsync")
        if kind:
            self._raise(kind)
        return os.fsync(fd)

    def replace(self, src, dst):
        kind = self._fault("replace")
        if kind:
            self._raise(kind)
        return os.replace(src, dst)

    @property
    def total(self) -> int:
        return sum(self.injected.values())


class Checked(KernelFS):
    """The fixture tree, checking the write-ahead promise after every knob write."""

    def __init__(self, root, journal_path):
        super().__init__(root)
        self.journal_path = journal_path
        self.originals: dict[tuple[str, str], str] = {}
        self.reader: Actuator | None = None
        self.changed_writes = 0

    def write_text(self, p, value):
        super().write_text(p, value)
        if self.reader is not None:
            self.changed_writes += check_promise(self)


def check_promise(fs: Checked) -> int:
    """Assert: every knob that differs from its original has that original in
    the journal on disk.  Returns how many knobs differ."""
    on_disk = {(e.cgroup, e.knob): e.original for e in read_journal(fs.journal_path).entries}
    differ = 0
    for (cgroup, knob), original in fs.originals.items():
        now = fs.reader.control_point(cgroup, knob).read()
        if now != original:
            differ += 1
            assert on_disk.get((cgroup, knob)) == original, (
                f"{cgroup} {knob} is {now!r} (original {original!r}) with no durable journal record "
                f"(on disk: {on_disk.get((cgroup, knob))!r})")
    return differ


def desired_at_random(rng: random.Random) -> dict:
    out = {}
    for cg in CGROUPS:
        if rng.random() < 0.3:
            continue
        cpu = CpuSpec(max=rng.choice((None, 0.2, 0.5, 1.0)), weight=rng.choice((None, 10, 50)),
                      cpuset=rng.choice((None, "0", "1")))
        out[cg] = [ActionSet(f"rule-{rng.randrange(3)}", cpu=cpu)]
    return out


def test_no_knob_changes_without_a_durable_original_under_faults(tmp_path, monkeypatch):
    rng = random.Random(1913)
    cgroup_v2_tree(tmp_path, cgroups=("/pods", *CGROUPS))
    state = tmp_path / "state"
    fs = Checked(tmp_path, state / JOURNAL_NAME)
    layout = Layout.detect(fs)
    faults = FaultyOS(rng, rate=0.0)
    monkeypatch.setattr(journal_module, "os", faults)

    def start():
        return Actuator(layout, fs=fs, state_dir=state, safety=FREE)

    act = start()
    fs.reader = act
    fs.originals = {(cg, k): act.control_point(cg, k).read() for cg in CGROUPS for k in KNOBS}
    faults.rate = 0.25
    failures = crashes = ticks = 0
    while faults.total < 250 or ticks < 100:
        assert ticks < 5000, f"only {faults.total} faults in {ticks} ticks"
        before = act.journal.write_failures
        try:
            act.apply(Snapshot.synthetic([]), desired_at_random(rng))
        except AssertionError:
            raise
        except Exception as err:          # the daemon logs a failed tick and carries on
            pytest.fail(f"apply raised under a journal fault: {err!r}")
        failures += act.journal.write_failures - before
        ticks += 1
        check_promise(fs)
        if rng.random() < 0.1:
            # kill -9: no revert; the next agent starts from the journal on disk.
            act.journal.unlock()
            act = start()
            fs.reader = act
            act.recover()
            check_promise(fs)
            crashes += 1
    assert failures > 50 and crashes > 5
    assert fs.changed_writes > 0, "the faults left no knob changed: nothing was tested"
    # Every write point was hit.
    points = {k.split(" ")[0] for k in faults.injected}
    assert points == {"open", "write", "fsync", "replace"}, faults.injected
    assert any(k.endswith("torn") for k in faults.injected)
    # The disk is well again: a restart after a crash puts every knob back.
    faults.rate = 0.0
    act.journal.unlock()
    act = start()
    fs.reader = act
    act.recover(restore=True)
    act.close()
    for (cgroup, knob), original in fs.originals.items():
        assert act.control_point(cgroup, knob).read() == original, (cgroup, knob)


def test_a_failed_journal_write_leaves_the_knob_untouched_and_is_logged_once(tmp_path, monkeypatch, caplog):
    cgroup_v2_tree(tmp_path, cgroups=("/pods", *CGROUPS))
    fs = KernelFS(tmp_path)
    act = Actuator(Layout.detect(fs), fs=fs, state_dir=tmp_path / "state", safety=FREE)
    faults = FaultyOS(random.Random(0), rate=1.0)     # the disk is full from now on
    monkeypatch.setattr(journal_module, "os", faults)
    want = {cg: [ActionSet("cap", cpu=CpuSpec(max=0.5))] for cg in CGROUPS}
    for _ in range(5):
        assert act.apply(Snapshot.synthetic([]), want) == []
    for cg in CGROUPS:
        assert fs.read_text(f"/sys/fs/cgroup{cg}/cpu.max").strip() == "max 100000"
    assert act.entries == {} and act.journal.write_failures == 5 * len(CGROUPS)
    assert all("journal not written" in m for m in act.refusals().values())
    assert len(act.refusals()) == len(CGROUPS)
    assert caplog.text.count("journal not written") == 1
    faults.rate = 0.0                              # space again: the knobs follow
    act.apply(Snapshot.synthetic([]), want)
    assert fs.read_text(f"/sys/fs/cgroup{CGROUPS[0]}/cpu.max").strip() == "50000 100000"
    assert "writable again" in caplog.text and act.refusals() == {}
    act.close()


# --- a real full filesystem -----------------------------------------------------------------

@pytest.fixture
def full_tmpfs(tmp_path):
    """A 16 KiB tmpfs (the issue's reproduction); unmounted on every exit path."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory):
    """Fill the filesystem: ENOSPC from here on."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 512):
            pass
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.mark.root
def test_full_state_filesystem_keeps_tagging_changes_nothing_and_exports_the_failures(
        tmp_path, full_tmpfs, caplog):
    from tagger.agent.config import Config
    from tagger.agent.daemon import Daemon
    from tests.test_daemon import FakeCollector

    cgroup_v2_tree(tmp_path, cgroups=("/hog",))
    fs = KernelFS(tmp_path)
    state = full_tmpfs / "state"
    act = Actuator(Layout.detect(fs), fs=fs, state_dir=state, safety=FREE)
    fill(full_tmpfs)               # filled after start, as in the issue
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10.yaml").write_text("""
rules:
  - name: hog
    match: {cgroup: "/**"}
    when: cpu.usage > 0.8
    tags: {resource: cpu-intensive}
  - name: cap-hogs
    match: {tags: {resource: cpu-intensive}}
    actions:
      cpu: {max: 0.5, weight: 10}
""")
    daemon = Daemon(Config(rules=str(rules), interval=0.05, socket=None, metrics="127.0.0.1:0",
                           state_dir=str(state), check_ownership=False),
                    fs=fs, collector=FakeCollector({"/hog": 1.5}), actuator=act)
    import threading
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: daemon.cost.ticks >= 5, timeout=20, what="five ticks")
        # Tagging carries on; the knobs do not change; the failures are exported.
        assert daemon.store.current()["/hog"]["resource"].value == "cpu-intensive"
        assert fs.read_text("/sys/fs/cgroup/hog/cpu.max").strip() == "max 100000"
        assert fs.read_text("/sys/fs/cgroup/hog/cpu.weight").strip() == "100"
        assert daemon.health()["journal_write_failures"] >= 5
        with urllib.request.urlopen(daemon.metrics.url, timeout=5) as resp:
            fams = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
        assert fams["tagger_journal_write_failures"].samples[0].value >= 5
        logged = [r for r in caplog.records if "journal not written" in r.getMessage()]
        assert len(logged) == 1 and logged[0].levelno == logging.ERROR      # once per outage
        assert not (state / JOURNAL_NAME).exists() or not read_journal(state / JOURNAL_NAME).entries
        os.unlink(full_tmpfs / "filler")         # space again
        wait_for(lambda: fs.read_text("/sys/fs/cgroup/hog/cpu.max").strip() != "max 100000",
                 timeout=20, what="the cap, once the journal can be written")
        assert read_journal(state / JOURNAL_NAME).entries
    finally:
        daemon.stop()
        thread.join(timeout=20)
    assert fs.read_text("/sys/fs/cgroup/hog/cpu.max").strip() == "max 100000"


# --- a dry run after a crash ------------------------------------------------------------------

def test_dry_run_after_a_crash_names_the_leftovers_says_how_and_marks_its_exports(tmp_path, caplog):
    import threading

    from tagger.actions.journal import Entry, Journal
    from tagger.agent.config import Config
    from tagger.agent.daemon import Daemon
    from tests.test_daemon import FakeCollector

    cgroup_v2_tree(tmp_path, cgroups=("/hog", "/left"))
    fs = KernelFS(tmp_path)
    state = tmp_path / "state"
    # What a crashed run left: /left capped, its original in the journal.
    fs.write_text("/sys/fs/cgroup/left/cpu.max", "20000 100000")
    Journal(state).put(Entry("/left", "cpu.max", "max 100000", "20000 100000", "old-rule"))
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10.yaml").write_text("""
rules:
  - name: hog
    match: {cgroup: "/hog"}
    actions:
      cpu: {max: 0.5}
""")
    act = Actuator(Layout.detect(fs), fs=fs, state_dir=state, dry_run=True, safety=FREE)
    daemon = Daemon(Config(rules=str(rules), interval=0.05, socket=None, metrics="127.0.0.1:0",
                           state_dir=str(state), dry_run=True, check_ownership=False),
                    fs=fs, collector=FakeCollector({"/hog": 1.5, "/left": 0.0}), actuator=act)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: daemon.cost.ticks >= 2, timeout=20, what="two ticks")
        with urllib.request.urlopen(daemon.metrics.url, timeout=5) as resp:
            fams = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    finally:
        daemon.stop()
        thread.join(timeout=20)
    # Reported, with the way to put it back; nothing written.
    assert "/left cpu.max was left changed by a previous run" in caplog.text
    assert f"tagger actions --restore --state-dir {state}" in caplog.text
    assert fs.read_text("/sys/fs/cgroup/left/cpu.max").strip() == "20000 100000"
    assert fs.read_text("/sys/fs/cgroup/hog/cpu.max").strip() == "max 100000"
    assert [e.cgroup for e in read_journal(state / JOURNAL_NAME).entries] == ["/left"]
    # Everything exported says dry run.
    assert fams["tagger_dry_run"].samples[0].value == 1
    assert fams["tagger_journal_leftovers"].samples[0].value == 1
    limits = [s for name in ("tagger_cpu_max_cpus", "tagger_action") for s in fams[name].samples]
    assert limits and all(s.labels["dry_run"] == "true" for s in limits)


# --- SIGTERM at any moment of start-up -------------------------------------------------------

def _catches_sigterm(pid: int) -> bool:
    """SigCgt of /proc/PID/status has SIGTERM: tagger's first handler is in."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (15 - 1)))
    except FileNotFoundError:
        pass
    return False


def _bpf_objects(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "bpf" in link:
            out.append(link)
    return out


@pytest.mark.bpf
def test_sigterm_at_any_moment_of_start_up_reverts_what_a_crash_left(make_cgroup, tmp_path):
    import signal
    import sys
    import time

    from tagger.actions.journal import Entry, Journal
    from tests.actuator_helpers import REPO

    cg = make_cgroup("left", controllers=("cpu", "cpuacct"))
    host = Actuator(Layout.detect(), state_dir=tmp_path / "unused", dry_run=True)
    quota = host.control_point(cg.path, "cpu.max")
    original = quota.read()
    rules = tmp_path / "rules"
    rules.mkdir(mode=0o755)
    (rules / "10.yaml").write_text('rules:\n  - name: nothing\n    match: {cgroup: "/nowhere"}\n'
                                   '    tags: {x: y}\n')
    os.chmod(rules / "10.yaml", 0o644)
    state = tmp_path / "state"

    def crash_leftover():
        # What a run killed with -9 leaves: the knob changed, its original journaled.
        Journal(state).put(Entry(cg.path, "cpu.max", original, "20000 100000", "old-rule"))
        quota.write("20000 100000")

    def start():
        log = open(tmp_path / "stderr", "w+")
        proc = subprocess.Popen([sys.executable, "-m", "tagger.cli.main", "run", "--rules", str(rules),
                                 "--state-dir", str(state), "--socket", "off", "--metrics", "off",
                                 "--interval", "1s"], cwd=REPO, stderr=log)
        # From tagger's first instruction on (before it, the interpreter is starting).
        wait_for(lambda: _catches_sigterm(proc.pid) or proc.poll() is not None, timeout=30,
                 interval=0.001, what="tagger's signal handlers")
        # The handlers come before BPF set-up (they used to come after it).
        assert proc.poll() is None and _bpf_objects(proc.pid) == []
        return proc, log

    # How long start-up takes here: until the first tick is logged.
    crash_leftover()
    proc, log = start()
    t0 = time.monotonic()
    try:
        wait_for(lambda: "running" in (log.seek(0) or log.read()), timeout=60, interval=0.005,
                 what="tagger running")
        startup = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert quota.read() == original

    rng = random.Random(143)
    # 0: while tagger is still importing (the early handlers); then anywhere in start-up.
    moments = [0.0, 0.02, *sorted(rng.uniform(0, startup) for _ in range(6))]
    for delay in moments:
        crash_leftover()
        proc, log = start()
        time.sleep(delay)         # the moment under test, not a synchronisation
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.seek(0)
        assert code == 0, f"SIGTERM {delay:.3f}s into start-up (of {startup:.3f}s): exit {code}\n{log.read()}"
        assert quota.read() == original, f"SIGTERM {delay:.3f}s into start-up: not reverted"
        assert not read_journal(state / JOURNAL_NAME).entries
