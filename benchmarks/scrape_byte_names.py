"""Issue 13's bar for names that are not UTF-8, on the real daemon: with a
cgroup named ``x\\xfe\\xff`` present, every /metrics scrape returns 200 and
parses, the socket answers ``snapshot`` and ``tags``, and the recorded trace
replays the same name.

Runs `tagger run --dry-run` in a subprocess (BPF unless --cgroupfs-only), makes
the cgroup under /tagger-names-<pid>/ in the v2 hierarchy, scrapes
``--scrapes`` times from ``--scrapers`` threads, and prints the counts.  Every
cgroup and temp dir it makes is removed on every exit path.  Needs root.

    sudo .venv/bin/python benchmarks/scrape_byte_names.py [--scrapes 200] [--scrapers 10] [--cgroupfs-only]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tagger.client import ApiClient, ApiError, wait_for_socket  # noqa: E402
from tagger.names import display, parse  # noqa: E402
from tagger.publish.trace import read_trace  # noqa: E402
from tests.cgroup_fixture import _rmdir_tree, v2_root, wait_for  # noqa: E402

RULES = """
rules:
  - name: byte-names
    match: {cgroup: "/tagger-names-*/**"}
    tags: {seen: "yes"}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str, path: str) -> str:
    """"ok", or what went wrong with one scrape."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except OSError as err:
        return f"error {err}"
    try:
        fams = list(text_string_to_metric_families(text))
    except Exception as err:               # the parser's errors are plain ValueErrors and more
        return f"unparsable: {err}"
    cgroups = {parse(s.labels.get("cgroup", "")) for f in fams for s in f.samples}
    return "ok" if path in cgroups else "name missing"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--scrapers", type=int, default=10)
    ap.add_argument("--cgroupfs-only", action="store_true")
    args = ap.parse_args()

    prefix = f"tagger-names-{os.getpid()}"
    top = v2_root() / prefix
    relpath = f"/{prefix}/" + os.fsdecode(b"x\xfe\xff")
    tmp = tempfile.TemporaryDirectory(prefix="tagger-names-")
    rules = Path(tmp.name) / "rules"
    rules.mkdir(mode=0o755)
    (rules / "10-names.yaml").write_text(RULES)
    os.chmod(rules / "10-names.yaml", 0o644)
    sock, trace, port = f"{tmp.name}/tagger.sock", f"{tmp.name}/run.tgr", free_port()
    cmd = [sys.executable, "-m", "tagger.cli.main", "run", "--dry-run", "--rules", str(rules),
           "--interval", "500ms", "--metrics", f"127.0.0.1:{port}", "--socket", sock,
           "--state-dir", f"{tmp.name}/state", "--record", trace, "--log-level", "warning"]
    if args.cgroupfs_only:
        cmd.append("--cgroupfs-only")
    daemon = None
    try:
        top.mkdir()
        daemon = subprocess.Popen(cmd)
        if not wait_for_socket(sock, timeout=60):
            raise SystemExit("the daemon did not come up")
        os.mkdir(os.fsencode(v2_root()) + os.fsencode(relpath))     # the mkdir, after start
        url = f"http://127.0.0.1:{port}/metrics"
        # Known to the daemon once a scrape has it, or fails (as it did before the fix).
        wait_for(lambda: scrape(url, relpath) != "name missing", timeout=30, what="the cgroup")
        try:
            with ApiClient(sock) as c:
                wait_for(lambda: relpath in {parse(p) for p in c.request("tags")}, timeout=30,
                         what="the cgroup to be tagged")
                snap = c.request("snapshot")
                in_snapshot = relpath in {parse(p) for p in snap["cgroups"]["paths"]}
        except ApiError as err:
            in_snapshot = f"no: {err}"
        with concurrent.futures.ThreadPoolExecutor(args.scrapers) as pool:
            results = list(pool.map(lambda _: scrape(url, relpath), range(args.scrapes)))
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        _rmdir_tree(top)
    try:
        replayed = any(relpath in s.cgroups.paths for s in read_trace(trace))
    except Exception as err:                # the recorder died on the name before the fix
        replayed = f"no: {type(err).__name__}: {err}"
    tmp.cleanup()
    ok = results.count("ok")
    print(f"cgroup {display(relpath)}: {ok}/{len(results)} scrapes 200 and parsed with it "
          f"({args.scrapers} scrapers, {'cgroupfs' if args.cgroupfs_only else 'bpf'}); "
          f"socket snapshot has it: {in_snapshot}; trace replays it: {replayed}")
    bad = sorted({r for r in results if r != "ok"})
    if bad:
        print("failures:", ", ".join(bad))
    return 0 if ok == len(results) and in_snapshot is True and replayed is True else 1


if __name__ == "__main__":
    sys.exit(main())
