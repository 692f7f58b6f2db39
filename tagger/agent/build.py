"""The parts ``tagger run`` is built from, each opened as its Config says: the
collector, the actuator (and what a crashed run left in its journal), the
publishers."""

from __future__ import annotations

import contextlib
import logging
import os

from tagger.actions.actuator import Actuator
from tagger.kernelfs import KernelFS
from tagger.publish.report import Publisher

from .config import Config

log = logging.getLogger(__name__)


def open_collector(config: Config, fs: KernelFS):
    """BPF when asked for and loadable, else the cgroupfs fallback (tagger.telemetry)."""
    from tagger.telemetry import open_collector as open_
    names = None
    if config.kubelet_logs:
        from tagger.kubelet import KubeletLogs
        names = KubeletLogs(config.kubelet_logs)
    if not config.prefer_bpf:
        return open_(prefer_bpf=False, fs=fs, workload_names=names)
    return open_(prefer_bpf=True, fs=fs, workload_names=names,
                 cgroupfs_every=max(1, int(config.cgroupfs_every)), bpf_stats=bool(config.bpf_stats))


def open_actuator(config: Config, fs: KernelFS, layout=None):
    """The actuator over this host's cgroups; it protects the root, init and
    tagger's own cgroups itself."""
    from tagger.cgroups import Layout
    layout = layout or Layout.detect(fs=fs)
    if not config.dry_run:
        os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
    return Actuator(layout, fs=fs, state_dir=config.state_dir, dry_run=config.dry_run)


def report_leftovers(actuator, state_dir: str):
    """Dry run: say which knobs a previous run left changed, and how to put them back."""
    if not isinstance(actuator, Actuator):      # a test's stand-in keeps no journal
        return
    left = actuator.leftovers
    if not (left.entries or left.damaged):
        return
    for e in left.entries:
        log.warning("dry run: %s %s was left changed by a previous run (%r, originally %r, rule %s)",
                    e.cgroup or "resctrl", e.knob, e.value, e.original, e.rule or "?")
    for damage in left.damaged:
        log.warning("dry run: journal %s: %s (its original is lost: check that knob by hand)",
                    state_dir, damage)
    # `tagger actions --restore` refuses a damaged journal; a real start restores its intact entries.
    how = ("start tagger without --dry-run (it restores the intact entries)" if left.damaged else
           f"restore them with `tagger actions --restore --state-dir {state_dir}`, or start tagger "
           f"without --dry-run")
    log.warning("dry run: %d knobs a previous tagger changed are still journaled in %s and not "
                "restored (a dry run writes nothing); %s", len(left.entries), state_dir, how)


class Publishers:
    """The publishers a Config asks for, each closed on every exit path of
    ``stack`` (the socket file removed).  The socket's ``history`` is served
    from ``store`` (tagger.tags.TagStore, the only tag history).  ``api`` and ``redis`` are kept by
    name for their counters in health and the socket's rules summary."""

    def __init__(self, config: Config, stack: contextlib.ExitStack, store):
        from tagger.publish.exposition import MetricsServer
        from tagger.publish.prometheus import TaggerCollector
        self.all: list[Publisher] = []
        self.metrics = self.api = self.redis = None
        self.prometheus = TaggerCollector(export=config.export, top=config.export_top, cap=config.export_cap)
        self.all.append(self.prometheus)
        if config.metrics:
            self.metrics = MetricsServer(self.prometheus, config.metrics)
            stack.callback(close_quietly, self.metrics, "metrics server")
            log.info("metrics on %s", self.metrics.url)
        if config.socket:
            from tagger.publish.socket import ApiServer
            self.api = ApiServer(config.socket, store=store, history=config.history).start()
            stack.callback(close_quietly, self.api, "socket API")
            self.all.append(self.api)
        if config.redis:
            from tagger.publish.redis import RedisPublisher
            self.redis = RedisPublisher(config.redis).start()
            stack.callback(close_quietly, self.redis, "redis publisher")
            self.all.append(self.redis)
        if config.record:
            from tagger.publish.trace import TraceWriter
            trace = TraceWriter(config.record)
            stack.callback(close_quietly, trace, "trace")
            self.all.append(trace)
            log.info("recording snapshots to %s", config.record)

    def health(self) -> dict:
        """The Health fields that are the publishers'."""
        out = {}
        if self.api is not None:
            out.update(api_clients=self.api.stats["clients"], api_dropped=self.api.stats["dropped"],
                       api_errors=self.api.stats["errors"])
        if self.redis is not None:
            out.update(redis_connected=self.redis.stats["connected"], redis_dropped=self.redis.stats["dropped"])
        return out


def close_quietly(obj, what):
    try:
        obj.close()
    except Exception:
        log.exception("closing the %s failed", what)

