"""The BPF program variants of older kernels, forced on this one.

tg_open loads, per kernel feature (tagger.native.variants), the variant with
it or the one without.  No kernel older than the matrix's 6.1 can be booted
here, so the 5.15 path (no cgroup storage, no prev_state argument) is
exercised by turning the features off on whatever kernel runs the tests: the
same accuracy bars as the kernel's own variant, against the same kernel
accounting.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests import test_runq_attribution as attribution
from tests import test_telemetry_bpf as base
from tests.bpf_helpers import bpf_problem, require_bpf

pytestmark = pytest.mark.bpf


def _forced_masks() -> list[tuple[str, int]]:
    """(test id, features_off) for each older kernel's variants this kernel
    can load besides its own: the features it has, turned off."""
    if bpf_problem():
        return [("unavailable", 0)]
    from tagger.native import lib

    have = int(lib.tg_probe_features())
    storage, state, io_done = lib.TG_FEAT_CGRP_STORAGE, lib.TG_FEAT_PREV_STATE, lib.TG_FEAT_IO_DONE
    wanted = [("6.1-hash", storage), ("5.15-hash-task-state", storage | state),
              ("no-io-done", io_done)]
    out, seen = [], {have}
    for name, off in wanted:
        got = have & ~off
        if not got & state:       # as tg_open: the storage variant takes prev_state
            got &= ~storage
        if got not in seen:
            seen.add(got)
            out.append((name, off))
    return out


MASKS = _forced_masks()


@pytest.fixture(params=[off for _, off in MASKS], ids=[name for name, _ in MASKS])
def forced(request):
    require_bpf()
    from tagger.telemetry import BpfCollector

    with BpfCollector(cgroupfs_metrics=(), features_off=request.param) as coll:
        assert not coll.probes.features & request.param, "a feature turned off was used"
        yield coll


def test_the_forced_variant_is_loaded_and_named(forced):
    from tagger.native.variants import describe

    loaded = set(forced.probes.prog_stats())
    storage = bool(forced.probes.features & 1)
    assert ("tg_cgroup_mkdir" in loaded) == storage
    assert ("tg_cgroup_mkdir_hash" in loaded) == (not storage)
    assert sum(name.startswith("tg_sched_switch") for name in loaded) == 1
    assert forced.health()["bpf_variant"] == describe(forced.probes.features)


#: The accuracy tests of the kernel's own variant, run again on each forced one.
ACCURACY = [
    base.test_cpu_time_and_runq_wait_match_the_kernel,
    base.test_cgroups_appear_and_vanish_between_ticks,
    base.test_fio_direct_io_matches_fio_and_the_kernel,
    attribution.test_foreign_wait_is_charged_to_neighbours_by_their_cpu_use,
    attribution.test_a_quota_charges_the_wait_to_throttled,
    attribution.test_tasks_of_one_cgroup_wait_behind_each_other_as_self,
]


@pytest.mark.parametrize("accuracy", ACCURACY, ids=[t.__name__.removeprefix("test_") for t in ACCURACY])
def test_the_forced_variant_is_as_accurate(forced, make_cgroup, accuracy):
    accuracy(forced, make_cgroup)


def _btf_dump() -> str:
    if not shutil.which("bpftool"):
        pytest.fail("bpftool is part of the build (make deps)")
    return subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux"],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.root
def test_probed_features_agree_with_bpftool():
    """tg_probe_features reads the kernel's BTF through libbpf; bpftool's
    dump of the same BTF, read here as text, must say the same."""
    require_bpf()
    from tagger.native import lib

    dump = _btf_dump()
    have = int(lib.tg_probe_features())
    assert bool(have & lib.TG_FEAT_CGRP_STORAGE) == ("'BPF_MAP_TYPE_CGRP_STORAGE' val=" in dump)
    # The tracepoint's prototype: ctx, preempt, prev, next[, prev_state].
    proto = dump.split("TYPEDEF 'btf_trace_sched_switch' type_id=")[1].split()[0]
    ptr = dump.split(f"\n[{proto}] PTR '(anon)' type_id=")[1].split()[0]
    vlen = int(dump.split(f"\n[{ptr}] FUNC_PROTO '(anon)' ret_type_id=")[1].split("vlen=")[1].split()[0])
    assert bool(have & lib.TG_FEAT_PREV_STATE) == (vlen >= 5)
    io_done = "TYPEDEF 'btf_trace_block_io_done'" in dump and "'__RQF_IO_STAT' val=" in dump
    assert bool(have & lib.TG_FEAT_IO_DONE) == io_done


def test_kernels_below_the_minimum_get_one_clear_reason():
    from tagger.native.variants import below_minimum, kernel_version

    assert kernel_version("5.14.0-427.el9.x86_64") == (5, 14)
    assert kernel_version("6.1.0-54-amd64") == (6, 1)
    assert below_minimum("5.15.0-126-generic") is None
    assert below_minimum("6.12.95+deb12-amd64") is None
    why = below_minimum("5.14.0-427.el9.x86_64")
    assert "5.14.0-427.el9.x86_64" in why and "5.15" in why


def test_a_kernel_below_the_minimum_runs_the_fallback_with_one_warning(monkeypatch, caplog):
    """No load is tried: the collector says why once and runs on cgroupfs."""
    import logging

    from tagger.native import variants
    from tagger.telemetry import open_collector

    monkeypatch.setattr(variants.platform, "release", lambda: "5.14.0-427.el9.x86_64")
    with caplog.at_level(logging.WARNING):
        with open_collector() as coll:
            assert coll.source == "cgroupfs"
            assert "older than 5.15" in coll.reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "5.14.0-427.el9.x86_64" in warnings[0]


def test_doctor_names_the_variants_tagger_loads():
    require_bpf()
    from tagger import doctor
    from tagger.native import lib
    from tagger.native.probes import Probes
    from tagger.native.variants import FEATURES, describe

    checks = doctor.check_variants(doctor.Context())
    with Probes(max_slots=64) as probes:
        loaded = probes.features
    assert loaded == int(lib.tg_probe_features())
    assert checks[0].detail == describe(loaded)
    assert [c.ok for c in checks[1:]] == [bool(loaded & f.bit) for f in FEATURES]
