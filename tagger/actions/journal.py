"""The actions journal: every knob tagger changed, with its original value,
kept durably in the state directory so a restart after a crash can put it back.

Format (version 2): JSON lines, each prefixed by the CRC-32 of its JSON text,

    1c291ca3 {"entries":2,"format":"tagger-actions-journal","saved":...,"version":2}
    8f0e5a1b {"cgroup":"/batch/a","knob":"cpu.max","original":"max 100000",...}

one header, then one self-checking record per entry, so a damaged file still
gives back every record that is intact and names the ones that are not (by
cgroup and knob where they are legible).  The file is replaced atomically on
every change (write a temporary file, fsync it, rename it over the old one,
fsync the directory): after a power loss it is the old or the new version.

Write-ahead: :meth:`Journal.put` returns only once the entry is on disk, and
keeps it in memory only then; when the write fails (ENOSPC, EIO, a short
write) it raises :class:`JournalError` and the caller must leave the knob
alone.  Failures are counted (``write_failures``) and logged once per outage.

The version-1 format (one JSON document) is still read, and rewritten as
version 2 at the next save.

A lock file (flock) keeps two agents from sharing one state directory; the
kernel drops the lock when the holder dies, even by SIGKILL.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import re
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tagger.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/lib/tagger"
JOURNAL_NAME = "actions.journal.json"
LOCK_NAME = "actions.lock"
VERSION = 2
FORMAT = "tagger-actions-journal"


@dataclass
class Entry:
    """One knob tagger changed.  ``knob`` names the control point in the
    kernel's words ("cpu.max", "cpu.weight", "io.max 254:0", "rdt.schemata web");
    values are the text form each control point reads and writes."""
    cgroup: str
    knob: str
    original: str
    value: str
    rule: str = ""
    since: float = field(default_factory=time.time)   # wall clock, for people
    made: bool = False          # tagger created the object (an RDT group): undo = remove it

    @property
    def key(self) -> str:
        return entry_key(self.cgroup, self.knob)


def entry_key(cgroup: str, knob: str) -> str:
    return f"{cgroup}\t{knob}"


class JournalError(OSError):
    """The journal could not be written durably: the knob must not be touched."""


@dataclass(frozen=True)
class Damage:
    """A record of a journal file that could not be read back: where, which
    knob if that much is legible, and why.  Its original value is lost."""
    line: int                   # 1-based; 0 for the file as a whole
    cgroup: str | None
    knob: str | None
    why: str

    def __str__(self) -> str:
        what = f"{self.cgroup or '?'} {self.knob or '?'}" if (self.cgroup or self.knob) else "a record"
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{what}: {self.why}"


@dataclass
class Contents:
    """What a journal file holds: every intact entry, and every damaged record."""
    entries: list[Entry] = field(default_factory=list)
    damaged: list[Damage] = field(default_factory=list)
    version: int | None = None


class Journal:
    """The journal file in ``state_dir``.  ``durable=False`` skips fsync (tests
    of logic only; never the agent)."""

    def __init__(self, state_dir: str | os.PathLike, durable: bool = True):
        self.dir = Path(state_dir)
        self.path = self.dir / JOURNAL_NAME
        self.durable = durable
        self.entries: dict[str, Entry] = {}
        #: records of the journal found at load() that could not be read back
        self.damaged: list[Damage] = []
        #: saves that failed (ENOSPC, EIO, ...), since start
        self.write_failures = 0
        self.last_error: str | None = None
        self._lock_fd: int | None = None

    # --- locking ------------------------------------------------------------
    def lock(self) -> None:
        """Take the state directory for this process; ConfigError if another agent holds it."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{self.dir}: another tagger holds this state directory") from None
        try:
            # Only for people (`tagger actions` names the holder): a full disk must not stop start-up.
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- reading --------------------------------------------------------------
    def load(self) -> dict[str, Entry]:
        """Entries from disk (empty when there is no journal).  Every intact
        record comes back; damaged ones are logged by cgroup and knob, kept in
        :attr:`damaged`, and the damaged file is kept aside for people."""
        contents = read_journal(self.path)
        self.entries = {e.key: e for e in contents.entries}
        self.damaged = contents.damaged
        if contents.damaged:
            aside = keep_aside(self.path)
            for damage in contents.damaged:
                log.error("%s: %s; its original value is lost: check that knob by hand",
                          self.path, damage)
            log.error("%s: %d intact entries restored from a damaged journal (a copy is kept as %s)",
                      self.path, len(self.entries), aside)
            self.try_save()     # the intact entries, in a clean file
        elif contents.version is not None and contents.version < VERSION and self.entries:
            log.info("%s: journal version %d read; it is rewritten as version %d at the next save",
                     self.path, contents.version, VERSION)
        return self.entries

    # --- writing --------------------------------------------------------------
    def put(self, entry: Entry, sync: bool = True) -> None:
        """Record ``entry``; with ``sync``, returns only once it is durably on
        disk, and raises JournalError (the entry not recorded, not even in
        memory) when it cannot be."""
        if sync:
            self._write({**self.entries, entry.key: entry}.values())
        self.entries[entry.key] = entry

    def drop(self, key: str, sync: bool = True) -> None:
        if self.entries.pop(key, None) is not None and sync:
            self.save()

    def save(self) -> None:
        """Write the entries in memory; JournalError when that fails."""
        self._write(self.entries.values())

    def try_save(self) -> bool:
        """save(), with a failure counted and logged (once per outage) rather
        than raised: for saves that only tidy up (values, dropped entries), where
        the file on disk still holds every original the kernel may differ from."""
        try:
            self.save()
            return True
        except JournalError:
            return False

    def _write(self, entries) -> None:
        doc = [json.dumps({"format": FORMAT, "version": VERSION, "pid": os.getpid(),
                           "saved": time.time(), "entries": len(entries)}, sort_keys=True)]
        doc += [json.dumps(asdict(e), sort_keys=True, ensure_ascii=True) for e in entries]
        data = "".join(f"{_crc(line)} {line}\n" for line in doc).encode()
        tmp = self.path.with_name(f".{JOURNAL_NAME}.{os.getpid()}.tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, data)
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            if self.durable:
                # The rename is durable only once the directory entry is on disk.
                dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as err:
            _unlink_quietly(tmp)      # a full disk must not keep our half-written copy
            self._failed(err)
            raise JournalError(err.errno, f"{self.path}: journal not written: "
                                          f"{err.strerror or err}") from err
        if self.last_error is not None:
            log.warning("%s: the journal is writable again (%d writes had failed)",
                        self.path, self.write_failures)
            self.last_error = None

    def _failed(self, err: OSError) -> None:
        self.write_failures += 1
        if self.last_error is None:
            # Once per outage: a full disk fails every tick.
            log.error("%s: journal not written (%s): knobs whose original it would hold are "
                      "left untouched until it can be; tagging carries on",
                      self.path, err.strerror or err)
        self.last_error = err.strerror or str(err)

    def clear(self) -> None:
        """Everything restored: drop the journal file."""
        self.entries.clear()
        _unlink_quietly(self.path)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until done: a short write (a nearly full disk) is not the whole record."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _crc(text: str) -> str:
    return f"{zlib.crc32(text.encode()):08x}"


def keep_aside(path: Path) -> Path | None:
    """A copy of a damaged journal for people (a hard link: the next save
    replaces the journal, not this copy)."""
    aside = path.with_name(path.name + f".damaged.{int(time.time())}")
    try:
        if aside.exists():
            aside.unlink()
        os.link(path, aside)
        return aside
    except OSError as err:
        log.warning("%s: could not keep a copy of the damaged journal: %s", path, err)
        return None


# --- reading, whatever is on disk ------------------------------------------------------

_FIELDS = {f.name: f for f in dataclasses.fields(Entry)}
_LINE = re.compile(r"^([0-9a-f]{8}) (.*)$")
_RECORD = re.compile(r"^[0-9a-f]{8} \{", re.M)
_LEGIBLE = {k: re.compile(rf'"{k}"\s*:\s*"((?:[^"\\]|\\.)*)"') for k in ("cgroup", "knob")}


def read_journal(path: str | os.PathLike) -> Contents:
    """Every intact entry of a journal file and every damaged record, whatever
    the file holds (never raises on content; an unreadable file is OSError)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return Contents()
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        # tagger never writes an empty journal (a header at least): something was lost.
        return Contents(damaged=[Damage(0, None, None, "empty journal file")])
    if _RECORD.search(text):
        # Any self-checking record makes it version 2, even with a damaged header:
        # its records are never read without their checksums.
        return _read_lines(text)
    return _read_document(text)


def read_entries(path: str | os.PathLike, quarantine: bool = True) -> list[Entry]:
    """The intact entries of a journal file; [] if none.  A damaged one is
    kept aside and logged (``quarantine``, the agent) or raises ConfigError
    naming the damage (``tagger actions``)."""
    contents = read_journal(path)
    if contents.damaged:
        summary = "; ".join(str(d) for d in contents.damaged[:5])
        if not quarantine:
            raise ConfigError(f"{path}: unreadable journal ({len(contents.damaged)} damaged: {summary}); "
                              f"{len(contents.entries)} intact entries")
        aside = keep_aside(Path(path))
        log.error("%s: damaged journal (%s); %d intact entries kept; a copy is kept as %s — "
                  "restore the damaged knobs by hand", path, summary, len(contents.entries), aside)
    return contents.entries


def _entry(obj) -> Entry:
    """An Entry from a decoded record; ValueError naming what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"a record is an object, not {type(obj).__name__}")
    missing = [k for k, f in _FIELDS.items() if k not in obj
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    for k in ("cgroup", "knob", "original", "value", "rule"):
        if k in obj and not isinstance(obj[k], str):
            raise ValueError(f"{k} is not text")
    if "since" in obj and (isinstance(obj["since"], bool) or not isinstance(obj["since"], (int, float))):
        raise ValueError("since is not a number")
    if "made" in obj and not isinstance(obj["made"], bool):
        raise ValueError("made is not true or false")
    return Entry(**{k: v for k, v in obj.items() if k in _FIELDS})


def _legible(text: str) -> tuple[str | None, str | None]:
    """cgroup and knob from a damaged record, if they can still be read."""
    out = []
    for key in ("cgroup", "knob"):
        m = _LEGIBLE[key].search(text)
        try:
            out.append(json.loads(f'"{m.group(1)}"') if m else None)
        except ValueError:
            out.append(m.group(1))
    return out[0], out[1]


def _read_lines(text: str) -> Contents:
    out = Contents()
    expected = None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        obj = None
        if m and _crc(m.group(2)) == m.group(1):
            try:
                obj = json.loads(m.group(2))
            except ValueError:
                obj = None
        if obj is None:
            cgroup, knob = _legible(line)
            why = "checksum does not match (torn or altered)" if m else "not a journal record"
            out.damaged.append(Damage(n, cgroup, knob, why))
            continue
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            out.version = obj.get("version")
            expected = obj.get("entries")
            if out.version != VERSION:
                log.warning("journal version %r (this tagger writes %d): reading its records as "
                            "version %d", out.version, VERSION, VERSION)
            continue
        try:
            out.entries.append(_entry(obj))
        except ValueError as err:
            cgroup, knob = _legible(m.group(2))
            out.damaged.append(Damage(n, cgroup, knob, str(err)))
    if out.version is None:
        out.damaged.append(Damage(1, None, None, "header missing"))
    elif isinstance(expected, int) and expected > len(out.entries) + len(out.damaged):
        lost = expected - len(out.entries) - len(out.damaged)
        out.damaged.append(Damage(0, None, None, f"{lost} records missing at the end (truncated)"))
    return out


def _read_document(text: str) -> Contents:
    """Version 1 (one JSON document), or something that is not a journal at all."""
    out = Contents()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
        truncated = True
    else:
        truncated = False
    if isinstance(doc, dict) and isinstance(doc.get("entries"), list):
        out.version = doc.get("version")
        if out.version != 1:
            log.warning("journal version %r: reading its entries as version 1", out.version)
        for i, obj in enumerate(doc["entries"]):
            try:
                out.entries.append(_entry(obj))
            except ValueError as err:
                cgroup, knob = _legible(json.dumps(obj)) if isinstance(obj, dict) else (None, None)
                out.damaged.append(Damage(0, cgroup, knob, f"entry {i + 1}: {err}"))
        return out
    if not truncated:
        out.damaged.append(Damage(0, None, None, f"not a journal (a JSON {type(doc).__name__})"))
        return out
    # A torn or garbled version-1 document: every entry object that still decodes.
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"\{", text)]
    end_of_last = -1
    for pos in starts:
        if pos < end_of_last:
            continue
        try:
            obj, end = decoder.raw_decode(text, pos)
        except ValueError:
            continue
        if isinstance(obj, dict) and "knob" in obj:
            try:
                out.entries.append(_entry(obj))
                end_of_last = end
            except ValueError as err:
                cgroup, knob = _legible(text[pos:end])
                out.damaged.append(Damage(0, cgroup, knob, str(err)))
                end_of_last = end
    # Entries cut short: a "cgroup" after the last intact entry.
    tail = text[max(end_of_last, 0):]
    for m in re.finditer(r'"cgroup"\s*:', tail):
        cgroup, knob = _legible(tail[m.start():m.start() + 4096])
        out.damaged.append(Damage(0, cgroup, knob, "entry cut short (torn journal)"))
    if not out.damaged:
        out.damaged.append(Damage(0, None, None, "not valid JSON (torn or garbled)"))
    return out
