"""`tagger rules check` runs every check `tagger run` does (issue 13, item 10):
ownership and mode, the kernel's ranges, this node's devices and CPUs, and the
size limits, each as a path:line:col error."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.rules import rules as rules_cli
from tagger.agent.config import check_rules_ownership
from tagger.errors import ConfigError
from tagger.kernelfs import KernelFS
from tagger.rules import RulesLoadError, load_directory
from tagger.rules import loader
from tagger.rules.node import NodeFacts

GOOD = """rules:
  - name: batch
    match: {cgroup: "/batch/**"}
    tags: {tier: batch}
"""


def _dir(tmp_path, text, name="10-r.yaml") -> Path:
    d = tmp_path / "rules"
    d.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    f = d / name
    f.write_text(text)
    os.chmod(f, 0o644)
    return d


def _check(*args):
    return CliRunner().invoke(rules_cli, ["check", *map(str, args)])


def _action(actions: str) -> str:
    return GOOD + "    actions:\n" + "".join(f"      {line}\n" for line in actions.splitlines())


def _online_cpus() -> list[int]:
    return NodeFacts().cpus or list(range(os.cpu_count() or 1))


def test_a_clean_directory_passes_every_check(tmp_path):
    d = _dir(tmp_path, _action(f'cpu: {{max: 0.5, cpuset: "{_online_cpus()[0]}"}}'))
    if os.geteuid() != 0:
        pytest.skip("ownership: the files must be root's")
    res = _check(d)
    assert res.exit_code == 0, res.output
    assert ": ok: 1 rule" in res.output


def test_group_writable_file_is_an_error_as_run_refuses_it(tmp_path):
    d = _dir(tmp_path, GOOD)
    os.chmod(d / "10-r.yaml", 0o664)
    with pytest.raises(ConfigError, match="writable by group"):     # what run does
        check_rules_ownership(str(d))
    res = _check(d)
    assert res.exit_code == 1
    assert re.search(rf"^{re.escape(str(d))}/10-r.yaml:1:1: rule file .*10-r.yaml is writable by "
                     r"group \(mode 0664\): tagger run refuses .*\(fix: chmod go-w .*\)$",
                     res.output, re.M), res.output
    # someone else's checkout: the flag skips ownership, not the rest
    res = _check("--no-ownership", d)
    assert res.exit_code == 0, res.output


def test_other_writable_directory_is_an_error(tmp_path):
    d = _dir(tmp_path, GOOD)
    os.chmod(d, 0o757)
    res = _check(d)
    assert res.exit_code == 1
    assert f"{d}: rules directory {d} is writable by others (mode 0757)" in res.output


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_file_not_owned_by_root_is_an_error(tmp_path):
    d = _dir(tmp_path, GOOD)
    os.chown(d / "10-r.yaml", 65534, -1)
    res = _check(d)
    assert res.exit_code == 1
    assert f"{d}/10-r.yaml:1:1: rule file" in res.output and "owned by uid 65534, not root" in res.output


def test_quota_below_the_kernels_floor_is_an_error_for_run_and_check(tmp_path):
    d = _dir(tmp_path, _action("cpu: {max: 0.005}"))
    with pytest.raises(RulesLoadError, match="quota of 500us, below the kernel's 1000us minimum"):
        load_directory(d)                                            # run loads the same way
    res = _check("--no-ownership", d)
    assert res.exit_code == 1
    assert f'{d}/10-r.yaml:6:18: rule "batch": cpu.max 0.005 CPUs at a 100ms period is a quota ' \
           "of 500us" in res.output
    d2 = _dir(tmp_path / "ok", _action("cpu: {max: 0.01}"))           # 1000us: the floor itself
    assert _check("--no-ownership", d2).exit_code == 0


@pytest.mark.parametrize("device", ["259:999", "/dev/no-such-disk", "nosuchdisk"])
def test_unknown_device_is_an_error(tmp_path, device):
    d = _dir(tmp_path, _action(f'io: {{device: "{device}", read_bps: 10MiB}}'))
    res = _check("--no-ownership", d)
    assert res.exit_code == 1
    assert re.search(rf'^{re.escape(str(d))}/10-r.yaml:6:20: rule "batch": io device '
                     rf"'{re.escape(device)}'.* no (such )?block device", res.output, re.M), res.output
    load_directory(d)                       # run loads it: the actuator refuses it per cgroup
    assert _check("--no-ownership", "--no-node", d).exit_code == 0   # rules for other machines


def test_a_disk_this_node_has_passes(tmp_path):
    disks = [b for b in sorted(os.listdir("/sys/block")) if not b.startswith(("loop", "ram", "zram"))]
    if not disks:
        pytest.skip("no whole disk on this node")
    majmin = Path(f"/sys/block/{disks[0]}/dev").read_text().strip()
    for device in (majmin, f"/dev/{disks[0]}"):
        d = _dir(tmp_path / device.replace("/", "_"), _action(f'io: {{device: "{device}", read_bps: 10MiB}}'))
        res = _check("--no-ownership", d)
        assert res.exit_code == 0, res.output


def test_a_partition_is_an_error(tmp_path):
    parts = [p for p in sorted(os.listdir("/sys/class/block"))
             if os.path.exists(f"/sys/class/block/{p}/partition")]
    if not parts:
        pytest.skip("no partition on this node")
    d = _dir(tmp_path, _action(f'io: {{device: "{parts[0]}", read_bps: 10MiB}}'))
    res = _check("--no-ownership", d)
    assert res.exit_code == 1 and "is a partition" in res.output


def _block_tree(root: Path) -> Path:
    """A sysfs tree with one disk (vda, 254:0) and its partition (vda1, 254:1)."""
    for name, dev, partition in (("vda", "254:0", False), ("vda1", "254:1", True)):
        for d in (root / "sys/class/block" / name, root / "sys/dev/block" / dev):
            d.mkdir(parents=True)
            (d / "dev").write_text(dev + "\n")
            if partition:
                (d / "partition").write_text("1\n")
    return root


@pytest.mark.parametrize("device", ["vda1", "/dev/vda1", "254:1"])
def test_a_partition_is_an_error_on_a_tree(tmp_path, device):
    # This host has no partition (test_a_partition_is_an_error skips): the same check
    # on a sysfs tree that has one, by name, /dev path and MAJ:MIN.
    node = NodeFacts(KernelFS(_block_tree(tmp_path / "fs")))
    d = _dir(tmp_path, _action(f'io: {{device: "{device}", read_bps: 10MiB}}'))
    with pytest.raises(RulesLoadError) as err:
        load_directory(d, node=node)
    assert str(err.value).splitlines()[1:] == [
        f'{d}/10-r.yaml:6:20: rule "batch": io device {device!r} is a partition; blk-throttle '
        f"limits whole disks, name the disk instead"]
    for disk in ("vda", "/dev/vda", "254:0"):
        d = _dir(tmp_path / disk.replace("/", "_"), _action(f'io: {{device: "{disk}", read_bps: 10MiB}}'))
        assert load_directory(d, node=node).rules[0].actions.io.device == disk


def test_cpu_the_node_lacks_is_an_error(tmp_path):
    cpus = _online_cpus()
    missing = max(cpus) + 1
    d = _dir(tmp_path, _action(f'cpu: {{cpuset: "{cpus[0]},{missing}"}}'))
    res = _check("--no-ownership", d)
    assert res.exit_code == 1
    assert f'{d}/10-r.yaml:6:21: rule "batch": cpu.cpuset: CPU {missing} not on this node' in res.output
    assert _check("--no-ownership", "--no-node", d).exit_code == 0


# --- size limits ------------------------------------------------------------------------
def test_a_file_over_the_size_limit_is_refused_unparsed(tmp_path):
    rule = '  - {name: r%d, match: {cgroup: "/a/**"}, tags: {k: v}}\n'
    text = "rules:\n" + "".join(rule % i for i in range(loader.MAX_FILE_BYTES // 40))
    assert len(text) > loader.MAX_FILE_BYTES
    d = _dir(tmp_path, text, "20-huge.yaml")
    res = _check("--no-ownership", d)
    assert res.exit_code == 1
    [line] = [ln for ln in res.output.splitlines() if "20-huge.yaml" in ln]
    assert line == f"{d}/20-huge.yaml: file is {len(text) // 1024} KiB, over the 256 KiB limit for " \
                   "a rule file (split it, or trim it)"


def test_the_directory_has_a_size_limit(tmp_path, monkeypatch):
    # smaller limits, so the files that fit parse quickly; the arithmetic is the same
    monkeypatch.setattr(loader, "MAX_FILE_BYTES", 8192)
    monkeypatch.setattr(loader, "MAX_DIRECTORY_BYTES", 20480)
    rule = '  - {name: r%d_%d, match: {cgroup: "/a/**"}, tags: {k: v}}\n'
    per_file = loader.MAX_FILE_BYTES - 4096
    n = loader.MAX_DIRECTORY_BYTES // per_file + 1
    for f in range(n):
        body, i = ["rules:\n"], 0
        while sum(map(len, body)) < per_file - 64:
            body.append(rule % (f, i))
            i += 1
        _dir(tmp_path, "".join(body), f"{f:02d}.yaml")
    with pytest.raises(RulesLoadError) as info:
        load_directory(tmp_path / "rules")
    msgs = [str(p) for p in info.value.errors]
    assert any(m.endswith(f"{n - 1:02d}.yaml: the rule files add up to over the 20 KiB limit for a "
                          "rules directory at this file") for m in msgs), msgs


def test_rule_count_limit(tmp_path):
    rule = '  - {name: r%d, match: {cgroup: "/a/**"}, tags: {k: v}}\n'
    text = "rules:\n" + "".join(rule % i for i in range(loader.MAX_RULES + 5))
    d = _dir(tmp_path, text)
    with pytest.raises(RulesLoadError) as info:
        load_directory(d)
    [err] = info.value.errors
    # the first rule over the limit: line 1 is "rules:", rule k is on line k + 1
    assert str(err) == f"{d}/10-r.yaml:{loader.MAX_RULES + 2}:5: more than 1000 rules in the rules " \
                       "directory (the limit); the rest are not read"
    ok = "rules:\n" + "".join(rule % i for i in range(loader.MAX_RULES))
    assert len(load_directory(_dir(tmp_path / "ok", ok)).rules) == loader.MAX_RULES


def test_expression_length_limit(tmp_path):
    long_when = " or ".join(["cpu.usage > 0.8"] * 70)             # 1,318 characters
    assert len(long_when) > loader.MAX_EXPRESSION
    d = _dir(tmp_path, GOOD + f"    when: {long_when}\n" + "macros:\n  m: " + long_when + "\n")
    res = _check("--no-ownership", d)
    assert res.exit_code == 1
    assert f'{d}/10-r.yaml:5:11: rule "batch": when is {len(long_when)} characters, over the ' \
           "1024-character limit for an expression (use macros)" in res.output
    assert f'{d}/10-r.yaml:7:6: macro "m": a macro is {len(long_when)} characters' in res.output
