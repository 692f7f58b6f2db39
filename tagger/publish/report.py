"""What one tick hands its publishers: a :class:`TickReport`, with the agent's
:class:`Health` as a type, and the :class:`Publisher` protocol every
publisher (Prometheus, the socket API, Redis, the trace writer) implements.

Every health key is spelled once, here, as a field.  Its wire form
(:meth:`Health.to_plain`) is the dict the socket API's ``health`` op and
Prometheus have always read, keys and order unchanged; :meth:`Health.from_plain`
reads it back (``tagger top --connect``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

from tagger import __version__

#: BPF collector health counters of updates lost to a full map or slot table
#: (bpf/tagger.h struct tg_global); their sum is ``map_full``.
MAP_FULL_COUNTERS = ("kernel.rq_full", "kernel.slots_exhausted")

#: Prefix of the collector's own health keys, passed through verbatim for the socket.
COLLECTOR_PREFIX = "collector."


@dataclass
class CollectorHealth:
    """The collector's health under the names the publishers use, plus
    everything it reported (``reported``, sent as ``collector.<key>``).

    Only what a collector emits is read: the BPF collector's
    ``bpf_ns_per_event``, ``kernel.*`` counters, ``lost_lifecycle_events`` and
    ``slots_reclaimed``; the cgroupfs fallback's ``events_per_s`` (NaN: it
    counts no events) and ``drops``."""

    source: str | None = None
    bpf_ns_per_event: float | None = None
    events_per_second: float | None = None
    ringbuf_drops: int | None = None
    lost_lifecycle_events: int | None = None
    slots_reclaimed: int | None = None
    map_full: int | None = None
    reported: dict[str, Any] = field(default_factory=dict)

    # Named field -> the collector's keys for it, first present wins.
    SOURCES = {
        "source": ("source",),
        "bpf_ns_per_event": ("bpf_ns_per_event",),
        "events_per_second": ("events_per_s",),
        "ringbuf_drops": ("kernel.ringbuf_drops", "drops"),
        "lost_lifecycle_events": ("lost_lifecycle_events",),
        "slots_reclaimed": ("slots_reclaimed",),
    }

    @classmethod
    def from_collector(cls, raw: dict) -> "CollectorHealth":
        """From a collector's ``health()`` dict."""
        raw = dict(raw)
        named = {}
        for name, keys in cls.SOURCES.items():
            named[name] = next((raw[k] for k in keys if raw.get(k) is not None), None)
        full = [raw[k] for k in MAP_FULL_COUNTERS if isinstance(raw.get(k), (int, float))]
        return cls(**named, map_full=sum(full) if full else None, reported=raw)

    def to_plain(self) -> dict:
        out = {name: getattr(self, name) for name in _NAMED_COLLECTOR if getattr(self, name) is not None}
        out.update((COLLECTOR_PREFIX + key, value) for key, value in self.reported.items())
        return out

    @classmethod
    def from_plain(cls, d: dict) -> "CollectorHealth | None":
        named = {name: d.get(name) for name in _NAMED_COLLECTOR}
        reported = {k[len(COLLECTOR_PREFIX):]: v for k, v in d.items() if k.startswith(COLLECTOR_PREFIX)}
        if not reported and all(v is None for v in named.values()):
            return None
        return cls(**named, reported=reported)


_NAMED_COLLECTOR = ("source", "bpf_ns_per_event", "events_per_second", "ringbuf_drops",
                    "lost_lifecycle_events", "slots_reclaimed", "map_full")


@dataclass
class Health:
    """The agent's health after a tick.  Optional parts are ``None`` when the
    agent has no such part (no journal, no policies, no socket, no Redis) and
    are then left out of the wire form, as they always were."""

    version: str = __version__
    interval_seconds: float = 0.0
    tick_seconds: float = 0.0
    tick_cpu_seconds: float = 0.0
    tick_stage_seconds: dict[str, float] = field(default_factory=dict)
    tick_jitter_seconds: float = 0.0
    tick_jitter_max_seconds: float = 0.0
    loop_guard_priority: int = 0                  # the SCHED_FIFO priority a starved loop gets (0: unguarded)
    tick_boosts: int = 0                          # ticks found starved and run as SCHED_FIFO
    ticks: int = 0
    overruns: int = 0
    tick_errors: int = 0
    cpu_seconds: float = 0.0
    rules_loaded: int = 0
    policies_loaded: int = 0
    rule_errors: int = 0
    reloads: int = 0
    reload_failures: int = 0
    cgroups: int = 0
    dry_run: bool = False
    journal_write_failures: int | None = None
    journal_damaged_records: int | None = None
    journal_leftovers: int | None = None          # dry run only: knobs a previous run left changed
    collector: CollectorHealth | None = None
    #: each policy step's outcome counts (tagger_policy_steps_total) ...
    policy_steps: list | None = None
    #: ... and the latest steps with the victim's figures, ``t`` in epoch seconds
    policy_recent_steps: list | None = None
    api_clients: int | None = None
    api_dropped: int | None = None
    api_errors: int | None = None
    redis_connected: bool | None = None
    redis_dropped: int | None = None
    #: the socket server's own counters, added to its ``health`` reply (never by the agent)
    api: dict | None = None

    def to_plain(self) -> dict:
        """The wire form: the health dict of the socket API and Prometheus."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "collector":
                if value is not None:
                    out.update(value.to_plain())
            elif f.name in _CORE:
                out[f.name] = dict(value) if isinstance(value, dict) else value
            elif value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_plain(cls, d: dict | None) -> "Health":
        """A health dict read back (from the socket); keys it lacks keep their
        defaults, keys this version does not know are ignored."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)} - {"collector"}
        return cls(**{k: v for k, v in d.items() if k in known}, collector=CollectorHealth.from_plain(d))


#: Health fields always on the wire (the rest only when not None).
_CORE = frozenset(f.name for f in dataclasses.fields(Health)
                  if f.name not in ("collector", "api") and f.default is not None)


@dataclass(frozen=True)
class TickReport:
    """One tick, as the publishers see it.  ``None`` (or empty, for
    ``events``) means "unchanged this call": a publisher keeps what it had."""

    snapshot: Any = None                 # tagger.snapshot.Snapshot
    tags: dict | None = None             # TagStore.current(): {path: {key: Tag}}
    events: list = field(default_factory=list)    # TagEvents of this tick
    actions: list | None = None          # actuator.current(): AppliedActions
    health: Health | None = None


class Publisher(Protocol):
    """Something that hands ticks to the world.  ``publish`` is called from the
    tick loop and must not block on a reader; ``close`` is idempotent."""

    name: str

    def publish(self, report: TickReport) -> None: ...

    def close(self) -> None: ...
