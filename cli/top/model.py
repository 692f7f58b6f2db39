"""The live view's model: frames in, sorted and filtered rows out.  No Textual.

A :class:`Frame` is what one refresh shows: a Snapshot plus tagger's view of it
(tags, actions, recent tag events, health).  :class:`TopModel` turns frames
into rows (one per cgroup, values kept as numpy columns, formatted only when a
row is drawn), keeps the view state (sort, filter, tree/flat, selection, detail,
pause) and the last :data:`HISTORY_TICKS` ticks for the sparklines.

Everything here is pure and fast enough for 10,000 cgroups a tick: sorting is
one numpy argsort, formatting happens for the rows on screen only (the render
step in :mod:`.render`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tagger.cli.figures import wait_fraction
from tagger.knobs import CpuMax
from tagger.names import display
from tagger.snapshot import Snapshot
from tagger.tags import Tag, TagEvent
from tagger.units import format_count, format_duration

#: Sparklines in the detail pane cover this many ticks.
HISTORY_TICKS = 60
#: Recent tag events kept for the detail pane (all cgroups together).
EVENT_HISTORY = 1000


# ---------------------------------------------------------------------------
# What sources hand over: the engine's own Tag and TagEvent (tagger.tags),
# AppliedAction (tagger.actions); the socket sends plain dicts, which the
# coerce_* functions turn into the same classes.

@dataclass(frozen=True)
class ActionInfo:
    cgroup: str
    knob: str            # "cpu.max", "io.max", "rdt", ...
    value: Any
    original: Any = None
    rule: str = ""
    since: float = math.nan
    dry_run: bool = False


def _get(obj, name, default=None):
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def coerce_tag(obj, key: str | None = None) -> Tag:
    if isinstance(obj, Tag):
        return obj
    if isinstance(obj, str):            # {key: value} maps without provenance
        return Tag(key or "", obj, "", math.nan)
    return Tag(str(_get(obj, "key", key or "")), str(_get(obj, "value", "")),
                   str(_get(obj, "rule", "") or ""), _float(_get(obj, "since")))


def coerce_event(obj) -> TagEvent:
    if isinstance(obj, TagEvent):
        return obj
    return TagEvent(_float(_get(obj, "t")), str(_get(obj, "cgroup", "")),
                        str(_get(obj, "key", "")), _get(obj, "value"), _get(obj, "old"),
                        str(_get(obj, "rule", "") or ""), str(_get(obj, "kind", "")))


def coerce_action(obj) -> ActionInfo:
    if isinstance(obj, ActionInfo):
        return obj
    return ActionInfo(str(_get(obj, "cgroup", "")), str(_get(obj, "knob", "")),
                      _get(obj, "value"), _get(obj, "original"),
                      str(_get(obj, "rule", "") or ""), _float(_get(obj, "since")),
                      bool(_get(obj, "dry_run", False)))


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class Frame:
    """What one refresh shows.  ``health`` keys (all optional): ``events_per_s``,
    ``drops``, ``rules``, ``actions``, ``dry_run``, ``source``, ``note``."""

    snapshot: Snapshot
    tags: dict[str, dict[str, Tag]] = field(default_factory=dict)
    actions: dict[str, list[ActionInfo]] = field(default_factory=dict)
    events: list[TagEvent] = field(default_factory=list)
    health: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, snapshot, tags=None, actions=None, events=(), health=None) -> "Frame":
        """A Frame from the engine's objects or plain dicts (the socket's)."""
        tag_map = {
            path: {k: coerce_tag(v, k) for k, v in (per or {}).items()}
            for path, per in (tags or {}).items()
        }
        if isinstance(actions, dict):
            act_map = {path: [coerce_action(a) for a in acts] for path, acts in actions.items()}
        else:                             # a flat list of AppliedAction
            act_map = {}
            for a in actions or ():
                info = coerce_action(a)
                act_map.setdefault(info.cgroup, []).append(info)
        return cls(snapshot, tag_map, act_map, [coerce_event(e) for e in events], dict(health or {}))


# ---------------------------------------------------------------------------
# Rate methods: the derived figures, vectorised, every division guarded.

def per_second(delta, dt):
    """A counter delta over a period as a rate; NaN where the period is not positive."""
    delta = np.asarray(delta, dtype=np.float64)
    dt = np.asarray(dt, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(dt > 0, delta / np.where(dt > 0, dt, 1.0), np.nan)


def quota_cpus(value) -> float:
    """CPUs allowed by a cpu.max value: ``"50000 100000"`` -> 0.5, ``"max 100000"``
    -> NaN (no limit), a bare number is already CPUs.  NaN when unreadable."""
    if value is None:
        return math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):          # {"max": CPUs} from an ActionSet-like dict
        return quota_cpus(value.get("max"))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        text = f"{value[0]} {value[1]}"
    else:
        text = str(value).strip().removesuffix("CPUs").removesuffix("CPU").strip()
    if len(text.split()) == 1:
        try:
            return float(text)
        except ValueError:
            return math.nan
    try:
        cpus = CpuMax.parse(text).cpus           # tagger.knobs: cpu.max's own text
    except (ValueError, IndexError, ZeroDivisionError):
        return math.nan
    return cpus if math.isfinite(cpus) and cpus >= 0 else math.nan


# ---------------------------------------------------------------------------
# Columns, thresholds, keys: the constant tables.

@dataclass(frozen=True)
class Column:
    key: str                   # the row-value name (and sort key where sortable)
    title: str
    width: int                 # 0 = shares the space left over
    metric: str | None         # the metric a rule threshold refers to, for colour
    fmt: Callable[[float], str] | None = None


def _fmt_cpus(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _fmt_ratio(x: float) -> str:
    return "-" if math.isnan(x) else (f"{x:.2f}x" if x < 10 else f"{x:.0f}x")


def _fmt_pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 100:.0f}%" if x >= 0.1 else f"{x * 100:.1f}%"


def _fmt_quota(x: float) -> str:
    return "" if math.isnan(x) else f"{_fmt_cpus(x)} CPU"


COLUMNS: tuple[Column, ...] = (
    Column("name", "NAME", 0, None),
    Column("cpu", "CPU", 6, "cpu.usage", _fmt_cpus),
    Column("runq", "RUNQ p99", 9, "runq.p99", format_duration),
    Column("wait", "WAIT%", 6, "wait", _fmt_pct),
    Column("slowdown", "SLOWDOWN", 8, "runq.slowdown", _fmt_ratio),
    Column("io", "IO p99", 8, "io.lat.p99", format_duration),
    Column("iops", "IOPS", 6, "io.ops", format_count),
    Column("throttle", "THROTTLE", 9, None, _fmt_quota),
    Column("tags", "TAGS", 0, None),
)
COLUMN_BY_KEY = {c.key: c for c in COLUMNS}

#: Colour thresholds when no rule mentions the metric.  Same units as the
#: metric (CPUs, seconds, fractions, ratios, 1/s).  "wait" is WAIT% (a fraction).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "cpu.usage": 0.8,
    "runq.p99": 2e-3,
    "wait": 0.25,
    "runq.slowdown": 1.5,
    "io.lat.p99": 10e-3,
    "io.ops": 2000.0,
}

#: Sort keys: key -> (row-value name, descending by default).
SORTS: dict[str, tuple[str, bool]] = {
    "cpu": ("cpu", True),
    "runq": ("runq", True),
    "io": ("io", True),
    "name": ("name", False),
    "slowdown": ("slowdown", True),
}


@dataclass(frozen=True)
class Key:
    key: str                  # Textual key name
    action: str               # Textual action string
    description: str          # footer text
    show: bool = True
    display: str | None = None


#: Every key binding, in footer order (the footer is built from this table).
KEYS: tuple[Key, ...] = (
    Key("c", "sort('cpu')", "cpu"),
    Key("r", "sort('runq')", "runq"),
    Key("i", "sort('io')", "io"),
    Key("n", "sort('name')", "name"),
    Key("s", "sort('slowdown')", "slowdown"),
    Key("slash", "filter", "filter", display="/"),
    Key("t", "tree", "tree/flat"),
    Key("enter", "detail", "detail", display="⏎"),
    Key("p", "pause", "pause"),
    Key("q", "quit", "quit"),
    Key("escape", "back", "back", show=False),
    Key("up,k", "move(-1)", "up", show=False),
    Key("down,j", "move(1)", "down", show=False),
    Key("pageup", "page(-1)", "page up", show=False),
    Key("pagedown", "page(1)", "page down", show=False),
    Key("home", "move_to(0)", "first", show=False),
    Key("end", "move_to(-1)", "last", show=False),
    # Textual's default quit key is ctrl+q; top users reach for ctrl+c.
    Key("ctrl+c", "quit", "quit", show=False),
)

def thresholds_from_ruleset(ruleset) -> dict[str, float]:
    """Colour thresholds: for each shown metric, the lowest ``metric > N`` (or
    ``>=``) any rule's ``when`` or any macro of ``ruleset`` compares against,
    else the default.  Read from the rules' own parse trees (tagger.rules.expr)."""
    from tagger.rules.expr import parse
    found: dict[str, float] = {}
    sources = [r.when_src for r in ruleset.rules if r.when_src] + list(ruleset.macros.values())
    for src in sources:
        stack = [parse(src)]
        while stack:
            node = stack.pop()
            stack.extend(node.args)
            if node.kind != "cmp" or node.value not in (">", ">="):
                continue
            metric, bound = node.args
            if metric.kind == "name" and metric.value in DEFAULT_THRESHOLDS and bound.kind == "num":
                found[metric.value] = min(float(bound.value), found.get(metric.value, math.inf))
    return {**DEFAULT_THRESHOLDS, **found}


def thresholds_from_rules(directory: str | Path | None) -> dict[str, float]:
    """:func:`thresholds_from_ruleset` of the rules in ``directory``; the defaults
    when there is none or it does not load (colours must not stop the view:
    ``tagger rules check`` is the place to report its errors)."""
    from tagger.errors import RulesError
    from tagger.rules import load_directory
    if directory is None:
        return dict(DEFAULT_THRESHOLDS)
    try:
        return thresholds_from_ruleset(load_directory(directory))
    except (RulesError, OSError):
        return dict(DEFAULT_THRESHOLDS)


# ---------------------------------------------------------------------------
# Rows

class Rows:
    """One frame's rows: numpy value columns aligned with the snapshot's cgroup
    table, plus the per-row text the filter and TAGS column need."""

    _name_cache: tuple[list[str], list[str], np.ndarray] | None = None
    _display_cache: tuple[list[str], list[str]] | None = None

    def __init__(self, frame: Frame):
        snap = frame.snapshot
        self.frame = frame
        self.paths: list[str] = snap.cgroups.paths       # the cgroups' own names: keys
        self.names: list[str] = self._display_names(snap.cgroups.names)
        n = len(snap)
        cpu = snap.column("cpu.usage")
        self.values: dict[str, np.ndarray] = {
            "cpu": cpu,
            "runq": snap.column("runq.p99"),
            "wait": wait_fraction(snap.column("runq.wait"), cpu),
            "slowdown": snap.column("runq.slowdown"),
            "io": snap.column("io.lat.p99"),
            "iops": snap.column("io.ops"),
            "throttle": np.full(n, np.nan),
        }
        self.dry_throttle = np.zeros(n, bool)
        index = snap.cgroups.index
        for path, acts in frame.actions.items():
            i = index(path)
            if i is None:
                continue
            for a in acts:
                # The actuator names the CPU quota "cpu.max" on v1 and v2 alike,
                # value "QUOTA PERIOD" in microseconds.
                if a.knob == "cpu.max":
                    self.values["throttle"][i] = quota_cpus(a.value)
                    self.dry_throttle[i] = a.dry_run
        self.tag_text: list[str] = [""] * n
        for path, tags in frame.tags.items():
            i = index(path)
            if i is not None and tags:
                self.tag_text[i] = display(" ".join(f"{t.key}={t.value}"
                                                    for t in sorted(tags.values(), key=lambda t: t.key)))
        self._name_order: np.ndarray | None = None
        self._haystack: list[str] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @staticmethod
    def _display_names(names: list[str]) -> list[str]:
        """``names`` in display form (tagger.names): a name that is not UTF-8
        would otherwise reach the terminal as lone surrogates and shift the
        columns.  The table's list is the same object while the cgroups stay
        the same, so most frames reuse the last conversion."""
        cached = Rows._display_cache
        if cached is None or cached[0] is not names:
            cached = Rows._display_cache = (names, [display(n) for n in names])
        return cached[1]

    def order(self, sort: str, descending: bool) -> np.ndarray:
        """Row indices sorted by ``sort``; unknown values (NaN) last either way."""
        if sort == "name":
            if self._name_order is None:
                cached = Rows._name_cache
                # Names rarely change between ticks; comparing two lists of the
                # same string objects is far cheaper than sorting 10k strings.
                if cached is not None and cached[0] == self.names and cached[1] == self.paths:
                    self._name_order = cached[2]
                else:
                    keys = [(n.lower(), p) for n, p in zip(self.names, self.paths)]
                    self._name_order = np.array(sorted(range(len(keys)), key=keys.__getitem__),
                                                dtype=np.int64)
                    Rows._name_cache = (self.names, self.paths, self._name_order)
            return self._name_order[::-1] if descending else self._name_order
        v = self.values[SORTS[sort][0]]
        # -NaN is NaN, so negating keeps NaN at the end of an ascending argsort.
        return np.argsort(-v if descending else v, kind="stable")

    def matching(self, needle: str) -> np.ndarray:
        """Boolean mask of rows whose name, path or tags contain ``needle``
        (case-insensitive; ``key=value`` matches a tag)."""
        if self._haystack is None:
            self._haystack = [f"{n}\0{display(p)}\0{t}".lower()
                              for n, p, t in zip(self.names, self.paths, self.tag_text)]
        needle = needle.lower()
        return np.fromiter((needle in h for h in self._haystack), bool, len(self._haystack))


def parent_of(path: str) -> str | None:
    if path == "/":
        return None
    head = path.rsplit("/", 1)[0]
    return head or "/"


def parent_rows(paths: list[str]) -> np.ndarray:
    """Per row, the row of its parent cgroup, or -1 when the parent is not in the table."""
    pos = {p: i for i, p in enumerate(paths)}
    get = pos.get
    return np.fromiter((-1 if p == "/" else get(p.rsplit("/", 1)[0] or "/", -1) for p in paths),
                       np.int64, len(paths))


def tree_order(paths: list[str], flat_order, keep: np.ndarray | None = None,
               parents: np.ndarray | None = None):
    """Depth-first order of ``paths`` with siblings in ``flat_order``'s order, and
    each row's depth in the shown tree.  Rows whose parent is absent are roots.
    Linear: children are collected by walking the flat order once, never sorted."""
    n = len(paths)
    parents = parent_rows(paths) if parents is None else parents
    children: dict[int, list[int]] = {}
    roots: list[int] = []
    par = parents.tolist()
    for i in np.asarray(flat_order).tolist():
        p = par[i]
        if p < 0:
            roots.append(i)
        else:
            children.setdefault(p, []).append(i)
    keep_list = keep.tolist() if keep is not None else None
    order: list[int] = []
    depth = [0] * n
    stack = [(i, 0) for i in reversed(roots)]
    pop, push = stack.pop, stack.extend
    while stack:
        i, d = pop()
        depth[i] = d
        if keep_list is None or keep_list[i]:
            order.append(i)
        kids = children.get(i)
        if kids:
            push((k, d + 1) for k in reversed(kids))
    return np.array(order, dtype=np.int64), np.array(depth, dtype=np.int32)


# ---------------------------------------------------------------------------
# View state and the model

@dataclass
class ViewState:
    sort: str = "cpu"
    descending: bool = True
    filter: str = ""
    tree: bool = False
    selected: str | None = None      # the selected cgroup's path: selection follows it
    cursor: int = 0                  # its position in the shown order
    top: int = 0                     # first shown row (scroll offset)
    detail: bool = False
    paused: bool = False
    message: str = ""                # one line for the status bar (e.g. "X vanished")


@dataclass
class Detail:
    """Everything the detail pane shows for one cgroup."""
    path: str
    name: str
    labels: dict[str, str]
    values: dict[str, float]
    runq_hist: np.ndarray
    io_hist: np.ndarray
    hist_edges: np.ndarray
    history: dict[str, np.ndarray]      # "cpu", "runq", "io" -> last HISTORY_TICKS values, oldest first
    # Run-queue wait by who held the CPU (Snapshot.culprits, runq.wait.by):
    # (name, seconds of wait per second), most first.
    waited_behind: list[tuple[str, float]]  # cgroups this one waited behind
    held_up: list[tuple[str, float]]        # cgroups that waited behind this one
    tags: list[Tag]
    actions: list[ActionInfo]
    events: list[TagEvent]
    t: float


DETAIL_METRICS = ("cpu.usage", "cpu.share", "runq.wait", "runq.p50", "runq.p99", "runq.max",
                  "runq.slowdown", "sched.preempted", "io.ops", "io.read_bytes", "io.write_bytes",
                  "io.lat.p99", "io.slowdown", "cpu.throttled", "mem.current", "psi.cpu.some",
                  "psi.io.some")


class TopModel:
    """The view's state machine.  Feed it frames with :meth:`apply_frame`; drive it
    with the key methods; read :meth:`window`, :meth:`detail`, :attr:`rows`."""

    def __init__(self, thresholds: dict[str, float] | None = None):
        self.state = ViewState()
        self.thresholds = dict(thresholds or DEFAULT_THRESHOLDS)
        self.frame: Frame | None = None
        self.rows: Rows | None = None
        self.order = np.zeros(0, np.int64)     # shown rows, top to bottom
        self.depth = np.zeros(0, np.int32)     # per row, tree mode only
        self._history: deque = deque(maxlen=HISTORY_TICKS)
        self.events: deque[TagEvent] = deque(maxlen=EVENT_HISTORY)
        self.generation = 0                    # bumps whenever what is shown may change
        self._parents: tuple[list[str], np.ndarray] | None = None

    # -- frames -----------------------------------------------------------
    def apply_frame(self, frame: Frame) -> None:
        self.frame = frame
        self.rows = Rows(frame)
        snap = frame.snapshot
        self._history.append((snap.cgroups, snap.column("cpu.usage"), snap.column("runq.p99"),
                              snap.column("io.lat.p99")))
        self.events.extend(frame.events)
        self._reorder(refresh=True)

    # -- keys -------------------------------------------------------------
    def sort_by(self, key: str) -> None:
        """Sort by ``key``; the same key again reverses the direction."""
        if key not in SORTS:
            raise ValueError(f"unknown sort {key!r} (one of: {', '.join(SORTS)})")
        if self.state.sort == key:
            self.state.descending = not self.state.descending
        else:
            self.state.sort, self.state.descending = key, SORTS[key][1]
        self._reorder()

    def set_filter(self, text: str) -> None:
        self.state.filter = text.strip()
        self._reorder()

    def toggle_tree(self) -> None:
        self.state.tree = not self.state.tree
        self._reorder()

    def toggle_detail(self) -> None:
        self.state.detail = not self.state.detail and self.state.selected is not None
        self.generation += 1

    def move(self, delta: int) -> None:
        self.move_to(self.state.cursor + delta)

    def move_to(self, position: int) -> None:
        """Select the row shown at ``position`` (negative counts from the end)."""
        n = len(self.order)
        if n == 0:
            return
        if position < 0:
            position += n
        position = max(0, min(n - 1, position))
        self.state.cursor = position
        self.state.selected = self.rows.paths[self.order[position]]
        self.state.message = ""
        self.generation += 1

    # -- what to draw -----------------------------------------------------
    def window(self, height: int) -> np.ndarray:
        """The rows to draw in ``height`` lines, scrolled so the selection shows."""
        s = self.state
        height = max(1, height)
        if s.cursor < s.top:
            s.top = s.cursor
        elif s.cursor >= s.top + height:
            s.top = s.cursor - height + 1
        s.top = max(0, min(s.top, max(0, len(self.order) - height)))
        return self.order[s.top:s.top + height]

    def selected_row(self) -> int | None:
        if not len(self.order):
            return None
        return int(self.order[self.state.cursor])

    def empty_reason(self) -> str | None:
        """Why no rows are shown, or None when some are."""
        if self.frame is None:
            return "waiting for the first tick…"
        if len(self.order):
            return None
        if len(self.rows) == 0:
            return "no cgroups in this snapshot"
        return f"no cgroup matches the filter {self.state.filter!r} (Esc clears it)"

    def history(self, path: str) -> dict[str, np.ndarray]:
        out = {k: np.full(len(self._history), np.nan) for k in ("cpu", "runq", "io")}
        for t, (table, cpu, runq, io) in enumerate(self._history):
            i = table.index(path)
            if i is not None:
                out["cpu"][t], out["runq"][t], out["io"][t] = cpu[i], runq[i], io[i]
        return out

    def detail(self, path: str | None = None) -> Detail | None:
        """The detail pane's content for ``path`` (default: the selection)."""
        path = path or self.state.selected
        if path is None or self.frame is None:
            return None
        snap = self.frame.snapshot
        i = snap.cgroups.index(path)
        if i is None:
            return None
        nb = max(0, len(snap.hist_edges) - 1)

        def hist(names):
            total = np.zeros(nb)
            for name in names:
                h = snap.histograms.get(name)
                if h is not None and h.shape[0] > i and h.shape[1] == nb:
                    total = total + h[i]
            return total

        names = snap.cgroups.names
        def ranked(mine: str, theirs: str) -> list[tuple[str, float]]:
            by = snap.culprits
            rows = by[by[mine] == i] if len(by) else by
            return [(display(names[r[theirs]]), float(r["wait"]))
                    for r in np.sort(rows, order="wait")[::-1][:5] if 0 <= r[theirs] < len(names)]
        tags = sorted(self.frame.tags.get(path, {}).values(), key=lambda t: t.key)
        events = [e for e in self.events if e.cgroup == path][-10:]
        return Detail(
            path=path, name=display(names[i]),
            labels={display(k): display(str(v)) for k, v in snap.cgroups.labels[i].items()},
            values={m: float(snap.column(m)[i]) for m in DETAIL_METRICS},
            runq_hist=hist(("runq.wakeup", "runq.new", "runq.preempt")), io_hist=hist(("io.lat",)),
            hist_edges=np.asarray(snap.hist_edges), history=self.history(path),
            waited_behind=ranked("victim", "culprit"), held_up=ranked("culprit", "victim"), tags=tags,
            actions=list(self.frame.actions.get(path, ())), events=events, t=snap.t)

    # -- internals --------------------------------------------------------
    def _reorder(self, refresh: bool = False) -> None:
        """Recompute the shown order, then put the cursor back on the selected
        cgroup; if it is gone, keep the cursor's place and say why."""
        s, rows = self.state, self.rows
        self.generation += 1
        if rows is None:
            return
        order = rows.order(s.sort, s.descending)
        keep = rows.matching(s.filter) if s.filter else None
        if s.tree:
            # The hierarchy rarely changes between ticks: reuse its parent rows.
            if self._parents is None or self._parents[0] != rows.paths:
                self._parents = (rows.paths, parent_rows(rows.paths))
            order, self.depth = tree_order(rows.paths, order, keep, self._parents[1])
        elif keep is not None:
            order = order[keep[order]]
        self.order = order
        if not len(order):
            s.cursor = 0
            if refresh and s.selected is not None and rows.frame.snapshot.cgroups.index(s.selected) is None:
                s.message = f"{s.selected} vanished"
            return
        if s.selected is None:
            self.move_to(0)
            return
        i = rows.frame.snapshot.cgroups.index(s.selected)
        if i is not None:
            hits = np.flatnonzero(order == i)
            if len(hits):
                s.cursor = int(hits[0])
                return
        # The selected cgroup vanished (or the filter hides it): stay at the
        # same screen position so the eye does not have to hunt for the cursor.
        gone = s.selected
        self.move_to(min(s.cursor, len(order) - 1))
        if i is None:
            s.message = f"{gone} vanished"


def age(since: float, now_monotonic: float) -> float:
    """Seconds since ``since``.  Engine timestamps are monotonic (the Snapshot's
    clock); a value that looks like a Unix time (after 2001) is wall-clock."""
    if math.isnan(since):
        return math.nan
    if since > 1e9:
        return max(0.0, time.time() - since)
    return max(0.0, now_monotonic - since)
