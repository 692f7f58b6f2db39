"""tagger doctor: each check on fixture trees, the verdict and exit status, the
real machine (root and, through setpriv, nobody), and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tagger import doctor as d
from tagger.doctor import BASE, BPF, OPTIONAL, Check, run_checks, verdict
from tests.test_cgroups import MOUNTS_HYBRID, MOUNTS_V1, make_tree


def test_verdict_exit_status():
    ok = Check("a", True, "", level=BPF)
    assert verdict([ok, Check("r", False, "", level=OPTIONAL)])[0] == 0
    assert verdict([ok, Check("b", False, "", level=BPF)]) == \
        (1, "tagger runs on the cgroupfs fallback only (BPF blocked by: b)")
    assert verdict([Check("c", False, "", level=BASE), Check("b", False, "", level=BPF)])[0] == 2
    assert verdict([ok, Check("skipped", None, "", level=BPF)])[0] == 0


def test_btf_missing(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_HYBRID)
    c = d.check_btf(d.Context(fs))
    assert c.ok is False and c.level == BPF and "CONFIG_DEBUG_INFO_BTF" in c.fix and c.impact


def test_cgroup_checks_v1_only(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_V1)
    by_name = {c.name: c for c in d.check_cgroups(d.Context(fs))}
    assert by_name["cgroup layout"].ok is False and by_name["cgroup layout"].level == BPF
    assert "unified_cgroup_hierarchy" in by_name["cgroup layout"].fix
    assert by_name["cpu controller"].ok and "v1 at /sys/fs/cgroup/cpu,cpuacct" in by_name["cpu controller"].detail
    assert by_name["io controller"].ok and "/sys/fs/cgroup/blkio" in by_name["io controller"].detail


def test_cgroup_checks_hybrid(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_HYBRID, "/sys/fs/cgroup/unified", "")
    by_name = {c.name: c for c in d.check_cgroups(d.Context(fs))}
    assert by_name["cgroup layout"].ok and by_name["cgroup layout"].detail.startswith("hybrid")
    assert by_name["cpu controller"].detail == "cgroup v1 at /sys/fs/cgroup/cpu"


def test_no_cgroups_cannot_run(tmp_path):
    fs = make_tree(tmp_path, "proc /proc proc rw 0 0\n")
    checks = d.check_cgroups(d.Context(fs))
    assert checks[0].level == BASE and checks[0].ok is False
    assert verdict(checks)[0] == 2


def test_resctrl(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_HYBRID)
    (tmp_path / "proc/filesystems").write_text("nodev\tcgroup2\nnodev\tresctrl\n")
    (tmp_path / "proc/cpuinfo").write_text("flags\t\t: fpu rdt_a cat_l3 mba\n")
    c = d.check_resctrl(d.Context(fs))
    assert c.ok is False and c.fix == "mount -t resctrl resctrl /sys/fs/resctrl"
    assert "cat_l3, mba, rdt_a" in c.detail
    (tmp_path / "sys/fs/resctrl/info/L3").mkdir(parents=True)
    (tmp_path / "sys/fs/resctrl/info/MB").mkdir()
    c = d.check_resctrl(d.Context(fs))
    assert c.ok and "L3, MB" in c.detail


def test_psi_and_delayacct_fixture(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_HYBRID)
    ctx = d.Context(fs)
    assert d.check_psi(ctx).ok is False
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/task_delayacct").write_text("0\n")
    c = d.check_delay_accounting(ctx)
    assert c.ok is False and "task_delayacct=0" in c.detail       # no schedstat in the fixture
    (tmp_path / "proc/self/schedstat").write_text("1 2 3\n")
    c = d.check_delay_accounting(ctx)
    assert c.ok and "schedstat" in c.detail


def test_register_tuples_and_crashing_checks(monkeypatch):
    monkeypatch.setattr(d, "CHECKS", [])
    d.register(lambda ctx: ("native hook", True, "filled by the native module", ""))

    def check_broken(ctx):
        raise RuntimeError("oops")
    d.register(check_broken)
    d.register(lambda ctx: Check("first", True, "x"), before="check_broken")
    checks = run_checks()
    assert [c.name for c in checks] == ["native hook", "first", "broken"]
    assert checks[2].ok is False and "RuntimeError: oops" in checks[2].detail


def test_bpf_checks_skip_without_bpf_syscall():
    ctx = d.Context()
    ctx.results["bpf() syscall"] = Check("bpf() syscall", False, "EPERM", level=BPF)
    for fn in (d.check_tp_btf, d.check_ringbuf, d.check_cgroup_storage):
        c = fn(ctx)
        assert c.ok is None and "not probed" in c.detail


def test_btf_type_id_parser_matches_bpftool():
    if not os.path.exists("/sys/kernel/btf/vmlinux") or not shutil.which("bpftool"):
        pytest.skip("needs /sys/kernel/btf/vmlinux and bpftool")
    out = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux"],
                         capture_output=True, text=True, timeout=60).stdout
    line = next(l for l in out.splitlines() if "TYPEDEF 'btf_trace_sched_switch'" in l)
    assert d.vmlinux_btf_type_id("btf_trace_sched_switch") == int(line.split("]")[0][1:])
    assert d.vmlinux_btf_type_id("no_such_type_anywhere") is None


# --- the real machine -----------------------------------------------------------------------

@pytest.mark.bpf
def test_real_machine_can_run_bpf():
    checks = run_checks(load_programs=False)
    by_name = {c.name: c for c in checks}
    for name in ("BTF", "bpf() syscall", "tp_btf programs", "ring buffer", "cgroup layout"):
        assert by_name[name].ok, by_name[name]
    assert verdict(checks)[0] == 0


@pytest.mark.bpf
def test_tp_btf_probe_is_not_a_false_positive(monkeypatch):
    """Pointing the empty program at a BTF id that is not a tracepoint must fail."""
    monkeypatch.setattr(d, "vmlinux_btf_type_id", lambda *a, **k: 1)
    ctx = d.Context()
    ctx.results["bpf() syscall"] = Check("bpf() syscall", True, "", level=BPF)
    assert d.check_tp_btf(ctx).ok is False


@pytest.mark.root
def test_cli_json_as_root():
    from tagger.cli.doctor import doctor
    result = CliRunner().invoke(doctor, ["--json", "--no-load"])
    data = json.loads(result.output)
    assert result.exit_code == data["exit_status"] == 0
    assert {"name", "ok", "detail", "fix", "impact", "level"} <= set(data["checks"][0])


@pytest.mark.root
def test_cli_as_nobody_is_fallback_only():
    """Without privileges bpf() is refused: exit status 1 and the fix says how."""
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux)")
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         os.path.join(os.path.dirname(sys.executable), "tagger"), "doctor", "--json"],
        capture_output=True, text=True, timeout=120, cwd="/")
    data = json.loads(proc.stdout)
    assert proc.returncode == 1 == data["exit_status"]
    bpf = next(c for c in data["checks"] if c["name"] == "bpf() syscall")
    assert bpf["ok"] is False and "EPERM" in bpf["detail"] and "CAP_BPF" in bpf["fix"]


@pytest.mark.root
def test_cli_table_renders():
    from tagger.cli.doctor import doctor
    result = CliRunner().invoke(doctor, ["--no-load"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    assert "tp_btf programs" in result.output and "tagger can run with BPF" in result.output
