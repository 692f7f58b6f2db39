"""``tagger actions``: what tagger has changed on the kernel, and why, read from
the actions journal in the state directory (no running agent needed)."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import click

from tagger.actions.journal import DEFAULT_STATE_DIR, JOURNAL_NAME, LOCK_NAME, read_journal
from tagger.errors import ConfigError
from tagger.knobs import CpuMax, parse_io_limits
from tagger.names import display
from tagger.policies.steplog import read_steps


def agent_pid(state_dir: Path) -> int | None:
    """The pid of the agent holding ``state_dir``, or None when none does."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def human(knob: str, value: str) -> str:
    """A knob's value in the field's units: "0.3 CPU", "read 10 MiB/s", "unlimited"."""
    from tagger.units import format_bytes
    kind = knob.split(" ", 1)[0]
    try:
        if kind == "cpu.max":
            limit = CpuMax.parse(value)
            if limit.quota_us is None:
                return "unlimited"
            return f"{limit.cpus:.3g} CPU per {limit.period_us / 1000:g}ms"
        if kind == "io.max":
            names = {"rbps": "read", "wbps": "write", "riops": "read", "wiops": "write"}
            parts = [f"{names[k]} {format_bytes(n, per_second=True)}" if k.endswith("bps")
                     else f"{names[k]} {n} IOPS" for k, n in parse_io_limits(value).items() if n is not None]
            return ", ".join(parts) or "unlimited"
        if kind == "cpu.idle":
            idle, _, weight = value.partition(" ")
            return "SCHED_IDLE" if idle == "1" else f"not idle, weight {weight or '?'}"
        if kind == "cpuset.cpus":
            return f"CPUs {value}" if value else "the parent's CPUs"
    except (ValueError, KeyError, IndexError, ZeroDivisionError):
        pass
    return value.strip().replace("\n", " ") or "-"


def _age(since: float) -> str:
    s = max(0, time.time() - since)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.0f}{unit}"
    return f"{s:.0f}s"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document (for scripts).")
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="The agent's state directory.")
@click.option("--restore", is_flag=True,
              help="Put every journaled knob back now (only when no agent is running).")
def actions(as_json, state_dir: Path, restore):
    """What tagger has changed on the kernel now, and why.

    Every knob tagger changes (CPU quota, weight, I/O limits, RDT groups) is in
    the journal with its original value until it is put back.  Below it, the
    latency-slo policies' latest steps: the lever, the victim and the culprit,
    and the judgment (helped: kept; no effect: undone), with the victim's SLO
    metric before the step and over its judgment window; and each kept
    demotion given back on trial once the SLO held (released, or still needed
    and put back).  If no agent is
    running and knobs are listed, the last one stopped without restoring them
    (crash, SIGKILL): the next `tagger run` restores them, or use --restore.
    """
    try:
        # A damaged journal still lists (and restores) every intact entry; the
        # damaged records are named, and the viewer never moves the file.
        contents = read_journal(state_dir / JOURNAL_NAME)
        entries, damaged = contents.entries, [str(d) for d in contents.damaged]
        pid = agent_pid(state_dir)
    except PermissionError as err:
        raise ConfigError(f"{state_dir}: permission denied (the journal is root's; try sudo)") from err
    if restore:
        if pid is not None:
            raise click.ClickException(f"an agent (pid {pid}) holds {state_dir}; stop it instead "
                                       f"(SIGTERM restores every knob)")
        from tagger.actions.actuator import Actuator
        from tagger.cgroups import Layout
        act = Actuator(Layout.detect(), state_dir=state_dir)
        act.recover(restore=True)
        left = act.revert_all()
        act.journal.unlock()
        click.echo(f"restored {len(entries) - len(left)} of {len(entries)} knobs"
                   + (f"; {len(left)} refused, still journaled" if left else ""))
        _report_damage(state_dir, damaged)
        if left or damaged:
            raise SystemExit(1)
        return
    steps = read_steps(state_dir)
    if as_json:
        click.echo(json.dumps({
            "state_dir": str(state_dir), "agent_pid": pid,
            "actions": [{"cgroup": display(e.cgroup) if e.cgroup else None, "knob": e.knob, "value": e.value,
                         "original": e.original, "rule": e.rule, "since": e.since} for e in entries],
            "damaged": damaged,
            "policy_steps": steps,
        }, indent=1))
        if damaged:
            raise SystemExit(1)
        return
    if not entries:
        click.echo("no kernel settings changed" + (f" (agent pid {pid})" if pid else ""))
        _report_steps(steps)
        _report_damage(state_dir, damaged)
        if damaged:
            raise SystemExit(1)
        return
    rows = [(display(e.cgroup) if e.cgroup else "(resctrl)", e.knob, human(e.knob, e.value),
             human(e.knob, e.original), e.rule, _age(e.since))
            for e in sorted(entries, key=lambda e: (e.cgroup, e.knob))]
    head = ("CGROUP", "KNOB", "VALUE", "ORIGINAL", "RULE", "SINCE")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    if pid is None:
        click.echo(f"\nno agent is running: these were left by one that stopped without restoring "
                   f"(crash?). `tagger run` restores them on start; `tagger actions --restore` now.")
    _report_steps(steps)
    _report_damage(state_dir, damaged)
    if damaged:
        raise SystemExit(1)


#: How ``tagger actions`` words a step's outcome.
OUTCOME_TEXT = {"helped": "helped: kept", "no_effect": "no effect: undone", "unjudged": "not judged",
                "released": "given back: released", "needed": "given back: still needed, put back"}


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.3g}ms"


def _report_steps(steps: list[dict]) -> None:
    """The policies' latest steps and how each was judged (oldest first)."""
    if not steps:
        return
    click.echo("\npolicy steps, latest last (each judged over its window: kept if it helped, else undone):")
    rows = [(_age(s["t"]) + " ago" if isinstance(s.get("t"), (int, float)) else "?",
             str(s.get("policy", "?")), display(str(s.get("victim", "?"))), display(str(s.get("culprit", "?"))),
             str(s.get("lever", "?")), OUTCOME_TEXT.get(s.get("outcome"), str(s.get("outcome"))),
             f"{_ms(s.get('before'))} -> {_ms(s.get('after'))}")
            for s in steps[-20:]]
    head = ("WHEN", "POLICY", "VICTIM", "CULPRIT", "LEVER", "OUTCOME", "VICTIM'S SLO METRIC")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _report_damage(state_dir: Path, damaged: list[str]) -> None:
    if not damaged:
        return
    click.echo(f"\n{state_dir / JOURNAL_NAME}: {len(damaged)} damaged journal record(s); their knobs "
               f"cannot be restored from it, put them back by hand:", err=True)
    for d in damaged:
        click.echo(f"  {d}", err=True)


__all__ = ["actions", "agent_pid"]
