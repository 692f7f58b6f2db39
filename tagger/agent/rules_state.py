"""The rules in force: loading the directory, reloading it on SIGHUP or once a
change has settled, the policies built from it, and the summary the socket's
``rules`` request returns.

A reload is atomic: a directory with errors is logged (every error) and the
previous rules and policies stay in force; a directory that changed while it
was read is put off until it is still (tagger.rules.watch).
"""

from __future__ import annotations

import logging
import os
import time

from tagger.errors import ConfigError, RulesError
from tagger.rules import RulesLoadError, load_directory
from tagger.rules.model import RuleSet
from tagger.rules.watch import RulesWatcher
from tagger.sdnotify import Notifier

from .config import check_rules_ownership

log = logging.getLogger(__name__)

#: what :meth:`RulesState.reload` did
LOADED, REFUSED, PUT_OFF = "loaded", "refused", "put off"


def rules_summary(ruleset: RuleSet | None, directory: str, errors=(), loaded_at: float | None = None) -> dict:
    """What the socket's ``rules`` request returns."""
    rules = [{"name": r.name, "source": r.source, "enabled": r.enabled, "when": r.when_src,
              "for": r.for_, "keep_for": r.keep_for, "tags": dict(r.tags),
              "actions": r.actions is not None}
             for r in (ruleset.rules if ruleset is not None else ())]
    policies = [p.name for p in (ruleset.policies if ruleset is not None else ())]
    return {"dir": directory, "loaded_at": loaded_at, "rules": rules, "policies": policies,
            "errors": [str(e) for e in errors]}


def make_policies(ruleset: RuleSet, previous=()) -> list:
    """A controller for each policy of ``ruleset``.  An unchanged spec keeps its
    controller (and its limits' history) across a reload; a changed one keeps
    its name's step counts (counters do not go back)."""
    from tagger.policies.latency_slo import LatencySlo
    by_spec = {p.spec: p for p in previous}
    by_name = {p.name: p for p in previous}
    out = []
    for spec in ruleset.policies:
        policy = by_spec.get(spec)
        if policy is None:
            policy = LatencySlo(spec)
            old = by_name.get(spec.name)
            if old is not None:
                policy.counts.update(old.counts)
                policy.outcomes.extend(old.outcomes)
        out.append(policy)
    return out


class RulesState:
    """The ruleset and policies in force and the counts health reports.

    ``check_ownership``: refuse a directory someone other than root could
    change (None: when running as root).  ``notifier`` (tagger.sdnotify) hears
    RELOADING=1 and READY=1 around every reload; ``on_change()`` is called
    after a reload took new rules or refused some, before READY=1."""

    def __init__(self, directory: str, *, settle: float = 1.0, clock=time.monotonic,
                 check_ownership: bool | None = None, notifier=None, on_change=None):
        self.directory = directory
        self.clock = clock
        self.check_ownership = os.geteuid() == 0 if check_ownership is None else check_ownership
        self.notifier = notifier or Notifier({})
        self.on_change = on_change
        self.watcher = RulesWatcher(directory, settle, clock)
        self.ruleset: RuleSet | None = None
        self.policies: list = []
        self.errors: list = []                  # the last refused reload's problems
        self.loaded_at: float | None = None
        self.reloads = 0
        self.reload_failures = 0

    @property
    def rule_errors(self) -> int:
        return len(self.errors)

    def load(self) -> RuleSet:
        """The first load: every problem logged, then RulesError/ConfigError raised."""
        self._check(self.directory)
        before = self.watcher.snapshot()
        try:
            ruleset = load_directory(self.directory)
        except RulesError as err:
            for problem in err.problems if isinstance(err, RulesLoadError) else [err]:
                log.error("%s", problem)
            raise
        self.watcher.loaded(before)     # moved under the load: the watcher reloads it settled
        self._take(ruleset)
        self._log_ruleset("loaded")
        return ruleset

    def poll(self, forced: bool = False) -> str | None:
        """Reload when asked (``forced``: SIGHUP) or when a change has settled;
        what happened (LOADED, REFUSED, PUT_OFF), or None when nothing changed.
        One scandir when not forced: a change waits until the directory has
        been still for the settle time, so a file caught mid-write is not acted on."""
        if forced or self.watcher.poll() is not None:
            return self.reload(forced)
        return None

    def reload(self, forced: bool) -> str:
        """Load the rules directory again; on any error keep the rules in force."""
        sig = self.watcher.snapshot()
        why = "SIGHUP" if forced else "rules directory changed"
        self.notifier.reloading()
        try:
            self._check(self.directory)
            ruleset = load_directory(self.directory)
            if not self.watcher.unchanged_since(sig):
                # A writer was at work during the load: what was read may be
                # half a file.  The watcher loads it once it is still.
                log.info("reload (%s) put off: the rules directory changed while it was read", why)
                self.notifier.ready()
                return PUT_OFF
        except (RulesError, ConfigError, OSError) as err:
            self.watcher.loaded(sig)     # refused: not again until it changes
            problems = list(err.errors or err.problems) if isinstance(err, RulesLoadError) else [err]
            log.error("reload (%s) refused, the previous rules stay in force; %d error%s:",
                      why, len(problems), "" if len(problems) == 1 else "s")
            for problem in problems:
                log.error("  %s", problem)
            self.errors = problems
            self.reload_failures += 1
            self._changed()
            self.notifier.ready("previous rules kept: the rules directory has errors")
            return REFUSED
        self.watcher.loaded(sig)
        self._take(ruleset)
        self.errors = []
        self.reloads += 1
        self._log_ruleset(f"reloaded ({why})")
        self._changed()
        self.notifier.ready()
        return LOADED

    def summary(self) -> dict:
        """The socket's ``rules`` reply: the rules in force and the last refusal's errors."""
        return rules_summary(self.ruleset, self.directory, self.errors, self.loaded_at)

    def health(self) -> dict:
        """The Health fields that are the rules'."""
        return {"rules_loaded": len(self.ruleset.rules) if self.ruleset is not None else 0,
                "rule_errors": self.rule_errors, "reloads": self.reloads,
                "reload_failures": self.reload_failures}

    def _take(self, ruleset: RuleSet):
        self.policies = make_policies(ruleset, self.policies)
        self.ruleset = ruleset
        self.loaded_at = self.clock()

    def _changed(self):
        if self.on_change is not None:
            self.on_change()

    def _check(self, directory):
        if self.check_ownership:
            check_rules_ownership(directory)

    def _log_ruleset(self, what):
        for warning in self.ruleset.warnings:
            log.warning("%s", warning)
        log.info("rules %s from %s: %d rules, %d policies", what, self.directory,
                 len(self.ruleset.rules), len(self.policies))
