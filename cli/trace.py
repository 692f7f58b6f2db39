"""``tagger record`` and ``tagger replay``: telemetry to a trace file, and back
through the rules without root."""

from __future__ import annotations

import json
import math
import sys
import warnings

import click

from tagger.errors import RulesError
from tagger.names import display
from tagger.cli.params import duration


@click.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Trace file to write (conventionally *.tgr).")
@click.option("--duration", default="60s", show_default=True, callback=duration(),
              help="How long to record (10s, 5m, ...).")
@click.option("--interval", default="1s", show_default=True, callback=duration(),
              help="Tick length: one snapshot per interval.")
@click.option("--cgroupfs-only", is_flag=True, help="Do not load BPF; record cgroupfs figures only.")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress line (shown only when stderr is a terminal) and no summary.")
def record(output, duration, interval, cgroupfs_only, quiet):
    """Record snapshots of every cgroup to a trace file.

    \b
    The trace holds what the rules see each tick (cgroup table, metrics, node
    figures, histograms, who preempted whom) and replays anywhere, without
    root or BPF:
      sudo tagger record --duration 2m -o busy-hour.tgr
      tagger replay busy-hour.tgr --rules ./my-rules
    Ctrl-C stops early; the file keeps every whole snapshot written.  On a
    terminal a progress line counts the snapshots (not with --quiet).
    """
    from tagger.kubelet import KubeletLogs
    from tagger.telemetry import open_collector
    from tagger.publish.trace import record as write_trace

    count = max(1, math.ceil(duration / interval - 1e-9))

    def progress(snap, n):
        click.echo(f"\r{n}/{count} snapshots, {len(snap)} cgroups", nl=False, err=True)

    live = sys.stderr.isatty() and not quiet
    written = 0
    try:
        # Pod and container names are recorded too: a replay elsewhere has them.
        with open_collector(prefer_bpf=not cgroupfs_only, workload_names=KubeletLogs()) as coll:
            written = write_trace(coll.stream(interval=interval, count=count), output,
                                  meta={"interval": interval},
                                  on_snapshot=progress if live else None)
    except KeyboardInterrupt:
        click.echo("\ninterrupted; the trace keeps every whole snapshot", err=True)
        return
    if live:
        click.echo("", err=True)
    if not quiet:
        click.echo(f"{output}: {written} snapshots", err=True)


def _fmt_event(ev, t0: float) -> str:
    rel = ev.t - t0
    if ev.kind == "added":
        what = f"{ev.key}={ev.value}"
    elif ev.kind == "changed":
        what = f"{ev.key}={ev.value} (was {ev.old})"
    else:
        what = f"{ev.key} (was {ev.old})"
    rule = f"  [{ev.rule}]" if ev.rule else ""
    return display(f"+{rel:9.3f}s  {ev.kind:<7}  {ev.cgroup}  {what}{rule}")


class _Replayed:
    """The pipeline's collector in a replay: the trace's snapshot it is handed."""

    snapshot = None

    def tick(self):
        return self.snapshot

    def health(self) -> dict:
        return {"source": "trace"}


class _Out:
    """stdout through click (so tests capture it), one write per line."""

    @staticmethod
    def write(text: str):
        click.echo(text, nl=False)


@click.command()
@click.argument("trace", type=click.Path(exists=True, dir_okay=False), metavar="TRACE")
@click.option("--rules", "rules_dir", metavar="DIR", help="Rules directory [default: the packaged rules].")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines: one object per tag event, then one summary object.")
def replay(trace, rules_dir, as_json):
    """Run rules over a recorded trace and print the tag timeline.

    \b
    Needs no root and no BPF; the output depends only on the trace and the
    rules, so two replays are byte-identical (diff them to see what a rule
    change does):
      tagger replay busy-hour.tgr --rules old/ > before.txt
      tagger replay busy-hour.tgr --rules new/ > after.txt
      diff before.txt after.txt
    Times are seconds since the first snapshot.  A truncated trace replays up
    to its last whole snapshot, with a warning on stderr.
    """
    from tagger.agent.pipeline import Pipeline
    from tagger.default_rules import DIRECTORY
    from tagger.rules import Engine, load_directory
    from tagger.tags import TagStore
    from tagger.publish.trace import TraceReader, TraceTruncated

    rules_dir = rules_dir or str(DIRECTORY)
    try:
        ruleset = load_directory(rules_dir)
    except RulesError as err:
        raise click.ClickException(f"rules {rules_dir} do not load:\n{err}") from None
    store = TagStore(history=0)
    reader = TraceReader(trace)
    replayed = _Replayed()
    # The agent's own pipeline, with the trace for a collector and nothing to act or publish.
    pipeline = Pipeline(replayed, Engine(ruleset, store), store, share_cpu=False)
    t0 = None
    n_events = 0
    out = _Out()
    if not as_json:
        out.write(f"# {trace}: trace format {reader.header.get('version')}, "
                  f"recorded on {reader.header.get('host', '?')}; rules {len(ruleset.rules)}\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TraceTruncated)
        for snap in reader:
            if t0 is None:
                t0 = snap.t
            replayed.snapshot = snap
            report = pipeline.tick()
            if pipeline.last_error is not None:
                raise click.ClickException(f"replay failed at snapshot {reader.records} "
                                           f"(t +{snap.t - t0:.3f}s): {pipeline.last_error}")
            for ev in report.events:
                n_events += 1
                if as_json:
                    d = ev.as_dict()
                    d["t"] = round(ev.t - t0, 9)
                    d["type"] = "event"
                    d["cgroup"] = display(d["cgroup"])      # tagger.names: JSON is UTF-8
                    out.write(json.dumps(d, sort_keys=True) + "\n")
                else:
                    out.write(_fmt_event(ev, t0) + "\n")
    final = {path: {k: tag.value for k, tag in sorted(tags.items())}
             for path, tags in sorted(store.current().items())}
    if as_json:
        out.write(json.dumps({"type": "summary", "snapshots": reader.records, "events": n_events,
                              "truncated": reader.truncated, "tags": final}, sort_keys=True) + "\n")
    else:
        out.write(f"# {reader.records} snapshots, {n_events} tag events; tags at the end:\n")
        for path, tags in final.items():
            out.write(f"{path}  " + " ".join(f"{k}={v}" for k, v in tags.items()) + "\n")
    for w in caught:
        if issubclass(w.category, TraceTruncated):
            click.echo(f"warning: {w.message}", err=True)
