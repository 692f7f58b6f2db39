"""The one wire codec: frames of the socket API and the plain forms of
tagger's records, each encoder beside its decoder.

* Frames (docs/api.md "Wire format"): a big-endian u32 body length, then one
  msgpack map.  :func:`encode_frame` / :func:`take_frame` + :func:`decode_body`.
* Plain values: dataclasses, numpy values, tuples and sets as the dicts,
  lists, floats, ints and strings that msgpack, JSON and Redis carry
  (:func:`to_plain`), times in epoch seconds (tagger.clock).  Strings go out in
  display form (:mod:`tagger.names`): a cgroup name that is not UTF-8 would
  make every encoder raise; :func:`from_display` turns them back.
* Snapshots: :func:`snapshot_to_plain` / :func:`snapshot_from_plain`; tag
  events: :func:`event_plain` / :func:`event_from_plain`; current tags:
  :func:`current_tags_plain` / :func:`current_tags_from_plain`.
"""

from __future__ import annotations

import dataclasses
import math
import struct

import msgpack
import numpy as np

from tagger.cgroupglob import GlobSet
from tagger.clock import epoch
from tagger.names import display, parse
from tagger.snapshot import CULPRIT_DTYPE, PREEMPTION_DTYPE, CgroupTable, Snapshot
from tagger.tags import Tag, TagEvent

# --- frames -------------------------------------------------------------------------

#: Versions of the wire protocol this tagger speaks (docs/api.md "Handshake").
API_VERSIONS = (1,)
API_VERSION = API_VERSIONS[-1]
DEFAULT_SOCKET = "/run/tagger/tagger.sock"
HEADER = struct.Struct(">I")          # big-endian u32 body length, then a msgpack map


class FrameTooLarge(ValueError):
    """A frame header announcing more bytes than the reader accepts."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"frame of {size} bytes exceeds {limit}")
        self.size = size
        self.limit = limit


def encode_frame(obj) -> bytes:
    """One frame: the length header and ``obj`` as msgpack."""
    body = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def take_frame(buf: bytearray, limit: int) -> bytes | None:
    """The body of the first whole frame in ``buf``, removed from it; None
    while it is incomplete.  A header announcing more than ``limit`` bytes
    raises :class:`FrameTooLarge` (the stream cannot be trusted past it)."""
    if len(buf) < HEADER.size:
        return None
    (n,) = HEADER.unpack_from(buf)
    if n > limit:
        raise FrameTooLarge(n, limit)
    if len(buf) < HEADER.size + n:
        return None
    body = bytes(buf[HEADER.size:HEADER.size + n])
    del buf[:HEADER.size + n]
    return body


def decode_body(body: bytes, strict_map_key: bool = True):
    """A frame's body back into the object :func:`encode_frame` was given.
    The server is strict (a request's keys are strings); a client accepts
    the integer keys some replies carry."""
    return msgpack.unpackb(body, raw=False, strict_map_key=strict_map_key)


# --- plain values ---------------------------------------------------------------------

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


def from_display(obj):
    """Plain values with every string back in internal form (tagger.names):
    the inverse of the display form :func:`to_plain` sends."""
    if isinstance(obj, str):
        return parse(obj)
    if isinstance(obj, dict):
        return {from_display(k): from_display(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_display(v) for v in obj]
    return obj


def json_safe(obj):
    """``to_plain`` output with NaN and infinities as None (JSON has neither)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


# --- snapshots ------------------------------------------------------------------------

def snapshot_to_plain(snap, patterns=None, detail: bool = False) -> dict:
    """A Snapshot as plain values, optionally only the rows whose path matches;
    ``t`` in epoch seconds.  ``detail`` adds the latency histograms
    (``histograms``: name -> per-row bucket counts, ``hist_edges``: seconds),
    ``preemptions`` ([victim row, preemptor row, count], rows of this reply's
    table) and ``culprits`` (runq.wait.by: [victim row, culprit row, wait s/s])."""
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


def snapshot_from_plain(d: dict) -> Snapshot:
    """The inverse of :func:`snapshot_to_plain` (``t`` stays in epoch seconds);
    histograms and preemptions are used when the agent sends them
    (``histograms``, ``hist_edges``, ``preemptions`` as [victim, preemptor,
    count] rows, ``culprits`` as [victim, culprit, wait] rows)."""
    cg = d.get("cgroups") or {}
    paths = [parse(p) for p in cg.get("paths") or ()]
    names = [parse(n) for n in cg["names"]] if cg.get("names") is not None else None
    labels = from_display(cg["labels"]) if cg.get("labels") is not None else None
    table = CgroupTable.from_paths(paths, names, labels, cg.get("ids"))
    cols = {k: np.asarray(v, dtype=np.float64) for k, v in (d.get("columns") or {}).items()}
    hists = {k: np.asarray(v, dtype=np.float64) for k, v in (d.get("histograms") or {}).items()}
    return Snapshot(t=float(d.get("t", 0.0)), dt=float(d.get("dt", 0.0)), cgroups=table, columns=cols,
                    node={k: float(v) for k, v in (d.get("node") or {}).items()},
                    histograms=hists, hist_edges=np.asarray(d.get("hist_edges") or (), dtype=np.float64),
                    preemptions=_pairs_from_plain(d.get("preemptions"), PREEMPTION_DTYPE),
                    culprits=_pairs_from_plain(d.get("culprits"), CULPRIT_DTYPE),
                    source=str(d.get("source", "socket")), seq=int(d.get("seq", 0)))


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


def _pairs_from_plain(rows, dtype: np.dtype) -> np.ndarray:
    """The inverse of :func:`_pairs_plain`: [row, row, value] rows (or maps by field name)."""
    rows = rows or ()
    out = np.zeros(len(rows), dtype)
    for j, row in enumerate(rows):
        out[j] = tuple(row[name] for name in dtype.names) if isinstance(row, dict) else tuple(row)
    return out


# --- tags -----------------------------------------------------------------------------

def event_plain(ev) -> dict:
    """A TagEvent as plain values, its ``t`` in epoch seconds (tagger.clock)."""
    plain = to_plain(ev)
    if isinstance(plain.get("t"), (int, float)):
        plain["t"] = epoch(plain["t"])
    return plain


def event_from_plain(d: dict) -> TagEvent:
    """The inverse of :func:`event_plain` (``t`` stays in epoch seconds)."""
    d = from_display(d)
    return TagEvent(float(d["t"]), d["cgroup"], d["key"], d.get("value"), d.get("old"), d.get("rule") or "",
                    d["kind"])


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


def current_tags_from_plain(d: dict) -> dict:
    """The inverse of :func:`current_tags_plain`: {path: {key: Tag}}, ``since``
    in epoch seconds (NaN when the agent sent none)."""
    return {path: {key: Tag(key, tag.get("value"), tag.get("rule") or "",
                            math.nan if tag.get("since") is None else float(tag["since"]))
                   for key, tag in tags.items()}
            for path, tags in from_display(d).items()}


def _epoch_or_none(t):
    return epoch(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else t


def _attr(obj, name):
    return to_plain(obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None))
