"""``tagger run``: the agent (tag, act, publish), until SIGTERM."""

from __future__ import annotations

import logging
import sys

import click

from tagger.errors import ConfigError, RulesError
from tagger.cli.early import install as install_early_stop
from tagger.cli.params import duration
from tagger.publish.export import DEFAULT_CAP, DEFAULT_TOP


def _off(value):
    return None if value is not None and value.lower() in ("off", "none", "") else value


@click.command()
@click.option("--rules", "rules", metavar="DIR", help="Rules directory [default: the packaged rules].")
@click.option("--interval", default="1s", show_default=True, callback=duration(),
              help="Tick length (10s, 500ms, ...).")
@click.option("--dry-run", is_flag=True, help="Decide and publish, but change nothing on the machine.")
@click.option("--state-dir", metavar="DIR", default="/var/lib/tagger", show_default=True,
              help="Where the action journal lives (originals of every changed knob).")
@click.option("--metrics", metavar="ADDR", default="127.0.0.1:9473", show_default=True,
              help="Prometheus exposition address; 'off' to disable.")
@click.option("--export", metavar="GLOB", multiple=True,
              help="Also export the cgroups matching GLOB in the per-cgroup metrics (repeatable); "
                   "by default: tagged cgroups, Kubernetes pods, systemd services and the top N by CPU.")
@click.option("--export-top", type=click.IntRange(0), default=DEFAULT_TOP, show_default=True, metavar="N",
              help="Export the N cgroups that used the most CPU (besides the default set).")
@click.option("--export-cap", type=click.IntRange(1), default=DEFAULT_CAP, show_default=True, metavar="N",
              help="Export at most N cgroups; how many were left out is tagger_cgroups_unexported.")
@click.option("--socket", "socket_path", metavar="PATH", default="/run/tagger/tagger.sock",
              show_default=True, help="Unix socket for `tagger tags` and `tagger top`; 'off' to disable.")
@click.option("--record", metavar="FILE", help="Also record every snapshot to a trace file.")
@click.option("--redis", metavar="URL", help="Publish tags and tag events to Redis (redis://host:6379/0).")
@click.option("--config", "config_file", metavar="FILE",
              help="YAML file with any of these settings; flags given here win.")
@click.option("--cgroupfs-only", is_flag=True, help="Do not load BPF; read cgroupfs only.")
@click.option("--cgroupfs-every", type=click.IntRange(1), default=10, show_default=True, metavar="N",
              help="With BPF: read the cgroupfs-only figures (cpu.throttled, cpu.weight, mem.current, psi.*) "
                   "every N ticks; a new cgroup's at once and every tick for its first N ticks, and a cgroup "
                   "whose knobs tagger changed at the next tick.")
@click.option("--kubelet-logs", metavar="DIR", default="/var/log", show_default=True,
              help="Where the kubelet's pods/ and containers/ log directories are: pod namespace, pod "
                   "and container names for the labels (a node without them has none); 'off' to disable.")
@click.option("--bpf-stats", is_flag=True,
              help="Keep BPF run-time statistics on to export ns per event (costs a little per event).")
@click.option("--rt-priority", type=click.IntRange(0, 99), default=1, show_default=True, metavar="N",
              help="A tick starved for 0.25 s (late, or stuck) runs as SCHED_FIFO N until it is done; a "
                   "guard process at SCHED_FIFO N watches the loop (0: no guard).  Beside a neighbour it "
                   "demoted, an ordinary loop was seen starved for seconds.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.pass_context
def run(ctx, rules, interval, dry_run, state_dir, metrics, export, export_top, export_cap, socket_path,
        record, redis, config_file, cgroupfs_only, cgroupfs_every, kubelet_logs, bpf_stats, rt_priority, log_level):
    """Run the agent: each tick, Snapshot -> rules -> tags -> actions -> publish.

    \b
    SIGHUP (or editing the rules directory) reloads the rules; a directory
    with errors is refused and the previous rules stay in force.
    SIGTERM or Ctrl-C reverts every action and exits.
    """
    # Installed when tagger.cli was imported; here too for callers that came
    # another way (tests invoking the command).  A stop while starting is kept.
    early = install_early_stop()
    from tagger.agent.config import Config, read_config_file
    from tagger.agent.daemon import Daemon
    from tagger.agent.logging import setup_logging
    from tagger.rules import RulesLoadError

    setup_logging(getattr(logging, log_level.upper()))
    settings = read_config_file(config_file) if config_file else {}
    given = {
        "rules": rules, "interval": interval, "dry_run": dry_run, "state_dir": state_dir,
        "metrics": _off(metrics), "socket": _off(socket_path), "record": record, "redis": redis,
        "export": tuple(export), "prefer_bpf": not cgroupfs_only, "cgroupfs_every": cgroupfs_every,
        "bpf_stats": bpf_stats, "export_top": export_top, "export_cap": export_cap,
        "kubelet_logs": _off(kubelet_logs), "rt_priority": rt_priority,
    }
    params = {"rules": "rules", "interval": "interval", "dry_run": "dry_run", "state_dir": "state_dir",
              "metrics": "metrics", "socket": "socket_path", "record": "record", "redis": "redis",
              "export": "export", "prefer_bpf": "cgroupfs_only", "cgroupfs_every": "cgroupfs_every",
              "bpf_stats": "bpf_stats", "export_top": "export_top", "export_cap": "export_cap",
              "kubelet_logs": "kubelet_logs", "rt_priority": "rt_priority"}
    for key, value in given.items():
        source = ctx.get_parameter_source(params[key])
        if key not in settings or source == click.core.ParameterSource.COMMANDLINE:
            settings[key] = value
    try:
        daemon = Daemon(Config(**settings))
        early.hand_to(daemon)       # the daemon's own handlers replace these in run()
        code = daemon.run()
        early.release()
    except RulesError as err:
        # every problem was logged already, one per line
        raise click.ClickException(f"the rules directory has errors; nothing was started "
                                   f"({len(err.errors) if isinstance(err, RulesLoadError) else 1} errors)") from None
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
    sys.exit(code)

