"""Prometheus exposition of the latest tick: per-cgroup metrics, tags, applied
actions and the agent's own health.

A custom collector (prometheus_client's "custom collector" pattern) builds the
families from the latest published tick, so a cgroup that vanished is simply
absent from the next scrape: no labelled Gauge children to forget and leak.
The tick loop only swaps one reference (:meth:`TaggerCollector.update`).

Readers must not starve the loop (issue 13: 50 scrapers of a 3,000-cgroup node
made one tick take 35 s, every scrape formatting megabytes under the GIL).  So
the text is rendered at most once per published tick, by the first scrape
after it, and every other scrape is served the cached bytes (and their gzip,
also made once); a fixed pool of serving threads and a socket timeout bound
what a crowd of scrapers, or a slow one, can take.
"""

from __future__ import annotations

import collections
import gzip
import http.server
import logging
import math
import queue
import re
import socket
import threading
import time

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from tagger import __version__
from tagger.cgroupglob import GlobError, GlobSet
from tagger.errors import ConfigError
from tagger.knobs import cpu_max_cpus, parse_cpulist, parse_io_limits
from tagger.names import display, parse
from tagger.publish.cumulative import COUNTERS, HISTOGRAMS, Accumulator, Totals
from tagger.publish.export import DEFAULT_CAP, DEFAULT_TOP, RANK_BY, ExportPolicy
from tagger.publish.report import Health, TickReport
from tagger.snapshot import METRICS, NODE_METRICS

log = logging.getLogger(__name__)

DEFAULT_ADDR = "127.0.0.1:9473"
#: Threads that answer scrapes.  Prometheus and an operator's curl need one or
#: two; more would only let a crowd take more CPU from the tick loop.
SERVE_THREADS = 4
#: Accepted scrapes waiting for a serving thread; past this they are closed
#: unanswered (the scraper retries on its next interval).
SERVE_QUEUE = 64
#: Scrapes answered per second at most, over all threads: a Prometheus pair
#: scrapes every 15 s; the cap bounds what a crowd costs in request parsing
#: (Python, under the GIL) however fast it asks.  Beyond it scrapes queue.
SERVE_RATE = 50.0
#: Seconds a scraper may take to send its request or read a chunk of the reply.
SERVE_TIMEOUT = 10.0
#: Most of the wall time rendering may take: after a render of R seconds the next
#: waits until R / RENDER_SHARE has passed (scrapes get the previous tick's text
#: meanwhile), so however often a large node is scraped, rendering takes at most
#: this share of one core (and of the GIL) from the tick loop.
RENDER_SHARE = 0.2
#: Longest a scrape waits for the loop to render the latest tick before it is
#: served the previous text (Prometheus's scrape timeout is 10 s by default).
MAX_RENDER_WAIT = 5.0
#: A scrape within this many seconds makes the loop render every tick as it
#: publishes it, so the next scrape is answered at once from the cache (its
#: samples carry the tick's time); a first scrape after a quiet spell waits
#: for one render (Prometheus scrapes every 15-60 s).
ACTIVE_SCRAPES = 120.0
#: /healthz: the loop is alive while its last published tick is at most this
#: many intervals old (and at least LIVENESS_MIN seconds).
LIVENESS_TICKS = 5
LIVENESS_MIN = 10.0
#: zlib level of the cached gzip reply: level 1 is ~3x faster than 6 for ~15% more bytes.
GZIP_LEVEL = 1

#: Snapshot unit -> Prometheus base-unit suffix (prometheus.io/docs/practices/naming).
UNIT_SUFFIX = {
    "s": "_seconds", "s/s": "_seconds_per_second", "bytes": "_bytes",
    "bytes/s": "_per_second", "1/s": "_per_second", "fraction": "_ratio",
    "cpus": "_cpus", "ratio": "_ratio", "count": "",
}

#: Cgroup labels (from the cgroup table) copied onto every per-cgroup series.
WORKLOAD_LABELS = ("namespace", "pod", "container")
#: Path components naming a systemd unit (the ``unit`` label).
UNIT_SUFFIXES = (".service", ".scope")

#: Snapshot metrics exported as per-cgroup gauges: levels only.  Rates are
#: counters and percentiles histograms (tagger.publish.cumulative): a gauge of
#: the last 1 s tick is one tick in fifteen to a 15 s scrape.  Not exported:
#: the per-tick ratios cpu.throttled (its periods are counters), runq/io.slowdown
#: (the run-queue one is 1 + rate(wait) / rate(cpu)) and PSI's avg10 (a moving
#: average, not a level; node_exporter has the node's PSI counters).  All of
#: them stay in the Snapshot: rules, the socket API and ``tagger top``.
LEVEL_METRICS = ("mem.current",)

#: health key (a field of tagger.publish.report.Health or CollectorHealth) ->
#: (metric name, "gauge" | "counter", help).  Keys a tick's health lacks are
#: left out of the exposition.
HEALTH = {
    "tick_seconds": ("tagger_tick_seconds", "gauge", "Wall time the last tick's work took"),
    "tick_cpu_seconds": ("tagger_tick_cpu_seconds", "gauge", "CPU time the last tick's work took"),
    "tick_jitter_seconds": ("tagger_tick_jitter_seconds", "gauge",
                            "How late the last tick started against its schedule"),
    "tick_jitter_max_seconds": ("tagger_tick_jitter_max_seconds", "gauge",
                                "Largest tick lateness since start"),
    "interval_seconds": ("tagger_tick_interval_seconds", "gauge", "Configured tick interval"),
    "ticks": ("tagger_ticks", "counter", "Ticks run"),
    "overruns": ("tagger_tick_overruns", "counter", "Ticks whose work took longer than the interval"),
    "tick_errors": ("tagger_tick_errors", "counter", "Ticks that failed with an error (logged)"),
    "cpu_seconds": ("tagger_agent_cpu_seconds", "counter", "CPU time used by the agent process"),
    "bpf_ns_per_event": ("tagger_bpf_seconds_per_event", "gauge",
                         "Kernel time spent in tagger's BPF programs per event, seconds"),
    "events_per_second": ("tagger_bpf_events_per_second", "gauge", "Events counted in the kernel per second"),
    "ringbuf_drops": ("tagger_ringbuf_drops", "counter", "Ring-buffer records lost (buffer full)"),
    "map_full": ("tagger_map_full", "counter", "Updates refused because a BPF map was full"),
    "lost_lifecycle_events": ("tagger_lost_lifecycle_events", "counter",
                              "cgroup mkdir/rmdir events the ring buffer dropped (slots reconciled after)"),
    "slots_reclaimed": ("tagger_slots_reclaimed", "counter",
                        "Slots returned by reconciling: held by no live cgroup after lost events"),
    "cgroups": ("tagger_cgroups", "gauge", "Cgroups in the latest snapshot"),
    "rules_loaded": ("tagger_rules_loaded", "gauge", "Rules in force"),
    "policies_loaded": ("tagger_policies_loaded", "gauge", "Policies in force"),
    "rule_errors": ("tagger_rule_errors", "gauge",
                    "Problems found by the last load of the rules directory (0: it loaded)"),
    "reloads": ("tagger_rule_reloads", "counter", "Successful reloads of the rules directory"),
    "reload_failures": ("tagger_rule_reload_failures", "counter",
                        "Reloads refused because the rules directory had errors"),
    "api_clients": ("tagger_api_clients", "gauge", "Connected socket API clients"),
    "api_dropped": ("tagger_api_subscribers_dropped", "counter",
                    "Socket subscribers dropped for reading too slowly"),
    "api_errors": ("tagger_api_request_errors", "counter", "Socket requests answered with an error"),
    "redis_connected": ("tagger_redis_connected", "gauge", "1 while the Redis publisher is connected"),
    "redis_dropped": ("tagger_redis_dropped", "counter",
                      "Redis updates dropped because its queue was full (outage)"),
    "dry_run": ("tagger_dry_run", "gauge",
                "1 when the agent runs with --dry-run: the limits it exports are not in force"),
    "journal_write_failures": ("tagger_journal_write_failures", "counter",
                               "Journal writes that failed (ENOSPC, EIO): their knobs were left untouched"),
    "journal_damaged_records": ("tagger_journal_damaged_records", "gauge",
                                "Records of the journal found at start that could not be read back "
                                "(their originals are lost; the log names them)"),
    "journal_leftovers": ("tagger_journal_leftovers", "gauge",
                          "Dry run: knobs a previous run left changed and journaled, not restored"),
}

#: health["policy_steps"]: a counter family by policy, lever and outcome.
POLICY_STEPS = ("tagger_policy_steps", "Policy steps by lever and the outcome of their judgment: helped (kept), "
                "no_effect (undone, the lever cooled down on that victim and culprit), unjudged (its window "
                "could not finish)")

#: health key -> factor to the exposition's base unit (promtool: no "ns" in names).
HEALTH_SCALE = {"bpf_ns_per_event": 1e-9}

#: Numeric views of applied knobs (AppliedAction.value is the kernel's text).
CPU_MAX = ("tagger_cpu_max_cpus", "CPU quota applied, CPUs (quota / period)")
CPU_WEIGHT = ("tagger_cpu_weight", "cpu.weight applied")
CPU_IDLE = ("tagger_cpu_idle", "1 while tagger holds the cgroup SCHED_IDLE (cpu.idle)")
CPUSET = ("tagger_cpuset_cpus", "CPUs tagger confines the cgroup to (cpuset.cpus)")
IO_MAX = {
    "rbps": ("tagger_io_max_read_bytes_per_second", "Read limit applied, bytes/s"),
    "wbps": ("tagger_io_max_write_bytes_per_second", "Write limit applied, bytes/s"),
    "riops": ("tagger_io_max_read_iops", "Read IOPS limit applied"),
    "wiops": ("tagger_io_max_write_iops", "Write IOPS limit applied"),
}


def knob_values(knob: str, value) -> list[tuple[str, str, dict, float]]:
    """(metric, help, extra labels, number) for an applied knob; [] when it has no number."""
    kind, _, arg = str(knob).partition(" ")
    try:
        if kind == "cpu.max":
            cpus = cpu_max_cpus(str(value)) if not isinstance(value, (int, float)) else float(value)
            return [] if math.isinf(cpus) else [(*CPU_MAX, {}, cpus)]
        if kind == "cpu.weight":
            return [(*CPU_WEIGHT, {}, float(value))]
        if kind == "cpu.idle":
            return [(*CPU_IDLE, {}, 1.0 if str(value).split(" ", 1)[0] == "1" else 0.0)]
        if kind == "cpuset.cpus":
            cpus = parse_cpulist(str(value))
            return [(*CPUSET, {}, float(len(cpus)))] if cpus else []
        if kind == "io.max":
            return [(*IO_MAX[k], {"device": arg}, float(v))
                    for k, v in parse_io_limits(str(value)).items() if v is not None and k in IO_MAX]
    except (ValueError, IndexError, TypeError):
        log.debug("no number in %s=%r", knob, value)
    return []


def metric_name(metric: str, unit: str) -> str:
    """``runq.p99`` (s) -> ``tagger_runq_p99_seconds``."""
    base = "tagger_" + re.sub(r"[^a-zA-Z0-9_]", "_", metric)
    suffix = UNIT_SUFFIX.get(unit, "")
    return base if base.endswith(suffix) else base + suffix


class TaggerCollector:
    """Collector for a private CollectorRegistry.  Thread-safe: :meth:`update`
    (tick loop) swaps one tuple; :meth:`collect` (scrape thread) reads it."""

    def __init__(self, export=None, top: int = DEFAULT_TOP, cap: int = DEFAULT_CAP):
        # --export globs are cgroup globs like any other (tagger.cgroupglob), written
        # in display form like the socket's; a bad one stops start-up, not a scrape.
        # They add to the default selection (tagger.publish.export).
        try:
            self.export = GlobSet(parse(g) for g in export or ())
        except GlobError as err:
            raise ConfigError(f"--export: {err}") from None
        self.policy = ExportPolicy(self.export, top=top, cap=cap)
        self._latest = (None, {}, [], {}, Totals(keys=()))
        self._accumulator = Accumulator()
        self._lock = threading.Lock()
        #: bumped by every update(): the exposition cache renders once per value
        self.generation = 0
        #: called as fn(generation, latest) after every update, in the updating thread
        self.listeners: list = []
        self._prefix_cache = None        # (key, prefixes) of cgroup_text

    name = "prometheus"

    def publish(self, report: TickReport) -> None:
        """Publish one tick (a :class:`~tagger.publish.report.Publisher`): the
        parts the report leaves None keep their last value.  The objects must
        not be changed afterwards (the tick loop makes new ones)."""
        _, (snapshot, tags, actions, health, _totals) = self.latest()
        self.update(snapshot if report.snapshot is None else report.snapshot,
                    tags if report.tags is None else report.tags,
                    actions if report.actions is None else report.actions,
                    health if report.health is None else report.health,
                    accumulate=report.snapshot is not None)

    def close(self) -> None:
        """Nothing to release: the endpoint is the :class:`MetricsServer`'s."""

    def update(self, snapshot=None, tags=None, actions=None, health=None, *, accumulate: bool = True):
        """Replace the whole published tick.  ``tags``: {path: {key: Tag}};
        ``actions``: list of AppliedAction; ``health``: a Health or its plain
        dict (keys in HEALTH).  ``accumulate=False``: ``snapshot`` was
        counted already (a tick that brought none)."""
        if isinstance(health, Health):
            health = health.to_plain()
        totals = self._accumulator.add(snapshot) if snapshot is not None and accumulate \
            else self._accumulator.totals
        with self._lock:
            self._latest = latest = (snapshot, tags or {}, list(actions or ()), dict(health or {}), totals)
            self.generation += 1
            generation = self.generation
        for listener in self.listeners:
            listener(generation, latest)

    def describe(self):
        return []     # no describe-time collect (families vary with the tick)

    def latest(self) -> tuple[int, tuple]:
        """(generation, the published tick) read together."""
        with self._lock:
            return self.generation, self._latest

    def collect(self):
        yield from self.families(self.latest()[1])

    def families(self, latest, cgroup_metrics: bool = True):
        """The metric families of one published tick; ``cgroup_metrics=False``
        leaves out the per-cgroup ones (see :meth:`cgroup_text`)."""
        snapshot, tags, actions, health = latest[:4]
        yield from self._health(health, snapshot)
        if snapshot is not None:
            if cgroup_metrics:
                yield from self._cgroup_metrics(latest)
            yield from self._node_metrics(snapshot)
        yield from self._tags(tags)
        yield from self._actions(actions)
        yield from self._policy_steps(health)

    def cgroup_text(self, latest) -> str:
        """The per-cgroup families as exposition text, written directly: they
        are nearly all of a large node's samples, and going through a Sample
        and generate_latest per value costs ~15 us each, ~1 s a render.  Here
        each cgroup's label text is made once and kept while the exported
        rows are unchanged, so a render is repr() of the values and joins
        (called from one thread at a time: the Exposition's)."""
        snapshot, tags, totals = latest[0], latest[1], latest[4]
        if snapshot is None:
            return ""
        exported = len(totals.keys) == len(snapshot.cgroups)      # totals of this very table
        rows, left_out = self.policy.select(snapshot.cgroups.paths, tags,
                                            totals.counters.get(RANK_BY) if exported else None)
        prefixes = self._prefixes(snapshot, rows)
        index, labels = prefixes["index"], prefixes["labels"]
        # Counters and histograms carry the time they were measured (the tick's,
        # as cAdvisor does): a scrape lands anywhere in a tick, and without it a
        # sample's value would be up to a tick older than its scrape time, which
        # moves a 1 min rate() by up to interval / 60 s.
        stamp = f" {round(totals.wall * 1000)}" if totals.wall is not None else ""
        out = ["# HELP tagger_cgroups_unexported Cgroups left out of this exposition by the export "
               "policy (top N by CPU, cardinality cap; see --export)\n"
               f"# TYPE tagger_cgroups_unexported gauge\ntagger_cgroups_unexported {float(left_out)!r}\n"]
        for metric in LEVEL_METRICS:
            col = snapshot.columns.get(metric)
            if col is None:
                continue
            meta = METRICS[metric]
            name = metric_name(metric, meta.unit)
            self._series(out, name, "gauge", meta.help, labels, np.asarray(col, dtype=np.float64)[index])
        for name, help_ in COUNTERS.values():
            total = totals.counters.get(name)
            if total is None or not exported:
                continue
            values = np.where(totals.seen[name][index], total[index], np.nan)     # never measured: absent
            self._series(out, name, "counter", help_, labels, values, stamp)
        for name, (help_, _parts, _sum) in HISTOGRAMS.items():
            counts = totals.buckets.get(name)
            if counts is None or not exported:
                continue
            self._histogram(out, name, help_, labels, counts[index], totals.sums[name][index], totals.edges,
                            stamp)
        return "".join(out)

    @staticmethod
    def _series(out: list, name: str, kind: str, help_: str, labels: list, values: np.ndarray,
                stamp: str = ""):
        out.append(f"# HELP {name} {_escape_help(help_)}\n# TYPE {name} {kind}\n")
        known = ~np.isnan(values)                 # unknown is absent, never 0
        keep = np.flatnonzero(known).tolist()
        if not keep:
            return
        values = values[known]
        # repr() is the text of most values; floatToGoString only where Go's
        # differs (infinities, and exponents from 1e6 up).
        text = list(map(repr, values.tolist()))
        for j in np.flatnonzero(~(np.abs(values) < 1e6)).tolist():
            text[j] = floatToGoString(values[j])
        out.append("\n".join(f"{name}{{{labels[k]}}} {v}{stamp}" for k, v in zip(keep, text)))
        out.append("\n")

    @staticmethod
    def _histogram(out: list, name: str, help_: str, labels: list, counts: np.ndarray,
                   sums: np.ndarray, edges: np.ndarray, stamp: str = ""):
        """One cumulative histogram per cgroup from the kernel's log2 buckets.
        Only the buckets from the one below the first used to the last used
        are written (with +Inf): the others add nothing a quantile needs, and
        writing all of them would be most of a large node's exposition; a
        cgroup with no event yet has no histogram series."""
        out.append(f"# HELP {name} {_escape_help(help_)}\n# TYPE {name} histogram\n")
        les = [floatToGoString(e) for e in edges[1:].tolist()]
        cum = np.cumsum(counts, axis=1)
        totals = cum[:, -1].tolist() if cum.shape[1] else [0] * len(labels)
        lines = []
        for row, label in enumerate(labels):
            used = np.flatnonzero(counts[row])
            if not used.size:
                continue                          # no event yet: no series (most cgroups of a large node)
            lo, hi = max(int(used[0]) - 1, 0), int(used[-1])
            for k in range(lo, hi + 1):
                lines.append(f'{name}_bucket{{{label},le="{les[k]}"}} {int(cum[row, k])}{stamp}')
            lines.append(f'{name}_bucket{{{label},le="+Inf"}} {totals[row]}{stamp}')
            lines.append(f"{name}_count{{{label}}} {totals[row]}{stamp}")
            lines.append(f"{name}_sum{{{label}}} {floatToGoString(float(sums[row]))}{stamp}")
        if lines:
            out.append("\n".join(lines))
            out.append("\n")

    def _prefixes(self, snapshot, selected: np.ndarray) -> dict:
        """{"index": rows exported, "labels": their label text} for the
        ``selected`` rows; the previous ones' if rows, paths and labels are the same."""
        table = snapshot.cgroups
        key = (table.paths, table.labels, selected.tobytes())
        cached = self._prefix_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        rows = self._rows(snapshot, selected.tolist())
        labels = []
        for _i, path, extra in rows:
            pairs = sorted([("cgroup", path), *extra])    # generate_latest's order
            labels.append(",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs))
        prefixes = {"index": np.asarray([row[0] for row in rows], dtype=np.intp), "labels": labels}
        self._prefix_cache = (key, prefixes)
        return prefixes

    # --- pieces -----------------------------------------------------------
    def _rows(self, snapshot, selected):
        """(row, cgroup label, [(label, value)...]) of the ``selected`` rows.
        One identity: ``cgroup`` (the path, display form), plus ``namespace``,
        ``pod``, ``container`` when the cgroup table knows them and ``unit``
        (the systemd unit the path lies in)."""
        table = snapshot.cgroups
        out = []
        for i in selected:
            path = table.paths[i]
            labels = table.labels[i] if i < len(table.labels) else {}
            extra = [(k, display(str(labels[k]))) for k in WORKLOAD_LABELS if labels.get(k)]
            unit = systemd_unit(path)
            if unit:
                extra.append(("unit", display(unit)))
            # Display form (tagger.names): a name that is not UTF-8 must not fail the scrape.
            out.append((i, display(path), extra))
        return out

    def _cgroup_metrics(self, latest):
        """The per-cgroup families for a registry (tests, generate_latest): read
        back from :meth:`cgroup_text`, so both ways of exporting say the same."""
        text = self.cgroup_text(latest)
        if text:
            yield from text_string_to_metric_families(text)

    def _node_metrics(self, snapshot):
        for key, value in snapshot.node.items():
            meta = NODE_METRICS.get(key)
            unit = meta.unit if meta else ""
            value = float(value)
            if math.isnan(value):
                continue
            name = metric_name("node." + key, unit)
            yield GaugeMetricFamily(name, (meta.help if meta else key) + " (node)", value=value)

    def _tags(self, tags):
        fam = GaugeMetricFamily("tagger_tag", "1 for each tag set on a cgroup",
                                labels=["cgroup", "key", "value"])
        for path, by_key in tags.items():
            for key, tag in by_key.items():
                value = tag.get("value") if isinstance(tag, dict) else getattr(tag, "value", tag)
                fam.add_metric([display(path), display(str(key)), display(str(value))], 1)
        yield fam

    def _actions(self, actions):
        applied = GaugeMetricFamily("tagger_action", "1 for each knob tagger changed, its value, and why",
                                    labels=["cgroup", "knob", "value", "rule", "dry_run"])
        numeric: dict[str, GaugeMetricFamily] = {}
        for act in actions:
            cgroup, knob = str(_get(act, "cgroup")), str(_get(act, "knob"))
            rule, value = str(_get(act, "rule")), _get(act, "value")
            cgroup = display(cgroup)
            dry = "true" if _get(act, "dry_run") else "false"
            applied.add_metric([cgroup, knob, display(str(value)), rule, dry], 1)
            for name, help_, extra, number in knob_values(knob, value):
                fam = numeric.get(name)
                if fam is None:
                    # dry_run here too: a limit only computed must not read as one in force.
                    fam = numeric[name] = GaugeMetricFamily(name, help_,
                                                            labels=["cgroup", "rule", "dry_run", *extra])
                fam.add_metric([cgroup, rule, dry, *extra.values()], number)
        yield applied
        yield from numeric.values()

    @staticmethod
    def _policy_steps(health):
        steps = health.get("policy_steps")
        if not steps:
            return
        fam = CounterMetricFamily(POLICY_STEPS[0], POLICY_STEPS[1], labels=["policy", "lever", "outcome"])
        for s in steps:
            fam.add_metric([display(str(s["policy"])), str(s["lever"]), str(s["outcome"])], float(s["steps"]))
        yield fam

    def _health(self, health, snapshot):
        info = InfoMetricFamily("tagger", "The agent's version and telemetry source")
        info.add_metric([], {"version": __version__,
                             "source": str(health.get("source") or getattr(snapshot, "source", "none"))})
        yield info
        stages = health.get("tick_stage_seconds")
        if isinstance(stages, dict) and stages:
            fam = GaugeMetricFamily("tagger_tick_stage_seconds", "Wall time of the last tick by stage",
                                    labels=["stage"])
            for stage, seconds in stages.items():
                fam.add_metric([str(stage)], float(seconds))
            yield fam
        for key, (name, kind, help_) in HEALTH.items():
            value = health.get(key)
            if value is None:
                continue
            value = float(value) * HEALTH_SCALE.get(key, 1.0)
            if math.isnan(value):
                continue
            if kind == "counter":
                yield CounterMetricFamily(name, help_, value=value)
            else:
                yield GaugeMetricFamily(name, help_, value=value)


def systemd_unit(path: str) -> str:
    """The systemd unit a cgroup path lies in (its deepest ``*.service`` or
    ``*.scope`` component): ``/system.slice/sshd.service`` -> ``sshd.service``."""
    for part in reversed(path.split("/")):
        if part.endswith(UNIT_SUFFIXES):
            return part
    return ""


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(value: str) -> str:
    """A label value as the text format writes it (prometheus_client's openmetrics._escape)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _get(obj, name):
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def parse_addr(addr: str) -> tuple[str, int]:
    """``"127.0.0.1:9473"``, ``":9473"`` (still loopback), ``"9473"``, ``"[::1]:9473"``."""
    text = str(addr).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        port_n = int(port)
    except ValueError:
        raise ConfigError(f"--metrics {addr!r}: expected HOST:PORT, e.g. {DEFAULT_ADDR}") from None
    if not 0 <= port_n < 65536:
        raise ConfigError(f"--metrics {addr!r}: port out of range")
    return host, port_n


class Exposition:
    """The text exposition of the latest tick, rendered at most once per
    :attr:`TaggerCollector.generation` and served as bytes (and their gzip).

    Rendering is the tick loop's work, not the scrapers': a scrape that finds
    the cached text older than the latest tick asks for a render and waits
    (up to about two ticks) for the loop to make it at the end of its next
    tick (:meth:`after_update`, called in the loop's thread); every other
    scrape gets the cached bytes at once.  Not in the scrape thread: a thread
    rendering for ~0.3 s holds the GIL for 5 ms slices, and each of the loop's
    ~15,000 cgroupfs reads then waits a slice to get it back (issue 13: a
    collect of 1 s became 20 s).  In the loop the cost is one render, counted
    in the tick's publish stage, and renders are spaced to at most
    ``render_share`` of the time (scrapes meanwhile get the previous text).
    A render that fails is remembered for its tick (500 until the next), so
    a bad tick costs one render, not one per scrape.  With no loop updating
    the collector (a stuck agent, a test), a scrape renders for itself."""

    def __init__(self, collector: TaggerCollector, registry: CollectorRegistry,
                 render_share: float = RENDER_SHARE, max_wait: float = MAX_RENDER_WAIT, clock=time.monotonic):
        self.collector = collector
        self.registry = registry
        self.render_share = render_share
        self.max_wait = max_wait
        self.clock = clock
        self._cond = threading.Condition()
        self._wanted = False
        self._rendering = False                   # a render is under way (loop or scrape)
        self._next_render = -math.inf
        self._updates: collections.deque[float] = collections.deque(maxlen=2)   # times of the last updates
        self._generation = -1
        self._plain: bytes | None = None
        self._gzip: bytes | None = None
        self._error: Exception | None = None
        self._last_scrape = -math.inf
        self.active = ACTIVE_SCRAPES
        self.renders = 0          # for tests and the benchmark: renders, not scrapes
        collector.listeners.append(self.after_update)

    def after_update(self, generation: int, latest):
        """The loop published a tick (its own thread): render it if a scrape asked."""
        now = self.clock()
        with self._cond:
            self._updates.append(now)
            eager = now - self._last_scrape <= self.active         # scraped lately: render every tick
            if not (self._wanted or eager) or self._rendering or now < self._next_render:
                return
            self._wanted, self._rendering = False, True
        self._render_now(generation, latest)

    def get(self, gzipped: bool = False) -> bytes:
        """The exposition (gzip-compressed if asked); raises what the render raised."""
        render_here = False
        with self._cond:
            now = self.clock()
            # Scraped lately: the loop has been rendering every tick, so the
            # cached text is the last tick rendered (the newest may be under way).
            eager = now - self._last_scrape <= self.active and self._plain is not None
            self._last_scrape = now
            generation = self.collector.generation
            stale = self._generation < generation and now >= self._next_render
            wait = self._wait_limit() if stale else 0.0
            # A loop that published within max_wait is slow (a loaded host), not
            # stuck: while scraped it renders every tick it can, and the cache
            # is a tick or two old, its samples stamped with their time.
            recent = bool(self._updates) and now - self._updates[-1] <= self.max_wait
            if stale and not (eager and (wait > 0 or recent)):
                if wait > 0 or self._rendering:
                    self._wanted = True
                    self._cond.wait_for(lambda: self._generation >= generation, timeout=wait or self.max_wait)
                else:                             # no loop is rendering (stuck, or none): here, once
                    render_here = self._rendering = True
            if self._generation < 0 and not render_here:          # nothing to serve yet
                self._cond.wait_for(lambda: not self._rendering, timeout=self.max_wait)
                if self._generation < 0 and not self._rendering:
                    render_here = self._rendering = True
        if render_here:
            self._render_now(*self.collector.latest())
        with self._cond:
            if self._error is not None:
                raise self._error
            if self._plain is None:
                raise RuntimeError("no exposition rendered yet")
            if not gzipped:
                return self._plain
            if self._gzip is None:                # zlib runs without the GIL
                self._gzip = gzip.compress(self._plain, GZIP_LEVEL, mtime=0)
            return self._gzip

    def liveness(self) -> tuple[bool, str]:
        """(alive, why) for /healthz: has the loop published a tick lately?
        Cheap: no render, no lock held for long."""
        with self._cond:
            updates = list(self._updates)
        if not updates:
            return False, "no tick published yet"
        age = self.clock() - updates[-1]
        interval = updates[-1] - updates[0] if len(updates) == 2 else 0.0
        limit = max(LIVENESS_TICKS * interval, LIVENESS_MIN)
        if age > limit:
            return False, f"no tick for {age:.1f} s (limit {limit:.0f} s)"
        return True, f"last tick {age:.1f} s ago"

    def _wait_limit(self) -> float:
        """How long a scrape may wait for the loop: ~2 ticks if it is alive, else 0."""
        if not self._updates:
            return 0.0
        interval = self._updates[-1] - self._updates[0] if len(self._updates) == 2 else self.max_wait / 2
        if self.clock() - self._updates[-1] > 2 * max(interval, 0.01):
            return 0.0                            # no tick lately: the loop is stuck or gone
        return min(self.max_wait, 2 * interval)

    def _render_now(self, generation: int, latest):
        started = self.clock()
        plain, error = None, None
        try:
            plain = self._render(latest)
        except Exception as err:
            error = err
            log.exception("rendering the metrics failed (every scrape gets 500 until the next tick)")
        with self._cond:
            self.renders += 1
            self._rendering = False
            self._next_render = started + (self.clock() - started) / self.render_share
            if generation >= self._generation:
                self._generation, self._plain, self._gzip, self._error = generation, plain, None, error
            self._cond.notify_all()

    def _render(self, latest) -> bytes:
        small = _Families(lambda: self.collector.families(latest, cgroup_metrics=False))
        return generate_latest(small) + self.collector.cgroup_text(latest).encode()


class _Families:
    """A one-shot collector for generate_latest (which only calls collect())."""

    def __init__(self, collect):
        self.collect = collect


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    """GET /metrics (or /): write the cached bytes, nothing else; GET /healthz:
    200 while the tick loop publishes ticks, 503 when it has stopped (a
    liveness probe that costs no render)."""

    timeout = SERVE_TIMEOUT            # socket timeout: a slowloris gives up its thread
    server: "_ExpositionServer"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            alive, why = self.server.exposition.liveness()
            body = f"{'ok' if alive else 'stalled'}: {why}\n".encode()
            self.send_response(200 if alive else 503)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path not in ("/metrics", "/"):
            self.send_error(404, "only /metrics and /healthz are served here")
            return
        gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
        try:
            body = self.server.exposition.get(gzipped)
        except Exception:
            self.send_error(500, "rendering the metrics failed (see the agent's log)")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):      # noqa: A002 (the base class's name)
        log.debug("scrape from %s: " + format, self.client_address[0], *args)


class _ExpositionServer(http.server.HTTPServer):
    """An HTTPServer answering on a fixed pool of threads fed by a bounded queue
    (socketserver's ThreadingMixIn would start a thread per connection)."""

    request_queue_size = SERVE_QUEUE

    def __init__(self, address, exposition: Exposition, threads: int = SERVE_THREADS,
                 backlog: int = SERVE_QUEUE, rate: float = SERVE_RATE):
        self.address_family = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)[0][0]
        self.exposition = exposition
        self._spacing = 1.0 / rate
        self._next_slot = 0.0
        self._pace_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=backlog)
        super().__init__(address, _MetricsHandler)
        self._workers = [threading.Thread(target=self._work, name=f"tagger-metrics-{i}", daemon=True)
                         for i in range(threads)]
        for worker in self._workers:
            worker.start()

    def process_request(self, request, client_address):
        try:
            self._queue.put_nowait((request, client_address))
        except queue.Full:
            self.shutdown_request(request)

    def _work(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, client_address = item
            try:
                self._pace()
                self.finish_request(request, client_address)
            except Exception:
                log.debug("scrape from %s failed", client_address, exc_info=True)
            finally:
                self.shutdown_request(request)

    def _pace(self):
        """Wait (without the GIL) for this scrape's slot under SERVE_RATE."""
        with self._pace_lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._spacing
        if slot > now:
            time.sleep(slot - now)

    def server_close(self):
        super().server_close()
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout=SERVE_TIMEOUT)


class MetricsServer:
    """The /metrics HTTP endpoint on its own registry and threads."""

    def __init__(self, collector: TaggerCollector, addr: str = DEFAULT_ADDR, *,
                 threads: int = SERVE_THREADS):
        self.collector = collector
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.exposition = Exposition(collector, self.registry)
        self.host, port = parse_addr(addr)
        self._server = _ExpositionServer((self.host, port), self.exposition, threads=threads)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="tagger-metrics", daemon=True)
        self._thread.start()
        self.port = self._server.server_port
        if self.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("metrics served on %s:%d, not loopback: anyone who can reach it sees "
                        "every cgroup's name and tags", self.host, self.port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self):
        self.collector.listeners.remove(self.exposition.after_update)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
