"""The render step: model in, rich segments and renderables out.

Only rows on screen are ever formatted (:func:`row_segments` is called per
visible line), which is what keeps a 10,000-cgroup tick cheap.  No Textual here
either, so the benchmark can time exactly this step.
"""

from __future__ import annotations

import math

import numpy as np
from rich.cells import cell_len, set_cell_size
from rich.console import Group
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

from tagger.names import display
from tagger.units import format_bytes, format_count, format_duration, format_percent

from .model import COLUMNS, SORTS, Column, Detail, TopModel, age

GAP = 1
STYLE_PLAIN = Style()
STYLE_TITLE = Style(bold=True, color="black", bgcolor="green")
STYLE_TITLE_SORTED = Style(bold=True, color="black", bgcolor="cyan")
STYLE_HOT = Style(color="red", bold=True)
STYLE_TAGS = Style(color="cyan")
STYLE_THROTTLE = Style(color="magenta", bold=True)
STYLE_THROTTLE_DRY = Style(color="magenta", italic=True, dim=True)
STYLE_SELECTED = Style(bgcolor="#264f78")
STYLE_MISSING = Style(dim=True)

SPARK = "▁▂▃▄▅▆▇█"


def layout(width: int, longest_name: int | None = None) -> list[tuple[Column, int]]:
    """Column widths for a terminal ``width``: numbers fixed, NAME and TAGS share
    the rest; NAME takes what the names on screen need, up to 55% of it."""
    fixed = sum(c.width + GAP for c in COLUMNS if c.width)
    flex = max(0, width - fixed - 2 * GAP)
    name_w = int(flex * 0.55)
    if longest_name is not None:
        name_w = min(name_w, longest_name + 1)
    name_w = max(12, name_w)
    tags_w = max(0, flex - name_w)
    return [(c, c.width or (name_w if c.key == "name" else tags_w)) for c in COLUMNS]


def _cell(text: str, width: int, right: bool) -> str:
    if cell_len(text) > width:
        return set_cell_size(text[: max(0, width - 1)], max(0, width - 1)) + "…" if width else ""
    return text.rjust(width) if right else set_cell_size(text, width)


def title_segments(model: TopModel, widths: list[tuple[Column, int]]) -> list[Segment]:
    """The column-title line; the sorted column carries an arrow."""
    sort_col = SORTS[model.state.sort][0]
    out = []
    for col, w in widths:
        title = col.title
        style = STYLE_TITLE
        if col.key == sort_col:
            title += "▼" if model.state.descending else "▲"
            style = STYLE_TITLE_SORTED
        out.append(Segment(_cell(title, w, right=col.width > 0) + " " * GAP, style))
    return out


def row_segments(model: TopModel, row: int, widths: list[tuple[Column, int]],
                 selected: bool = False) -> list[Segment]:
    """One table line for ``row`` (an index into ``model.rows``)."""
    rows, th = model.rows, model.thresholds
    out = []
    for col, w in widths:
        style = STYLE_PLAIN
        if col.key == "name":
            name = rows.names[row] or display(rows.paths[row])
            if model.state.tree:
                name = "  " * int(model.depth[row]) + name
            text = _cell(name, w, right=False)
        elif col.key == "tags":
            text, style = _cell(rows.tag_text[row], w, right=False), STYLE_TAGS
        else:
            value = float(rows.values[col.key][row])
            text = _cell(col.fmt(value), w, right=True)
            if math.isnan(value):
                style = STYLE_MISSING
            elif col.key == "throttle":
                style = STYLE_THROTTLE_DRY if rows.dry_throttle[row] else STYLE_THROTTLE
            elif col.metric is not None and value > th.get(col.metric, math.inf):
                style = STYLE_HOT
        out.append(Segment(text, style + STYLE_SELECTED if selected else style))
        out.append(Segment(" " * GAP, STYLE_SELECTED if selected else STYLE_PLAIN))
    return out


def screen_lines(model: TopModel, width: int, height: int) -> list[list[Segment]]:
    """A whole table screen (titles + visible rows) as segment lines: what the
    widget draws, used by the benchmark to time one screen."""
    window = model.window(height - 1) if model.rows is not None else ()
    longest = None
    if len(window):
        names, paths = model.rows.names, model.rows.paths
        indent = 2 * int(model.depth[window].max()) if model.state.tree else 0
        longest = max(len(names[i] or display(paths[i])) for i in window) + indent
    widths = layout(width, longest)
    lines = [title_segments(model, widths)]
    sel = model.selected_row()
    for row in window:
        lines.append(row_segments(model, int(row), widths, selected=(row == sel)))
    return lines


def header_text(model: TopModel) -> Text:
    """The node line: CPUs, node run-queue p99, events/s, drops, rules, actions, dry-run."""
    frame = model.frame
    if frame is None:
        return Text("tagger top — waiting for the first tick…", style="bold")
    node, health = frame.snapshot.node, frame.health
    t = Text()
    cpus = node.get("cpus", math.nan)
    busy = node.get("cpu.usage", math.nan)
    t.append("node ", "bold")
    t.append(f"{'-' if math.isnan(cpus) else f'{cpus:.0f}'} CPUs")
    if not math.isnan(busy):
        t.append(f" ({busy:.1f} busy)")
    t.append(" │ runq p99 ")
    runq = node.get("runq.p99", math.nan)
    t.append(format_duration(runq), STYLE_HOT if runq > model.thresholds.get("runq.p99", math.inf) else "")
    # The snapshot's node figures are per-second rates over this tick; the
    # agent's health counters are totals since it started.  Prefer the rates.
    events = node.get("events", health.get("events_per_s", math.nan))
    if "drops" in node:
        drops, drops_label = node["drops"], "drops/s"
    else:
        drops, drops_label = health.get("drops", math.nan), "drops"
    t.append(f" │ {format_count(events)} events/s │ ")
    t.append(f"{format_count(drops)} {drops_label}", STYLE_HOT if drops and drops > 0 else "")
    rules = health.get("rules")
    t.append(f" │ {'-' if rules is None else rules} rules │ {health.get('actions', 0)} actions")
    dry = health.get("dry_run")
    if dry:
        t.append(" │ ")
        t.append("DRY-RUN", "bold yellow")
    elif dry is False:
        t.append(" │ live", "bold green")
    source = health.get("source", frame.snapshot.source)
    if source and source != "bpf":
        t.append(f" │ source: {source}", "yellow")
    return t


def status_text(model: TopModel) -> Text:
    """The line under the table: counts, sort, filter, mode, pause, the last message."""
    s = model.state
    t = Text()
    if model.rows is not None:
        t.append(f"{len(model.order):,}/{len(model.rows):,} cgroups")
    t.append(f" │ sort {s.sort} {'▼' if s.descending else '▲'} │ {'tree' if s.tree else 'flat'}")
    if s.filter:
        t.append(" │ filter ")
        t.append(s.filter, "bold cyan")
    if s.paused:
        t.append(" │ ")
        t.append("PAUSED", "bold reverse yellow")
    note = model.frame.health.get("note") if model.frame else None
    if note:
        t.append(f" │ {note}", "yellow")
    if s.message:
        t.append(f" │ {s.message}", "bold yellow")
    return t


def sparkline(values, width: int | None = None) -> str:
    """Unicode block sparkline, scaled from 0 to the max; NaN (absent) is a space."""
    v = np.asarray(values, dtype=np.float64)
    if width is not None and len(v) > width:
        v = v[-width:]
    finite = v[np.isfinite(v)]
    top = float(finite.max()) if len(finite) else 0.0
    out = []
    for x in v:
        if not math.isfinite(x):
            out.append(" ")
        elif top <= 0:
            out.append(SPARK[0])
        else:
            out.append(SPARK[min(len(SPARK) - 1, int(x / top * (len(SPARK) - 1) + 0.5))])
    return "".join(out)


def histogram_text(title: str, counts: np.ndarray, edges: np.ndarray, bar_width: int = 24) -> Text:
    """A latency histogram, one line per bucket, trimmed to the buckets in use."""
    t = Text(title + "\n", style="bold")
    counts = np.asarray(counts, dtype=np.float64)
    used = np.flatnonzero(counts > 0)
    if len(edges) < 2 or not len(used):
        t.append("  no events this tick\n", STYLE_MISSING)
        return t
    top = counts.max()
    for b in range(used[0], used[-1] + 1):
        label = f"{format_duration(edges[b]):>6}–{format_duration(edges[b + 1]):<6}"
        bar = "█" * int(round(counts[b] / top * bar_width)) if counts[b] else ""
        t.append(f"  {label} ")
        t.append(f"{bar:<{bar_width}}", "green")
        t.append(f" {format_count(counts[b])}\n")
    return t


def detail_renderable(detail: Detail | None, message: str = ""):
    """The detail pane for the selected cgroup."""
    if detail is None:
        return Text(message or "nothing selected", style=STYLE_MISSING)
    v = detail.values
    head = Text()
    head.append(detail.name, "bold")
    head.append(f"  {display(detail.path)}", "dim")
    if detail.labels:
        head.append("  " + " ".join(f"{k}={val}" for k, val in sorted(detail.labels.items())), "cyan")
    figures = Text(
        f"cpu {v['cpu.usage']:.2f} CPUs ({format_percent(v['cpu.share'])} of node)  "
        f"runq wait {format_duration(v['runq.wait'])}/s  p50 {format_duration(v['runq.p50'])}  "
        f"p99 {format_duration(v['runq.p99'])}  max {format_duration(v['runq.max'])}  "
        f"slowdown {_ratio(v['runq.slowdown'])}  preempted {format_count(v['sched.preempted'])}/s\n"
        f"io {format_count(v['io.ops'])} ops/s  read {format_bytes(v['io.read_bytes'], True)}  "
        f"write {format_bytes(v['io.write_bytes'], True)}  p99 {format_duration(v['io.lat.p99'])}  "
        f"slowdown {_ratio(v['io.slowdown'])}  throttled {format_percent(v['cpu.throttled'])}  "
        f"mem {format_bytes(v['mem.current'])}  psi cpu {format_percent(v['psi.cpu.some'])} "
        f"io {format_percent(v['psi.io.some'])}")

    spark = Text(f"last {len(detail.history['cpu'])} ticks\n", "bold")
    for key, label, fmt in (("cpu", "cpu", lambda x: f"{x:.2f} CPUs"),
                            ("runq", "runq p99", format_duration), ("io", "io p99", format_duration)):
        series = detail.history[key]
        last = series[-1] if len(series) else math.nan
        spark.append(f"{label:>9} ", "bold")
        spark.append(sparkline(series), "green")
        spark.append(f" {'-' if math.isnan(last) else fmt(last)}\n")
    who = Text()
    who.append_text(_ranked("waited most behind", detail.waited_behind))
    who.append_text(_ranked("held up most", detail.held_up))

    tags = Text("tags\n", "bold")
    if not detail.tags:
        tags.append("  none\n", STYLE_MISSING)
    for tag in detail.tags:
        tags.append(display(f"  {tag.key}={tag.value}"), STYLE_TAGS)
        tags.append(f"  rule {tag.rule or '?'}  since {_ago(age(tag.since, detail.t))}\n")

    acts = Text("actions\n", "bold")
    if not detail.actions:
        acts.append("  none\n", STYLE_MISSING)
    for a in detail.actions:
        acts.append(f"  {a.knob} = {a.value}", STYLE_THROTTLE_DRY if a.dry_run else STYLE_THROTTLE)
        acts.append(f"  (was {a.original})\n    rule {a.rule or '?'}  since {_ago(age(a.since, detail.t))}"
                    + ("  dry-run" if a.dry_run else "") + "\n")

    events = Text("recent tag events\n", "bold")
    if not detail.events:
        events.append("  none\n", STYLE_MISSING)
    for e in reversed(detail.events):
        change = {"added": f"+{e.key}={e.value}", "removed": f"-{e.key}={e.old}",
                  "changed": f"{e.key}: {e.old} → {e.value}"}.get(e.kind, f"{e.kind} {e.key}")
        events.append(f"  {_ago(age(e.t, detail.t))} ago  {display(change)}  rule {e.rule or '?'}\n")

    # Side by side so the whole pane fits half a terminal: the pictures first,
    # then what tagger thinks and did about it.
    upper = Table.grid(padding=(0, 3))
    upper.add_row(histogram_text("run-queue latency", detail.runq_hist, detail.hist_edges),
                  histogram_text("block I/O latency", detail.io_hist, detail.hist_edges), who)
    lower = Table.grid(padding=(0, 3))
    lower.add_row(Text.assemble(tags, acts), events)

    parts = [head]
    if message:
        parts.append(Text(message, "bold yellow"))
    return Group(*parts, figures, upper, spark, lower)


def _ranked(title: str, items: list[tuple[str, float]]) -> Text:
    """(name, seconds of run-queue wait per second), most first."""
    t = Text(title + "\n", "bold")
    if not items:
        t.append("  nobody this tick\n", STYLE_MISSING)
    for name, wait in items:
        t.append(f"  {format_duration(wait):>8}/s  {name}\n")
    return t


def _ratio(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}x"


def _ago(seconds: float) -> str:
    return "?" if math.isnan(seconds) else format_duration(seconds)
