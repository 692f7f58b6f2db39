"""RDT on fixture resctrl trees (this machine has no RDT hardware): validation
as the kernel does it, the exact schemata text, CLOSIDs, last_cmd_status, task
sync and removal on revert."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from tagger.actions.actuator import Actuator
from tagger.actions.control import Safety
from tagger.actions.rdt import CacheInfo, MbInfo, Resctrl, parse_cbm, validate_mb
from tagger.actions.refusal import ActionRefused
from tagger.kernelfs import KernelFS
from tagger.rules.spec import ActionSet, RdtSpec
from tagger.snapshot import Snapshot
from tests.fixtures.kernel_trees import ResctrlKernel, add_v2_cgroup, cgroup_v2_tree, resctrl_tree

L3 = CacheInfo("L3", cbm_mask=0xFFFFF, min_cbm_bits=2, num_closids=16, sparse_masks=False)
MB = MbInfo(bandwidth_gran=10, min_bandwidth=10, num_closids=8)


# --- validation: what the kernel would refuse, in its words ---------------------------

INVALID = [
    # (l3 or mb, value, cache/mb info, expected words from fs/resctrl/ctrlmondata.c)
    ("l3", "0x0", L3, "Mask out of range"),
    ("l3", "0x1fffff", L3, "Mask out of range"),             # one bit past cbm_mask
    ("l3", "0xf0f", L3, "The mask f0f has non-consecutive 1-bits"),
    ("l3", "0x101", L3, "The mask 101 has non-consecutive 1-bits"),
    ("l3", "0x1", L3, "Need at least 2 bits in the mask"),   # min_cbm_bits = 2
    ("l3", "0x8", L3, "Need at least 2 bits in the mask"),
    ("l3", "0xzz", L3, "Non-hex character in the mask 0xzz"),
    ("l3", "", L3, "Non-hex character in the mask"),
    ("l3", "0%", L3, "percentage out of range"),
    ("l3", "150%", L3, "percentage out of range"),
    ("l3", "-5%", L3, "percentage out of range"),
    ("l3", "lots%", L3, "not a percentage"),
    ("mb", 5, MB, "MB value 5 out of range [10,100]"),
    ("mb", 101, MB, "MB value 101 out of range [10,100]"),
    ("mb", "fast", MB, "Invalid MB value fast"),
    ("mb", "30.5", MB, "Invalid MB value 30.5"),
    ("mb", 0, MB, "MB value 0 out of range [10,100]"),
]


@pytest.mark.parametrize("what,value,res,words", INVALID, ids=[f"{w}={v!r}" for w, v, *_ in INVALID])
def test_invalid_values_are_refused_with_the_kernels_words(what, value, res, words):
    with pytest.raises(ActionRefused) as exc:
        parse_cbm(value, res) if what == "l3" else validate_mb(value, res)
    assert words in str(exc.value)


def test_sparse_masks_allow_holes_only_when_the_kernel_says_so():
    sparse = CacheInfo("L3", 0xFFFFF, 1, 16, sparse_masks=True)
    assert parse_cbm("0xf0f", sparse) == 0xF0F
    with pytest.raises(ActionRefused, match="non-consecutive"):
        parse_cbm("0xf0f", CacheInfo("L3", 0xFFFFF, 1, 16, sparse_masks=False))


def test_percentages_take_low_bits_and_honour_min_cbm_bits():
    assert parse_cbm("25%", L3) == 0x1F          # 5 of 20 bits
    assert parse_cbm("100%", L3) == 0xFFFFF
    assert parse_cbm("1%", L3) == 0x3            # 0.2 bits -> min_cbm_bits (2)


def test_mb_rounds_up_to_bandwidth_gran_as_the_kernel_does():
    assert validate_mb(30, MB) == 30
    assert validate_mb(31, MB) == 40
    assert validate_mb(10, MB) == 10


# --- the filesystem side --------------------------------------------------------------------

@pytest.fixture
def host(tmp_path):
    layout = cgroup_v2_tree(tmp_path, cgroups=("/batch/a", "/batch/b", "/web"))
    resctrl_tree(tmp_path, min_cbm_bits=2, num_closids=4, sparse_masks=0)
    fs = ResctrlKernel(tmp_path)
    layout = type(layout)(layout.kind, layout.v2_root, layout.v1_roots, layout.v2_controllers, fs)
    for tid in (101, 102, 103, 201):
        (tmp_path / f"proc/{tid}").mkdir(parents=True)
    add_v2_cgroup(tmp_path, "/batch/a", threads=(101, 102))
    add_v2_cgroup(tmp_path, "/batch/b", threads=(201,))
    return tmp_path, fs, layout


def _act(tmp_path, fs, layout, **kw):
    return Actuator(layout, fs=fs, state_dir=tmp_path / "state", durable=False,
                    safety=Safety(cooldown=0), **kw)


def test_info_reads_the_kernel_layout_with_id_gaps(host):
    tmp_path, fs, _ = host
    info = Resctrl(fs).info()
    assert info.caches["L3"].cbm_mask == 0xFFFFF and info.caches["L3"].min_cbm_bits == 2
    assert info.domains == {"L3": [0, 2], "MB": [0, 2]}
    assert info.num_closids == 4                 # min(L3 4, MB 8)


def test_valid_allocation_writes_the_exact_schemata_text(host):
    tmp_path, fs, layout = host
    act = _act(tmp_path, fs, layout)
    want = {"/batch/a": [ActionSet("cache-hogs", rdt=RdtSpec("batch", l3="0x0f", mb=31))]}
    act.apply(Snapshot.synthetic(["/batch/a"]), want)
    # One line per resource, one id=value per cache id (0 and 2: the gap kept),
    # masks zero-padded to the cbm width like the kernel prints them, MB rounded up.
    assert fs.writes == [("/sys/fs/resctrl/batch/schemata", "L3:0=0000f;2=0000f\nMB:0=40;2=40\n")]
    assert (tmp_path / "sys/fs/resctrl/batch/schemata").read_text() == "L3:0=0000f;2=0000f\nMB:0=40;2=40\n"
    assert sorted(Resctrl(fs).tasks("batch")) == [101, 102]
    knobs = {(a.cgroup, a.knob): a for a in act.current()}
    assert knobs[("", "rdt.group batch")].original == "absent"
    assert knobs[("/batch/a", "rdt.tasks batch")].value == "batch"
    act.close()


def test_cdp_writes_the_mask_to_code_and_data(host, tmp_path):
    root = tmp_path / "cdp"
    resctrl_tree(root, cdp=True, mb=False, l3_ids=(0, 1))
    text = Resctrl(KernelFS(root)).schemata_text(RdtSpec("g", l3="25%"))
    assert text == "L3CODE:0=0001f;1=0001f\nL3DATA:0=0001f;1=0001f\n"


def test_new_threads_join_the_group_each_tick(host):
    tmp_path, fs, layout = host
    act = _act(tmp_path, fs, layout)
    want = {"/batch/a": [ActionSet("r", rdt=RdtSpec("batch", l3="0xff"))]}
    act.apply(Snapshot.synthetic(["/batch/a"], t=0), want)
    add_v2_cgroup(tmp_path, "/batch/a", threads=(101, 102, 103))   # a thread was born
    act.apply(Snapshot.synthetic(["/batch/a"], t=1), want)
    assert sorted(Resctrl(fs).tasks("batch")) == [101, 102, 103]
    act.close()


def test_out_of_closids_is_refused_before_mkdir(host):
    tmp_path, fs, layout = host
    act = _act(tmp_path, fs, layout)
    # 4 CLOSIDs: the default group and three more.
    want = {f"/batch/{c}": [ActionSet("r", rdt=RdtSpec(f"g{c}", l3="0xff"))] for c in "ab"}
    want["/web"] = [ActionSet("r", rdt=RdtSpec("g3", l3="0xff"))]
    (tmp_path / "sys/fs/resctrl/other").mkdir()          # someone else's group
    act.apply(Snapshot.synthetic(list(want)), want)
    refused = act.refusals()
    assert any("out of CLOSIDs" in m for m in refused.values()), refused
    assert sorted(Resctrl(fs).groups()) == ["ga", "gb", "other"]
    act.close()
    assert Resctrl(fs).groups() == ["other"]              # only ours are removed


def test_kernel_enospc_on_mkdir_says_out_of_closids(host):
    tmp_path, fs, _ = host
    r = Resctrl(fs)
    for g in ("x", "y", "z"):
        (tmp_path / f"sys/fs/resctrl/{g}").mkdir()
    from tagger.actions.rdt import ResctrlInfo
    generous = ResctrlInfo(caches={"L3": L3}, mb=None, domains={"L3": [0, 2]})   # claims 16 CLOSIDs
    with pytest.raises(ActionRefused, match="out of CLOSIDs"):
        r.create_group("w", generous)


def test_a_write_the_kernel_refuses_reports_last_cmd_status(host):
    tmp_path, fs, layout = host
    act = _act(tmp_path, fs, layout)
    fs.refuse = "Overlaps with exclusive group"
    want = {"/batch/a": [ActionSet("r", rdt=RdtSpec("batch", l3="0xff"))]}
    act.apply(Snapshot.synthetic(["/batch/a"]), want)
    assert any("Overlaps with exclusive group" in m for m in act.refusals().values())
    act.close()


def test_unknown_cache_id_from_the_kernel(host):
    tmp_path, fs, _ = host
    r = Resctrl(fs)
    r.create_group("g")
    with pytest.raises(ActionRefused, match="Unknown domain 1"):
        r.write_schemata("g", "L3:0=ff;1=ff\n")          # id 1 does not exist: 0 and 2 do


def test_no_l3_or_no_mb_on_this_machine(tmp_path):
    resctrl_tree(tmp_path, mb=False)
    with pytest.raises(ActionRefused, match="no memory-bandwidth allocation"):
        Resctrl(KernelFS(tmp_path)).schemata_text(RdtSpec("g", mb=50))


def test_bad_group_names_are_refused(host):
    tmp_path, fs, _ = host
    for name in ("info", "..", "a/b", "", "mon_groups"):
        with pytest.raises(ActionRefused, match="group name"):
            Resctrl(fs).create_group(name)


def test_no_resctrl_mount_says_how_to_get_one(tmp_path):
    with pytest.raises(ActionRefused, match="resctrl not mounted"):
        Resctrl(KernelFS(tmp_path)).info()


def test_revert_removes_groups_tagger_made_and_restores_ones_it_did_not(host):
    tmp_path, fs, layout = host
    r = Resctrl(fs)
    r.create_group("shared")
    r.write_schemata("shared", "L3:0=fff00;2=fff00\n")
    before = (tmp_path / "sys/fs/resctrl/shared/schemata").read_text()
    act = _act(tmp_path, fs, layout)
    want = {"/batch/a": [ActionSet("r", rdt=RdtSpec("mine", l3="0xff"))],
            "/batch/b": [ActionSet("r", rdt=RdtSpec("shared", l3="0x3"))]}
    act.apply(Snapshot.synthetic(list(want)), want)
    assert sorted(r.groups()) == ["mine", "shared"]
    assert r.tasks("shared") == {201}
    act.revert_all()
    assert r.groups() == ["shared"]
    assert (tmp_path / "sys/fs/resctrl/shared/schemata").read_text() == before
    assert r.tasks("shared") == set() and {101, 102, 201} <= r.tasks("")


def test_rule_stops_matching_one_cgroup_keeps_the_group_for_the_other(host):
    tmp_path, fs, layout = host
    act = _act(tmp_path, fs, layout)
    spec = [ActionSet("r", rdt=RdtSpec("batch", l3="0xff"))]
    act.apply(Snapshot.synthetic([], t=0), {"/batch/a": spec, "/batch/b": spec})
    act.apply(Snapshot.synthetic([], t=1), {"/batch/b": spec})
    r = Resctrl(fs)
    assert r.groups() == ["batch"] and r.tasks("batch") == {201}
    act.apply(Snapshot.synthetic([], t=2), {})
    assert r.groups() == [] and act.current() == []
    act.close()


def test_dry_run_reports_the_same_rdt_actions_and_makes_nothing(host):
    tmp_path, fs, layout = host
    want = {"/batch/a": [ActionSet("r", rdt=RdtSpec("batch", l3="25%", mb=50))]}
    dry = _act(tmp_path, fs, layout, dry_run=True)
    got_dry = dry.apply(Snapshot.synthetic([]), want)
    assert Resctrl(fs).groups() == [] and fs.writes == []
    real = _act(tmp_path, fs, layout)
    got = real.apply(Snapshot.synthetic([]), want)
    assert {(a.cgroup, a.knob, a.value) for a in got_dry} == {(a.cgroup, a.knob, a.value) for a in got}
    assert ("", "rdt.schemata batch", "L3:0=0001f;2=0001f\nMB:0=50;2=50\n") in {
        (a.cgroup, a.knob, a.value) for a in got_dry}
    real.close()


# --- property: our cbm check is the kernel's, bit for bit -----------------------------


def kernel_cbm_validate(val, cbm_len, min_cbm_bits, sparse):
    """A line-by-line port of cbm_validate() (fs/resctrl/ctrlmondata.c), with
    find_first_bit / find_next_zero_bit / find_next_bit written out."""
    if (min_cbm_bits > 0 and val == 0) or val > (1 << cbm_len) - 1:
        return False
    first_bit = next((i for i in range(cbm_len) if val >> i & 1), cbm_len)
    zero_bit = next((i for i in range(first_bit, cbm_len) if not val >> i & 1), cbm_len)
    if not sparse and next((i for i in range(zero_bit, cbm_len) if val >> i & 1), cbm_len) < cbm_len:
        return False
    if zero_bit - first_bit < min_cbm_bits:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(cbm_len=st.integers(4, 20), min_bits=st.integers(0, 4), sparse=st.booleans(),
       val=st.integers(0, (1 << 21) - 1))
def test_cbm_validation_matches_the_kernel(cbm_len, min_bits, sparse, val):
    cache = CacheInfo("L3", (1 << cbm_len) - 1, min_bits, 16, sparse)
    try:
        ours = parse_cbm(f"0x{val:x}", cache) == val
    except ActionRefused:
        ours = False
    assert ours == kernel_cbm_validate(val, cbm_len, min_bits, sparse)


def test_restart_after_a_crash_removes_the_groups_the_crashed_run_made(host):
    tmp_path, fs, layout = host
    spec = [ActionSet("r", rdt=RdtSpec("batch", l3="0xff"))]
    first = _act(tmp_path, fs, layout)
    first.apply(Snapshot.synthetic([]), {"/batch/a": spec, "/batch/b": [ActionSet("r", rdt=RdtSpec("b2", l3="0xf"))]})
    first.journal.unlock()                                 # SIGKILL: nothing restored
    assert sorted(Resctrl(fs).groups()) == ["b2", "batch"]
    fs.rmdir("/sys/fs/resctrl/b2")                         # someone removed one meanwhile
    second = _act(tmp_path, fs, layout)
    kept = second.recover()
    # b2's knobs went with b2; batch's are re-adopted until an apply says otherwise.
    assert {a.knob for a in kept} == {"rdt.group batch", "rdt.schemata batch", "rdt.tasks batch"}
    second.apply(Snapshot.synthetic([]), {})
    assert Resctrl(fs).groups() == [] and second.current() == []
    assert {101, 102, 201} <= Resctrl(fs).tasks("")
