"""``tagger stat``: per-cgroup CPU, run-queue and I/O figures, like pidstat."""

from __future__ import annotations

import json
import math
import sys
import time

import click
import numpy as np

from tagger.cli.figures import wait_fraction
from tagger.cli.params import duration
from tagger.clock import epoch
from tagger.names import display
from tagger.units import format_bytes, format_count, format_duration

#: (header, metric, formatter, width): the columns of the table, in order.
COLUMNS = (
    ("CPU", "cpu.usage", lambda v: f"{v:.2f}", 6),
    ("WAIT%", "runq.wait_share", lambda v: f"{v * 100:.1f}", 6),
    ("RUNQ-P99", "runq.p99", format_duration, 9),
    ("SLOWDN", "runq.slowdown", lambda v: f"{v:.2f}", 6),
    ("SW/s", "sched.switches", format_count, 6),
    ("PRE/s", "sched.preempted", format_count, 6),
    ("IOPS", "io.ops", format_count, 6),
    ("READ/s", "io.read_bytes", format_bytes, 9),
    ("WRITE/s", "io.write_bytes", format_bytes, 9),
    ("IO-P99", "io.lat.p99", format_duration, 8),
)
SORT_KEYS = {"cpu": "cpu.usage", "wait": "runq.wait_share", "runq": "runq.p99", "io": "io.ops",
             "slowdown": "runq.slowdown", "name": None}


@click.command()
@click.option("-i", "--interval", default="1s", show_default=True, metavar="DURATION", callback=duration(),
              help="Time between reports, e.g. 500ms, 2s.")
@click.option("-c", "--count", type=click.IntRange(min=1), default=None,
              help="Stop after this many reports (default: until Ctrl-C).")
@click.option("--cgroup", "globs", multiple=True, metavar="GLOB",
              help='Only cgroups whose path matches, e.g. "/system.slice/**" (repeatable).')
@click.option("--json", "as_json", is_flag=True, help="One JSON object per report (JSON lines).")
@click.option("-a", "--all", "show_all", is_flag=True, help="Also cgroups that did nothing this interval.")
@click.option("-s", "--sort", type=click.Choice(sorted(SORT_KEYS)), default="cpu", show_default=True,
              help="Order of the rows (largest first; name: alphabetical).")
@click.option("-n", "--top", "limit", type=click.IntRange(min=1), default=None,
              help="At most this many rows per report.")
@click.option("--fallback", is_flag=True, help="Do not load BPF: read cgroupfs and taskstats only.")
def stat(interval, count, globs, as_json, show_all, sort, limit, fallback):
    """Per-cgroup CPU, run-queue and I/O figures, one report per interval.

    \b
    Columns (per cgroup, its own tasks; rates per second):
      CPU       CPUs busy (1.00 = one whole CPU)
      WAIT%     share of runnable time spent waiting for a CPU,
                wait / (wait + run) (as in tagger top)
      RUNQ-P99  run-queue latency p99 (runnable -> running)
      SLOWDN    (wait + run) / run: how much longer CPU work takes than alone
      SW/s      voluntary switches (blocked);  PRE/s  involuntary (preempted)
      IOPS, READ/s, WRITE/s, IO-P99   block requests, bytes, latency p99
    A "-" is a figure that cannot be known this interval (no event).

    \b
    Examples:
      sudo tagger stat                         every second, busiest first
      sudo tagger stat -i 5s -c 3 --sort runq  three 5-second reports
      sudo tagger stat --cgroup '/system.slice/**' --json
    """
    from tagger.kubelet import KubeletLogs
    from tagger.telemetry import open_collector

    seconds = interval
    pattern = _compile_globs(globs)

    # Pods and containers by namespace/pod/container where the kubelet's logs say.
    with open_collector(prefer_bpf=not fallback, workload_names=KubeletLogs()) as coll:
        if not as_json:
            click.echo(f"tagger stat: {coll.source} telemetry, {seconds:g}s interval"
                       + ("" if count is None else f", {count} report(s)"), err=True)
        try:
            for snap in coll.stream(interval=seconds, count=count):
                rows = _select(snap, pattern, show_all, sort, limit)
                if as_json:
                    click.echo(json.dumps(_as_json(snap, rows), allow_nan=False, default=_nan_none))
                else:
                    _print_table(snap, rows)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass


#: Figures derived from snapshot metrics (cli/figures.py), by column key.
DERIVED = {
    "runq.wait_share": lambda snap: wait_fraction(snap.column("runq.wait"), snap.column("cpu.usage")),
}


def _column(snap, key) -> np.ndarray:
    derive = DERIVED.get(key)
    return derive(snap) if derive else snap.column(key)


def _compile_globs(globs):
    if not globs:
        return None
    from tagger.cgroupglob import GlobError, GlobSet

    try:
        return GlobSet(globs)
    except GlobError as err:
        raise click.BadParameter(str(err), param_hint="--cgroup")


def _select(snap, pattern, show_all, sort, limit) -> np.ndarray:
    paths = snap.cgroups.paths
    keep = np.ones(len(snap), bool)
    if pattern is not None:
        keep &= np.array([pattern.match(p) for p in paths], bool)
    if not show_all:
        active = np.zeros(len(snap), bool)
        for metric in ("cpu.usage", "runq.wait", "io.ops"):
            col = snap.column(metric)
            active |= np.nan_to_num(col) > 0
        keep &= active
    rows = np.nonzero(keep)[0]
    key = SORT_KEYS[sort]
    if key is None:
        rows = rows[np.argsort([paths[i] for i in rows], kind="stable")]
    else:
        values = np.nan_to_num(_column(snap, key)[rows], nan=-1.0)
        rows = rows[np.argsort(-values, kind="stable")]
    return rows[:limit] if limit else rows


def _print_table(snap, rows):
    stamp = time.strftime("%H:%M:%S")
    node = snap.node
    click.echo(f"\n{stamp}  node: {node.get('cpu.usage', math.nan):.2f}/{node.get('cpus', math.nan):.0f} CPUs busy,"
               f" runq p99 {format_duration(node.get('runq.p99', math.nan))},"
               f" {format_count(node.get('events', math.nan))} events/s, {len(snap)} cgroups")
    header = "  ".join(h.rjust(w) for h, _, _, w in COLUMNS)
    click.echo(f"{header}  CGROUP")
    columns = [_column(snap, metric) for _, metric, _, _ in COLUMNS]
    for i in rows:
        cells = []
        for (_, _, fmt, width), col in zip(COLUMNS, columns):
            v = float(col[i])
            cells.append(("-" if math.isnan(v) else fmt(v)).rjust(width))
        name = display(snap.cgroups.names[i])          # tagger.names: printable, not surrogates
        path = display(snap.cgroups.paths[i])
        label = path if name in (path, path.rsplit("/", 1)[-1]) else f"{path} ({name})"
        click.echo("  ".join(cells) + "  " + label)
    if len(rows) == 0:
        click.echo("  (no cgroup was active; -a shows them all)")


def _as_json(snap, rows) -> dict:
    # The table's figures, plus runq.wait itself (seconds waiting per second).
    keys = [metric for _, metric, _, _ in COLUMNS] + ["runq.wait"]
    columns = {key: _column(snap, key) for key in keys}
    return {
        "t": epoch(snap.t), "dt": snap.dt, "source": snap.source,
        "node": {k: _nan_none(float(v)) for k, v in snap.node.items()},
        "cgroups": [
            {"path": display(snap.cgroups.paths[i]), "name": display(snap.cgroups.names[i]),
             "labels": {display(k): display(str(v)) for k, v in snap.cgroups.labels[i].items()},
             **{key: _nan_none(float(col[i])) for key, col in columns.items()}}
            for i in rows
        ],
    }


def _nan_none(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return _nan_none(float(v))
    return v
