"""One tick of the agent: collect -> evaluate -> policies -> actuate -> report.

The :class:`Pipeline` is the one place the rooms meet.  ``tagger run`` drives
it from its loop with the real actuator and every publisher; ``tagger top``
standalone runs the same pipeline with a dry-run actuator and no publishers;
``tagger replay`` runs it over a trace with neither.  A tick never raises: a
failure is logged (once per hundred repeats) and counted, and the health that
says so is still published.
"""

from __future__ import annotations

import logging
import time

from tagger import __version__
from tagger.actions.actuator import Actuator
from tagger.clock import cede
from tagger.publish.report import CollectorHealth, Health, Publisher, TickReport

log = logging.getLogger(__name__)


class TickCost:
    """Rolling figures of the loop's own cost, for health and the benchmark;
    lateness and overruns are the schedule's (``ticker``, tagger.clock.Ticker)."""

    def __init__(self, ticker=None):
        self.ticker = ticker
        self.ticks = 0                          # ticks that went through
        self.errors = 0                         # ticks that failed
        self.last_wall = 0.0
        self.last_cpu = 0.0
        self.stages: dict[str, float] = {}      # seconds per stage of the last tick
        self.guard = None                       # the loop's LoopGuard (tagger.agent.loopguard), if any

    overruns = property(lambda self: self.ticker.overruns if self.ticker is not None else 0)
    last_jitter = property(lambda self: self.ticker.last_jitter if self.ticker is not None else 0.0)
    max_jitter = property(lambda self: self.ticker.max_jitter if self.ticker is not None else 0.0)


class Pipeline:
    """collect -> evaluate -> policies -> actuate -> report; one tick = one call.

    ``collector``: ``tick()`` -> Snapshot, ``health()`` -> dict, and
    ``refresh(paths)``, told the cgroups whose knobs the actuator changed
    this tick (tagger.telemetry.base.Collector: their slow figures, such as
    cpu.weight, are read again at the next tick).  ``engine``
    over ``store`` (tagger.rules.Engine, tagger.tags.TagStore).  ``actuator``:
    ``apply(snapshot, desired)`` and ``current()``, or None (replay: decide,
    never act).  ``policies``: closed loops stepped after the rules (replaced
    on a reload).  ``publishers`` get two reports a tick: the tags as soon as
    they are decided, then the actions and health once the knobs are written
    (a slow journal fsync must not delay what subscribers see).

    ``step_log``: a state directory to write the policies' latest step
    outcomes to (``tagger actions`` reads them); None writes none.
    ``interval``, ``dry_run`` and ``ticker`` (tagger.clock.Ticker: jitter and
    overruns) go into the health; ``health_parts`` returns the fields of
    Health that belong to the caller (rules counts, the socket's and Redis'
    counters).  ``cost``: where the tick's figures are kept (the daemon's
    own, so they can be read before the first tick).  ``share_cpu``: step
    off the CPU between stages (tagger.clock.cede), so that a task waiting
    for it waits for one stage, not the tick; False for a replay."""

    def __init__(self, collector, engine, store, actuator=None, policies=(), publishers=(), *,
                 interval: float = 0.0, dry_run: bool = False, ticker=None, step_log: str | None = None,
                 health_parts=None, cost: TickCost | None = None, share_cpu: bool = True):
        self.collector = collector
        # Live (tagger run, tagger top): step off the CPU between stages
        # (tagger.clock.cede); a replay runs flat out, nobody waits on it.
        self._cede = cede if share_cpu else (lambda: None)
        self.engine = engine
        self.store = store
        self.actuator = actuator
        self.policies = list(policies)
        self.publishers: list[Publisher] = list(publishers)
        self.interval = interval
        self.dry_run = dry_run
        self.step_log = step_log
        self.health_parts = health_parts
        self.cost = cost or TickCost()
        self.cost.ticker = ticker
        self.last_snapshot = None
        self.last_error: Exception | None = None     # why the last tick failed (None: it did not)
        self._steps_written = 0
        self._log_suppressed: dict[str, int] = {}

    def tick(self) -> TickReport:
        """Run one tick; the report the publishers got (health says if it failed)."""
        wall0, cpu0 = time.perf_counter(), time.process_time()
        stages = self.cost.stages
        mark = wall0

        def lap(stage):
            nonlocal mark
            self._cede()            # a task waiting for this CPU runs between stages (tagger.clock)
            now = time.perf_counter()
            stages[stage] = now - mark      # wall time, the nap that ends it included
            mark = now

        try:
            snap = self.collector.tick()
            self.last_snapshot = snap
            lap("collect")
            result = self.engine.evaluate(snap)
            self._cede()
            desired = {path: list(sets) for path, sets in (result.actions or {}).items()}
            self._step_policies(snap, desired)
            self._write_step_log()
            lap("rules")
            events = list(result.events or ())
            tags = self.store.current()
            self._publish(TickReport(snapshot=snap, tags=tags, events=events))
            lap("publish")
            actions = None
            if self.actuator is not None:
                before = {(a.cgroup, a.knob, a.value) for a in self.actuator.current()}
                self.actuator.apply(snap, desired)
                actions = self.actuator.current()
                changed = before ^ {(a.cgroup, a.knob, a.value) for a in actions}
                if changed:
                    self.collector.refresh({cgroup for cgroup, _, _ in changed if cgroup})
            lap("actions")
            self.cost.ticks += 1
            report = TickReport(snapshot=snap, tags=tags, events=events, actions=actions,
                                health=self.health())
            self._publish(TickReport(actions=actions, health=report.health))
            stages["publish"] += time.perf_counter() - mark
            self.last_error = None
            return report
        except Exception as err:
            self.last_error = err
            self.cost.errors += 1
            self._log_once("tick", "tick failed (the loop carries on)")
            # A failing loop must still be visible.
            report = TickReport(health=self.health())
            self._publish(report)
            return report
        finally:
            self.cost.last_wall = time.perf_counter() - wall0
            self.cost.last_cpu = time.process_time() - cpu0
            if self.interval and self.cost.last_wall > self.interval:
                log.warning("tick took %.3fs, longer than the %gs interval (%s)", self.cost.last_wall,
                            self.interval, ", ".join(f"{k} {v:.3f}s" for k, v in stages.items()))

    def _step_policies(self, snap, desired):
        """Each policy's asks join the rules' (the actuator takes the most restrictive)."""
        if not self.policies:
            return
        # Policies continue from the limits actually in force (the actuator
        # paces and floors what they ask for).
        applied = self.actuator.current() if self.actuator is not None else ()
        for policy in self.policies:
            try:
                for path, action_set in (policy.step(snap, self.store, applied) or {}).items():
                    desired.setdefault(path, []).append(action_set)
            except Exception:
                self._log_once(f"policy {policy.name}", "policy %s failed this tick", policy.name)
            self._cede()

    def _publish(self, report: TickReport):
        for publisher in self.publishers:
            try:
                publisher.publish(report)
            except Exception:
                self._log_once(publisher.name, "publishing to the %s failed", publisher.name)

    def _log_once(self, key, msg, *args):
        """log.exception the first time and then once per 100 repeats (weeks of uptime)."""
        n = self._log_suppressed.get(key, 0)
        self._log_suppressed[key] = n + 1
        if n % 100 == 0:
            log.exception(msg + ("" if n == 0 else f" ({n} times so far)"), *args)

    # --- the policies' steps ----------------------------------------------------------
    def recent_steps(self) -> list[dict]:
        """The policies' latest steps, oldest first, ``t`` in epoch seconds (tagger.clock)."""
        from tagger.clock import epoch
        steps = sorted((s for p in self.policies for s in p.recent_steps()), key=lambda s: s["t"])
        return [{**s, "t": epoch(s["t"])} for s in steps]

    def _write_step_log(self):
        """The latest step outcomes into the state directory (``tagger actions``
        shows them), when there are new ones; a dry run writes nothing there."""
        total = sum(sum(p.counts.values()) for p in self.policies)
        if total == self._steps_written or self.dry_run or self.step_log is None:
            return
        try:
            from tagger.policies.steplog import write_steps
            write_steps(self.step_log, self.recent_steps())
            self._steps_written = total
        except Exception:
            self._log_once("step log", "writing the policies' step log to %s failed", self.step_log)

    # --- health -----------------------------------------------------------------------
    def health(self) -> Health:
        """The agent's health now: the one place it is assembled."""
        c = self.cost
        h = Health(
            version=__version__, interval_seconds=self.interval, tick_seconds=c.last_wall,
            tick_cpu_seconds=c.last_cpu, tick_stage_seconds=dict(c.stages),
            tick_jitter_seconds=c.last_jitter, tick_jitter_max_seconds=c.max_jitter,
            loop_guard_priority=c.guard.watching if c.guard is not None else 0,
            tick_boosts=c.guard.boosts if c.guard is not None else 0,
            ticks=c.ticks, overruns=c.overruns, tick_errors=c.errors,
            cpu_seconds=time.process_time(), policies_loaded=len(self.policies),
            cgroups=len(self.last_snapshot) if self.last_snapshot is not None else 0,
            dry_run=self.dry_run, collector=self._collector_health())
        if isinstance(self.actuator, Actuator):      # a journal (top's dry run and tests' stand-ins keep none)
            journal, left = self.actuator.journal, self.actuator.leftovers
            h.journal_write_failures = journal.write_failures
            h.journal_damaged_records = len(journal.damaged)
            if self.dry_run:
                h.journal_leftovers = len(left.entries) + len(left.damaged)
        if self.policies:
            # Each policy step's outcome (policies.state.OUTCOMES): counts
            # for tagger_policy_steps_total, the latest with the victim's figures.
            h.policy_steps = [s for p in self.policies for s in p.step_counts()]
            h.policy_recent_steps = self.recent_steps()
        for name, value in (self.health_parts() if self.health_parts is not None else {}).items():
            setattr(h, name, value)
        return h

    def _collector_health(self) -> CollectorHealth | None:
        try:
            return CollectorHealth.from_collector(self.collector.health())
        except Exception:
            log.debug("collector health failed", exc_info=True)
            return None
