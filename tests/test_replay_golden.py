"""A trace recorded on this host before the rooms were rearranged (issue 14,
at 5a2ac7e: three CPU loops and a sleeper in cgroups over 45 s) must replay to
the same tag timeline, byte for byte, after any change that claims to keep
behaviour.  Regenerate the expected files only for a change meant to alter tags:

    tagger replay host-6.18.trace > host-6.18.replay.txt   (and --json > .replay.jsonl)
"""
import gzip
import pathlib

import pytest
from click.testing import CliRunner

from tagger.cli.trace import replay

GOLDEN = pathlib.Path(__file__).parent / "fixtures" / "golden"
RECORDED_AS = "/work/scratch-me/i14/before.trace"     # the path in the text header


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("golden") / "host-6.18.trace"
    path.write_bytes(gzip.decompress((GOLDEN / "host-6.18.trace.gz").read_bytes()))
    return path


def test_text_timeline_is_unchanged(trace):
    res = CliRunner().invoke(replay, [str(trace)])
    assert res.exit_code == 0, res.output
    expected = (GOLDEN / "host-6.18.replay.txt").read_bytes().replace(RECORDED_AS.encode(), str(trace).encode())
    assert res.stdout_bytes == expected


def test_json_timeline_is_unchanged(trace):
    res = CliRunner().invoke(replay, [str(trace), "--json"])
    assert res.exit_code == 0, res.output
    expected = (GOLDEN / "host-6.18.replay.jsonl").read_bytes()
    assert res.stdout_bytes == expected
    assert expected.count(b'"type": "event"') == 11       # the story is in it, not an empty run
