"""Readers against the tick loop (issue 13, items 7 and 8), on the real agent.

Runs `tagger run` (dry run, 1 s tick) with N empty cgroups made under
/tagger-bench-<pid>/ (v2, and the v1 cpu hierarchy on a hybrid host), then, in
the same run:

  baseline   no scrapers
  scraped    S concurrent scrapers (P processes of threads, each fetching
             /metrics back to back, gzip as Prometheus asks) for the same time

  prometheus one scraper, as a Prometheus server is: a scrape every
             --scrape-every seconds (gzip), each timed (issue 17's bar: a
             scrape <= 100 ms on a 3,000-cgroup node), beside the same bytes
             from a static HTTP server (the host's own noise)

and for each: the longest tick / interval (the bar: <= 2), ticks completed
against the interval's count, overruns, and the scrapers' latency.  The tick
figures come from the agent's socket, polled 10x a tick on one connection so
every tick's wall time is seen (a tick missed by the poll is counted).

Then the socket bar: `tags` answered by a real ApiClient (connect, handshake,
request) with 0 and with 200 idle connections held open by another process
(the bar: within 1 s), and the wall time of the `tagger tags` command.

Everything it makes is removed on every exit path.  Needs root.

    sudo .venv/bin/python benchmarks/bench_scrape.py [--cgroups 3000] [--scrapers 50] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.agent import Agent as UserAgent  # noqa: E402
from tagger.client import ApiClient  # noqa: E402
from tests.cgroup_fixture import _rmdir_tree, v1_root, v2_root, wait_for  # noqa: E402

INTERVAL = 1.0
RULES = """
rules:
  - name: bench-static
    match: {cgroup: "/tagger-bench-*/**"}
    tags: {team: bench}
"""

SCRAPER = textwrap.dedent("""
    import gzip, json, sys, threading, time, urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    url, threads, until = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    lat, errors, sizes = [], [0], [0]
    def scrape():
        req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        n = 0
        while time.time() < until:
            t0 = time.monotonic()
            try:
                # A status other than 200 raises (HTTPError is an OSError).
                with urllib.request.urlopen(req, timeout=60) as resp:
                    body = resp.read()
                    sizes[0] = len(body)
                lat.append(time.monotonic() - t0)
                if n % 20 == 0:        # parse a sample: parsing every one would starve the agent
                    if resp.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    list(text_string_to_metric_families(body.decode()))
                n += 1
            except (OSError, ValueError):
                errors[0] += 1
    ts = [threading.Thread(target=scrape) for _ in range(threads)]
    for t in ts: t.start()
    for t in ts: t.join()
    print(json.dumps({"latency": lat, "errors": errors[0], "bytes": sizes[0]}))
""")

CROWD = textwrap.dedent("""
    import socket, sys
    socks = []
    for _ in range(int(sys.argv[2])):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sys.argv[1])
        socks.append(s)
    print("ready", flush=True)
    sys.stdin.read()
""")


class EmptyCgroups:
    def __init__(self, n: int):
        self.prefix = f"tagger-bench-{os.getpid()}"
        self.roots = [r for r in {v2_root(), v1_root("cpu")} if r is not None]
        self.n = n

    def create(self):
        for root in self.roots:
            (root / self.prefix).mkdir()
            for i in range(self.n - 1):
                (root / self.prefix / f"c{i:04d}").mkdir()
            # One name that is not UTF-8 (issue 13): every scrape must still be a 200 that parses.
            os.mkdir(os.fsencode(root / self.prefix) + b"/x\xfe\xff")

    def remove(self):
        for root in self.roots:
            _rmdir_tree(root / self.prefix)


class Agent(UserAgent):
    """The agent with the benchmark's rules, watched tick by tick."""

    def __init__(self, workdir: Path):
        super().__init__(workdir, rules=RULES, interval=f"{INTERVAL}s")

    def ticks(self, seconds: float) -> dict:
        """Watch every tick for ``seconds``: the longest, how many, how many unseen."""
        h = self.health()
        last, start_ticks, start_over = h.get("ticks", 0), h.get("ticks", 0), h.get("overruns", 0)
        walls, unseen, gaps = [], 0, []
        t0 = last_seen = time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(INTERVAL / 10)
            h = self.health()
            n, now = h.get("ticks", last), time.monotonic()
            if n > last:
                walls.append(h.get("tick_seconds", float("nan")))
                unseen += n - last - 1
                gaps.append(now - last_seen)
                last, last_seen = n, now
        h = self.health()
        if h.get("ticks", last) == last:
            gaps.append(time.monotonic() - last_seen)        # a tick still running at the end
        return {"ticks": h.get("ticks", 0) - start_ticks, "expected": int(seconds / INTERVAL),
                "max_gap": max(gaps, default=float("nan")),
                "overruns": h.get("overruns", 0) - start_over, "max_tick": max(walls, default=float("nan")),
                "median_tick": sorted(walls)[len(walls) // 2] if walls else float("nan"),
                "unseen": unseen, "cgroups": h.get("cgroups")}


def scrape_phase(agent: Agent, scrapers: int, processes: int, seconds: float) -> dict:
    procs = []
    until = time.time() + seconds
    per = [scrapers // processes + (1 if i < scrapers % processes else 0) for i in range(processes)]
    try:
        for n in filter(None, per):
            procs.append(subprocess.Popen([sys.executable, "-c", SCRAPER, agent.metrics_url, str(n), str(until)],
                                          stdout=subprocess.PIPE, text=True))
        ticks = agent.ticks(seconds)
        lat, errors, size = [], 0, 0
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 120)
            res = json.loads(out)
            lat += res["latency"]
            errors += res["errors"]
            size = max(size, res["bytes"])
    finally:
        for p in procs:               # only what we started, by its handle
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    lat.sort()
    ticks.update(scrapes=len(lat), errors=errors, gzip_bytes=size,
                 p50=lat[len(lat) // 2] if lat else float("nan"),
                 p99=lat[int(len(lat) * 0.99)] if lat else float("nan"), lat_max=lat[-1] if lat else float("nan"))
    return ticks


STATIC_SERVER = textwrap.dedent("""
    import http.server, sys
    body = open(sys.argv[1], "rb").read()
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_port, flush=True)
    server.serve_forever()
""")


def prometheus_phase(agent: Agent, seconds: float, every: float, workdir: Path) -> dict:
    """One scraper at Prometheus's pace: the wall time of each scrape, from
    connect to the last byte (the first, which starts the agent rendering every
    tick, is left out: Prometheus scrapes for ever).  Each is paired with a
    fetch of the same gzip bytes from a static Python HTTP server in its own
    process (the baseline: what this host's noise costs any loopback fetch)."""
    req = urllib.request.Request(agent.metrics_url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        (workdir / "exposition.gz").write_bytes(resp.read())
    static = subprocess.Popen([sys.executable, "-c", STATIC_SERVER, str(workdir / "exposition.gz")],
                              stdout=subprocess.PIPE, text=True)
    try:
        static_url = f"http://127.0.0.1:{static.stdout.readline().strip()}/metrics"
        lat, base = [], []
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            t0 = time.monotonic()
            for url, out in ((req, lat), (static_url, base)):
                started = time.monotonic()
                with urllib.request.urlopen(url, timeout=30) as resp:
                    resp.read()
                out.append(time.monotonic() - started)
            time.sleep(max(0.0, every - (time.monotonic() - t0)))
    finally:
        static.kill()                 # ours, by its handle
        static.wait(timeout=10)

    def stats(xs):
        xs = sorted(xs[1:])
        return {"n": len(xs), "p50": xs[len(xs) // 2], "p99": xs[int(len(xs) * 0.99)], "max": xs[-1]}
    return {"tagger": stats(lat), "static": stats(base)}


def report(name, m):
    # The longest tick: its own wall time as it reported it, or, if longer, the
    # longest wait between two tick completions seen by the poll, less one
    # interval (of sleeping between them) -- a tick that never finishes shows here.
    ratio = max(m["max_tick"], m["max_gap"] - INTERVAL) / INTERVAL
    print(f"{name:9s} cgroups={m['cgroups']}  ticks {m['ticks']}/{m['expected']} expected  overruns={m['overruns']}"
          f"  tick median={m['median_tick'] * 1e3:.0f}ms max={m['max_tick'] * 1e3:.0f}ms"
          f"  longest gap between ticks={m['max_gap'] * 1e3:.0f}ms"
          f" (longest tick / interval={ratio:.2f}; {m['unseen']} ticks unseen by the poll)")
    if m.get("scrapes"):
        print(" " * 10 + f"{m['scrapes']} scrapes ({m['scrapes'] / max(m['expected'], 1):.0f}/s), {m['errors']} errors,"
              f" {m['gzip_bytes'] / 1e3:.0f} kB gzip; latency p50={m['p50'] * 1e3:.0f}ms"
              f" p99={m['p99'] * 1e3:.0f}ms max={m['lat_max'] * 1e3:.0f}ms")
    return ratio


def report_ratio(m):
    return max(m["max_tick"], m["max_gap"] - INTERVAL) / INTERVAL


def tags_latency(sock: str) -> float:
    t0 = time.monotonic()
    with ApiClient(sock, timeout=10) as c:
        c.request("tags")
    return time.monotonic() - t0


def socket_phase(agent: Agent, crowd: int) -> dict:
    """`tags` by ApiClient (best of 5) and by the `tagger tags` command, with ``crowd`` idle connections."""
    proc = None
    try:
        if crowd:
            proc = subprocess.Popen([sys.executable, "-c", CROWD, agent.sock, str(crowd)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "ready"
        client = [tags_latency(agent.sock) for _ in range(5)]
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "tagger.cli.main", "tags", "--socket", agent.sock, "--json"],
                             capture_output=True, text=True, timeout=60)
        cli = time.monotonic() - t0
        return {"client_max": max(client), "cli": cli, "cli_ok": res.returncode == 0}
    finally:
        if proc is not None:
            proc.stdin.close()
            proc.wait(timeout=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--cgroups", type=int, default=3000)
    ap.add_argument("--scrapers", type=int, default=50)
    ap.add_argument("--processes", type=int, default=5, help="scraper processes the scrapers are spread over")
    ap.add_argument("--scrape-every", type=float, default=2.0, metavar="S",
                    help="the single scraper's interval (Prometheus: 15-60 s; the agent behaves alike below 120 s)")
    ap.add_argument("--crowd", type=int, default=200, help="idle socket connections for the socket bar")
    ap.add_argument("--phases", default="baseline,prometheus,scraped,socket",
                    help="which phases to run (comma-separated; default all)")
    ap.add_argument("--keep-log", metavar="PATH", help="copy the agent's log here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_scrape: needs root (cgroups, BPF)")

    workdir = Path(tempfile.mkdtemp(prefix="tagger-bench-"))
    os.chmod(workdir, 0o755)
    cgroups = EmptyCgroups(args.cgroups)
    agent = None
    try:
        t0 = time.monotonic()
        cgroups.create()
        print(f"made {args.cgroups} empty cgroups in {time.monotonic() - t0:.1f}s")
        agent = Agent(workdir)
        wait_for(lambda: (agent.health().get("cgroups") or 0) >= args.cgroups, timeout=120, interval=0.5,
                 what="the agent to see the cgroups")
        wait_for(lambda: agent.health().get("ticks", 0) >= 5, timeout=60, interval=0.2, what="five ticks")
        phases = set(args.phases.split(","))
        if "baseline" in phases:
            base = scrape_phase(agent, 0, 1, args.seconds)
            report("baseline", base)
        if "prometheus" in phases:
            m = prometheus_phase(agent, args.seconds, args.scrape_every, workdir)
            for name in ("tagger", "static"):
                x = m[name]
                print(f"prometheus {name:6s} {x['n']} scrapes, one every {args.scrape_every:g}s: latency "
                      f"p50={x['p50'] * 1e3:.1f}ms p99={x['p99'] * 1e3:.1f}ms max={x['max'] * 1e3:.1f}ms")
            t, b = m["tagger"], m["static"]
            print(f"bar: a scrape <= 100 ms with {args.cgroups} cgroups: p50 {t['p50'] * 1e3:.1f}ms, "
                  f"p99 {t['p99'] * 1e3:.1f}ms (the static server's p99 in the same run: {b['p99'] * 1e3:.1f}ms)  "
                  f"{'PASS' if t['p99'] <= 0.1 else 'FAIL'}")
        if "scraped" in phases:
            loaded = scrape_phase(agent, args.scrapers, args.processes, args.seconds)
            ratio = report("scraped", loaded)
            baseline = (f" (baseline {report_ratio(base):.2f}); ticks {loaded['ticks']}/{loaded['expected']}"
                        f" (baseline {base['ticks']}/{base['expected']})") if "baseline" in phases else ""
            print(f"bar: no tick > 2x the interval with {args.scrapers} scrapers: max tick / interval = "
                  f"{ratio:.2f}{baseline}  {'PASS' if ratio <= 2 else 'FAIL'}")
        if "socket" in phases:
            quiet = socket_phase(agent, 0)
            crowded = socket_phase(agent, args.crowd)
            for name, m in (("no crowd", quiet), (f"{args.crowd} idle", crowded)):
                print(f"tags with {name:9s}: ApiClient connect+hello+tags max of 5 = {m['client_max'] * 1e3:.1f}ms;"
                      f" `tagger tags` command {m['cli'] * 1e3:.0f}ms wall ({'ok' if m['cli_ok'] else 'FAILED'})")
            print(f"bar: `tags` answers within 1 s with {args.crowd} idle connections: "
                  f"{crowded['client_max'] * 1e3:.1f}ms (ratio to no crowd "
                  f"{crowded['client_max'] / quiet['client_max']:.2f}x)"
                  f"  {'PASS' if crowded['client_max'] <= 1 and crowded['cli_ok'] else 'FAIL'}")
    finally:
        if agent is not None:
            agent.stop()
            if agent.proc.returncode not in (0, None):
                print(agent.log_tail(), file=sys.stderr)
        cgroups.remove()
        if args.keep_log and agent is not None:
            shutil.copy(agent.log_path, args.keep_log)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
