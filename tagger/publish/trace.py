"""Trace files: Snapshots recorded as a versioned, streamed msgpack file (``.tgr``).

The file is a plain concatenation of msgpack maps (docs/trace-format.md): one
header record, then one record per Snapshot, each flushed as it is written, so
a recording that is cut short (crash, full disk, Ctrl-C) still replays up to
its last whole record.  Numeric columns travel as raw little-endian bytes;
nothing in a trace depends on the host that reads it.
"""

from __future__ import annotations

import io
import os
import socket
import time
import warnings
from typing import BinaryIO, Iterable, Iterator

import msgpack
import numpy as np

from tagger import __version__
from tagger.errors import TaggerError
from tagger.names import display, parse
from tagger.publish.report import TickReport
from tagger.snapshot import CULPRIT_DTYPE, PREEMPTION_DTYPE, CgroupTable, Snapshot

MAGIC = "tagger-trace"
VERSION = 1

_F8 = np.dtype("<f8")
_U8 = np.dtype("<u8")
_I4 = np.dtype("<i4")


class TraceError(TaggerError, ValueError):
    """Not a tagger trace, an unsupported version, or a malformed record."""


class TraceTruncated(UserWarning):
    """The trace ends inside a record; everything before it was read."""


# --- encoding ---------------------------------------------------------------------

def _array_bytes(a: np.ndarray, dtype: np.dtype) -> bytes:
    return np.ascontiguousarray(a, dtype=dtype).tobytes()


def _table_record(table: CgroupTable) -> dict:
    # Names in display form (tagger.names): msgpack strings are UTF-8, a cgroup
    # name need not be; _table parses them back to the very same names.
    return {"ids": _array_bytes(table.ids, _U8), "paths": [display(p) for p in table.paths],
            "names": [display(n) for n in table.names],
            "labels": [{display(k): display(str(v)) for k, v in x.items()} for x in table.labels]}


def _same_table(a: CgroupTable, b: CgroupTable | None) -> bool:
    return b is not None and (a is b or (a.paths == b.paths and a.names == b.names
                                         and a.labels == b.labels
                                         and np.array_equal(a.ids, b.ids)))


def snapshot_record(snap: Snapshot, previous_table: CgroupTable | None = None) -> dict:
    """The msgpack map for one Snapshot.  ``cgroups`` is None when the table is
    the one of the previous record (most ticks), which keeps traces small."""
    hist = {}
    for name, h in snap.histograms.items():
        h = np.asarray(h)
        hist[name] = {"shape": list(h.shape), "data": _array_bytes(h, _F8)}
    return {
        "type": "snapshot",
        "seq": int(snap.seq),
        "t": float(snap.t),
        "dt": float(snap.dt),
        "source": snap.source,
        "cgroups": None if _same_table(snap.cgroups, previous_table) else _table_record(snap.cgroups),
        "columns": {name: _array_bytes(col, _F8) for name, col in sorted(snap.columns.items())},
        "node": {k: float(v) for k, v in sorted(snap.node.items())},
        "histograms": hist,
        "hist_edges": _array_bytes(snap.hist_edges, _F8),
        "preemptions": _pairs_record(snap.preemptions),
        "culprits": _pairs_record(snap.culprits),
    }


def _pairs_record(pairs) -> dict:
    """A (row, row, value) table (preemptions, culprits) as one column per field."""
    pairs = np.asarray(pairs)
    return {name: _array_bytes(pairs[name], _I4 if pairs.dtype[name].kind == "i" else _F8) if len(pairs) else b""
            for name in pairs.dtype.names}


def _pairs_from(rec: dict | None, dtype: np.dtype, what: str, n: int) -> np.ndarray:
    """The inverse of _pairs_record, its row indexes checked against a table of
    ``n`` cgroups.  A missing record is no pairs (traces written before
    runq.wait.by have no culprits: none, not an error)."""
    rec = rec or {}
    cols = {name: _arr(rec.get(name, b""), _I4 if dtype[name].kind == "i" else _F8, what)
            for name in dtype.names}
    out = np.zeros(len(cols[dtype.names[0]]), dtype)
    for name, col in cols.items():
        out[name] = col
        if dtype[name].kind == "i" and len(col) and (col.min() < 0 or col.max() >= n):
            raise TraceError(f"{what}: a row index outside the table of {n} cgroups")
    return out


class TraceWriter:
    """Write a trace: ``with TraceWriter(path) as w: w.write(snap)``; the
    agent's ``--record`` hands it ticks as a :class:`~tagger.publish.report.Publisher`."""

    name = "trace"

    def __init__(self, path: str | os.PathLike | BinaryIO, meta: dict | None = None):
        if hasattr(path, "write"):
            self._f, self._owned = path, False
        else:
            self._f, self._owned = open(path, "wb"), True
        self._packer = msgpack.Packer(use_bin_type=True)
        self._table: CgroupTable | None = None
        self.count = 0
        header = {"type": "header", "format": MAGIC, "version": VERSION,
                  "tagger": __version__, "host": socket.gethostname(),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "meta": dict(meta or {})}
        self._emit(header)

    def _emit(self, record: dict):
        self._f.write(self._packer.pack(record))
        self._f.flush()     # streamed: a cut-short recording keeps every whole record

    def write(self, snap: Snapshot) -> None:
        self._emit(snapshot_record(snap, self._table))
        self._table = snap.cgroups
        self.count += 1

    def publish(self, report: TickReport) -> None:
        """Record the tick's Snapshot (a report without one records nothing)."""
        if report.snapshot is not None:
            self.write(report.snapshot)

    def close(self) -> None:
        if self._owned and not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def record(snapshots: Iterable[Snapshot], path, meta: dict | None = None,
           on_snapshot=None) -> int:
    """Write every Snapshot of ``snapshots`` to a trace at ``path``; returns how
    many.  The file stays valid up to the last whole record if the iterable
    raises or is interrupted."""
    with TraceWriter(path, meta) as w:
        for snap in snapshots:
            w.write(snap)
            if on_snapshot is not None:
                on_snapshot(snap, w.count)
        return w.count


# --- decoding ---------------------------------------------------------------------

def _arr(b, dtype, what) -> np.ndarray:
    if not isinstance(b, bytes) or len(b) % dtype.itemsize:
        raise TraceError(f"{what}: not a whole number of {dtype.itemsize}-byte values")
    return np.frombuffer(b, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)


def _table(rec) -> CgroupTable:
    try:
        ids = _arr(rec["ids"], _U8, "cgroup ids")
        paths, names = [parse(p) for p in rec["paths"]], [parse(n) for n in rec["names"]]
        labels = [{parse(k): parse(v) for k, v in dict(x).items()} for x in rec["labels"]]
    except (KeyError, TypeError, ValueError) as err:
        raise TraceError(f"bad cgroup table: {err}") from None
    if not (len(ids) == len(paths) == len(names) == len(labels)):
        raise TraceError("bad cgroup table: columns of different lengths")
    return CgroupTable(ids, paths, names, labels)


def decode_snapshot(rec: dict, table: CgroupTable | None) -> Snapshot:
    """A Snapshot from its record; ``table`` is the previous record's, used when
    this one carries none."""
    try:
        if rec.get("cgroups") is None:
            if table is None:
                raise TraceError("first snapshot record has no cgroup table")
        else:
            table = _table(rec["cgroups"])
        n = len(table)
        cols = {}
        for name, b in rec["columns"].items():
            col = _arr(b, _F8, f"column {name}")
            if len(col) != n:
                raise TraceError(f"column {name}: {len(col)} values for {n} cgroups")
            cols[str(name)] = col
        hist = {}
        for name, h in rec.get("histograms", {}).items():
            shape = tuple(int(x) for x in h["shape"])
            hist[str(name)] = _arr(h["data"], _F8, f"histogram {name}").reshape(shape)
        pre = _pairs_from(rec.get("preemptions"), PREEMPTION_DTYPE, "preemptions", n)
        by = _pairs_from(rec.get("culprits"), CULPRIT_DTYPE, "culprits", n)
        return Snapshot(t=float(rec["t"]), dt=float(rec["dt"]), cgroups=table, columns=cols,
                        node={str(k): float(v) for k, v in rec.get("node", {}).items()},
                        histograms=hist, hist_edges=_arr(rec.get("hist_edges", b""), _F8, "edges"),
                        preemptions=pre, culprits=by, source=str(rec.get("source", "trace")),
                        seq=int(rec.get("seq", 0)))
    except TraceError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise TraceError(f"bad snapshot record: {err!r}") from None


class TraceReader:
    """Iterate a trace's Snapshots; ``header`` is available after construction."""

    def __init__(self, path: str | os.PathLike | BinaryIO):
        if hasattr(path, "read"):
            self._f, self._owned, self.name = path, False, getattr(path, "name", "<trace>")
        else:
            self._f, self._owned, self.name = open(path, "rb"), True, str(path)
        self._unpacker = msgpack.Unpacker(self._f, raw=False, strict_map_key=False,
                                          max_buffer_size=1 << 31)
        self.records = 0
        self.truncated = False
        self._consumed = 0
        try:
            header = self._next()
        except Exception:
            self.close()
            raise
        if header is None:
            self.close()
            raise TraceError(f"{self.name}: empty or truncated before the header")
        if not isinstance(header, dict) or header.get("format") != MAGIC:
            self.close()
            raise TraceError(f"{self.name}: not a tagger trace")
        if header.get("version") != VERSION:
            self.close()
            raise TraceError(f"{self.name}: trace format version {header.get('version')!r}; "
                             f"this tagger reads version {VERSION}")
        self.header = header

    def _next(self):
        """The next whole record, or None at the end (a partial record is a truncation)."""
        try:
            rec = self._unpacker.unpack()
        except msgpack.OutOfData:
            # tell() counts bytes of whole records consumed; anything past it is a
            # record cut short.
            if self._consumed < self._size():
                self.truncated = True
            return None
        except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as err:
            raise TraceError(f"{self.name}: corrupt record after {self.records} snapshots: {err}") \
                from None
        self._consumed = self._unpacker.tell()
        return rec

    def _size(self) -> int:
        try:
            return os.fstat(self._f.fileno()).st_size
        except (AttributeError, OSError, io.UnsupportedOperation):
            pos = self._f.tell()
            self._f.seek(0, io.SEEK_END)
            size = self._f.tell()
            self._f.seek(pos)
            return size

    def __iter__(self) -> Iterator[Snapshot]:
        table = None
        try:
            while True:
                rec = self._next()
                if rec is None:
                    break
                if not isinstance(rec, dict) or rec.get("type") != "snapshot":
                    continue     # records of kinds added later: skip, forward-compatible
                snap = decode_snapshot(rec, table)
                table = snap.cgroups
                self.records += 1
                yield snap
        finally:
            self.close()
        if self.truncated:
            warnings.warn(f"{self.name}: truncated trace: replayed {self.records} whole "
                          f"snapshots, ignored a partial record at the end", TraceTruncated,
                          stacklevel=2)

    def close(self):
        if self._owned and not self._f.closed:
            self._f.close()


def read_trace(path) -> Iterator[Snapshot]:
    """Every Snapshot in the trace, in order.  A truncated file stops at its last
    whole record with a :class:`TraceTruncated` warning; a file that is not a
    trace (or a newer version) raises :class:`TraceError`."""
    return iter(TraceReader(path))
