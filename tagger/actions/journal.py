"""The actions journal: every knob tagger changed, with its original value,
kept durably in the state directory so a restart after a crash can put it back.

One JSON file, replaced atomically on every change (write a temporary file,
fsync it, rename it over the old one, fsync the directory), so after a power
loss the journal is either the old or the new version, never a torn one.  An
entry is written *before* the first write to its knob.

A lock file (flock) keeps two agents from sharing one state directory; the
kernel drops the lock when the holder dies, even by SIGKILL.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tagger.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/lib/tagger"
JOURNAL_NAME = "actions.journal.json"
LOCK_NAME = "actions.lock"
VERSION = 1


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


class Journal:
    """The journal file in ``state_dir``.  ``durable=False`` skips fsync (tests
    of logic only; never the agent)."""

    def __init__(self, state_dir: str | os.PathLike, durable: bool = True):
        self.dir = Path(state_dir)
        self.path = self.dir / JOURNAL_NAME
        self.durable = durable
        self.entries: dict[str, Entry] = {}
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
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- reading --------------------------------------------------------------
    def load(self) -> dict[str, Entry]:
        """Entries from disk (empty when there is no journal).  A journal this
        version cannot read is kept aside, never silently dropped."""
        self.entries = {e.key: e for e in read_entries(self.path)}
        return self.entries

    # --- writing --------------------------------------------------------------
    def put(self, entry: Entry, sync: bool = True) -> None:
        self.entries[entry.key] = entry
        if sync:
            self.save()

    def drop(self, key: str, sync: bool = True) -> None:
        if self.entries.pop(key, None) is not None and sync:
            self.save()

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {"version": VERSION, "pid": os.getpid(), "saved": time.time(),
               "entries": [asdict(e) for e in self.entries.values()]}
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        tmp = self.path.with_name(f".{JOURNAL_NAME}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
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

    def clear(self) -> None:
        """Everything restored: drop the journal file."""
        self.entries.clear()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def read_entries(path: str | os.PathLike, quarantine: bool = True) -> list[Entry]:
    """The entries of a journal file; [] if none.  An unreadable one is moved
    aside (``quarantine``, the agent) or raises ConfigError (``tagger actions``)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    try:
        doc = json.loads(raw)
        if doc.get("version") != VERSION:
            raise ValueError(f"version {doc.get('version')!r}")
        return [Entry(**e) for e in doc["entries"]]
    except (ValueError, KeyError, TypeError) as err:
        if not quarantine:
            raise ConfigError(f"{path}: unreadable journal ({err})") from err
        aside = path.with_name(path.name + f".unreadable.{int(time.time())}")
        os.replace(path, aside)
        log.error("%s: unreadable journal (%s); kept as %s — restore its knobs by hand",
                  path, err, aside)
        return []
