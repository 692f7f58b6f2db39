"""Prometheus exposition of the latest tick: per-cgroup metrics, tags, applied
actions and the agent's own health.

A custom collector (prometheus_client's "custom collector" pattern) builds the
families from the latest published tick, so a cgroup that vanished is simply
absent from the next scrape: no labelled Gauge children to forget and leak.
The tick loop only swaps one reference (:meth:`TaggerCollector.publish`).
Serving the text - rendered once per tick, cached, answered by a bounded pool
(issue 13) - is :mod:`tagger.publish.exposition`'s.
"""

from __future__ import annotations

import logging
import math
import re
import threading

import numpy as np
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
    "loop_guard_priority": ("tagger_loop_guard_priority", "gauge",
                            "SCHED_FIFO priority a starved tick loop is run at (0: unguarded, --rt-priority 0 "
                            "or refused)"),
    "tick_boosts": ("tagger_tick_boosts", "counter",
                    "Ticks found starved (over 0.25 s late or stuck) and run as SCHED_FIFO"),
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
                "could not finish); a kept demotion given back on trial: released (the SLO held without "
                "it), needed (put back at once)")

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
        self._staged: dict = {}          # parts of this tick's reports until its health comes

    name = "prometheus"

    def publish(self, report: TickReport) -> None:
        """Publish one tick (a :class:`~tagger.publish.report.Publisher`).
        An exposition is of whole ticks: the parts of a report without health
        (the pipeline hands tags out early, for the socket and Redis) wait for
        the tick's report that has it, and are published with it, once;
        parts no report of the tick brought keep their last value.  The
        objects must not be changed afterwards (the tick loop makes new ones)."""
        staged = self._staged
        for part in ("snapshot", "tags", "actions"):
            value = getattr(report, part)
            if value is not None:
                staged[part] = value
        if report.health is None:
            return
        self._staged = {}
        _, (snapshot, tags, actions, _health, _totals) = self.latest()
        self.update(staged.get("snapshot", snapshot), staged.get("tags", tags), staged.get("actions", actions),
                    report.health, accumulate="snapshot" in staged)

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

