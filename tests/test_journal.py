"""The actions journal: the original is on disk before the knob changes, saves
are atomic and durable, records check themselves so a damaged journal gives
back every intact entry and names the rest, no content stops start-up, one
agent per state directory."""

from __future__ import annotations

import json
import os
import random
import zlib

import pytest

from tagger.actions.actuator import Actuator
from tagger.actions.control import Safety
from tagger.actions.journal import JOURNAL_NAME, Entry, Journal, read_entries, read_journal
from tagger.errors import ConfigError
from tagger.kernelfs import KernelFS
from tagger.rules.spec import ActionSet, CpuSpec, IoSpec
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


def test_saves_are_atomic_fsynced_and_self_checking(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd)))
    j = Journal(tmp_path)
    j.put(Entry("/a", "cpu.max", "max 100000", "50000 100000", "r"))
    # The temporary file, then the directory (so the rename itself is durable).
    assert synced[0].endswith(".tmp") and synced[1] == str(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [JOURNAL_NAME]
    lines = (tmp_path / JOURNAL_NAME).read_text().splitlines()
    assert len(lines) == 2                      # a header, one record per entry
    for line in lines:
        crc, text = line.split(" ", 1)
        assert crc == f"{zlib.crc32(text.encode()):08x}"
    header, record = (json.loads(line.split(" ", 1)[1]) for line in lines)
    assert header["version"] == 2 and header["entries"] == 1
    assert record["original"] == "max 100000" and record["knob"] == "cpu.max"


def test_a_torn_temporary_file_does_not_matter(tmp_path):
    j = Journal(tmp_path)
    j.put(Entry("/a", "cpu.max", "max 100000", "50000 100000", "r"))
    (tmp_path / f".{JOURNAL_NAME}.999.tmp").write_text('{"version": 1, "entr')   # power lost mid-save
    assert [e.original for e in Journal(tmp_path).load().values()] == ["max 100000"]


# --- damaged journals -----------------------------------------------------------------

ENTRIES = [Entry(f"/pods/p{i}", knob, f"orig-{i}", f"value-{i}", "r", since=1.0)
           for i, knob in enumerate(["cpu.max", "cpu.weight", "io.max 254:0", "cpuset.cpus"])]


def _journal_bytes(tmp_path, entries=ENTRIES) -> bytes:
    d = tmp_path / "written"
    j = Journal(d, durable=False)
    for e in entries:
        j.put(Entry(**vars(e)))
    return (d / JOURNAL_NAME).read_bytes()


def _v1_bytes(entries=ENTRIES, version=1) -> bytes:
    doc = {"version": version, "pid": 1, "saved": 1.0, "entries": [vars(e) for e in entries]}
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def _originals(entries):
    return {(e.cgroup, e.knob): e.original for e in entries}


def test_every_truncation_restores_every_complete_record(tmp_path):
    data = _journal_bytes(tmp_path)
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]      # line ends: header, e0, e1, ...
    for cut in range(len(data) + 1):
        (tmp_path / JOURNAL_NAME).write_bytes(data[:cut])
        got = read_journal(tmp_path / JOURNAL_NAME)
        # A record whose JSON survived whole (its newline may be cut) checks out.
        intact = [e for e, end in zip(ENTRIES, ends[1:]) if cut >= end - 1]
        assert _originals(got.entries) == _originals(intact), f"cut at {cut}"
        if cut < len(data) - 1:
            assert got.damaged, f"cut at {cut}: the loss is reported"


def test_a_damaged_record_is_named_and_the_others_restored(tmp_path):
    data = _journal_bytes(tmp_path).split(b"\n")
    # Record 2 (line 3): its original altered, as a bad sector or a stray write would.
    data[2] = data[2].replace(b"orig-1", b"orig-X")
    (tmp_path / JOURNAL_NAME).write_bytes(b"\n".join(data))
    got = read_journal(tmp_path / JOURNAL_NAME)
    assert _originals(got.entries) == _originals([ENTRIES[0], *ENTRIES[2:]])
    [damage] = got.damaged
    assert (damage.line, damage.cgroup, damage.knob) == (3, "/pods/p1", "cpu.weight")
    assert "checksum" in str(damage) and "/pods/p1 cpu.weight" in str(damage)


def test_garbage_between_records_loses_nothing_else(tmp_path):
    data = _journal_bytes(tmp_path).split(b"\n")
    data.insert(2, b"\x00\xff garbage \xfe")
    (tmp_path / JOURNAL_NAME).write_bytes(b"\n".join(data))
    got = read_journal(tmp_path / JOURNAL_NAME)
    assert _originals(got.entries) == _originals(ENTRIES) and len(got.damaged) == 1


def test_unknown_version_records_still_restored(tmp_path):
    lines = _journal_bytes(tmp_path).decode().splitlines()
    header = json.loads(lines[0].split(" ", 1)[1])
    header["version"] = 99
    text = json.dumps(header, sort_keys=True)
    lines[0] = f"{zlib.crc32(text.encode()):08x} {text}"
    (tmp_path / JOURNAL_NAME).write_text("\n".join(lines) + "\n")
    got = read_journal(tmp_path / JOURNAL_NAME)
    assert _originals(got.entries) == _originals(ENTRIES) and not got.damaged


def test_version_1_journal_is_migrated(tmp_path):
    (tmp_path / JOURNAL_NAME).write_bytes(_v1_bytes())
    j = Journal(tmp_path)
    assert _originals(j.load().values()) == _originals(ENTRIES) and not j.damaged
    j.save()
    assert (tmp_path / JOURNAL_NAME).read_text().split(" ", 1)[0] != "{"     # rewritten as v2
    assert _originals(Journal(tmp_path).load().values()) == _originals(ENTRIES)


def test_every_truncation_of_a_version_1_journal_restores_its_complete_entries(tmp_path):
    data = _v1_bytes()
    for cut in range(0, len(data) + 1, 7):
        (tmp_path / JOURNAL_NAME).write_bytes(data[:cut])
        got = read_journal(tmp_path / JOURNAL_NAME)
        # Each complete entry object in what is left comes back.
        want = [e for e in ENTRIES if json.dumps(vars(e), indent=1, sort_keys=True).replace("\n", "\n  ")
                in data[:cut].decode()]
        assert _originals(got.entries) == _originals(want), f"cut at {cut}"


BAD_CONTENTS = {
    "empty": b"",
    "blank": b"\n\n",
    "list": b"[]",
    "null": b"null",
    "number": b"42",
    "string": b'"journal"',
    "object": b"{}",
    "entries null": b'{"version": 1, "entries": null}',
    "entries of null": b'{"version": 1, "entries": [null, 3, "x", {"cgroup": 1}]}',
    "unknown v1 version": _v1_bytes(version=7),
    "garbage": b"\x00\xff\xfe not a journal \x89PNG",
    "not utf-8 record": b"00000000 {\"cgroup\": \"/\xff\"}\n",
    "header only": b"",   # filled below
    "huge line": b"x" * 200_000,
}


@pytest.mark.parametrize("name", sorted(BAD_CONTENTS))
def test_no_journal_content_stops_start_up(tmp_path, name):
    layout = cgroup_v2_tree(tmp_path, cgroups=("/pods/p0",))
    state = tmp_path / "state"
    state.mkdir()
    content = BAD_CONTENTS[name]
    if name == "header only":
        content = _journal_bytes(tmp_path).split(b"\n")[0] + b"\n"
    (state / JOURNAL_NAME).write_bytes(content)
    act = Actuator(layout, fs=KernelFS(tmp_path), state_dir=state)
    expect = _originals(ENTRIES) if name == "unknown v1 version" else {}
    assert _originals(act.entries.values()) == expect
    act.recover()       # the cgroups of the entries are gone: dropped, not a crash
    if name == "header only":
        assert act.journal.damaged          # 4 records announced, none there
    elif name != "unknown v1 version":
        assert act.journal.damaged, "the damage is reported"
    act.close()


def test_random_damage_never_raises_and_never_invents_entries(tmp_path):
    rng = random.Random(13)
    good = _journal_bytes(tmp_path)
    v1 = _v1_bytes()
    known = _originals(ENTRIES)
    for i in range(300):
        source = rng.choice((good, v1))
        data = bytearray(source)
        for _ in range(rng.randint(1, 4)):
            op, at = rng.randrange(3), rng.randrange(len(data))
            if op == 0:
                data[at] = rng.randrange(256)
            elif op == 1:
                del data[at:at + rng.randint(1, 40)]
            else:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        (tmp_path / JOURNAL_NAME).write_bytes(bytes(data))
        got = read_journal(tmp_path / JOURNAL_NAME)
        for e in got.entries:
            # The checksum catches the damage: what comes back is what was written.
            # (Version 1 had no checksums: only its shape is checked.)
            assert known.get((e.cgroup, e.knob)) == e.original or source is v1, (i, e)


def test_actuator_restores_the_intact_entries_of_a_damaged_journal(tmp_path, caplog):
    cgroups = [e.cgroup for e in ENTRIES[:3]]
    layout = cgroup_v2_tree(tmp_path, cgroups=cgroups)
    fs = KernelFS(tmp_path)
    state = tmp_path / "state"
    entries = [Entry("/pods/p0", "cpu.max", "max 100000", "50000 100000", "r"),
               Entry("/pods/p1", "cpu.max", "max 100000", "20000 100000", "r"),
               Entry("/pods/p2", "cpu.weight", "100", "10", "r")]
    for e in entries:       # what a crashed run left in the kernel
        fs.write_text(f"/sys/fs/cgroup{e.cgroup}/{e.knob}", e.value)
    data = _journal_bytes(tmp_path, entries).split(b"\n")
    data[2] = data[2][:-30]     # record of /pods/p1 torn
    state.mkdir()
    (state / JOURNAL_NAME).write_bytes(b"\n".join(data))
    act = Actuator(layout, fs=fs, state_dir=state)
    act.recover(restore=True)
    assert fs.read_text("/sys/fs/cgroup/pods/p0/cpu.max").strip() == "max 100000"
    assert fs.read_text("/sys/fs/cgroup/pods/p2/cpu.weight").strip() == "100"
    assert fs.read_text("/sys/fs/cgroup/pods/p1/cpu.max").strip() == "20000 100000"   # lost: named
    assert "/pods/p1 cpu.max" in caplog.text and "check that knob by hand" in caplog.text
    aside = [n for n in os.listdir(state) if ".damaged." in n]
    assert len(aside) == 1 and (state / aside[0]).read_bytes() == b"\n".join(data)
    act.close()
    assert not (state / JOURNAL_NAME).exists()


def test_tagger_actions_is_told_of_the_damage(tmp_path):
    (tmp_path / JOURNAL_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable journal"):
        read_entries(tmp_path / JOURNAL_NAME, quarantine=False)


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
