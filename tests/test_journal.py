"""The actions journal: the original is on disk before the knob changes, saves
are atomic and durable, an unreadable journal is kept aside, one agent per
state directory."""

from __future__ import annotations

import json
import os

import pytest

from tagger.actions.actuator import Actuator
from tagger.actions.control import Safety
from tagger.actions.journal import JOURNAL_NAME, Entry, Journal, read_entries
from tagger.actions.spec import ActionSet, CpuSpec, IoSpec
from tagger.errors import ConfigError
from tagger.kernelfs import KernelFS
from tagger.snapshot import Snapshot
from tests.fixtures.kernel_trees import cgroup_v2_tree


class WatchedFS(KernelFS):
    """Records, at every knob write, what the journal on disk says."""

    def __init__(self, root, journal_path):
        super().__init__(root)
        self.journal_path = journal_path
        self.seen = []

    def write_text(self, p, value):
        on_disk = read_entries(self.journal_path, quarantine=False)
        self.seen.append((str(p), value, {(e.cgroup, e.knob): e.original for e in on_disk}))
        return super().write_text(p, value)


def test_original_is_on_disk_before_the_first_write(tmp_path):
    layout = cgroup_v2_tree(tmp_path, cgroups=("/batch/a",))
    state = tmp_path / "state"
    fs = WatchedFS(tmp_path, state / JOURNAL_NAME)
    layout = type(layout)(layout.kind, layout.v2_root, layout.v1_roots, layout.v2_controllers, fs)
    act = Actuator(layout, fs=fs, state_dir=state, safety=Safety(max_step=None, cooldown=0))
    act.apply(Snapshot.synthetic([]), {"/batch/a": [ActionSet("r", cpu=CpuSpec(max=0.5, weight=10),
                                                             io=IoSpec(device="vda", read_bps=1e6))]})
    assert [p.rsplit("/", 1)[1] for p, _, _ in fs.seen] == ["cpu.max", "cpu.weight", "io.max"]
    for path, value, journal in fs.seen:
        knob = {"cpu.max": "cpu.max", "cpu.weight": "cpu.weight", "io.max": "io.max 254:0"}[path.rsplit("/", 1)[1]]
        assert ("/batch/a", knob) in journal, f"{path} written before its original was journaled"
    assert fs.seen[0][2][("/batch/a", "cpu.max")] == "max 100000"
    act.close()


def test_saves_are_atomic_and_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd)))
    j = Journal(tmp_path)
    j.put(Entry("/a", "cpu.max", "max 100000", "50000 100000", "r"))
    # The temporary file, then the directory (so the rename itself is durable).
    assert synced[0].endswith(".tmp") and synced[1] == str(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [JOURNAL_NAME]
    doc = json.loads((tmp_path / JOURNAL_NAME).read_text())
    assert doc["version"] == 1 and doc["entries"][0]["original"] == "max 100000"


def test_a_torn_temporary_file_does_not_matter(tmp_path):
    j = Journal(tmp_path)
    j.put(Entry("/a", "cpu.max", "max 100000", "50000 100000", "r"))
    (tmp_path / f".{JOURNAL_NAME}.999.tmp").write_text('{"version": 1, "entr')   # power lost mid-save
    assert [e.original for e in Journal(tmp_path).load().values()] == ["max 100000"]


def test_unreadable_journal_is_kept_aside_not_dropped(tmp_path, caplog):
    (tmp_path / JOURNAL_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable journal"):
        read_entries(tmp_path / JOURNAL_NAME, quarantine=False)
    assert Journal(tmp_path).load() == {}
    aside = [n for n in os.listdir(tmp_path) if ".unreadable." in n]
    assert len(aside) == 1 and (tmp_path / aside[0]).read_text() == "{not json"
    assert "restore its knobs by hand" in caplog.text


def test_one_agent_per_state_directory(tmp_path):
    layout = cgroup_v2_tree(tmp_path)
    fs = KernelFS(tmp_path)
    first = Actuator(layout, fs=fs, state_dir=tmp_path / "state")
    with pytest.raises(ConfigError, match="another tagger holds"):
        Actuator(layout, fs=fs, state_dir=tmp_path / "state")
    Actuator(layout, fs=fs, state_dir=tmp_path / "state", dry_run=True)      # a dry run may look
    first.close()
    Actuator(layout, fs=fs, state_dir=tmp_path / "state").close()


def test_revert_failure_keeps_the_entry_for_next_time(tmp_path):
    layout = cgroup_v2_tree(tmp_path, cgroups=("/batch/a",))
    act = Actuator(layout, fs=KernelFS(tmp_path), state_dir=tmp_path / "s",
                   safety=Safety(max_step=None, cooldown=0))
    act.apply(Snapshot.synthetic([]), {"/batch/a": [ActionSet("r", cpu=CpuSpec(max=0.5))]})
    # Someone set a burst the original quota cannot hold... the original is "max": fine;
    # make the restore impossible instead with a bogus journaled original period.
    [key] = act.entries
    act.entries[key].original = "50000 5000000"             # period 5 s: the kernel says no
    assert act.revert_all() == [key]
    assert [e.knob for e in read_entries(tmp_path / "s" / JOURNAL_NAME, quarantine=False)] == ["cpu.max"]
    act.journal.unlock()
