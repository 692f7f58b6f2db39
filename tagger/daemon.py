"""The agent: ``tagger run``.  Each tick: Snapshot -> rules -> tags -> actions
-> publish.  This is the one module that wires the engine's rooms together
(docs/interfaces.md); it owns the schedule, reload, signals and teardown.

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
import dataclasses
import logging
import math
import os
import select
import signal
import time
from pathlib import Path

from tagger import __version__
from tagger.errors import ConfigError, RulesError
from tagger.kernelfs import HOST, KernelFS
from tagger.sdnotify import Notifier

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/lib/tagger"


def default_rules_dir() -> str:
    """The rules shipped with the package (``tagger.default_rules``)."""
    try:
        import importlib.resources as resources
        return str(resources.files("tagger.default_rules"))
    except (ModuleNotFoundError, TypeError):
        return str(Path(__file__).resolve().parent.parent / "rules")


@dataclasses.dataclass
class Config:
    """What ``tagger run`` was asked to do.  ``None`` for metrics/socket turns them off."""
    rules: str | None = None                  # None: the packaged default rules
    interval: float = 1.0
    dry_run: bool = False
    state_dir: str = DEFAULT_STATE_DIR
    metrics: str | None = "127.0.0.1:9473"
    socket: str | None = "/run/tagger/tagger.sock"
    record: str | None = None
    redis: str | None = None
    export: tuple[str, ...] = ()
    #: the exposition's top N cgroups by CPU, and its cap (tagger.publish.export)
    export_top: int = 25                      # tagger.publish.export.DEFAULT_TOP
    export_cap: int = 1000                    # tagger.publish.export.DEFAULT_CAP
    prefer_bpf: bool = True
    history: int = 10000
    #: BPF collector: read the cgroupfs-only figures (cpu.throttled, mem.current,
    #: psi.*) every N ticks; the kernel's counters are read every tick.  Opening
    #: ~5 files per cgroup is most of a tick's cost at 1,000 cgroups.
    cgroupfs_every: int = 10
    #: keep the kernel's BPF run-time statistics on, to export ns per event
    bpf_stats: bool = False
    #: where the kubelet's pods/ and containers/ log directories are (pod and
    #: container names for the labels, tagger.kubelet); None: no names
    kubelet_logs: str | None = "/var/log"
    check_ownership: bool | None = None       # None: when running as root
    #: seconds the rules directory must be still before a change is reloaded
    #: (a file caught mid-write is never loaded; docs/rules.md "Reload")
    rules_settle: float = 1.0

    @property
    def rules_dir(self) -> str:
        return self.rules or default_rules_dir()


#: keys a --config file may set (YAML mapping; dashes or underscores)
CONFIG_KEYS = {f.name for f in dataclasses.fields(Config)}


def read_config_file(path: str) -> dict:
    """The settings in a YAML ``--config`` file; unknown keys are an error."""
    import yaml

    from tagger.units import parse_duration
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as err:
        raise ConfigError(f"--config {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in CONFIG_KEYS:
            raise ConfigError(f"--config {path}: unknown setting {key!r} "
                              f"(known: {', '.join(sorted(CONFIG_KEYS))})")
        if name in ("interval", "rules_settle"):
            value = parse_duration(value)
        if name == "export" and isinstance(value, str):
            value = (value,)
        if name in ("metrics", "socket", "kubelet_logs") and value in (False, "off", "none", ""):
            value = None
        out[name] = tuple(value) if name == "export" else value
    return out


# --- rules directory ownership (tagger.rules.ownership, shared with `rules check`) ----
def check_rules_ownership(directory: str, uid: int = 0) -> None:
    """Refuse a rules directory that someone other than ``uid`` could change
    (see :func:`tagger.rules.ownership.ownership_problems`): raises ConfigError
    listing every such path with how to fix it."""
    from tagger.rules.ownership import ownership_problems
    problems = ownership_problems(directory, uid)
    if problems:
        raise ConfigError("refusing rules that someone other than root could change "
                          "(rule files decide what is done to this machine):\n  "
                          + "\n  ".join(str(p) for p in problems))


def rules_summary(ruleset, directory: str, errors=(), loaded_at: float | None = None) -> dict:
    """What the socket's ``rules`` request returns."""
    rules = []
    for r in getattr(ruleset, "rules", ()) or ():
        rules.append({
            "name": getattr(r, "name", str(r)),
            "source": getattr(r, "source", ""),
            "enabled": bool(getattr(r, "enabled", True)),
            "when": getattr(r, "when_src", None),
            "for": getattr(r, "for_", None),
            "keep_for": getattr(r, "keep_for", None),
            "tags": dict(getattr(r, "tags", {}) or {}),
            "actions": getattr(r, "actions", None) is not None,
        })
    policies = [getattr(p, "name", str(p)) for p in getattr(ruleset, "policies", ()) or ()]
    return {"dir": directory, "loaded_at": loaded_at, "rules": rules, "policies": policies,
            "errors": [str(e) for e in errors]}


class _TickCost:
    """Rolling figures of the loop's own cost, for health and the benchmark."""

    def __init__(self):
        self.ticks = 0
        self.overruns = 0
        self.errors = 0
        self.last_wall = 0.0
        self.last_cpu = 0.0
        self.last_jitter = 0.0
        self.max_jitter = 0.0
        self.stages: dict[str, float] = {}      # seconds per stage of the last tick


class _StoppedDuringSetup(Exception):
    """SIGTERM/SIGINT came while setting up: unwind (reverting) and exit 0."""


class Daemon:
    """Build with a Config; :meth:`run` blocks until SIGTERM/SIGINT (or :meth:`stop`).

    The rooms can be injected (tests, benchmarks): ``collector`` (an object
    with ``tick()``, ``health()``, ``close()``), ``actuator``, ``layout``."""

    def __init__(self, config: Config, *, fs: KernelFS = HOST, collector=None, actuator=None,
                 layout=None, notifier: Notifier | None = None, clock=time.monotonic):
        self.config = config
        self.fs = fs
        self.clock = clock
        self.notifier = notifier or Notifier()
        self._collector = collector
        self._actuator = actuator
        self._layout = layout
        self.cost = _TickCost()
        self.reloads = 0
        self.reload_failures = 0
        self.rule_errors = 0
        self._stop = False
        self._reload_requested = False
        self.rules_watch = None                 # tagger.rules.watch.RulesWatcher
        self._wake_r = self._wake_w = None
        self._log_suppressed: dict[str, int] = {}
        self.store = self.engine = self.ruleset = None
        self.policies = []
        self._steps_written = 0                 # step outcomes in the state directory's step log
        self.collector = self.actuator = None
        self.metrics = self.api = self.redis = self.trace = None
        self.prometheus = None
        self.last_snapshot = None
        self.ready = False
        self._reverted = False

    # --- public ---------------------------------------------------------------
    def stop(self):
        """Ask the loop to end after the current tick (thread- and signal-safe)."""
        self._stop = True
        self._wake()

    def request_reload(self):
        self._reload_requested = True
        self._wake()

    def run(self) -> int:
        """Set up, loop until stopped, tear down.  0 on a clean stop."""
        with contextlib.ExitStack() as stack:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            stack.callback(os.close, self._wake_r)
            stack.callback(os.close, self._wake_w)
            # Handlers first: SIGTERM while BPF loads must still revert what a
            # crashed run left (issue 13); until the loop runs, setup checks the flag.
            stack.enter_context(self._signals())
            try:
                self._setup(stack)
            except _StoppedDuringSetup:
                log.info("stopped during start-up: reverting what the journal holds")
                self.notifier.stopping()
                stack.close()
                log.info("stopped")
                return 0
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
        from tagger.rules import Engine, load_directory
        from tagger.tags import TagStore

        self._check_ownership(cfg.rules_dir)
        from tagger.rules.watch import RulesWatcher
        self.rules_watch = RulesWatcher(cfg.rules_dir, cfg.rules_settle, self.clock)
        before = self.rules_watch.snapshot()
        try:
            self.ruleset = load_directory(cfg.rules_dir)
        except RulesError as err:
            for problem in getattr(err, "problems", None) or [err]:
                log.error("%s", problem)
            raise
        self.rules_watch.loaded(before)     # moved under the load: the watcher reloads it settled
        self.store = TagStore(history=cfg.history)
        self.engine = Engine(self.ruleset, self.store)
        self.policies = self._make_policies(self.ruleset, {})
        self._log_ruleset("loaded")

        # Actions first and last: the journal restores what a crash left behind
        # before anything new is changed, and every change is reverted at exit.
        if self._actuator is None:
            from tagger.actions.actuator import Actuator
            from tagger.cgroups import Layout
            layout = self._layout or Layout.detect(fs=self.fs)
            if not cfg.dry_run:
                os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
            # The actuator protects the root, init and tagger's own cgroups itself.
            self._actuator = Actuator(layout, fs=self.fs, state_dir=cfg.state_dir, dry_run=cfg.dry_run)
        self.actuator = self._actuator
        stack.callback(self._revert_actions)     # if setup fails, or is stopped, below
        self.actuator.recover()
        if cfg.dry_run:
            self._report_leftovers()
        # The first point a stop may end start-up: the journal is loaded, so
        # the unwinding reverts what a crashed run left.
        self._stop_point()

        if self._collector is None:
            self._collector = stack.enter_context(self._open_collector())
        else:
            stack.callback(self._close_quietly, self._collector, "collector")
        self.collector = self._collector
        self._stop_point()

        # Publishers.  Each is closed on every exit path (socket file removed).
        from tagger.publish.prometheus import MetricsServer, TaggerCollector
        self.prometheus = TaggerCollector(export=cfg.export, top=cfg.export_top, cap=cfg.export_cap)
        if cfg.metrics:
            self.metrics = MetricsServer(self.prometheus, cfg.metrics)
            stack.callback(self._close_quietly, self.metrics, "metrics server")
            log.info("metrics on %s", self.metrics.url)
        if cfg.socket:
            from tagger.api import ApiServer
            self.api = ApiServer(cfg.socket, history=cfg.history).start()
            stack.callback(self._close_quietly, self.api, "socket API")
            self.api.set_rules(self._rules_summary())
        if cfg.redis:
            from tagger.publish.redis import RedisPublisher
            self.redis = RedisPublisher(cfg.redis).start()
            stack.callback(self._close_quietly, self.redis, "redis publisher")
        if cfg.record:
            from tagger.trace import TraceWriter
            self.trace = TraceWriter(cfg.record)
            stack.callback(self._close_quietly, self.trace, "trace")
            log.info("recording snapshots to %s", cfg.record)
        # Teardown runs in reverse: the machine is put back first, then BPF and publishers.
        stack.callback(self._revert_actions)

    def _stop_point(self):
        if self._stop:
            raise _StoppedDuringSetup()

    def _report_leftovers(self):
        """Dry run: say which knobs a previous run left changed, and how to put them back."""
        left = getattr(self.actuator, "leftovers", None)
        if left is None or not (left.entries or left.damaged):
            return
        state = self.config.state_dir
        for e in left.entries:
            log.warning("dry run: %s %s was left changed by a previous run (%r, originally %r, rule %s)",
                        e.cgroup or "resctrl", e.knob, e.value, e.original, e.rule or "?")
        for damage in left.damaged:
            log.warning("dry run: journal %s: %s (its original is lost: check that knob by hand)",
                        state, damage)
        # `tagger actions --restore` refuses a damaged journal; a real start restores its intact entries.
        how = ("start tagger without --dry-run (it restores the intact entries)" if left.damaged else
               f"restore them with `tagger actions --restore --state-dir {state}`, or start tagger "
               f"without --dry-run")
        log.warning("dry run: %d knobs a previous tagger changed are still journaled in %s and not "
                    "restored (a dry run writes nothing); %s", len(left.entries), state, how)

    def _open_collector(self):
        names = None
        if self.config.kubelet_logs:
            from tagger.kubelet import KubeletLogs
            names = KubeletLogs(self.config.kubelet_logs)
        try:
            from tagger.telemetry import open_collector
        except ModuleNotFoundError as err:
            if err.name != "tagger.telemetry":
                raise
            from tagger.fallback import FallbackCollector
            return FallbackCollector(fs=self.fs, reason="this build has no BPF collector", workload_names=names)
        if not self.config.prefer_bpf:
            return open_collector(prefer_bpf=False, fs=self.fs, workload_names=names)
        return open_collector(prefer_bpf=True, fs=self.fs, workload_names=names,
                              cgroupfs_every=max(1, int(self.config.cgroupfs_every)),
                              bpf_stats=bool(self.config.bpf_stats))

    def _check_ownership(self, directory):
        check = self.config.check_ownership
        if check is None:
            check = os.geteuid() == 0
        if check:
            check_rules_ownership(directory)

    def _revert_actions(self):
        if self._reverted:
            return
        self._reverted = True
        try:
            # close(): revert_all() and release the state directory's lock.
            (getattr(self.actuator, "close", None) or self.actuator.revert_all)()
        except Exception:
            log.exception("reverting actions failed; the journal in %s restores them on next start",
                          self.config.state_dir)

    @staticmethod
    def _close_quietly(obj, what):
        try:
            obj.close()
        except Exception:
            log.exception("closing the %s failed", what)

    @contextlib.contextmanager
    def _signals(self):
        """SIGTERM/SIGINT stop, SIGHUP reloads; the wake-up fd ends a wait at once."""
        handlers = {signal.SIGTERM: self._on_stop, signal.SIGINT: self._on_stop,
                    signal.SIGHUP: self._on_hup}
        old = {}
        try:
            old_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        except ValueError:        # not the main thread (tests driving run() from a thread)
            yield
            return
        try:
            for sig, handler in handlers.items():
                old[sig] = signal.signal(sig, handler)
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_fd)

    def _on_stop(self, signum, frame):
        if self._stop:            # a second signal while reverting: say we heard it
            log.warning("%s again: still reverting actions, please wait", signal.Signals(signum).name)
        self._stop = True

    def _on_hup(self, signum, frame):
        self._reload_requested = True

    def _wake(self):
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass

    # --- the loop -------------------------------------------------------------
    def _loop(self):
        interval = self.config.interval
        next_tick = self.clock()
        last_watchdog = -math.inf
        fed_at_ticks = 0            # cost.ticks when the watchdog was last fed
        while not self._stop:
            now = self.clock()
            if now < next_tick:
                self._wait(next_tick - now)
                if self._reload_requested:
                    self._reload(forced=True)
                continue
            self.cost.last_jitter = now - next_tick
            self.cost.max_jitter = max(self.cost.max_jitter, self.cost.last_jitter)
            self._tick()
            if self.cost.ticks + self.cost.errors == 1:
                # READY=1 once the first tick went through (systemd's "started").
                self.notifier.ready(f"tagging {len(self.last_snapshot or ())} cgroups every "
                                    f"{self.config.interval:g}s")
            if self._stop:
                break
            self._maybe_reload()
            # WATCHDOG=1 only for a healthy loop: a tick completed since the last
            # ping.  A stuck tick or one failing every time lets WatchdogSec= lapse
            # and systemd restart the agent (its stop reverts what is journaled).
            wd = self.notifier.watchdog_interval
            if wd is not None and self.cost.ticks > fed_at_ticks and now - last_watchdog >= wd:
                self.notifier.watchdog()
                last_watchdog, fed_at_ticks = now, self.cost.ticks
            next_tick += interval
            after = self.clock()
            if after >= next_tick:      # the tick overran: skip, do not burst to catch up
                self.cost.overruns += 1
                missed = math.floor((after - next_tick) / interval) + 1
                next_tick += missed * interval

    def _wait(self, seconds):
        try:
            ready, _, _ = select.select([self._wake_r], [], [], max(seconds, 0))
        except InterruptedError:
            return
        if ready:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass

    def _tick(self):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        stages = self.cost.stages
        mark = wall0

        def lap(stage):
            nonlocal mark
            now = time.perf_counter()
            stages[stage] = now - mark
            mark = now

        try:
            snap = self.collector.tick()
            self.last_snapshot = snap
            lap("collect")
            result = self.engine.evaluate(snap)
            desired = {path: list(sets) for path, sets in (result.actions or {}).items()}
            # Policies continue from the limits actually in force (the actuator
            # paces and floors what they ask for).
            applied = self.actuator.current() if self.policies else ()
            for policy in self.policies:
                try:
                    for path, action_set in (policy.step(snap, self.store, applied) or {}).items():
                        desired.setdefault(path, []).append(action_set)
                except Exception:
                    self._log_once(f"policy {getattr(policy, 'name', policy)}",
                                   "policy %s failed this tick", getattr(policy, "name", policy))
            self._write_step_log()
            lap("rules")
            # Tags go out before actions are applied: a slow journal fsync in the
            # actuator must not delay what subscribers see.
            events = list(result.events or ())
            tags = self.store.current()
            self._publish_tags(snap, tags, events)
            lap("publish")
            # apply() returns the whole picture; publishers read current() below.
            self.actuator.apply(snap, desired)
            lap("actions")
            if self.trace is not None:
                self._publish("trace", self.trace.write, snap)
            self.cost.ticks += 1
            self._publish_actions(snap, tags)
            stages["publish"] += time.perf_counter() - mark
        except Exception:
            self.cost.errors += 1
            self._log_once("tick", "tick failed (the loop carries on)")
            self._publish_health()     # a failing loop must still be visible
        finally:
            self.cost.last_wall = time.perf_counter() - wall0
            self.cost.last_cpu = time.process_time() - cpu0
            if self.cost.last_wall > self.config.interval:
                log.warning("tick took %.3fs, longer than the %gs interval (%s)", self.cost.last_wall,
                            self.config.interval,
                            ", ".join(f"{k} {v:.3f}s" for k, v in stages.items()))

    def _publish_tags(self, snap, tags, events):
        if self.api is not None:
            self._publish("socket API", self.api.publish, snap, tags, events, None, None)
        if self.redis is not None:
            self._publish("redis", self.redis.publish, tags, events)

    def _publish_actions(self, snap, tags):
        actions = self.actuator.current()
        health = self.health()
        if self.prometheus is not None:
            self._publish("prometheus", self.prometheus.update, snap, tags, actions, health)
        if self.api is not None:
            self._publish("socket API", self.api.publish, None, None, (), actions, health)

    def _publish_health(self):
        health = self.health()
        if self.prometheus is not None:
            self._publish("prometheus", self.prometheus.update, self.last_snapshot,
                          self.store.current(), self.actuator.current(), health)
        if self.api is not None:
            self._publish("socket API", self.api.publish, None, None, (), None, health)

    def _publish(self, what, fn, *args):
        try:
            fn(*args)
        except Exception:
            self._log_once(what, "publishing to the %s failed", what)

    def _log_once(self, key, msg, *args):
        """log.exception the first time and then once per 100 repeats (weeks of uptime)."""
        n = self._log_suppressed.get(key, 0)
        self._log_suppressed[key] = n + 1
        if n % 100 == 0:
            log.exception(msg + ("" if n == 0 else f" ({n} times so far)"), *args)

    # --- health -----------------------------------------------------------------
    def health(self) -> dict:
        c = self.cost
        h = {
            "version": __version__,
            "interval_seconds": self.config.interval,
            "tick_seconds": c.last_wall,
            "tick_cpu_seconds": c.last_cpu,
            "tick_stage_seconds": dict(c.stages),
            "tick_jitter_seconds": c.last_jitter,
            "tick_jitter_max_seconds": c.max_jitter,
            "ticks": c.ticks,
            "overruns": c.overruns,
            "tick_errors": c.errors,
            "cpu_seconds": time.process_time(),
            "rules_loaded": len(getattr(self.ruleset, "rules", ()) or ()),
            "policies_loaded": len(self.policies),
            "rule_errors": self.rule_errors,
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "cgroups": len(self.last_snapshot) if self.last_snapshot is not None else 0,
            "dry_run": self.config.dry_run,
        }
        journal = getattr(self.actuator, "journal", None)
        if journal is not None:
            h["journal_write_failures"] = journal.write_failures
            h["journal_damaged_records"] = len(journal.damaged)
        left = getattr(self.actuator, "leftovers", None)
        if self.config.dry_run and left is not None:
            h["journal_leftovers"] = len(left.entries) + len(left.damaged)
        h.update(_collector_health(self.collector))
        if self.policies:
            # Each policy step's outcome (helped / no_effect / unjudged): counts
            # for tagger_policy_steps_total, the latest with the victim's figures.
            h["policy_steps"] = [c for p in self.policies for c in _call(p, "step_counts")]
            h["policy_recent_steps"] = self._recent_steps()
        if self.api is not None:
            h["api_clients"] = self.api.stats["clients"]
            h["api_dropped"] = self.api.stats["dropped"]
            h["api_errors"] = self.api.stats["errors"]
        if self.redis is not None:
            h["redis_connected"] = self.redis.stats["connected"]
            h["redis_dropped"] = self.redis.stats["dropped"]
        return h

    # --- reload -------------------------------------------------------------------
    def _maybe_reload(self):
        if self._reload_requested:
            self._reload(forced=True)
            return
        # One scandir per tick; a change waits until the directory has been
        # still for rules_settle seconds, so a file caught mid-write is not acted on.
        if self.rules_watch.poll() is not None:
            self._reload(forced=False)

    def _reload(self, forced: bool):
        """Load the rules directory again; on any error keep the rules in force."""
        from tagger.rules import load_directory
        self._reload_requested = False
        directory = self.config.rules_dir
        sig = self.rules_watch.snapshot()
        why = "SIGHUP" if forced else "rules directory changed"
        self.notifier.reloading()
        try:
            self._check_ownership(directory)
            ruleset = load_directory(directory)
            if not self.rules_watch.unchanged_since(sig):
                # A writer was at work during the load: what was read may be
                # half a file.  The watcher loads it once it is still.
                log.info("reload (%s) put off: the rules directory changed while it was read", why)
                self.notifier.ready()
                return False
        except (RulesError, ConfigError, OSError) as err:
            self.rules_watch.loaded(sig)     # refused: not again until it changes
            problems = list(getattr(err, "errors", None) or getattr(err, "problems", None) or [err])
            log.error("reload (%s) refused, the previous rules stay in force; %d error%s:",
                      why, len(problems), "" if len(problems) == 1 else "s")
            for problem in problems:
                log.error("  %s", problem)
            self.rule_errors = len(problems)
            self.reload_failures += 1
            if self.api is not None:
                self.api.set_rules(self._rules_summary(problems))
            self.notifier.ready("previous rules kept: the rules directory has errors")
            return False
        self.rules_watch.loaded(sig)
        self.engine.replace_rules(ruleset)
        self.policies = self._make_policies(ruleset, {getattr(p, "spec", None): p for p in self.policies})
        self.ruleset = ruleset
        self.rule_errors = 0
        self.reloads += 1
        self._log_ruleset(f"reloaded ({why})")
        if self.api is not None:
            self.api.set_rules(self._rules_summary())
        self.notifier.ready()
        return True

    def _make_policies(self, ruleset, previous: dict):
        specs = list(getattr(ruleset, "policies", ()) or ())
        if not specs:
            return []
        try:
            from tagger.policies import LatencySlo
        except ImportError:
            log.warning("this build has no latency-slo controller; %d policies ignored", len(specs))
            return []
        # An unchanged spec keeps its controller (and its limits' history) across a reload;
        # a changed one keeps its name's step counts (counters do not go back).
        by_name = {getattr(p, "name", None): p for p in previous.values()}
        out = []
        for spec in specs:
            policy = previous.get(spec)
            if policy is None:
                policy = LatencySlo(spec)
                old = by_name.get(spec.name)
                if old is not None and hasattr(old, "counts"):
                    policy.counts.update(old.counts)
                    policy.outcomes.extend(old.outcomes)
            out.append(policy)
        return out

    def _recent_steps(self) -> list[dict]:
        """The policies' latest steps, oldest first, ``t`` in epoch seconds (tagger.clock)."""
        from tagger.clock import epoch
        steps = sorted((s for p in self.policies for s in _call(p, "recent_steps")), key=lambda s: s["t"])
        return [{**s, "t": epoch(s["t"])} for s in steps]

    def _write_step_log(self):
        """The latest step outcomes into the state directory (``tagger actions``
        shows them), when there are new ones; a dry run writes nothing there."""
        total = sum(sum(getattr(p, "counts", {}).values()) for p in self.policies)
        if total == self._steps_written or self.config.dry_run:
            return
        try:
            from tagger.policies.steplog import write_steps
            write_steps(self.config.state_dir, self._recent_steps())
            self._steps_written = total
        except Exception:
            self._log_once("step log", "writing the policies' step log to %s failed", self.config.state_dir)

    def _log_ruleset(self, what):
        rs = self.ruleset
        for warning in getattr(rs, "warnings", ()) or ():
            log.warning("%s", warning)
        log.info("rules %s from %s: %d rules, %d policies", what, self.config.rules_dir,
                 len(getattr(rs, "rules", ()) or ()), len(self.policies))

    def _rules_summary(self, errors=()):
        return rules_summary(self.ruleset, self.config.rules_dir, errors, self.clock())


#: BPF collector health counters of updates lost to a full map or slot table.
MAP_FULL_COUNTERS = ("kernel.rq_full", "kernel.slots_exhausted", "kernel.task_storage_fail")


def _call(policy, method) -> list:
    """A policy's report, or [] for one without it (a test's stand-in)."""
    fn = getattr(policy, method, None)
    return fn() if fn is not None else []


def _collector_health(collector) -> dict:
    """The collector's health() under the names the publishers use."""
    try:
        raw = dict(collector.health()) if collector is not None and hasattr(collector, "health") else {}
    except Exception:
        log.debug("collector health failed", exc_info=True)
        return {}
    out = {}
    aliases = {
        "source": ("source",),
        "bpf_ns_per_event": ("bpf_ns_per_event", "bpf ns/event", "ns_per_event"),
        "events_per_second": ("events_per_second", "events/s", "events_per_s"),
        "ringbuf_drops": ("ringbuf_drops", "kernel.ringbuf_drops", "drops"),
        "map_full": ("map_full",),
        "lost_lifecycle_events": ("lost_lifecycle_events",),
        "slots_reclaimed": ("slots_reclaimed",),
    }
    for name, keys in aliases.items():
        for key in keys:
            if key in raw and raw[key] is not None:
                out[name] = raw[key]
                break
    if "map_full" not in out:
        # The BPF collector reports each full map on its own (bpf/tagger.h struct tg_global).
        full = [raw[k] for k in MAP_FULL_COUNTERS if isinstance(raw.get(k), (int, float))]
        if full:
            out["map_full"] = sum(full)
    for key, value in raw.items():      # anything else the collector reports, for the socket
        out.setdefault(f"collector.{key}", value)
    return out


def setup_logging(level: int = logging.INFO):
    """stderr logging; under systemd (JOURNAL_STREAM set) with sd-daemon(3)
    priority prefixes and no timestamps, which journald adds itself."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


class _JournalFormatter(logging.Formatter):
    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}

    def format(self, record):
        prio = self.PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        # One prefix per line, so a traceback keeps its level in the journal.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())
