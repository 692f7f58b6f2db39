"""Write tagger's manual pages from its click help: tagger.1 and one page per
subcommand (tagger-stat.1, tagger-rules-check.1, ...), with click-man.

    python tools/gen_man.py docs/man

click-man walks ``group.commands``; tagger's top group is lazy (cli/main.py
imports a subcommand only when used), so the groups are resolved first."""

from __future__ import annotations

import os
import sys

import click
from click_man.core import write_man_pages

from tagger import __version__
from tagger.cli.main import cli


def resolve(group: click.Group) -> None:
    """Fill ``group.commands`` from ``list_commands``/``get_command``, recursively."""
    ctx = click.Context(group, info_name=group.name)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        group.commands[name] = command
        if isinstance(command, click.Group):
            resolve(command)


def main(target: str) -> None:
    os.makedirs(target, exist_ok=True)
    resolve(cli)
    write_man_pages("tagger", cli, version=__version__, target_dir=target)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/man")
