"""``tagger tags``: the current tags, from the running agent's socket."""

from __future__ import annotations

import json
import sys
import time

import click

from tagger.client import DEFAULT_SOCKET, ApiClient, ApiError
from tagger.publish.wire import json_safe, to_plain


def _print_table(tags: dict):
    rows = [(path, key, t["value"], t.get("rule") or "") for path, by_key in sorted(tags.items())
            for key, t in sorted(by_key.items())]
    if not rows:
        click.echo("no tags")
        return
    widths = [max(len(str(r[i])) for r in rows + [("CGROUP", "KEY", "VALUE", "RULE")]) for i in range(3)]
    fmt = "{:<%d}  {:<%d}  {:<%d}  {}" % tuple(widths)
    click.echo(fmt.format("CGROUP", "KEY", "VALUE", "RULE"))
    for row in rows:
        click.echo(fmt.format(*row))


def _event_line(ev: dict) -> str:
    stamp = time.strftime("%H:%M:%S")
    if ev.get("kind") == "removed":
        change = f"-{ev['key']}={ev.get('old')}"
    elif ev.get("kind") == "changed":
        change = f"{ev['key']}={ev.get('old')} -> {ev.get('value')}"
    else:
        change = f"+{ev['key']}={ev.get('value')}"
    return f"{stamp}  {ev.get('cgroup')}  {change}  ({ev.get('rule')})"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output (one object; with --watch, one event per line).")
@click.option("--watch", is_flag=True, help="Keep printing tag changes as they happen.")
@click.option("--cgroup", "globs", metavar="GLOB", multiple=True,
              help="Only cgroups matching GLOB (** crosses /; repeatable).")
@click.option("--socket", "socket_path", metavar="PATH", default=DEFAULT_SOCKET, show_default=True)
def tags(as_json, watch, globs, socket_path):
    """Show the tags the running agent has put on cgroups."""
    glob = list(globs) or None
    try:
        with ApiClient(socket_path, timeout=None if watch else 5.0) as client:
            if not watch:
                current = client.request("tags", **({"cgroup": glob} if glob else {}))
                if as_json:
                    click.echo(json.dumps(json_safe(to_plain(current)), indent=2, sort_keys=True))
                else:
                    _print_table(current)
                return
            reply = client.subscribe(["tags"], cgroup=glob)
            if as_json:
                click.echo(json.dumps({"tags": json_safe(reply["tags"])}, sort_keys=True), nl=True)
            else:
                _print_table(reply["tags"])
                click.echo("-- watching; Ctrl-C to stop")
            sys.stdout.flush()
            for kind, data in client.events():
                if kind != "tag":
                    continue
                click.echo(json.dumps(json_safe(data), sort_keys=True) if as_json else _event_line(data))
                sys.stdout.flush()
    except ApiError as err:
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt:
        pass
