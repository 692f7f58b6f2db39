"""Redis publisher (``tagger run --redis URL``): current tags as one hash per
cgroup under a host prefix, and tag events on a capped stream shared by the
cluster's agents.

Keys (docs/api.md "Redis"):

* ``{prefix}:{host}:tags:{cgroup path}`` - hash, tag key -> value (paths,
  keys and values in display form, tagger.names)
* ``{prefix}:{host}:cgroups`` - set of the cgroup paths that have a hash
* ``{prefix}:events`` - stream, one entry per TagEvent with a ``host`` field,
  trimmed with ``XADD MAXLEN ~ N``

The tick loop only appends to a bounded deque (:meth:`publish`); a thread
writes to Redis.  When Redis is away the thread reconnects with exponential
backoff, events beyond the deque's bound are dropped and counted, and the
hashes are rewritten in full once it is back (the latest tags always win, so
no state is lost, only events).
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time

import redis as _redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tagger.names import display
from tagger.publish.report import TickReport
from tagger.publish.wire import event_plain

log = logging.getLogger(__name__)

#: Errors that mean "Redis is not there right now"; anything else is a bug and logged as such.
_OUTAGE = (_redis.ConnectionError, _redis.TimeoutError, OSError)


class RedisPublisher:
    """Publish tags and tag events to Redis from a background thread."""

    name = "redis"

    def __init__(self, url: str, *, host: str | None = None, prefix: str = "tagger",
                 stream_maxlen: int = 100_000, queue_size: int = 10_000,
                 backoff: tuple[float, float] = (0.1, 10.0), timeout: float = 2.0):
        self.url = url
        self.host = host or socket.gethostname()
        self.prefix = prefix
        self.stream_key = f"{prefix}:events"
        self.index_key = f"{prefix}:{self.host}:cgroups"
        self.stream_maxlen = stream_maxlen
        self.queue_size = queue_size
        self.backoff = backoff
        self.timeout = timeout
        self._events: collections.deque = collections.deque()
        self._latest_tags: dict = {}
        self._tags_version = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self._written: dict[str, dict[str, str]] | None = None   # None: resync in full
        self._written_version = -1
        self.stats = {"connected": 0, "dropped": 0, "published": 0, "reconnects": 0, "errors": 0}

    def hash_key(self, path: str) -> str:
        return f"{self.prefix}:{self.host}:tags:{path}"

    # --- lifecycle ----------------------------------------------------------
    def start(self) -> "RedisPublisher":
        self._thread = threading.Thread(target=self._run, name="tagger-redis", daemon=True)
        self._thread.start()
        return self

    def close(self, flush_timeout: float = 2.0):
        """Try to flush for up to ``flush_timeout`` seconds, then stop the thread."""
        if self._thread is None:
            return
        deadline = time.monotonic() + flush_timeout
        while self.stats["connected"] and self._pending() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.timeout + 2)
        self._thread = None
        self._disconnect()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _pending(self) -> bool:
        return bool(self._events) or self._written_version != self._tags_version

    # --- tick loop side (never blocks on Redis) ---------------------------------
    def publish(self, report: TickReport):
        """Queue one tick's tags and tag events (a :class:`~tagger.publish.report.Publisher`):
        ``report.tags`` the current {path: {key: Tag}} (not changed afterwards,
        None: unchanged), ``report.events`` this tick's TagEvents."""
        tags, events = report.tags, report.events or ()
        # Tags change with events; a cgroup that vanished may drop out without one.
        changed = tags is not None and (bool(events) or tags.keys() != self._latest_tags.keys())
        with self._lock:
            if changed:
                self._latest_tags = tags
                self._tags_version += 1
            for ev in events:
                if len(self._events) >= self.queue_size:
                    self.stats["dropped"] += 1
                else:
                    self._events.append(ev)
        if changed or events:
            self._wake.set()

    # --- writer thread ------------------------------------------------------------
    def _run(self):
        delay = self.backoff[0]
        while not self._stop.is_set():
            if self._client is None:
                if not self._connect():
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.backoff[1])
                    continue
                delay = self.backoff[0]
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self._write_once()
            except _OUTAGE as err:
                log.warning("redis %s: %s; reconnecting (events are queued, up to %d)",
                            self.url, err, self.queue_size)
                self._disconnect()
            except Exception:
                self.stats["errors"] += 1
                log.exception("redis publisher: unexpected error (carrying on)")
                self._stop.wait(delay)

    def _connect(self) -> bool:
        try:
            client = _redis.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),           # the backoff is ours, in _run
                decode_responses=True)
            client.ping()
        except _OUTAGE as err:
            if self.stats["reconnects"] == 0 or self.stats["connected"]:
                log.warning("redis %s unreachable: %s (retrying with backoff)", self.url, err)
            self.stats["connected"] = 0
            return False
        self._client = client
        self._written = None            # Redis may have lost or kept anything: rewrite in full
        self.stats["connected"] = 1
        self.stats["reconnects"] += 1
        log.info("redis %s connected", self.url)
        return True

    def _disconnect(self):
        self.stats["connected"] = 0
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
        self._client = None

    def _write_once(self):
        with self._lock:
            batch = list(self._events)
            tags, version = self._latest_tags, self._tags_version
        pipe = self._client.pipeline(transaction=False)
        for ev in batch:
            pipe.xadd(self.stream_key, self._event_fields(ev), maxlen=self.stream_maxlen,
                      approximate=True)
        # Keys and values in display form (tagger.names): redis-py cannot encode a
        # name that is not UTF-8, and the set's members must read back as written.
        desired = {display(path): {display(str(k)): _tag_value(t) for k, t in by_key.items()}
                   for path, by_key in tags.items() if by_key}
        if self._written is None:
            written = {p: None for p in self._client.smembers(self.index_key)}
        else:
            written = self._written
        if version != self._written_version or self._written is None:
            for path in written.keys() - desired.keys():
                pipe.delete(self.hash_key(path))
                pipe.srem(self.index_key, path)
            for path, fields in desired.items():
                if written.get(path) != fields:
                    pipe.delete(self.hash_key(path))
                    pipe.hset(self.hash_key(path), mapping=fields)
                    pipe.sadd(self.index_key, path)
        if len(pipe):
            pipe.execute()
        # Written: only now drop the events (an outage above keeps them queued).
        with self._lock:
            for _ in batch:
                self._events.popleft()
        self.stats["published"] += len(batch)
        self._written = desired
        self._written_version = version

    def _event_fields(self, ev) -> dict:
        plain = event_plain(ev)
        out = {"host": self.host}
        for k, v in plain.items():
            out[k] = "" if v is None else (v if isinstance(v, (int, float, str)) else str(v))
        return out


def _tag_value(tag) -> str:
    value = tag.get("value") if isinstance(tag, dict) else getattr(tag, "value", tag)
    return display(str(value))
