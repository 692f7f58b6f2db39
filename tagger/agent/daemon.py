"""The agent: ``tagger run``.  Config + :class:`~tagger.agent.pipeline.Pipeline`
+ the fixed-rate :class:`~tagger.clock.Ticker` + signals, reload and teardown.

Guarantees a caller may rely on:

* Ticks are scheduled on the monotonic clock; the loop measures its own cost
  (wall and CPU) and lateness (jitter) and publishes them.
* SIGHUP, or a change in the rules directory, reloads atomically: a directory
  with errors is logged (every error) and the previous rules stay in force.
* SIGTERM/SIGINT: every applied action is reverted, BPF detached, the socket
  removed, exit status 0.  The handlers are the first thing :meth:`Daemon.run`
  installs: a stop at any moment of start-up (loading BPF, say) ends start-up
  at the next step and reverts what the journal holds.
* ``--dry-run`` changes nothing, says which knobs a crashed run left changed
  (and how to restore them), and marks what it exports as a dry run.
* Running as root, a rules directory or file that is not owned by root, or is
  writable by group or others, is refused with how to fix it (as sshd does).
* A failing publisher or a failing tick is logged and counted; it never ends
  the loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

from tagger import __version__
from tagger.clock import Ticker
from tagger.errors import ConfigError
from tagger.kernelfs import HOST, KernelFS
from tagger.sdnotify import Notifier

from . import build
from .config import Config
from .loopguard import LoopGuard
from .pipeline import Pipeline, TickCost
from .rules_state import RulesState
from .signals import Signals

log = logging.getLogger(__name__)


class _StoppedDuringSetup(Exception):
    """SIGTERM/SIGINT came while setting up: unwind (reverting) and exit 0."""


class Daemon:
    """Build with a Config; :meth:`run` blocks until SIGTERM/SIGINT (or :meth:`stop`).

    The rooms can be injected (tests, benchmarks): ``collector`` (an object
    with ``tick()``, ``health()``, ``close()``), ``actuator`` (``recover()``,
    ``apply()``, ``current()``, ``close()``), ``layout``.  Each is kept in one
    attribute, whether injected or opened here."""

    def __init__(self, config: Config, *, fs: KernelFS = HOST, collector=None, actuator=None,
                 layout=None, notifier: Notifier | None = None, clock=time.monotonic):
        self.config = config
        self.fs = fs
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.collector = collector
        self.actuator = actuator
        self._layout = layout
        self.cost = TickCost()
        self.rules: RulesState | None = None
        self.pipeline: Pipeline | None = None
        self.publishers: build.Publishers | None = None
        self.signals = Signals()
        self.ready = False
        self.guard: LoopGuard | None = None
        self._reverted = False

    # --- what tests and the benchmark read ------------------------------------
    ruleset = property(lambda self: self.rules.ruleset)
    reloads = property(lambda self: self.rules.reloads)
    reload_failures = property(lambda self: self.rules.reload_failures)
    rule_errors = property(lambda self: self.rules.rule_errors)
    rules_watch = property(lambda self: self.rules.watcher)
    store = property(lambda self: self.pipeline.store)
    engine = property(lambda self: self.pipeline.engine)
    last_snapshot = property(lambda self: self.pipeline.last_snapshot if self.pipeline else None)
    prometheus = property(lambda self: self.publishers.prometheus)
    metrics = property(lambda self: self.publishers.metrics)
    api = property(lambda self: self.publishers.api)
    redis = property(lambda self: self.publishers.redis)

    def health(self) -> dict:
        """The agent's health now, in its wire form (the socket's ``health`` reply)."""
        return self.pipeline.health().to_plain()

    # --- public ---------------------------------------------------------------
    def stop(self):
        """Ask the loop to end after the current tick (thread- and signal-safe)."""
        self.signals.request_stop()

    def request_reload(self):
        self.signals.request_reload()

    def run(self) -> int:
        """Set up, loop until stopped, tear down.  0 on a clean stop."""
        try:
            return self._run()
        finally:
            if self.guard is not None:
                self.guard.close()      # after teardown, which it watches too
                self.guard = None

    def _run(self) -> int:
        with contextlib.ExitStack() as stack:
            # Handlers first: SIGTERM while BPF loads must still revert what a
            # crashed run left (issue 13); until the loop runs, setup checks the flag.
            stack.enter_context(self.signals)
            try:
                self._setup(stack)
            except _StoppedDuringSetup:
                log.info("stopped during start-up: reverting what the journal holds")
                self.notifier.stopping()
                stack.close()
                log.info("stopped")
                return 0
            # Watching this thread, the loop's, from here on (tagger.agent.loopguard).
            self.guard = self.cost.guard = LoopGuard(self.config.rt_priority)
            self.ready = True
            log.info("tagger %s running: rules %s, every %gs%s", __version__, self.config.rules_dir,
                     self.config.interval, " (dry run: nothing is changed)" if self.config.dry_run else "")
            self._loop()
            log.info("stopping: reverting actions, detaching BPF")
            self.notifier.stopping()
        log.info("stopped")
        return 0

    # --- setup and teardown ---------------------------------------------------
    def _setup(self, stack: contextlib.ExitStack):
        cfg = self.config
        if cfg.interval <= 0 or math.isnan(cfg.interval):
            raise ConfigError(f"--interval must be positive, not {cfg.interval}")
        from tagger.rules import Engine
        from tagger.tags import TagStore

        self.rules = RulesState(cfg.rules_dir, settle=cfg.rules_settle, clock=self.clock,
                                check_ownership=cfg.check_ownership, notifier=self.notifier,
                                on_change=self._rules_changed)
        self.rules.load()
        store = TagStore(history=cfg.history)
        engine = Engine(self.rules.ruleset, store)

        # Actions first and last: the journal restores what a crash left behind
        # before anything new is changed, and every change is reverted at exit.
        if self.actuator is None:
            self.actuator = build.open_actuator(cfg, self.fs, self._layout)
        stack.callback(self._revert_actions)     # if setup fails, or is stopped, below
        self.actuator.recover()
        if cfg.dry_run:
            build.report_leftovers(self.actuator, cfg.state_dir)
        # The first point a stop may end start-up: the journal is loaded, so
        # the unwinding reverts what a crashed run left.
        self._stop_point()

        if self.collector is None:
            self.collector = stack.enter_context(build.open_collector(cfg, self.fs))
        else:
            stack.callback(build.close_quietly, self.collector, "collector")
        self._stop_point()

        # Publishers.  Each is closed on every exit path (socket file removed).
        self.publishers = build.Publishers(cfg, stack, store)
        if self.api is not None:
            self.api.set_rules(self.rules.summary())
        self.pipeline = Pipeline(
            self.collector, engine, store, self.actuator, self.rules.policies, self.publishers.all,
            interval=cfg.interval, dry_run=cfg.dry_run, ticker=Ticker(cfg.interval, clock=self.clock),
            step_log=cfg.state_dir, health_parts=self._health_parts, cost=self.cost)
        # Teardown runs in reverse: the machine is put back first, then BPF and publishers.
        stack.callback(self._revert_actions)

    def _health_parts(self) -> dict:
        return {**self.rules.health(), **self.publishers.health()}

    def _stop_point(self):
        if self.signals.stop:
            raise _StoppedDuringSetup()

    def _revert_actions(self):
        if self._reverted:
            return
        self._reverted = True
        try:
            # close(): revert_all() and release the state directory's lock.
            self.actuator.close()
        except Exception:
            log.exception("reverting actions failed; the journal in %s restores them on next start",
                          self.config.state_dir)

    # --- the loop -------------------------------------------------------------
    def _loop(self):
        ticker, guard = self.cost.ticker, self.guard
        ticker.next = self.clock()          # the first tick is due now
        guard.waiting(time.monotonic())
        last_watchdog = -math.inf
        fed_at_ticks = 0            # cost.ticks when the watchdog was last fed
        while not self.signals.stop:
            wait = ticker.due_in()
            if wait > 0:
                self.signals.wait(wait)
                if self.signals.reload:
                    self._reload(forced=True)
                continue
            now = ticker.begin()
            guard.begun(time.monotonic())
            self.pipeline.tick()
            if self.cost.ticks + self.cost.errors == 1:
                # READY=1 once the first tick went through (systemd's "started").
                self.notifier.ready(f"tagging {len(self.pipeline.last_snapshot or ())} cgroups every "
                                    f"{self.config.interval:g}s")
            if self.signals.stop:
                break
            self._reload(forced=self.signals.reload)
            # WATCHDOG=1 only for a healthy loop: a tick completed since the last
            # ping.  A stuck tick or one failing every time lets WatchdogSec= lapse
            # and systemd restart the agent (its stop reverts what is journaled).
            wd = self.notifier.watchdog_interval
            if wd is not None and self.cost.ticks > fed_at_ticks and now - last_watchdog >= wd:
                self.notifier.watchdog()
                last_watchdog, fed_at_ticks = now, self.cost.ticks
            ticker.end()            # an overrun skips the slots it missed, never bursts
            guard.ended(time.monotonic(), time.monotonic() + ticker.due_in())

    def _reload(self, forced: bool):
        """SIGHUP, or a settled change (tagger.agent.rules_state)."""
        self.signals.reload = False
        self.rules.poll(forced)

    def _rules_changed(self):
        """New rules into the engine and the pipeline; the socket's summary (with
        a refusal's errors) either way."""
        if self.pipeline.engine.ruleset is not self.rules.ruleset:
            self.pipeline.engine.replace_rules(self.rules.ruleset)
            self.pipeline.policies = self.rules.policies
        if self.api is not None:
            self.api.set_rules(self.rules.summary())
