"""cpuset.cpus: v1 for real on this (hybrid) machine, v2 on fixture trees."""

from __future__ import annotations

import pytest

from tagger.actions.actuator import Actuator
from tagger.actions.control import Safety
from tagger.knobs import format_cpulist, parse_cpulist
from tagger.cgroups import Layout
from tagger.kernelfs import HOST
from tagger.rules.spec import ActionSet, CpuSpec
from tests.actuator_helpers import BUSY, FREE, act_on_tree, cpus_used, tick
from tests.cgroup_fixture import wait_for
from tests.fixtures.kernel_trees import cgroup_v2_tree


@pytest.mark.parametrize("text, cpus, canonical", [
    ("0", [0], "0"), ("0-3", [0, 1, 2, 3], "0-3"), ("3,0-1,2", [0, 1, 2, 3], "0-3"),
    ("0-1,4,6-7\n", [0, 1, 4, 6, 7], "0-1,4,6-7"), ("", [], ""), ("\n", [], "")])
def test_cpulist_round_trip(text, cpus, canonical):
    assert parse_cpulist(text) == cpus
    assert format_cpulist(cpus) == canonical


@pytest.mark.parametrize("text", ["a", "1-", "3-1", "-1", "1,,2", "0x1", "1 2"])
def test_cpulist_rejects_what_the_kernel_does(text):
    with pytest.raises(ValueError):
        parse_cpulist(text)


@pytest.mark.root
@pytest.mark.cgroup_v1
def test_v1_cpuset_confines_and_reverts_on_the_real_kernel(make_cgroup, tmp_path):
    """Two busy loops confined to the last CPU, then set free: the kernel's own
    affinity (Cpus_allowed_list) and where they actually ran both follow."""
    cg = make_cgroup("hog", controllers=("cpu", "cpuset"))
    parent = (cg.dir("cpuset").parent / "cpuset.cpus").read_text().strip()
    allowed = parse_cpulist(parent)
    if len(allowed) < 2:
        pytest.skip("needs two CPUs to confine to one")
    procs = [cg.spawn(BUSY) for _ in range(2)]
    wait_for(lambda: len(cg.pids("cpuset")) == 2, what="two busy loops")
    last = allowed[-1]
    with Actuator(Layout.detect(HOST), state_dir=tmp_path / "state", safety=FREE) as act:
        [a] = act.apply(tick(0), {cg.path: [ActionSet("suppress", cpu=CpuSpec(cpuset=1))]})
        assert (a.knob, a.value, a.original) == ("cpuset.cpus", str(last), parent)
        assert (cg.dir("cpuset") / "cpuset.cpus").read_text().strip() == str(last)
        for p in procs:
            status = open(f"/proc/{p.pid}/status").read()
            assert f"Cpus_allowed_list:\t{last}\n" in status
        # Where they run: after a scheduler tick or two, only on the last CPU.
        wait_for(lambda: set().union(*(cpus_used(p.pid) for p in procs)) == {last}, timeout=10,
                 what="the loops to run on the last CPU only")
    # Reverted on exit: the parent's CPUs again, and the tasks may use them.
    assert (cg.dir("cpuset") / "cpuset.cpus").read_text().strip() == parent
    for p in procs:
        assert f"Cpus_allowed_list:\t{parent}\n" in open(f"/proc/{p.pid}/status").read()


@pytest.mark.root
@pytest.mark.cgroup_v1
def test_v1_cpu_outside_the_parent_is_refused_naming_the_limit(make_cgroup, tmp_path):
    cg = make_cgroup("x", controllers=("cpuset",))
    outside = max(parse_cpulist((cg.dir("cpuset").parent / "cpuset.cpus").read_text())) + 1
    with Actuator(Layout.detect(HOST), state_dir=tmp_path / "state", safety=FREE) as act:
        assert act.apply(tick(0), {cg.path: [ActionSet("r", cpu=CpuSpec(cpuset=str(outside)))]}) == []
        [msg] = act.refusals().values()
        assert "not in the parent's cpuset" in msg and "v1" in msg


# --- cgroup v2 (fixture tree) ------------------------------------------------------------

@pytest.fixture
def v2(tmp_path):
    layout = cgroup_v2_tree(tmp_path, cgroups=("/batch", "/batch/a"))
    return tmp_path, layout


def test_v2_cpuset_written_and_empty_original_restored(v2):
    tmp_path, layout = v2
    act = act_on_tree(tmp_path, layout)
    f = tmp_path / "sys/fs/cgroup/batch/a/cpuset.cpus"
    want = {"/batch/a": [ActionSet("wide", cpu=CpuSpec(cpuset="0-1")), ActionSet("narrow", cpu=CpuSpec(cpuset=1))]}
    [a] = act.apply(tick(0), want)
    assert f.read_text() == "1"                       # the fewest CPUs win, the highest-numbered
    assert (a.value, a.original, a.rule) == ("1", "", "narrow")
    act.revert_all()
    # "the parent's", as it was -- written as "\n": the kernel ignores a zero-length write.
    assert f.read_text() == "\n"


def test_cpuset_is_paced_like_a_quota(v2):
    tmp_path, layout = v2
    for d in ("", "batch", "batch/a"):
        (tmp_path / "sys/fs/cgroup" / d / "cpuset.cpus.effective").write_text("0-7\n")
    act = act_on_tree(tmp_path, layout, safety=Safety(max_step=0.5, cooldown=2.0))
    f = tmp_path / "sys/fs/cgroup/batch/a/cpuset.cpus"
    want = {"/batch/a": [ActionSet("r", cpu=CpuSpec(cpuset=1))]}
    act.apply(tick(0), want)
    assert f.read_text() == "4-7"        # half of the 8 CPUs at most, keeping the wanted one
    act.apply(tick(1), want)
    assert f.read_text() == "4-7"        # cool-down
    act.apply(tick(2.5), want)
    assert f.read_text() == "6-7"
    act.apply(tick(5), want)
    assert f.read_text() == "7"
    act.apply(tick(5.1), {})
    assert f.read_text() == "\n"         # given back at once (the empty original)


def test_no_cpuset_controller_is_a_refusal_and_costs_nothing_else(tmp_path):
    layout = cgroup_v2_tree(tmp_path, cgroups=("/batch",), controllers="cpu io memory pids")
    act = act_on_tree(tmp_path, layout)
    applied = act.apply(tick(0), {"/batch": [ActionSet("r", cpu=CpuSpec(weight=1, cpuset=1))]})
    assert [(a.knob, a.value) for a in applied] == [("cpu.weight", "1")]
    [msg] = act.refusals().values()
    assert "cpuset" in msg


@pytest.mark.root
@pytest.mark.cgroup_v1
def test_v1_parent_and_child_confined_in_one_tick_and_reverted(make_cgroup, tmp_path):
    """On v1 a parent may not drop a CPU its child holds (EBUSY), and the
    actuator writes parents first: the child's write must let the parent's
    retry succeed in the same tick, and revert must widen the parent first."""
    from tests.cgroup_fixture import inherit_cpuset
    parent = make_cgroup("p", controllers=("cpuset",))
    child_dir = parent.dir("cpuset") / "job"
    child_dir.mkdir()
    inherit_cpuset(child_dir)
    (parent.v2 / "job").mkdir()
    child = parent.path + "/job"
    wide = (parent.dir("cpuset") / "cpuset.cpus").read_text().strip()
    if len(parse_cpulist(wide)) < 2:
        pytest.skip("needs two CPUs to confine to one")
    want = {p: [ActionSet("suppress", cpu=CpuSpec(cpuset=1))] for p in (parent.path, child)}
    with Actuator(Layout.detect(HOST), state_dir=tmp_path / "state", safety=FREE) as act:
        applied = act.apply(tick(0), want)
        assert act.refusals() == {}
        last = str(parse_cpulist(wide)[-1])
        assert {(a.cgroup, a.value) for a in applied} == {(parent.path, last), (child, last)}
        assert (parent.dir("cpuset") / "cpuset.cpus").read_text().strip() == last
        assert (child_dir / "cpuset.cpus").read_text().strip() == last
        # Not wanted any more: both widened in one tick (the parent first).
        assert act.apply(tick(1), {}) == []
        assert (parent.dir("cpuset") / "cpuset.cpus").read_text().strip() == wide
        assert (child_dir / "cpuset.cpus").read_text().strip() == wide
        act.apply(tick(2), want)
    # And on exit.
    assert (parent.dir("cpuset") / "cpuset.cpus").read_text().strip() == wide
    assert (child_dir / "cpuset.cpus").read_text().strip() == wide
