"""Publishers: the ways the world reads tagger's tags (Prometheus, Redis).

The socket API lives in :mod:`tagger.api`; the daemon wires them all.  Helpers
shared by the publishers and the socket API live here: cgroup path globs and
turning the engine's records (Tag, TagEvent, AppliedAction, Snapshot) into
plain values that msgpack, JSON and Redis can carry, times in epoch seconds
(tagger.clock).  Plain values carry
cgroup names in their display form (:mod:`tagger.names`): a name that is not
UTF-8 would make every encoder raise.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tagger.cgroupglob import GlobSet
from tagger.clock import epoch
from tagger.names import display


def path_matches(path: str, patterns) -> bool:
    """True if ``path`` matches any of ``patterns`` (globs or a GlobSet; ``None`` or
    empty: everything), read as every cgroup glob is (tagger.cgroupglob)."""
    if not patterns:
        return True
    if not isinstance(patterns, GlobSet):
        patterns = GlobSet(patterns)
    return patterns.match(path)


def to_plain(obj):
    """Dataclasses, numpy scalars/arrays, tuples and sets as plain dicts, lists,
    floats, ints and strings (what msgpack, JSON and Redis carry).  NaN stays a
    float NaN; callers that need JSON turn it into null.  Strings come out in
    display form (tagger.names), so a cgroup name of any bytes can be encoded."""
    if isinstance(obj, str):
        return display(obj)
    if obj is None or isinstance(obj, (bool, int, bytes)):
        return obj
    if isinstance(obj, float):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.name.startswith("_")}
    if isinstance(obj, dict):
        return {display(str(k)): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in obj]
    return display(str(obj))


def json_safe(obj):
    """``to_plain`` output with NaN and infinities as None (JSON has neither)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def snapshot_to_plain(snap, patterns=None, detail: bool = False) -> dict:
    """A Snapshot as plain values, optionally only the rows whose path matches.
    ``detail`` adds the latency histograms (``histograms``: name -> per-row
    bucket counts, ``hist_edges``: seconds), ``preemptions`` ([victim row,
    preemptor row, count], rows of this reply's table) and ``culprits``
    (runq.wait.by: [victim row, culprit row, wait s/s])."""
    rows = [i for i, p in enumerate(snap.cgroups.paths) if path_matches(p, patterns)] \
        if patterns else None
    table = snap.cgroups

    def pick(seq):
        return list(seq) if rows is None else [seq[i] for i in rows]

    columns = {}
    for name, col in snap.columns.items():
        col = np.asarray(col, dtype=np.float64)
        columns[name] = (col if rows is None else col[rows]).tolist()
    out = {
        "t": epoch(snap.t), "dt": float(snap.dt), "seq": int(snap.seq), "source": snap.source,
        "cgroups": {
            "ids": [int(x) for x in pick(table.ids)],
            "paths": [display(p) for p in pick(table.paths)],
            "names": [display(n) for n in pick(table.names)],
            "labels": [to_plain(x) for x in pick(table.labels)],
        },
        "columns": columns,
        "node": {k: float(v) for k, v in snap.node.items()},
    }
    if detail:
        out["histograms"] = {k: (np.asarray(h) if rows is None else np.asarray(h)[rows]).tolist()
                             for k, h in snap.histograms.items()}
        out["hist_edges"] = np.asarray(snap.hist_edges, dtype=np.float64).tolist()
        remap = None if rows is None else {old: new for new, old in enumerate(rows)}
        out["preemptions"] = _pairs_plain(snap.preemptions, remap)
        out["culprits"] = _pairs_plain(snap.culprits, remap)
    return out


def _pairs_plain(pairs, remap) -> list:
    """[row, row, value] rows of this reply's table (pairs with a row left out are dropped)."""
    out = []
    for a, b, value in pairs:
        a, b = int(a), int(b)
        if remap is not None:
            if a not in remap or b not in remap:
                continue
            a, b = remap[a], remap[b]
        out.append([a, b, float(value)])
    return out


def event_plain(ev) -> dict:
    """A TagEvent as plain values, its ``t`` in epoch seconds (tagger.clock)."""
    plain = to_plain(ev)
    if isinstance(plain.get("t"), (int, float)):
        plain["t"] = epoch(plain["t"])
    return plain


def current_tags_plain(current: dict, patterns=None) -> dict:
    """``TagStore.current()`` ({path: {key: Tag}}) as {path: {key: {value, rule, since}}},
    ``since`` in epoch seconds (tagger.clock), optionally only the paths that
    match ``patterns``."""
    out = {}
    for path, tags in current.items():
        if patterns and not path_matches(path, patterns):
            continue
        out[display(path)] = {display(str(key)): {"value": _attr(tag, "value"), "rule": _attr(tag, "rule"),
                                                  "since": _epoch_or_none(_attr(tag, "since"))}
                              for key, tag in tags.items()}
    return out


def _epoch_or_none(t):
    return epoch(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else t


def _attr(obj, name):
    return to_plain(obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None))
