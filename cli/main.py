"""The ``tagger`` command.  Subcommands live in their own modules and are
imported only when used, so ``tagger stat`` never pays for Textual."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from tagger import __version__
from tagger.errors import TaggerError

#: command name -> "module:attribute" under tagger.cli
COMMANDS = {
    "run": "run:run",
    "top": "top.app:top",
    "stat": "stat:stat",
    "tags": "tags:tags",
    "explain": "explain:explain",
    "actions": "actions:actions",
    "rules": "rules:rules",
    "record": "trace:record",
    "replay": "trace:replay",
    "doctor": "doctor:doctor",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if self.get_command(ctx, name) is not None]

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        full = f"tagger.cli.{module}"
        try:
            mod = importlib.import_module(full)
        except ModuleNotFoundError as err:
            if err.name and full.startswith(err.name):   # not written yet
                return None
            raise
        return getattr(mod, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tagger")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose):
    """Tag running workloads from kernel telemetry, and act on the tags.

    \b
    First steps:
      tagger doctor          what this machine supports, and how to fix what it lacks
      tagger stat            per-cgroup CPU, run-queue and I/O figures, like pidstat
      tagger rules check     validate a rules directory
      sudo tagger run        the agent: tag, act, publish
      tagger top             the live view
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def main(argv=None):
    try:
        # standalone_mode=False hands back the command's return value: an int is its exit status.
        status = cli.main(args=argv, prog_name="tagger", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except TaggerError as err:
        click.echo(f"tagger: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
