"""What ``tagger run`` was asked to do: the :class:`Config`, a ``--config``
YAML file's settings, and the refusal of rules someone other than root could
change (as sshd refuses a group-writable ``authorized_keys``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tagger.actions.journal import DEFAULT_STATE_DIR
from tagger.errors import ConfigError


def default_rules_dir() -> str:
    """The rules shipped with the package (``tagger.default_rules``)."""
    try:
        import importlib.resources as resources
        return str(resources.files("tagger.default_rules"))
    except (ModuleNotFoundError, TypeError):
        return str(Path(__file__).resolve().parent.parent.parent / "rules")


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
    #: the SCHED_FIFO priority a starved tick loop is run at, 0: unguarded (tagger.agent.loopguard)
    rt_priority: int = 1

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
