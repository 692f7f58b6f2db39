"""``tagger explain CGROUP``: why a cgroup has each of its tags.

For each tag: the rule that set it (and where it is written), since when, its
condition with every macro and figure it reads - metrics, node figures, the
wait charged to it by tagged cgroups - at the agent's latest tick, and what
clears it (``keep_for``, ``clear_when``); then the latency-slo policies'
latest judged steps that name it, as victim or culprit.  Everything comes from the running
agent's socket (its tags, latest Snapshot and rules directory); the rules are
loaded from that directory and evaluated here over that Snapshot, with the
tags as the agent holds them, so the figures are the ones its rules see.
"""

from __future__ import annotations

import json
import math
import time

import click
import numpy as np

from tagger.cli.actions import OUTCOME_TEXT
from tagger.client import DEFAULT_SOCKET, ApiClient, ApiError
from tagger.errors import RulesError
from tagger.names import display, parse
from tagger.publish.wire import from_display, json_safe, snapshot_from_plain
from tagger.rules import expr as ex
from tagger.rules import load_directory
from tagger.rules.engine import context_for
from tagger.snapshot import METRICS, NODE_METRICS, Snapshot
from tagger.units import format_bytes, format_count, format_duration, format_percent


def fmt_value(name: str, v) -> str:
    """A figure in its unit, as `tagger stat` would show it."""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "unknown"
    metric = NODE_METRICS.get(name[5:]) if name.startswith("node.") else METRICS.get(name)
    unit = metric.unit if metric else ""
    if name.startswith("culprit_of_tagged"):
        unit = "s/s"
    if unit == "s":
        return format_duration(v)
    if unit == "1/s":
        return f"{format_count(v)}/s"
    if unit == "bytes/s":
        return format_bytes(v, per_second=True)
    if unit == "bytes":
        return format_bytes(v)
    if unit == "fraction":
        return format_percent(v)
    if unit == "cpus":
        return f"{v:.3g} CPUs"
    if unit == "s/s":
        return f"{v:.3g} s/s"
    return f"{v:.4g}"


class _Explainer:
    """Evaluates the parts of rule conditions for one row."""

    def __init__(self, ruleset, snap: Snapshot, tags: dict, row: int):
        self.ruleset, self.snap, self.row = ruleset, snap, row
        self.ctx = context_for(ruleset, snap, tags)
        self.trees = {name: ex.parse(src) for name, src in ruleset.macros.items()}
        self.compiled: dict[str, ex.Compiled] = {}
        pending = dict(self.trees)
        while pending:                       # dependency order: a macro after those it reads
            progress = False
            for name, tree in list(pending.items()):
                if ex.names_in(tree) & set(pending) - {name}:
                    continue
                self.compiled[name] = ex.Compiler(self.compiled).compile(tree)
                del pending[name]
                progress = True
            if not progress:                 # cannot happen for a loaded RuleSet (no cycles)
                break

    def value(self, tree: ex.Node):
        c = ex.Compiler(self.compiled).compile(tree)
        v = c.const if c.fn is None else c.fn(self.ctx)
        v = np.broadcast_to(np.asarray(v), (len(self.snap),))[self.row]
        return bool(v) if c.type == "bool" else float(v)

    def parts(self, tree: ex.Node):
        """(macros, figures) a condition reads, macros expanded, in order of
        first use: [(name, source, value)], [(name, value)]."""
        macros, figures, seen = [], [], set()

        def walk(n: ex.Node):
            if n.kind == "name" and n.value in self.trees:
                if n.value not in seen:
                    seen.add(n.value)
                    macros.append((n.value, self.ruleset.macros[n.value], self.value(n)))
                    walk(self.trees[n.value])
                return
            if n.kind in ("name", "node", "call") and not (n.kind == "call" and n.value in ("min", "max", "abs")):
                label = (n.value if n.kind == "name" else f"node.{n.value}" if n.kind == "node"
                         else f'{n.value}({", ".join(repr(a.value) for a in n.args)})')
                if label not in seen and not (n.kind == "call" and n.value == "tag"):
                    seen.add(label)
                    figures.append((label, self.value(n)))
                if n.kind == "call":
                    return
            for a in n.args:
                walk(a)
        walk(tree)
        return macros, figures

    def charged_by(self, tree: ex.Node) -> list[tuple[str, str, float]]:
        """For culprit_* calls: (victim path, tag, wait s/s) charged to this row by tagged victims."""
        out = []
        stack = [tree]
        calls = set()
        while stack:
            n = stack.pop()
            if n.kind == "name" and n.value in self.trees:
                stack.append(self.trees[n.value])
            if n.kind == "call" and n.value in ("culprit_of_tagged", "culprit_most"):
                calls.add((n.args[0].value, n.args[1].value))
            stack.extend(n.args)
        paths = self.snap.cgroups.paths
        for key, value in sorted(calls):
            tagged = self.ctx.tag_is(key, value)
            for victim, culprit, wait in self.snap.culprits:
                if culprit == self.row and victim != culprit and tagged[victim]:
                    out.append((display(paths[victim]), f"{key}={value}", float(wait)))
        return sorted(out, key=lambda x: -x[2])



def _condition(ex_, src: str, tree) -> dict:
    """A condition as explain shows it: its text, its value now, and each
    macro and figure it reads with theirs."""
    macros, figures = ex_.parts(tree)
    return {"expr": src, "now": ex_.value(tree),
            "macros": [{"name": m, "expr": s, "now": v} for m, s, v in macros],
            "figures": dict(figures)}

def explain_tags(ruleset, snap: Snapshot, tags: dict, path: str) -> dict:
    """Per tag of ``path``: rule, since, condition parts and values, what
    clears it.  ``tags``: the socket's ``tags`` reply, {path: {key: {value,
    rule, since}}}."""
    row = snap.cgroups.index(path)
    if row is None:
        raise click.ClickException(f"{path}: not in the agent's latest snapshot")
    values = {p: {k: t["value"] for k, t in by_key.items()} for p, by_key in tags.items()}
    ex_ = _Explainer(ruleset, snap, values, row)
    out = {}
    held = tags.get(path) or {}
    for key in sorted(held):
        info = held[key]
        value = info["value"]
        entry = {"value": value, "rule": info.get("rule"), "since": info.get("since")}
        rule = next((r for r in ruleset.rules if r.name == info.get("rule")), None)
        if rule is None:
            entry["note"] = ("set by hand" if not info.get("rule") else
                             f"rule {info.get('rule')!r} is not in {ruleset.directory} now")
            out[key] = entry
            continue
        entry.update({"source": rule.source, "for": rule.for_, "keep_for": rule.keep_for,
                      "match": list(rule.match.cgroup)})
        if rule.when is not None:
            entry["when"] = _condition(ex_, rule.when_src, rule.when.tree)
            charged = ex_.charged_by(rule.when.tree)
            if charged:
                entry["charged_by"] = [{"victim": v, "tag": t, "wait": w} for v, t, w in charged]
        if rule.clear_when is not None:
            entry["clear_when"] = _condition(ex_, rule.clear_when_src, rule.clear_when.tree)
        entry["clears"] = _clears(rule, entry)
        out[key] = entry
    return out


def _clears(rule, entry) -> str:
    keep = f" for {format_duration(rule.keep_for)}" if rule.keep_for else ""
    if rule.when is None:
        return f"when the cgroup stops matching {', '.join(rule.match.cgroup)}" + \
            (f" and {format_duration(rule.keep_for)} pass" if rule.keep_for else "")
    when_now = entry["when"]["now"]
    if rule.clear_when is not None:
        release = (not when_now) and entry["clear_when"]["now"]
        how = f"when `clear_when` holds and `when` does not, together{keep}"
    else:
        release = not when_now
        how = f"when `when` stops holding{keep or ' (at once)'}"
    return how + (" - releasing now" if release else " - not now")


def steps_naming(steps, path: str) -> list[dict]:
    """The policies' recent steps (the agent's health ``policy_recent_steps``)
    whose victim or culprit is ``path`` (either name form), oldest first."""
    names = {path, display(path)}
    return [s for s in steps or () if isinstance(s, dict) and (s.get("victim") in names or s.get("culprit") in names)]


def _print_steps(path: str, steps: list[dict], now: float):
    if not steps:
        return
    click.echo(f"\n  policy steps naming {display(path)} (latest last):")
    mine = {path, display(path)}
    for s in steps[-10:]:
        t = s.get("t")
        when = f"{format_duration(max(0.0, now - t))} ago" if isinstance(t, (int, float)) else "?"
        role = (f"culprit of {display(str(s.get('victim')))}" if s.get("culprit") in mine
                else f"victim; culprit {display(str(s.get('culprit')))}")
        before, after = s.get("before"), s.get("after")
        fig = " -> ".join("-" if not isinstance(x, (int, float)) or math.isnan(x) else format_duration(x)
                          for x in (before, after))
        click.echo(f"    {when:>10}  {s.get('policy', '?')}: {s.get('lever', '?')} "
                   f"{OUTCOME_TEXT.get(s.get('outcome'), str(s.get('outcome')))} ({role}; victim's SLO metric {fig})")


def _print(path: str, snap: Snapshot, out: dict, now: float):
    click.echo(f"{path}  (tick {snap.seq}, {time.strftime('%H:%M:%S', time.localtime(snap.t))})")
    if not out:
        click.echo("  no tags")
        return
    for key, e in out.items():
        click.echo(f"\n  {key}={e['value']}")
        since = e.get("since")
        if isinstance(since, (int, float)):
            click.echo(f"    since    {time.strftime('%H:%M:%S', time.localtime(since))} "
                       f"({format_duration(max(0.0, now - since))} ago)")
        if "note" in e:
            click.echo(f"    {e['note']}")
            continue
        click.echo(f"    rule     {e['rule']}  ({e['source']})")
        if "when" not in e:
            click.echo(f"    set      while it matches {', '.join(e['match'])} (no condition)")
        for part, label in (("when", "set when"), ("clear_when", "clear_when")):
            w = e.get(part)
            if not w:
                continue
            held = f"; must hold {format_duration(e['for'])}" if part == "when" and e["for"] else ""
            click.echo(f"    {label:<8} {w['expr']}  [now {fmt_value('', w['now'])}{held}]")
            for m in w["macros"]:
                click.echo(f"      {m['name']:<20} {fmt_value('', m['now']):<6} = {m['expr']}")
            if w["figures"]:
                click.echo("      values: " + ", ".join(f"{k} {fmt_value(k, v)}" for k, v in w["figures"].items()))
        for c in e.get("charged_by", []):
            click.echo(f"      charged  {c['wait']:.3g} s/s of {c['victim']} ({c['tag']}) wait")
        click.echo(f"    clears   {e['clears']}")


@click.command()
@click.argument("cgroup")
@click.option("--rules", "rules_dir", metavar="DIR",
              help="Rules directory to explain with (default: the one the agent runs).")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option("--socket", "socket_path", metavar="PATH", default=DEFAULT_SOCKET, show_default=True)
def explain(cgroup, rules_dir, as_json, socket_path):
    """Why CGROUP has each of its tags: the rule, the values that set it,
    since when, and what clears it.

    \b
    For each tag: the rule and its file:line, when it was set, the rule's
    condition with every macro and figure it reads at the agent's latest
    tick (a culprit's tag also lists the starved cgroups' wait charged to
    it), and what clears it: `when` no longer holding for `keep_for`, or
    `clear_when`.  Then the latency-slo policies' latest judged steps naming
    CGROUP, as victim or culprit: the lever and its outcome (helped: kept; no
    effect: undone; given back: released or still needed).  From the running
    agent's socket.

    \b
    Example:
      tagger explain /system.slice/nginx.service
    """
    try:
        with ApiClient(socket_path, timeout=10.0) as client:
            tags_plain = client.request("tags")
            plain = client.request("snapshot", detail=True)
            summary = client.request("rules") or {}
            health = client.request("health") or {}
    except ApiError as err:
        raise click.ClickException(str(err)) from None
    if not plain:
        raise click.ClickException("the agent has no snapshot yet: try again after its first tick")
    directory = rules_dir or summary.get("dir")
    if not directory:
        raise click.ClickException("the agent names no rules directory: pass --rules DIR")
    try:
        ruleset = load_directory(directory)
    except RulesError as err:
        raise click.ClickException(f"{directory}: {err}") from None
    # The socket sends names in display form (tagger.names); the snapshot and
    # tags come back in the internal form the rules match.
    snap = snapshot_from_plain(plain)
    path = cgroup if cgroup == "/" else "/" + cgroup.strip("/")
    if snap.cgroups.index(parse(path)) is None:
        raise click.ClickException(f"{path}: no such cgroup in the agent's latest snapshot "
                                   "(see `tagger tags` or `tagger stat`)")
    now = time.time()
    out = explain_tags(ruleset, snap, from_display(tags_plain or {}), parse(path))
    steps = steps_naming(health.get("policy_recent_steps"), parse(path))
    if as_json:
        click.echo(json.dumps(json_safe({"cgroup": path, "t": snap.t, "tags": out, "policy_steps": steps}),
                              indent=2, sort_keys=True,
                              default=lambda o: bool(o) if isinstance(o, np.bool_) else float(o)))
    else:
        _print(path, snap, out, now)
        _print_steps(parse(path), steps, now)
