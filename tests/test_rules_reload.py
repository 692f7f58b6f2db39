"""A rules reload waits until the directory has been still for the settle time
(issue 13, item 9): a file written in pieces is never loaded half-written; an
atomic rename is picked up once settled.  Counted in polls and ticks, not timed."""

from __future__ import annotations

import os
import threading

from tagger.rules import load_directory
from tagger.rules.watch import RulesWatcher
from tests.cgroup_fixture import wait_for
from tests.test_daemon import Running
from tests.test_daemon import make_rules_dir as _rules_dir

RULE = """  - name: r{i}
    match: {{cgroup: "/r{i}/**"}}
    tags: {{piece: p{i}}}
"""
PIECES = ["rules:\n"] + [RULE.format(i=i) for i in range(6)]


class PollClock:
    """A clock that one watcher poll moves on by one second: settle=3 means
    three polls that see the same directory."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_watcher_loads_only_after_settle_polls_of_a_still_directory(tmp_path):
    d = _rules_dir(tmp_path)
    clock = PollClock()
    watch = RulesWatcher(str(d), settle=3, clock=clock)

    def poll():
        clock.t += 1
        return watch.poll()

    assert poll() is None                       # nothing changed
    f = d / "20-new.yaml"
    with open(f, "w") as out:                   # a real writer, one piece per poll
        for piece in PIECES:
            out.write(piece)
            out.flush()
            assert poll() is None, "a file still being written was due to load"
    # once still: exactly settle polls later, not before
    due = [poll() for _ in range(4)]
    assert [bool(x) for x in due] == [False, False, True, True]
    sig = due[-1]
    assert watch.unchanged_since(sig)
    assert len(load_directory(d).rules) == 2 + len(PIECES) - 1
    watch.loaded(sig)
    assert poll() is None                       # in force: nothing to do

    f.write_text(f.read_text() + "# touched\n")  # a change under a load is noticed
    assert not watch.unchanged_since(sig)


def test_a_change_mid_settle_restarts_the_wait(tmp_path):
    d = _rules_dir(tmp_path)
    clock = PollClock()
    watch = RulesWatcher(str(d), settle=3, clock=clock)
    (d / "20-a.yaml").write_text("".join(PIECES[:2]))
    polls = 0
    for extra in ("", PIECES[2], PIECES[3]):
        if extra:
            with open(d / "20-a.yaml", "a") as out:
                out.write(extra)
        for _ in range(2):                      # two still polls, then another piece
            clock.t += 1
            polls += 1
            assert watch.poll() is None
    # the last piece was first seen 2 polls ago: one more poll is still short of settle=3
    clock.t += 1
    assert watch.poll() is None
    clock.t += 1
    assert watch.poll() is not None             # 3 polls after the last piece was seen
    assert watch.deferred == polls + 1


def test_daemon_never_loads_a_half_written_file(tmp_path):
    """The real daemon ticking every 50ms, settle 2s; a writer appends one rule
    at a time and waits for two ticks between pieces (each part-file is valid
    YAML that would load).  Only the whole file is ever loaded, once."""
    d = _rules_dir(tmp_path)
    with Running(tmp_path, d, {"/r0": 0.1}, rules_settle=2.0) as run:
        daemon = run.daemon
        loaded_sizes = []
        original = daemon.engine.replace_rules

        def recording(ruleset):
            loaded_sizes.append(len(ruleset.rules))
            return original(ruleset)

        daemon.engine.replace_rules = recording
        seen_partial = []

        def writer():
            with open(d / "20-pieces.yaml", "w") as out:
                for piece in PIECES:
                    out.write(piece)
                    out.flush()
                    ticks = daemon.cost.ticks
                    wait_for(lambda: daemon.cost.ticks >= ticks + 2, timeout=10, what="two ticks")
                    seen_partial.append(daemon.reloads)

        t = threading.Thread(target=writer)
        t.start()
        t.join(timeout=60)
        assert not t.is_alive()
        assert seen_partial == [0] * len(PIECES), "a part-written file was loaded"
        assert daemon.rules_watch.deferred >= len(PIECES)   # the watcher saw each piece
        wait_for(lambda: daemon.reloads >= 1, timeout=15, what="settled reload")
        assert loaded_sizes == [2 + len(PIECES) - 1]
        assert daemon.reload_failures == 0

        # The documented way: write elsewhere, rename into place.
        deferred = daemon.rules_watch.deferred
        tmp = d / ".30-renamed.yaml.tmp"
        tmp.write_text("rules:\n  - {name: renamed, match: {cgroup: '/x/**'}, tags: {k: v}}\n")
        os.chmod(tmp, 0o644)
        os.rename(tmp, d / "30-renamed.yaml")
        wait_for(lambda: daemon.reloads >= 2, timeout=15, what="reload after the rename")
        assert daemon.rules_watch.deferred > deferred      # waited for the settle time first
        assert loaded_sizes[-1] == 2 + len(PIECES) - 1 + 1
        assert "renamed" in [r.name for r in daemon.ruleset.rules]
        assert daemon.reloads == 2


def test_settle_time_is_a_config_duration(tmp_path):
    from tagger.agent.config import read_config_file
    cfg = tmp_path / "tagger.yaml"
    cfg.write_text("rules-settle: 2500ms\n")
    assert read_config_file(str(cfg)) == {"rules_settle": 2.5}
