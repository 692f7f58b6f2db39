"""tagger top as a real process on a pseudo-terminal: every way out (q,
Ctrl+C, SIGTERM, SIGHUP... as far as a pty can tell) leaves the terminal as it
found it; sources that cannot run say why before the terminal is taken; the
socket source reads a real agent socket (tagger.publish.socket)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest
from click.testing import CliRunner

from tagger.cli.top.app import top
from tagger.cli.top.sources import LocalSource, SocketSource, SourceUnavailable
from tagger.publish.report import Health, TickReport

ALT_SCREEN_ON, ALT_SCREEN_OFF, CURSOR_ON = b"\x1b[?1049h", b"\x1b[?1049l", b"\x1b[?25h"


class TopOnPty:
    """``tagger top ARGS`` with a pty as its controlling terminal."""

    def __init__(self, *args, rows=30, cols=120):
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.attrs_before = termios.tcgetattr(self.slave)
        slave = self.slave

        def make_controlling_tty():
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        env = {**os.environ, "TERM": "xterm-256color"}
        env.pop("TEXTUAL", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "tagger.cli.main", "top", *args],
                                     stdin=slave, stdout=slave, stderr=slave, env=env,
                                     preexec_fn=make_controlling_tty, close_fds=True)
        self.output = bytearray()

    def read_until(self, predicate, timeout=30.0) -> bool:
        """Read output until ``predicate(output)`` or the deadline; True if it held."""
        deadline = time.monotonic() + timeout
        while not predicate(bytes(self.output)):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:            # EIO: the child closed the terminal
                    return predicate(bytes(self.output))
                self.output += chunk
            elif self.proc.poll() is not None:
                return predicate(bytes(self.output))
        return True

    def finish(self, timeout=30.0) -> int:
        """Wait for exit while draining the pty (a full pty would block the child)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read_until(lambda out: False, timeout=0.2)
        self.read_until(lambda out: False, timeout=0.2)
        if self.proc.poll() is None:
            self.proc.kill()
            raise AssertionError(f"tagger top did not exit; last output: {bytes(self.output[-300:])!r}")
        return self.proc.returncode

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def top_on_pty():
    made = []

    def start(*args):
        t = TopOnPty(*args)
        made.append(t)
        return t

    yield start
    for t in made:
        t.close()


def _started(t: TopOnPty):
    # Start-up (imports, BPF load and verification) takes a minute under TCG.
    assert t.read_until(lambda out: b"NAME" in out and b"cgroups" in out, timeout=120), \
        f"no table drawn (exit status {t.proc.poll()}); output: {bytes(t.output[-500:])!r}"


@pytest.mark.parametrize("how", ["q", "ctrl+c", "SIGTERM", "SIGHUP"])
def test_every_exit_path_restores_the_terminal(top_on_pty, how):
    t = top_on_pty("--demo", "60", "--interval", "100ms")
    _started(t)
    assert ALT_SCREEN_ON in t.output
    assert termios.tcgetattr(t.slave) != t.attrs_before      # raw mode while running
    if how == "q":
        os.write(t.master, b"q")
    elif how == "ctrl+c":
        os.write(t.master, b"\x03")
    else:
        t.proc.send_signal(getattr(signal, how))
    rc = t.finish()
    assert rc == 0, bytes(t.output[-500:])
    tail = bytes(t.output[t.output.rfind(ALT_SCREEN_ON):])
    assert ALT_SCREEN_OFF in tail and CURSOR_ON in tail
    assert termios.tcgetattr(t.slave) == t.attrs_before       # cooked mode, echo back on


@pytest.mark.bpf
def test_standalone_on_a_terminal_draws_the_host_and_quits_cleanly(top_on_pty):
    if os.geteuid() != 0:
        pytest.skip("standalone top loads BPF programs: needs root")
    t = top_on_pty("--interval", "200ms")
    _started(t)
    assert t.read_until(lambda out: out.count(b"events/s") >= 3), "the header never refreshed"
    os.write(t.master, b"q")
    assert t.finish() == 0
    assert ALT_SCREEN_OFF in t.output[t.output.rfind(ALT_SCREEN_ON):]
    assert termios.tcgetattr(t.slave) == t.attrs_before


def test_missing_socket_is_reported_before_the_terminal_is_taken(top_on_pty, tmp_path):
    t = top_on_pty("--connect", str(tmp_path / "absent.sock"))
    rc = t.finish()
    assert rc == 1
    assert b"no such socket" in t.output
    assert ALT_SCREEN_ON not in t.output
    assert termios.tcgetattr(t.slave) == t.attrs_before


# -- sources that cannot run say what to do ----------------------------------------------------

def test_standalone_without_root_says_so(monkeypatch):
    import types
    fake = types.ModuleType("tagger.telemetry")
    fake.open_collector = lambda **kw: pytest.fail("must not load BPF without root")
    monkeypatch.setitem(sys.modules, "tagger.telemetry", fake)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SourceUnavailable, match=r"needs root.*sudo tagger top.*--connect"):
        LocalSource()


def test_standalone_collector_refusal_is_reported_with_the_way_out(monkeypatch):
    import types

    from tagger.errors import PermissionDenied
    fake = types.ModuleType("tagger.telemetry")

    def refuse(**kw):
        raise PermissionDenied(1, "bpf(BPF_PROG_LOAD): permission denied (run as root?)")

    fake.open_collector = refuse
    monkeypatch.setitem(sys.modules, "tagger.telemetry", fake)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    result = CliRunner().invoke(top, [])
    assert result.exit_code == 1
    assert "BPF_PROG_LOAD" in result.output and "sudo tagger top" in result.output


def test_connect_to_a_missing_socket_fails_cleanly(tmp_path):
    result = CliRunner().invoke(top, ["--connect", str(tmp_path / "nope.sock")])
    assert result.exit_code == 1
    assert "no such socket" in result.output and "tagger run" in result.output


def test_bad_interval_is_refused():
    result = CliRunner().invoke(top, ["--demo", "5", "--interval", "10 parsecs"])
    assert result.exit_code == 2
    assert "--interval" in result.output


# -- the socket source against a real agent socket ---------------------------------------------

def test_socket_source_reads_snapshot_tags_actions_and_events(tmp_path):
    from tagger.publish.socket import ApiServer
    from tagger.cli.top.sources import DemoSource
    from tagger.tags import Tag, TagEvent

    frame = DemoSource(40, seed=9).next_frame()
    snap = frame.snapshot
    path = snap.cgroups.paths[5]
    tags = {path: {"priority": Tag("priority", "low", "best-effort", snap.t - 3)}}
    event = TagEvent(snap.t, path, "priority", "low", None, "best-effort", "added")
    action = {"cgroup": path, "knob": "cpu.max", "value": "50000 100000", "original": "max 100000",
              "rule": "cap-low-priority-hogs", "since": snap.t, "dry_run": False}
    health = {"events_per_second": 5000.0, "ringbuf_drops": 0, "map_full": 0, "rules_loaded": 9,
              "actions": 1, "dry_run": False, "source": "bpf"}
    with ApiServer(str(tmp_path / "tagger.sock"), allowed_uids={os.geteuid()}) as server:
        source = SocketSource(server.path)
        try:
            server.publish(TickReport(snap, tags, [event], [action], Health.from_plain(health)))
            got = None
            deadline = time.monotonic() + 10
            while got is None and time.monotonic() < deadline:   # the server thread applies it
                got = source.next_frame()
            assert got is not None
            assert got.snapshot.cgroups.paths == snap.cgroups.paths
            assert got.tags[path]["priority"].rule == "best-effort"
            assert got.actions[path][0].value == "50000 100000"
            assert [e.kind for e in got.events] == ["added"]
            assert got.health["rules"] == 9 and got.health["dry_run"] is False
            assert source.next_frame() is None                     # same tick: nothing new
        finally:
            source.close()


# -- standalone on the real kernel ---------------------------------------------------------------

@pytest.mark.bpf
def test_standalone_shows_a_busy_cgroup_on_the_real_kernel(make_cgroup):
    """A CPU hog in its own cgroup shows up with about one CPU, found by the
    filter; quitting detaches the BPF programs (the source is closed)."""
    import asyncio

    from tagger.cli.top.app import TopApp
    from tests.test_top_app import row_names

    if os.geteuid() != 0:
        pytest.skip("standalone top loads BPF programs: needs root")
    hog = make_cgroup("top-hog")
    hog.spawn([sys.executable, "-c", "while True: pass"])
    source = LocalSource()

    async def go():
        app = TopApp(source, interval=None)
        async with app.run_test(size=(140, 30)) as pilot:
            app.sample_now()
            await pilot.press("slash", *hog.path.rsplit("/", 1)[-1], "enter")
            deadline = time.monotonic() + 15
            cpu = 0.0
            while time.monotonic() < deadline:
                await pilot.pause(0.25)        # a tick's figures need real time to pass
                app.sample_now()
                cpu = app.model.frame.snapshot.value(hog.path, "cpu.usage")
                if cpu > 0.3:
                    break
            assert cpu > 0.3, f"hog at {cpu} CPUs"
            assert row_names(app) == [hog.path.rsplit("/", 1)[-1]]
            assert app.model.frame.snapshot.source == "bpf"
            assert "runq p99" in str(app.query_one("#header").content)
            await pilot.press("q")
        assert source._cm is None               # closed: BPF detached

    try:
        asyncio.run(go())
    finally:
        hog.stop()
        source.close()


def test_socket_source_reconnects_after_the_agent_restarts(tmp_path):
    from tagger.client import ApiError
    from tagger.publish.socket import ApiServer
    from tagger.cli.top.sources import DemoSource

    demo = DemoSource(10, seed=4)
    path = str(tmp_path / "tagger.sock")

    def first_frame(source):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:       # the server thread applies a publish
            frame = source.next_frame()
            if frame is not None:
                return frame
        raise AssertionError("no frame from the agent")

    server = ApiServer(path, allowed_uids={os.geteuid()}).start()
    source = SocketSource(path)
    try:
        server.publish(TickReport(demo.next_frame().snapshot, {}, [], [], Health()))
        assert first_frame(source).snapshot.seq == 1
        server.close()
        with pytest.raises((ApiError, OSError)):
            source.next_frame()
        with pytest.raises(ApiError, match="no such socket"):
            source.next_frame()                   # still down: the error says so
        server = ApiServer(path, allowed_uids={os.geteuid()}).start()
        server.publish(TickReport(demo.next_frame().snapshot, {}, [], [], Health()))
        assert first_frame(source).snapshot.seq == 2
    finally:
        source.close()
        server.close()


def test_standalone_runs_the_packaged_rules_and_notes_the_cgroupfs_fallback(monkeypatch):
    """LocalSource over a stand-in collector: the real rules engine tags from the
    packaged rules, and a cgroupfs-only collector is called out."""
    import types

    from tagger.snapshot import Snapshot

    class CgroupfsOnly:
        closed = False

        def __init__(self):
            self.t = 100.0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.closed = True

        def tick(self):
            self.t += 1
            snap = Snapshot.synthetic(["/", "/system.slice", "/system.slice/sshd.service"],
                                      {"cpu.usage": [0.2, 0.1, 0.1]}, t=self.t,
                                      node={"cpus": 2.0, "events": 10.0, "drops": 0.0})
            snap.source = "cgroupfs"
            return snap

        def health(self):
            return {"source": "cgroupfs"}

    collector = CgroupfsOnly()
    fake = types.ModuleType("tagger.telemetry")
    fake.open_collector = lambda **kw: collector
    monkeypatch.setitem(sys.modules, "tagger.telemetry", fake)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    source = LocalSource()
    frame = source.next_frame()
    sshd = frame.tags["/system.slice/sshd.service"]
    assert sshd["priority"].value == "system" and sshd["priority"].rule == "slice-system"
    assert frame.health["rules"] > 0 and frame.health["dry_run"] is True
    assert "cgroupfs" in frame.health["note"]
    source.close()
    assert collector.closed


def test_standalone_shows_what_the_rules_would_do_and_since_when(monkeypatch, tmp_path):
    import types

    from tagger.snapshot import Snapshot

    (tmp_path / "10-cap.yaml").write_text(
        "rules:\n"
        "  - name: hog\n    match: {cgroup: '/**'}\n    when: cpu.usage > 0.8\n    tags: {cpu: hog}\n"
        "  - name: cap-hogs\n    match: {tags: {cpu: hog}}\n    actions:\n      cpu: {max: 0.5}\n")

    class Collector:
        t = 10.0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def tick(self):
            self.t += 1
            return Snapshot.synthetic(["/hog", "/calm"], {"cpu.usage": [1.5, 0.1]}, t=self.t)

        def refresh(self, paths):
            pass                # told which cgroups' knobs the (dry-run) actuator changed

    fake = types.ModuleType("tagger.telemetry")
    fake.open_collector = lambda **kw: Collector()
    monkeypatch.setitem(sys.modules, "tagger.telemetry", fake)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    source = LocalSource(tmp_path)
    frames = [source.next_frame() for _ in range(4)]
    acts = [f.actions.get("/hog", []) for f in frames]
    assert any(acts), "the rules never asked for the cap"
    first = next(k for k, a in enumerate(acts) if a)
    assert first < len(frames) - 1
    cap = acts[-1][0]
    assert (cap.knob, cap.value, cap.rule, cap.dry_run) == ("cpu.max", "50000 100000", "cap-hogs", True)
    assert cap.since == frames[first].snapshot.t            # held from the first tick, not reset
    assert "/calm" not in frames[-1].actions
    source.close()
