"""``tagger doctor``: what this machine supports, and how to fix what it lacks.

Exit status: 0 tagger can run with BPF, 1 only the cgroupfs fallback, 2 not at all.
"""

from __future__ import annotations

import json
import sys

import click

from tagger.doctor import BASE, BPF, run_checks, verdict

_MARK = {True: ("ok", "green"), False: ("FAIL", "red"), None: ("-", "dim")}
_LEVEL = {BASE: "required", BPF: "BPF", "optional": "optional"}


def render(checks, code, sentence, console=None):
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    table = Table(title="tagger doctor", title_justify="left", show_lines=False, expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("needed for", no_wrap=True, style="dim")
    table.add_column("what was found / what it means / fix", overflow="fold")
    for c in checks:
        word, style = _MARK[c.ok]
        if c.ok is False and c.level == "optional":
            style = "yellow"
        text = Text(c.detail)
        if c.ok is False:
            if c.impact:
                text.append(f"\nmeans: {c.impact}", style="italic")
            if c.fix:
                text.append(f"\nfix: {c.fix}", style="bold")
        table.add_row(c.name, Text(word, style=style), _LEVEL.get(c.level, c.level), text)
    console.print(table)
    style = {0: "bold green", 1: "bold yellow", 2: "bold red"}[code]
    console.print(Text(sentence, style=style))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: checks, exit status, verdict.")
@click.option("--no-load", is_flag=True,
              help="Do not load and attach tagger's own BPF programs (the probes with empty programs still run).")
def doctor(as_json, no_load):
    """Check BTF, bpf(), tp_btf, ring buffer, cgroup storage, cgroup layout,
    resctrl, delay accounting and privileges; say what each gap means and how
    to fix it.

    \b
    Exit status: 0 tagger can run with BPF, 1 only on the cgroupfs fallback,
    2 not at all.
    """
    checks = run_checks(load_programs=not no_load)
    code, sentence = verdict(checks)
    if as_json:
        click.echo(json.dumps({"exit_status": code, "verdict": sentence,
                               "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        render(checks, code, sentence)
    sys.stdout.flush()
    # sys.exit, not click's Exit: main() runs click with standalone_mode=False,
    # which turns Exit into a return value that it then drops.
    sys.exit(code)
