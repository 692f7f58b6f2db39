"""`tagger run` as the benchmarks start it: a user's command line, in a
directory of its own, watched through its socket.

Every benchmark that measures the agent (bench_daemon, bench_scrape,
bench_overhead, bench_cede, noisy_neighbor) starts it here, so they measure
the same thing: by default `tagger run --dry-run` with its socket, its
/metrics on a free port, its own state directory and, if given, a rules
directory (one file, or several by name).  noisy_neighbor's agent acts
(``dry_run=False``).  `stop()` sends SIGTERM (the agent undoes what it did;
--dry-run did nothing) and waits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from benchmarks.scrape_byte_names import free_port
from tagger.client import ApiClient, ApiError

ROOT = Path(__file__).resolve().parent.parent


def task_cpu(pid: int) -> float:
    """CPU seconds of all of a process's threads, from the scheduler's own ns counts
    (/proc/PID/task/TID/schedstat), not the 10 ms ticks of /proc/PID/stat."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):     # a thread that just exited
            pass
    return total / 1e9


def terminate(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (so it cleans up after itself), SIGKILL if it has not exited
    within ``timeout`` seconds; waits either way."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def at_nice(nice: int | None):
    """A preexec_fn giving the child an absolute nice value (None: inherit)."""
    return None if nice is None else (lambda: os.setpriority(os.PRIO_PROCESS, 0, nice))


class Agent:
    """`tagger run` in a fresh directory under ``workdir``.  ``rules``: the
    text of one rules file, or {file name: text}.  ``dry_run=False``: the
    agent acts.  ``metrics=False``: no /metrics endpoint.  ``launch``: what
    runs ``tagger`` (a ``taskset`` in front, a ``python -c`` that sets
    something first)."""

    def __init__(self, workdir: Path, *, rules: str | Mapping[str, str] | None = None, interval: str = "1s",
                 extra: tuple[str, ...] = (), nice: int | None = None, dry_run: bool = True,
                 metrics: bool = True, log_level: str = "warning",
                 launch: tuple[str, ...] = (sys.executable, "-m", "tagger.cli.main")):
        self.dir = Path(tempfile.mkdtemp(prefix="agent-", dir=workdir))
        os.chmod(self.dir, 0o755)
        self.sock = str(self.dir / "tagger.sock")
        self.port = free_port() if metrics else None
        self.metrics_url = f"http://127.0.0.1:{self.port}/metrics" if metrics else None
        self.log_path = self.dir / "agent.log"
        argv = [*launch, "run", *(["--dry-run"] if dry_run else []), "--interval", interval,
                "--metrics", f"127.0.0.1:{self.port}" if metrics else "off", "--socket", self.sock,
                "--state-dir", str(self.dir / "state"), "--log-level", log_level, *extra]
        if rules is not None:
            rules_dir = self.dir / "rules"
            rules_dir.mkdir(mode=0o755)
            for name, text in ({"10-bench.yaml": rules} if isinstance(rules, str) else rules).items():
                (rules_dir / name).write_text(text)
                os.chmod(rules_dir / name, 0o644)
            argv += ["--rules", str(rules_dir)]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT, preexec_fn=at_nice(nice))
        self._client: ApiClient | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def health(self) -> dict:
        """The agent's health, {} while its socket does not answer; raises
        once it has exited.  One connection, kept (a reader per poll would be
        part of what is measured), opened again after an error."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"tagger run exited with {self.proc.returncode}:\n" + self.log_tail())
        try:
            if self._client is None:
                self._client = ApiClient(self.sock, timeout=10)
            return self._client.request("health") or {}
        except (ApiError, OSError):
            if self._client is not None:
                self._client.close()
            self._client = None
            return {}

    def wait_ready(self, ticks: int = 3, timeout: float = 60.0) -> dict:
        """Its health once it has ticked ``ticks`` times (start-up is not what
        we measure) and its exposition answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.health()
            if h.get("ticks", 0) >= ticks:
                if self.metrics_url is not None:
                    with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
                        r.read()
                return h
            time.sleep(0.2)
        raise TimeoutError(f"tagger run did not tick {ticks} times in {timeout:.0f}s")

    def wait_ticks(self, n: int, timeout: float = 60.0) -> dict:
        """Its health once it has ticked ``n`` more times."""
        start = self.health().get("ticks", 0)
        return self.wait_ready(start + n, timeout)

    def cpu_seconds(self) -> float:
        """CPU time of the agent so far (its own tick, not the BPF programs' time,
        which is charged to the tasks that switch)."""
        return task_cpu(self.proc.pid)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text()[-chars:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, then wait (SIGKILL after 30 s); its exit code."""
        if self._client is not None:
            self._client.close()
            self._client = None
        terminate(self.proc)
        return self.proc.returncode
