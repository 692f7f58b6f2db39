"""tagger stat: the table and JSON on synthetic snapshots, and one real run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from tagger.cli import stat as stat_cmd
from tagger.cli.main import cli
from tagger.snapshot import Snapshot
from tests.bpf_helpers import BUSY_LOOP, require_bpf


def _snap():
    return Snapshot.synthetic(
        ["/", "/system.slice/a.service", "/idle", "/kubepods/podx/c1"],
        {"cpu.usage": [0.1, 0.9, 0.0, 0.4], "runq.wait": [0.0, 0.2, 0.0, 0.0],
         "io.ops": [0, 0, 0, 10], "runq.p99": [np.nan, 0.002, np.nan, 0.0001]})


def test_select_drops_idle_sorts_and_filters():
    snap = _snap()
    rows = stat_cmd._select(snap, None, show_all=False, sort="cpu", limit=None)
    assert [snap.cgroups.paths[i] for i in rows] == ["/system.slice/a.service", "/kubepods/podx/c1", "/"]
    rows = stat_cmd._select(snap, None, show_all=True, sort="name", limit=2)
    assert [snap.cgroups.paths[i] for i in rows] == ["/", "/idle"]
    pattern = stat_cmd._compile_globs(["/kubepods/**"])
    rows = stat_cmd._select(snap, pattern, show_all=True, sort="cpu", limit=None)
    assert [snap.cgroups.paths[i] for i in rows] == ["/kubepods/podx/c1"]


def test_json_report_has_nulls_for_unknowable_figures():
    snap = _snap()
    report = stat_cmd._as_json(snap, np.array([0, 1]))
    text = json.dumps(report, allow_nan=False)          # NaN would be invalid JSON
    rows = json.loads(text)["cgroups"]
    assert rows[0]["runq.p99"] is None
    assert rows[1]["runq.p99"] == pytest.approx(0.002)


def test_wait_percent_is_the_same_figure_in_stat_and_top():
    """Issue 17: WAIT% was runq.wait in % of one CPU in stat (164.7 for a
    cgroup whose threads waited 1.647 s per second) and wait / (wait + run) in
    top (79%).  One definition now: the share of runnable time spent waiting."""
    from tagger.cli.top.model import Frame, Rows

    snap = Snapshot.synthetic(["/a", "/b", "/idle"], {"cpu.usage": [0.437, 1.0, 0.0],
                                                      "runq.wait": [1.647, 0.0, 0.0]})
    table = stat_cmd.COLUMNS
    col = [h for h, _, _, _ in table].index("WAIT%")
    stat_wait = stat_cmd._column(snap, table[col][1])
    top_wait = Rows(Frame.build(snap)).values["wait"]
    np.testing.assert_allclose(stat_wait, top_wait, equal_nan=True)
    assert table[col][2](float(stat_wait[0])) == "79.0"
    assert math.isnan(stat_wait[2])                          # idle: unknown, printed "-"
    report = stat_cmd._as_json(snap, np.array([0]))["cgroups"][0]
    assert report["runq.wait_share"] == pytest.approx(0.790, abs=1e-3)
    assert report["runq.wait"] == pytest.approx(1.647)
    rows = stat_cmd._select(snap, None, show_all=True, sort="wait", limit=None)
    assert [snap.cgroups.paths[i] for i in rows][:2] == ["/a", "/b"]


def test_bad_arguments_are_usage_errors():
    runner = CliRunner()
    assert runner.invoke(cli, ["stat", "--interval", "fast"]).exit_code == 2
    result = runner.invoke(cli, ["stat", "--cgroup", "relative/path", "-c", "1"])
    assert result.exit_code == 2 and 'must start with "/"' in result.output


@pytest.mark.bpf
def test_stat_reports_a_busy_cgroup(make_cgroup):
    require_bpf()
    cg = make_cgroup("stat")
    cg.spawn(BUSY_LOOP)
    out = subprocess.run([sys.executable, "-m", "tagger.cli.main", "stat", "-i", "1s", "-c", "2", "--json",
                          "--cgroup", cg.path], capture_output=True, text=True, timeout=60, check=True)
    reports = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(reports) == 2 and reports[-1]["source"] == "bpf"
    assert abs(reports[-1]["t"] - time.time()) < 60          # epoch seconds, like every JSON output
    row = reports[-1]["cgroups"][0]
    assert row["path"] == cg.path
    assert 0.02 < row["cpu.usage"] <= 1.02                 # it ran, and one loop is one CPU at most
