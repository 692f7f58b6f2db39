"""CPU quota, weight and idle: v1 for real on this (hybrid) machine, v2 on fixture trees."""

from __future__ import annotations

import os
import time

import pytest

from tagger import errors
from tagger.actions.actuator import Actuator
from tagger.actions.control import Safety
from tagger.actions.cpu import CpuQuota
from tagger.knobs import CpuMax
from tagger.actions.refusal import ActionRefused
from tagger.cgroups import Layout
from tagger.kernelfs import HOST
from tagger.rules.spec import ActionSet, CpuSpec
from tests.actuator_helpers import BUSY, FREE, act_on_tree, quota_reached, tick
from tests.cgroup_fixture import wait_for
from tests.fixtures.kernel_trees import cgroup_v2_tree


def cpuacct_cpus(cg, seconds):
    """CPUs used by ``cg`` over ``seconds``, from its own cpuacct.usage (ns)."""
    f = cg.dir("cpuacct") / "cpuacct.usage"
    u0, t0 = int(f.read_text()), time.monotonic()
    time.sleep(seconds)
    u1, t1 = int(f.read_text()), time.monotonic()
    return (u1 - u0) / 1e9 / (t1 - t0)


def v1_cpu_stat(cg) -> dict:
    """``cg``'s v1 cpu.stat (nr_periods, nr_throttled, throttled_time)."""
    return HOST.read_keyed(f"{cg.dir('cpu')}/cpu.stat")


def throttled(cg):
    """Periods in which the kernel throttled ``cg`` (v1 cpu.stat nr_throttled)."""
    return v1_cpu_stat(cg)["nr_throttled"]


def _quota_reached(window) -> bool:
    return quota_reached(window, 0.3, tolerance=0.03, min_periods=40)       # windows of 5 s


def _busy_jiffies():
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4], os.sysconf("SC_CLK_TCK")   # minus idle, iowait


def usage_and_others(cg, seconds):
    """(CPUs used by ``cg``, CPUs used by everything else) over ``seconds``."""
    b0, hz = _busy_jiffies()
    t0 = time.monotonic()
    ours = cpuacct_cpus(cg, seconds)
    b1, _ = _busy_jiffies()
    return ours, max(0.0, (b1 - b0) / hz / (time.monotonic() - t0) - ours)


@pytest.mark.root
@pytest.mark.cgroup_v1
def test_v1_quota_holds_and_lifts_on_the_real_kernel(make_cgroup, tmp_path):
    cg = make_cgroup("hog", controllers=("cpu", "cpuacct"))
    # Two cores shared with other people's busy tests: the highest weight makes
    # the quota, not CFS fairness against their tasks, what bounds this cgroup.
    # (And on the test prefix above it: shares are relative to siblings.)
    for d in (cg.dir("cpu").parent, cg.dir("cpu")):
        (d / "cpu.shares").write_text("262144")
    for _ in range(2):
        cg.spawn(BUSY)
    wait_for(lambda: len(cg.pids("cpu")) == 2, what="two busy loops")
    layout = Layout.detect(HOST)
    assert layout.controller_version("cpu") == 1
    with Actuator(layout, state_dir=tmp_path / "state", safety=FREE) as act:
        act.apply(tick(0), {cg.path: [ActionSet("cap-hogs", cpu=CpuSpec(max=0.3))]})
        assert (cg.dir("cpu") / "cpu.cfs_quota_us").read_text().strip() == "30000"
        assert (cg.dir("cpu") / "cpu.cfs_period_us").read_text().strip() == "100000"
        # Past the first period's debt: throttled in two periods running.
        thr0 = throttled(cg)
        wait_for(lambda: throttled(cg) >= thr0 + 2, timeout=30, what="the quota to throttle")
        # A window the shared host starves falls short (usage and throttles
        # both): the ceiling must hold in every window, and one of at most
        # three must show the quota used, throttled in nearly every period
        # (the quota is the cause).
        windows = []
        for _ in range(3):
            s0 = v1_cpu_stat(cg)
            limited = cpuacct_cpus(cg, 5.0)
            s1 = v1_cpu_stat(cg)
            windows.append((limited, s1["nr_periods"] - s0["nr_periods"], s1["nr_throttled"] - s0["nr_throttled"]))
            if _quota_reached(windows[-1]):
                break
        print("\nlimited to 0.3 CPU: measured " + ", ".join(f"{u:.3f} CPU throttled in {t}/{p} periods"
                                                           for u, p, t in windows) + " (cpuacct.usage, cpu.stat)")
        assert max(u for u, _, _ in windows) <= 0.33
        assert _quota_reached(windows[-1]), windows
        act.apply(tick(1), {})            # the rule stopped matching
        assert (cg.dir("cpu") / "cpu.cfs_quota_us").read_text().strip() == "-1"
        # The bar is > 1.5 CPU; the kernel must also stop throttling (cpu.stat).
        # Should the others still crowd the CPUs out, the figure is not
        # measurable: then only the throttling counter is asserted.
        thr1, windows = throttled(cg), []
        for _ in range(5):
            ours, others = usage_and_others(cg, 2.0)
            windows.append((ours, others))
            if ours > 1.5:
                break
        print("limit removed: measured " + ", ".join(f"{o:.3f} CPU (others {x:.2f})" for o, x in windows))
        assert throttled(cg) == thr1
        quiet = [o for o, x in windows if x < 0.3]
        assert any(o > 1.5 for o, _ in windows) or not quiet, windows


@pytest.mark.root
@pytest.mark.cgroup_v1
def test_v1_cpu_idle_gives_way_to_a_sibling_on_the_real_kernel(make_cgroup, tmp_path):
    """Two busy loops pinned to one CPU, in sibling cgroups: equal at first, then
    the one tagger marks cpu.idle gets only what its sibling leaves (weight 3
    against 1024 in the kernel), measured by the kernel's own cpuacct.usage."""
    cpu = str(max(os.sched_getaffinity(0)))
    fg = make_cgroup("fg", controllers=("cpu", "cpuacct"))
    bg = make_cgroup("bg", controllers=("cpu", "cpuacct"))
    # A Kubernetes-like weight (requests of 1.5 CPUs): the kernel resets it when
    # cpu.idle is cleared, so tagger must put it back itself.
    (bg.dir("cpu") / "cpu.shares").write_text("1536")
    for cg in (fg, bg):
        cg.spawn(["taskset", "-c", cpu] + BUSY)
    wait_for(lambda: fg.pids("cpu") and bg.pids("cpu"), what="two busy loops")
    with Actuator(Layout.detect(HOST), state_dir=tmp_path / "state", safety=FREE) as act:
        act.apply(tick(0), {bg.path: [ActionSet("demote", cpu=CpuSpec(idle=True))]})
        assert (bg.dir("cpu") / "cpu.idle").read_text().strip() == "1"
        # Other tenants' switches on that CPU give the idle entity more slices:
        # one window of at most four must show it under 5% (its own weight
        # gives it 60%).
        shares = []
        for _ in range(4):
            f0 = int((fg.dir("cpuacct") / "cpuacct.usage").read_text())
            b0 = int((bg.dir("cpuacct") / "cpuacct.usage").read_text())
            time.sleep(2.0)                   # a measurement window, not a synchronisation
            fg_ns = int((fg.dir("cpuacct") / "cpuacct.usage").read_text()) - f0
            bg_ns = int((bg.dir("cpuacct") / "cpuacct.usage").read_text()) - b0
            shares.append(bg_ns / (fg_ns + bg_ns))
            if shares[-1] < 0.05:
                break
        print("\ncpu.idle=1: the idle sibling got " + ", ".join(f"{s:.2%}" for s in shares)
              + " of the CPU they share")
        assert shares[-1] < 0.05
    assert (bg.dir("cpu") / "cpu.idle").read_text().strip() == "0"       # reverted on exit
    assert (bg.dir("cpu") / "cpu.shares").read_text().strip() == "1536"  # and its weight with it


@pytest.mark.root
@pytest.mark.cgroup_v1
def test_our_limits_agree_with_the_kernels(make_cgroup, tmp_path):
    """Every limit we check is one the real kernel enforces: the same value,
    written straight to the file, is refused with EINVAL."""
    parent = make_cgroup("parent", controllers=("cpu",))
    child_dir = parent.dir("cpu") / "child"
    child_dir.mkdir()
    (parent.dir("cpu") / "cpu.cfs_quota_us").write_text("50000")        # parent: 0.5 CPU
    layout = Layout.detect(HOST)
    child = CpuQuota(HOST, parent.path + "/child", str(child_dir), 1, 2.0)
    me = CpuQuota(HOST, parent.path, str(parent.dir("cpu")), 1, 2.0)

    cases = [
        (child, CpuMax(500, 100_000), "quota >= 1ms", "cpu.cfs_quota_us", "500"),
        (child, CpuMax(10_000, 2_000_000), "period 1ms..1s", "cpu.cfs_period_us", "2000000"),
        (child, CpuMax(10_000, 500), "period 1ms..1s", "cpu.cfs_period_us", "500"),
        (child, CpuMax(80_000, 100_000), "v1 child <= parent", "cpu.cfs_quota_us", "80000"),
    ]
    for cp, value, limit, f, raw in cases:
        with pytest.raises(ActionRefused) as exc:
            cp.check(value)
        assert exc.value.limit == limit, str(exc.value)
        with pytest.raises(errors.KernelRefused):
            HOST.write_text(f"{cp.dir}/{f}", raw)

    # A parent may not drop below a limited child either.
    (child_dir / "cpu.cfs_quota_us").write_text("40000")
    with pytest.raises(ActionRefused, match="below a child's"):
        me.check(CpuMax(30_000, 100_000))
    with pytest.raises(errors.KernelRefused):
        HOST.write_text(f"{me.dir}/cpu.cfs_quota_us", "30000")

    # burst must not exceed the new quota.
    (child_dir / "cpu.cfs_burst_us").write_text("35000")
    with pytest.raises(ActionRefused) as exc:
        child.check(CpuMax(20_000, 100_000))
    assert exc.value.limit == "burst <= quota" and "cpu.cfs_burst_us 35000us" in str(exc.value)
    with pytest.raises(errors.KernelRefused):
        HOST.write_text(f"{child.dir}/cpu.cfs_quota_us", "20000")

    # Through the actuator the refusal is reported, not raised, and nothing changes.
    with Actuator(layout, state_dir=tmp_path / "s", safety=FREE) as act:
        act.apply(tick(0), {parent.path + "/child": [ActionSet("r", cpu=CpuSpec(max=0.8))]})
        assert any("child may not exceed its parent" in m for m in act.refusals().values())
        assert act.current() == []
        assert (child_dir / "cpu.cfs_quota_us").read_text().strip() == "40000"


@pytest.mark.root
@pytest.mark.cgroup_v1
def test_v1_period_change_goes_through_a_state_the_kernel_accepts(make_cgroup, tmp_path):
    parent = make_cgroup("p", controllers=("cpu",))
    child_dir = parent.dir("cpu") / "c"
    child_dir.mkdir()
    (parent.dir("cpu") / "cpu.cfs_quota_us").write_text("100000")      # parent: 1 CPU
    (child_dir / "cpu.cfs_quota_us").write_text("90000")               # child: 0.9 of 100ms
    cp = CpuQuota(HOST, parent.path + "/c", str(child_dir), 1, 2.0)
    # 0.9 CPU at 10ms: writing the quota first (9000/100ms) is fine, the period
    # first (90000/10ms = 9 CPUs) is not; the order must be chosen.
    cp.write(CpuMax(9_000, 10_000).text())
    assert cp.read() == "9000 10000"
    cp.write(CpuMax(90_000, 100_000).text())
    assert cp.read() == "90000 100000"


# --- cgroup v2 (fixture tree: the cpu controller is on v1 here) ------------------------

@pytest.fixture
def v2(tmp_path):
    layout = cgroup_v2_tree(tmp_path, cgroups=("/batch/a", "/system.slice", "/system.slice/tagger.service",
                                               "/init.scope", "/keep/me"))
    return tmp_path, layout


def test_v2_writes_cpu_max_and_weight(v2):
    tmp_path, layout = v2
    act = act_on_tree(tmp_path, layout)
    act.apply(tick(0), {"/batch/a": [ActionSet("r", cpu=CpuSpec(max=0.5, period=0.05, weight=50))]})
    d = tmp_path / "sys/fs/cgroup/batch/a"
    assert d.joinpath("cpu.max").read_text() == "25000 50000"
    assert d.joinpath("cpu.weight").read_text() == "50"
    act.revert_all()
    assert d.joinpath("cpu.max").read_text() == "max 100000"
    assert d.joinpath("cpu.weight").read_text() == "100"


def test_v2_cpu_idle_set_and_reverted(v2):
    tmp_path, layout = v2
    act = act_on_tree(tmp_path, layout)
    d = tmp_path / "sys/fs/cgroup/batch/a"
    d.joinpath("cpu.weight").write_text("150\n")
    want = {"/batch/a": [ActionSet("keep", cpu=CpuSpec(idle=False)), ActionSet("demote", cpu=CpuSpec(idle=True))]}
    [applied] = act.apply(tick(0), want)
    assert d.joinpath("cpu.idle").read_text() == "1"           # idle is the more restrictive
    assert (applied.knob, applied.value, applied.rule) == ("cpu.idle", "1", "demote")
    d.joinpath("cpu.weight").write_text("100\n")               # what the kernel does on clearing it
    act.revert_all()
    assert d.joinpath("cpu.idle").read_text() == "0"
    assert d.joinpath("cpu.weight").read_text() == "150"        # the group's own weight, back


def test_not_idle_is_met_by_any_weight(v2):
    tmp_path, layout = v2
    act = act_on_tree(tmp_path, layout)
    assert act.apply(tick(0), {"/batch/a": [ActionSet("keep", cpu=CpuSpec(idle=False))]}) == []
    assert act.current() == []


def test_no_cpu_idle_file_is_a_refusal_naming_the_kernel(v2):
    tmp_path, layout = v2
    (tmp_path / "sys/fs/cgroup/batch/a/cpu.idle").unlink()     # a kernel before 5.15
    act = act_on_tree(tmp_path, layout)
    act.apply(tick(0), {"/batch/a": [ActionSet("r", cpu=CpuSpec(max=0.5, idle=True))]})
    [msg] = act.refusals().values()
    assert "cpu.idle" in msg and "5.15" in msg
    # The quota in the same action set still goes through.
    assert (tmp_path / "sys/fs/cgroup/batch/a/cpu.max").read_text() == "50000 100000"


def test_v2_burst_must_not_exceed_the_new_max(v2):
    tmp_path, layout = v2
    (tmp_path / "sys/fs/cgroup/batch/a/cpu.max.burst").write_text("60000\n")
    act = act_on_tree(tmp_path, layout)
    act.apply(tick(0), {"/batch/a": [ActionSet("r", cpu=CpuSpec(max=0.5))]})
    [msg] = act.refusals().values()
    assert "cpu.max.burst 60000us exceeds the new quota 50000us" in msg
    assert (tmp_path / "sys/fs/cgroup/batch/a/cpu.max").read_text() == "max 100000\n"


def test_most_restrictive_rule_wins(v2):
    tmp_path, layout = v2
    act = act_on_tree(tmp_path, layout)
    sets = [ActionSet("loose", cpu=CpuSpec(max=1.5)), ActionSet("tight", cpu=CpuSpec(max=0.4))]
    [a] = act.apply(tick(0), {"/batch/a": sets})
    assert (a.knob, a.value, a.original, a.rule) == ("cpu.max", "40000 100000", "max 100000", "tight")


def test_floor_step_and_cooldown(v2):
    tmp_path, layout = v2
    act = act_on_tree(tmp_path, layout, safety=Safety(quota_floor=0.1, max_step=0.5, cooldown=2.0))
    f = tmp_path / "sys/fs/cgroup/batch/a/cpu.max"
    want = {"/batch/a": [ActionSet("r", cpu=CpuSpec(max=0.01))]}
    seen = []
    for t in range(8):
        act.apply(tick(t), want)
        seen.append(f.read_text())
    # Node has 2 CPUs: halve at most per change, one tightening per 2 s, never below 0.1.
    assert seen == ["100000 100000", "100000 100000", "50000 100000", "50000 100000",
                    "25000 100000", "25000 100000", "12500 100000", "12500 100000"]
    act.apply(tick(8), want)
    act.apply(tick(10), want)
    assert f.read_text() == "10000 100000"           # the floor, not 0.01 CPU
    # Loosening is never held back by the cool-down.
    act.apply(tick(10.5), {"/batch/a": [ActionSet("r", cpu=CpuSpec(max=1.0))]})
    assert f.read_text() == "100000 100000"


def test_protected_cgroups_are_never_touched(v2):
    tmp_path, layout = v2
    # tagger's own cgroups count in every hierarchy: a v1 line puts it in /keep/me for cpu.
    with open(tmp_path / "proc/self/cgroup", "a") as f:
        f.write("4:cpu,cpuacct:/keep/me\n")
    act = act_on_tree(tmp_path, layout)
    spec = [ActionSet("r", cpu=CpuSpec(max=0.2))]
    paths = ["/", "/init.scope", "/system.slice/tagger.service", "/system.slice", "/keep/me"]
    assert act.apply(tick(0), {p: spec for p in paths}) == []
    for p in paths[1:]:
        assert (tmp_path / "sys/fs/cgroup" / p.strip("/") / "cpu.max").read_text() == "max 100000\n"
    assert not (tmp_path / "state").exists() or not (tmp_path / "state/actions.journal.json").exists()


def test_dry_run_reports_the_same_actions_and_touches_nothing(v2):
    tmp_path, layout = v2
    want = {"/batch/a": [ActionSet("r", cpu=CpuSpec(max=0.5, weight=20))]}
    dry = act_on_tree(tmp_path, layout, dry_run=True)
    got_dry = dry.apply(tick(0), want)
    assert (tmp_path / "sys/fs/cgroup/batch/a/cpu.max").read_text() == "max 100000\n"
    assert not (tmp_path / "state").exists()
    real = act_on_tree(tmp_path, layout)
    got = real.apply(tick(0), want)
    strip = lambda acts: sorted((a.cgroup, a.knob, a.value, a.original, a.rule) for a in acts)   # noqa: E731
    assert strip(got_dry) == strip(got) and all(a.dry_run for a in got_dry)
    dry.revert_all()
    assert not (tmp_path / "state/actions.journal.json").exists() or real.entries


def test_vanished_cgroup_is_dropped_not_an_error(v2):
    tmp_path, layout = v2
    act = act_on_tree(tmp_path, layout)
    act.apply(tick(0), {"/batch/a": [ActionSet("r", cpu=CpuSpec(max=0.5))]})
    import shutil
    shutil.rmtree(tmp_path / "sys/fs/cgroup/batch/a")
    act.apply(tick(1), {})
    assert act.current() == [] and act.revert_all() == []


def test_a_knob_changed_behind_our_back_is_set_again(v2, caplog):
    tmp_path, layout = v2
    act = act_on_tree(tmp_path, layout)
    want = {"/batch/a": [ActionSet("r", cpu=CpuSpec(max=0.5))]}
    act.apply(tick(0), want)
    f = tmp_path / "sys/fs/cgroup/batch/a/cpu.max"
    f.write_text("max 100000\n")                          # an operator "fixed" it
    act.apply(tick(1), want)
    assert f.read_text() == "50000 100000"
    assert "changed behind tagger's back" in caplog.text
    act.revert_all()
    assert f.read_text() == "max 100000"                  # the original, not the operator's write


def test_one_refused_control_point_does_not_cost_the_others(v2):
    tmp_path, layout = v2
    act = act_on_tree(tmp_path, layout)
    from tagger.rules.spec import IoSpec, RdtSpec
    sets = [ActionSet("r", cpu=CpuSpec(max=0.5), io=IoSpec(device="/dev/sdz", read_bps=1e6),
                      rdt=RdtSpec("g", l3="0xf"))]
    applied = act.apply(tick(0), {"/batch/a": sets})
    assert [(a.knob, a.value) for a in applied] == [("cpu.max", "50000 100000")]
    msgs = act.refusals()
    assert any("no such block device" in m for m in msgs.values())
    assert any("resctrl not mounted" in m for m in msgs.values())


@pytest.mark.root
@pytest.mark.cgroup_v1
def test_v1_parent_and_child_settle_in_one_tick_and_revert(make_cgroup, tmp_path):
    """On v1 the order of a parent's and a child's writes matters (child <= parent);
    the actuator retries within the tick and reverts in two passes."""
    parent = make_cgroup("p", controllers=("cpu",))
    (parent.dir("cpu") / "c").mkdir()
    P, C = parent.path, parent.path + "/c"
    qf = {P: parent.dir("cpu") / "cpu.cfs_quota_us", C: parent.dir("cpu") / "c" / "cpu.cfs_quota_us"}
    qf[P].write_text("50000")
    qf[C].write_text("40000")                          # originals: 0.5 and 0.4 CPU
    quota = lambda: (int(qf[P].read_text()), int(qf[C].read_text()))   # noqa: E731
    cap = lambda p, c: {P: [ActionSet("r", cpu=CpuSpec(max=p))], C: [ActionSet("r", cpu=CpuSpec(max=c))]}  # noqa: E731
    with Actuator(Layout.detect(HOST), state_dir=tmp_path / "s", safety=FREE) as act:
        act.apply(tick(0), cap(1.0, 0.9))              # loosen both: parent must go first
        assert quota() == (100000, 90000) and act.refusals() == {}
        act.apply(tick(1), cap(0.3, 0.2))              # tighten both: child must go first
        assert quota() == (30000, 20000) and act.refusals() == {}
        act.apply(tick(2), cap(1.0, 0.9))
        assert quota() == (100000, 90000)
    # Revert to 0.5 / 0.4: the parent's restore is refused while the child is at 0.9.
    assert quota() == (50000, 40000)
