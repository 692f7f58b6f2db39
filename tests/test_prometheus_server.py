"""Debian's real Prometheus server scraping a running tagger (issue 17): PromQL
over the exposition agrees with tagger's own figures and the kernel's.

- ``histogram_quantile(0.99, rate(tagger_cgroup_runq_latency_seconds_bucket[1m]))``
  within one log2 bucket (a factor of 2) of tagger's own p99 of the same
  events (tagger.snapshot.hist_percentiles over the same minute);
- ``rate(tagger_cgroup_cpu_seconds_total[~1m])`` within 2% of cgroup
  ``cpu.stat``'s usage over the same minute (a range laid on samples, which
  carry their tick's time: see the test for Prometheus's extrapolation).

The server runs on a free port with a temporary config and TSDB, scraping
every second; it is stopped on every exit path.  Everything waits by polling
its HTTP API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from tests.bpf_helpers import BUSY_LOOP
from tests.cgroup_fixture import wait_for
from tests.test_telemetry_bpf import _usage_usec
from tests.test_redis import free_port

PROMETHEUS = shutil.which("prometheus")
pytestmark = [pytest.mark.bpf, pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (make deps)")]

QUANTILE_WINDOW = 60.0
RATE_WINDOW = 60.0


class PrometheusServer:
    def __init__(self, tmp_path, target: str):
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: tagger
    static_configs: [{{targets: ["{target}"]}}]
""")
        self.log = open(tmp_path / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def query(self, expr: str, at: float | None = None) -> list:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited (see prometheus.log)"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def test_promql_over_the_exposition_agrees_with_tagger_and_the_kernel(make_cgroup, tmp_path):
    from tagger.agent.config import Config
    from tagger.agent.daemon import Daemon
    from tagger.snapshot import hist_percentiles

    cg = make_cgroup("promql")
    rules = tmp_path / "rules"
    rules.mkdir(mode=0o755)
    (rules / "10.yaml").write_text(f'rules:\n  - name: watched\n    match: {{cgroup: "{cg.path}"}}\n'
                                   f'    tags: {{watched: "yes"}}\n')
    os.chmod(rules / "10.yaml", 0o644)
    # The default 1 s tick: the counters carry their tick's time, so a sample
    # up to a tick older than its scrape does not move rate().
    daemon = Daemon(Config(rules=str(rules), interval=1.0, socket=None, metrics="127.0.0.1:0",
                           dry_run=True, state_dir=str(tmp_path / "state")))
    errors = []

    def run():
        try:
            daemon.run()
        except BaseException as err:          # noqa: BLE001 (reported by the test)
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    server = None
    try:
        wait_for(lambda: daemon.ready or errors, timeout=60, what="daemon ready")
        assert not errors, errors
        if daemon.collector.source != "bpf":
            pytest.skip(f"BPF collector did not load ({daemon.collector.source})")
        # Three loops on two CPUs wait on each other's run queue; niced, so the
        # agent's ticks and the server's scrapes keep their pace.
        for _ in range(3):
            cg.spawn(["nice", "-n", "19", *BUSY_LOOP])
        server = PrometheusServer(tmp_path, f"127.0.0.1:{daemon.metrics.port}")
        wait_for(server.ready, timeout=60, what="prometheus ready")

        # Record the kernel's usage and tagger's own totals while Prometheus scrapes.
        sel = f'{{cgroup="{cg.path}"}}'
        kernel, totals = [], []
        started = time.time()

        def enough():
            now = time.time()
            kernel.append((now, _usage_usec(cg)))
            latest = daemon.prometheus.latest()[1]
            row = latest[0].cgroups.index(cg.path) if latest[0] is not None else None
            if row is not None and len(latest[4].keys) == len(latest[0].cgroups):
                totals.append((now, latest[4].buckets["tagger_cgroup_runq_latency_seconds"][row].copy(),
                               latest[4].edges))
            return now - started > QUANTILE_WINDOW + 5 and server.query(
                f"count_over_time(tagger_cgroup_cpu_seconds_total{sel}[1m]) >= 40")
        wait_for(enough, timeout=180, interval=0.5, what="a minute of scrapes")
        at = time.time()
        kernel.append((at, _usage_usec(cg)))

        # CPU: PromQL's rate against cpu.stat over the same window.  rate() is
        # the slope between the first and last samples in its range,
        # extrapolated to the range's edges -- fully only where the gap to an
        # edge is under 1.1 average sample intervals, else by half an interval.
        # 1 s scrapes of a 1 s tick alias (a tick scraped twice is one sample,
        # then a 2 s gap), so a range with a gap at an edge reads up to ~3% low
        # whatever the exporter: Prometheus's heuristic, not tagger's counter.
        # So the range is laid on samples: it ends at the newest and begins
        # just before the one nearest a minute earlier, and cpu.stat's usage
        # between those two sample instants (the tick's time they carry) is
        # the kernel's figure.
        metric = f"tagger_cgroup_cpu_seconds_total{sel}"
        [raw] = server.query(f"{metric}[{int(RATE_WINDOW) + 15}s]", at)
        stamps = np.array([float(t) for t, _ in raw["values"]])
        t_last = stamps[-1]
        t_first = stamps[np.argmin(np.abs(stamps - (t_last - RATE_WINDOW)))]
        window_ms = round((t_last - t_first) * 1000) + 1
        assert window_ms > RATE_WINDOW * 800, raw["values"]
        [cpu] = server.query(f"rate({metric}[{window_ms}ms])", t_last)
        times, usage = np.array([k[0] for k in kernel]), np.array([k[1] for k in kernel], dtype=float)
        kernel_rate = float(np.diff(np.interp([t_first, t_last], times, usage))[0]) * 1e-6 / (t_last - t_first)
        promql_rate = float(cpu["value"][1])
        print(f"cpu: PromQL {promql_rate:.4f} CPUs, cpu.stat {kernel_rate:.4f} CPUs "
              f"({promql_rate / kernel_rate - 1:+.2%}) over {t_last - t_first:.1f} s")
        assert kernel_rate > 0.2, "the workload did not run"

        # p99: PromQL over the buckets against tagger's own over the same minute.
        [p99] = server.query("histogram_quantile(0.99, rate(tagger_cgroup_runq_latency_seconds_bucket"
                             f"{sel}[1m]))", at)
        promql_p99 = float(p99["value"][1])
        t_end, end, edges = totals[-1]
        t_start, start, _ = min(totals, key=lambda t: abs(t[0] - (t_end - QUANTILE_WINDOW)))
        ours = float(hist_percentiles((end - start)[None, :], edges, (0.99,))[0, 0])
        print(f"runq p99: PromQL {promql_p99 * 1e6:.1f} us, tagger {ours * 1e6:.1f} us "
              f"over {t_end - t_start:.0f} s")
        assert np.isfinite(ours) and np.isfinite(promql_p99)
        assert ours / 2 <= promql_p99 <= ours * 2                 # within one log2 bucket

        # The CPU bar after the p99 one, so a miss of either is seen.  (It
        # missed by 2.2-3.2% with both CPUs filled until sched.bpf.c credited
        # the slices of switch-ins it did not see: docs/telemetry.md.)
        assert promql_rate == pytest.approx(kernel_rate, rel=0.02)
    finally:
        if server is not None:
            server.close()
        daemon.stop()
        thread.join(timeout=30)
        cg.stop()
