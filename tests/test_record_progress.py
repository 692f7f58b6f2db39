"""tagger record: a progress line on a terminal (stderr), none with --quiet or
when stderr is not a terminal (issue 17: it was silent for its whole run)."""
import os
import pty
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root


def _record(tmp_path, *extra, tty=True):
    if os.geteuid() != 0:
        pytest.skip("needs root (cgroupfs collector reads every cgroup)")
    cmd = [sys.executable, "-m", "tagger.cli.main", "record", "--cgroupfs-only", "--duration", "2s",
           "--interval", "1s", "-o", str(tmp_path / "t.tgr"), *extra]
    if not tty:
        r = subprocess.run(cmd, capture_output=True, timeout=60)
        return r.returncode, r.stderr.decode()
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:              # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout=60), b"".join(chunks).decode()
    finally:
        os.close(master)


def test_progress_on_a_terminal(tmp_path):
    rc, err = _record(tmp_path)
    assert rc == 0
    assert "1/2 snapshots" in err and "2/2 snapshots" in err, err
    assert "t.tgr: 2 snapshots" in err


def test_quiet_and_not_a_terminal_print_no_progress(tmp_path):
    rc, err = _record(tmp_path, "--quiet")
    assert rc == 0 and "snapshots" not in err, err
    rc, err = _record(tmp_path, tty=False)
    assert rc == 0 and "1/2" not in err and "t.tgr: 2 snapshots" in err, err
