"""Serving the Prometheus exposition: ``/metrics`` and ``/healthz`` over HTTP.

Readers must not starve the loop (issue 13: 50 scrapers of a 3,000-cgroup node
made one tick take 35 s, every scrape formatting megabytes under the GIL).  So
the text of a :class:`~tagger.publish.prometheus.TaggerCollector`'s tick is
rendered at most once per published tick, by the first scrape after it, and
every other scrape is served the cached bytes (and their gzip, also made
once); a fixed pool of serving threads and a socket timeout bound what a crowd
of scrapers, or a slow one, can take.
"""

from __future__ import annotations

import collections
import gzip
import http.server
import logging
import math
import queue
import socket
import threading
import time
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tagger.errors import ConfigError

if TYPE_CHECKING:
    from tagger.publish.prometheus import TaggerCollector

log = logging.getLogger(__name__)

DEFAULT_ADDR = "127.0.0.1:9473"
#: Threads that answer scrapes.  Prometheus and an operator's curl need one or
#: two; more would only let a crowd take more CPU from the tick loop.
SERVE_THREADS = 4
#: Accepted scrapes waiting for a serving thread; past this they are closed
#: unanswered (the scraper retries on its next interval).
SERVE_QUEUE = 64
#: Scrapes answered per second at most, over all threads: a Prometheus pair
#: scrapes every 15 s; the cap bounds what a crowd costs in request parsing
#: (Python, under the GIL) however fast it asks.  Beyond it scrapes queue.
SERVE_RATE = 50.0
#: Seconds a scraper may take to send its request or read a chunk of the reply.
SERVE_TIMEOUT = 10.0
#: Most of the wall time rendering may take: after a render of R seconds the next
#: waits until R / RENDER_SHARE has passed (scrapes get the previous tick's text
#: meanwhile), so however often a large node is scraped, rendering takes at most
#: this share of one core (and of the GIL) from the tick loop.
RENDER_SHARE = 0.2
#: Longest a scrape waits for the loop to render the latest tick before it is
#: served the previous text (Prometheus's scrape timeout is 10 s by default).
MAX_RENDER_WAIT = 5.0
#: A scrape within this many seconds makes the loop render every tick as it
#: publishes it, so the next scrape is answered at once from the cache (its
#: samples carry the tick's time); a first scrape after a quiet spell waits
#: for one render (Prometheus scrapes every 15-60 s).
ACTIVE_SCRAPES = 120.0
#: /healthz: the loop is alive while its last published tick is at most this
#: many intervals old (and at least LIVENESS_MIN seconds).
LIVENESS_TICKS = 5
LIVENESS_MIN = 10.0
#: zlib level of the cached gzip reply: level 1 is ~3x faster than 6 for ~15% more bytes.
GZIP_LEVEL = 1

def parse_addr(addr: str) -> tuple[str, int]:
    """``"127.0.0.1:9473"``, ``":9473"`` (still loopback), ``"9473"``, ``"[::1]:9473"``."""
    text = str(addr).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        port_n = int(port)
    except ValueError:
        raise ConfigError(f"--metrics {addr!r}: expected HOST:PORT, e.g. {DEFAULT_ADDR}") from None
    if not 0 <= port_n < 65536:
        raise ConfigError(f"--metrics {addr!r}: port out of range")
    return host, port_n


class Exposition:
    """The text exposition of the latest tick, rendered at most once per
    :attr:`TaggerCollector.generation` and served as bytes (and their gzip).

    Rendering is the tick loop's work, not the scrapers': a scrape that finds
    the cached text older than the latest tick asks for a render and waits
    (up to about two ticks) for the loop to make it at the end of its next
    tick (:meth:`after_update`, called in the loop's thread); every other
    scrape gets the cached bytes at once.  Not in the scrape thread: a thread
    rendering for ~0.3 s holds the GIL for 5 ms slices, and each of the loop's
    ~15,000 cgroupfs reads then waits a slice to get it back (issue 13: a
    collect of 1 s became 20 s).  In the loop the cost is one render, counted
    in the tick's publish stage, and renders are spaced to at most
    ``render_share`` of the time (scrapes meanwhile get the previous text).
    A render that fails is remembered for its tick (500 until the next), so
    a bad tick costs one render, not one per scrape.  With no loop updating
    the collector (a stuck agent, a test), a scrape renders for itself."""

    def __init__(self, collector: TaggerCollector, registry: CollectorRegistry,
                 render_share: float = RENDER_SHARE, max_wait: float = MAX_RENDER_WAIT, clock=time.monotonic):
        self.collector = collector
        self.registry = registry
        self.render_share = render_share
        self.max_wait = max_wait
        self.clock = clock
        self._cond = threading.Condition()
        self._wanted = False
        self._rendering = False                   # a render is under way (loop or scrape)
        self._next_render = -math.inf
        self._updates: collections.deque[float] = collections.deque(maxlen=2)   # times of the last updates
        self._generation = -1
        self._plain: bytes | None = None
        self._gzip: bytes | None = None
        self._error: Exception | None = None
        self._last_scrape = -math.inf
        self.active = ACTIVE_SCRAPES
        self.renders = 0          # for tests and the benchmark: renders, not scrapes
        collector.listeners.append(self.after_update)

    def after_update(self, generation: int, latest):
        """The loop published a tick (its own thread): render it if a scrape asked."""
        now = self.clock()
        with self._cond:
            self._updates.append(now)
            eager = now - self._last_scrape <= self.active         # scraped lately: render every tick
            if not (self._wanted or eager) or self._rendering or now < self._next_render:
                return
            self._wanted, self._rendering = False, True
        self._render_now(generation, latest)

    def get(self, gzipped: bool = False) -> bytes:
        """The exposition (gzip-compressed if asked); raises what the render raised."""
        render_here = False
        with self._cond:
            now = self.clock()
            # Scraped lately: the loop has been rendering every tick, so the
            # cached text is the last tick rendered (the newest may be under way).
            eager = now - self._last_scrape <= self.active and self._plain is not None
            self._last_scrape = now
            generation = self.collector.generation
            stale = self._generation < generation and now >= self._next_render
            wait = self._wait_limit() if stale else 0.0
            # A loop that published within max_wait is slow (a loaded host), not
            # stuck: while scraped it renders every tick it can, and the cache
            # is a tick or two old, its samples stamped with their time.
            recent = bool(self._updates) and now - self._updates[-1] <= self.max_wait
            if stale and not (eager and (wait > 0 or recent)):
                if wait > 0 or self._rendering:
                    self._wanted = True
                    self._cond.wait_for(lambda: self._generation >= generation, timeout=wait or self.max_wait)
                else:                             # no loop is rendering (stuck, or none): here, once
                    render_here = self._rendering = True
            if self._generation < 0 and not render_here:          # nothing to serve yet
                self._cond.wait_for(lambda: not self._rendering, timeout=self.max_wait)
                if self._generation < 0 and not self._rendering:
                    render_here = self._rendering = True
        if render_here:
            self._render_now(*self.collector.latest())
        with self._cond:
            if self._error is not None:
                raise self._error
            if self._plain is None:
                raise RuntimeError("no exposition rendered yet")
            if not gzipped:
                return self._plain
            if self._gzip is None:                # zlib runs without the GIL
                self._gzip = gzip.compress(self._plain, GZIP_LEVEL, mtime=0)
            return self._gzip

    def liveness(self) -> tuple[bool, str]:
        """(alive, why) for /healthz: has the loop published a tick lately?
        Cheap: no render, no lock held for long."""
        with self._cond:
            updates = list(self._updates)
        if not updates:
            return False, "no tick published yet"
        age = self.clock() - updates[-1]
        interval = updates[-1] - updates[0] if len(updates) == 2 else 0.0
        limit = max(LIVENESS_TICKS * interval, LIVENESS_MIN)
        if age > limit:
            return False, f"no tick for {age:.1f} s (limit {limit:.0f} s)"
        return True, f"last tick {age:.1f} s ago"

    def _wait_limit(self) -> float:
        """How long a scrape may wait for the loop: ~2 ticks if it is alive, else 0."""
        if not self._updates:
            return 0.0
        interval = self._updates[-1] - self._updates[0] if len(self._updates) == 2 else self.max_wait / 2
        if self.clock() - self._updates[-1] > 2 * max(interval, 0.01):
            return 0.0                            # no tick lately: the loop is stuck or gone
        return min(self.max_wait, 2 * interval)

    def _render_now(self, generation: int, latest):
        started = self.clock()
        plain, error = None, None
        try:
            plain = self._render(latest)
        except Exception as err:
            error = err
            log.exception("rendering the metrics failed (every scrape gets 500 until the next tick)")
        with self._cond:
            self.renders += 1
            self._rendering = False
            self._next_render = started + (self.clock() - started) / self.render_share
            if generation >= self._generation:
                self._generation, self._plain, self._gzip, self._error = generation, plain, None, error
            self._cond.notify_all()

    def _render(self, latest) -> bytes:
        small = _Families(lambda: self.collector.families(latest, cgroup_metrics=False))
        return generate_latest(small) + self.collector.cgroup_text(latest).encode()


class _Families:
    """A one-shot collector for generate_latest (which only calls collect())."""

    def __init__(self, collect):
        self.collect = collect


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    """GET /metrics (or /): write the cached bytes, nothing else; GET /healthz:
    200 while the tick loop publishes ticks, 503 when it has stopped (a
    liveness probe that costs no render)."""

    timeout = SERVE_TIMEOUT            # socket timeout: a slowloris gives up its thread
    server: "_ExpositionServer"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            alive, why = self.server.exposition.liveness()
            body = f"{'ok' if alive else 'stalled'}: {why}\n".encode()
            self.send_response(200 if alive else 503)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path not in ("/metrics", "/"):
            self.send_error(404, "only /metrics and /healthz are served here")
            return
        gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
        try:
            body = self.server.exposition.get(gzipped)
        except Exception:
            self.send_error(500, "rendering the metrics failed (see the agent's log)")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):      # noqa: A002 (the base class's name)
        log.debug("scrape from %s: " + format, self.client_address[0], *args)


class _ExpositionServer(http.server.HTTPServer):
    """An HTTPServer answering on a fixed pool of threads fed by a bounded queue
    (socketserver's ThreadingMixIn would start a thread per connection)."""

    request_queue_size = SERVE_QUEUE

    def __init__(self, address, exposition: Exposition, threads: int = SERVE_THREADS,
                 backlog: int = SERVE_QUEUE, rate: float = SERVE_RATE):
        self.address_family = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)[0][0]
        self.exposition = exposition
        self._spacing = 1.0 / rate
        self._next_slot = 0.0
        self._pace_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=backlog)
        super().__init__(address, _MetricsHandler)
        self._workers = [threading.Thread(target=self._work, name=f"tagger-metrics-{i}", daemon=True)
                         for i in range(threads)]
        for worker in self._workers:
            worker.start()

    def process_request(self, request, client_address):
        try:
            self._queue.put_nowait((request, client_address))
        except queue.Full:
            self.shutdown_request(request)

    def _work(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, client_address = item
            try:
                self._pace()
                self.finish_request(request, client_address)
            except Exception:
                log.debug("scrape from %s failed", client_address, exc_info=True)
            finally:
                self.shutdown_request(request)

    def _pace(self):
        """Wait (without the GIL) for this scrape's slot under SERVE_RATE."""
        with self._pace_lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._spacing
        if slot > now:
            time.sleep(slot - now)

    def server_close(self):
        super().server_close()
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout=SERVE_TIMEOUT)


class MetricsServer:
    """The /metrics HTTP endpoint on its own registry and threads."""

    def __init__(self, collector: TaggerCollector, addr: str = DEFAULT_ADDR, *,
                 threads: int = SERVE_THREADS):
        self.collector = collector
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.exposition = Exposition(collector, self.registry)
        self.host, port = parse_addr(addr)
        self._server = _ExpositionServer((self.host, port), self.exposition, threads=threads)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="tagger-metrics", daemon=True)
        self._thread.start()
        self.port = self._server.server_port
        if self.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("metrics served on %s:%d, not loopback: anyone who can reach it sees "
                        "every cgroup's name and tags", self.host, self.port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self):
        self.collector.listeners.remove(self.exposition.after_update)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
