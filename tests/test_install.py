"""`make install-system` into a temp tree (PREFIX, TAGGER_HOME, UNITDIR): tagger
on PATH from a venv of its own, the unit's ExecStart pointing at it, and
systemd's own checks of the unit.  Never touches /usr/local, /opt or /etc."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.root, pytest.mark.writable_checkout, pytest.mark.timeout(300)]


def _make(target, tree, *extra):
    return subprocess.run(["make", "-C", str(REPO), target, f"PREFIX={tree}/usr/local",
                           f"TAGGER_HOME={tree}/opt/tagger", f"UNITDIR={tree}/etc/systemd/system",
                           *extra], capture_output=True, text=True, timeout=280)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (make install-system)")
    if not shutil.which("systemd-analyze"):
        pytest.skip("no systemd-analyze")
    tree = tmp_path_factory.mktemp("sysroot")
    r = _make("install-system", tree)
    assert r.returncode == 0, r.stdout + r.stderr
    yield tree
    _make("uninstall-system", tree)
    shutil.rmtree(tree, ignore_errors=True)


def test_tagger_on_path_runs_from_its_own_venv(installed, tmp_path):
    exe = installed / "usr/local/bin/tagger"
    assert os.readlink(exe) == f"{installed}/opt/tagger/bin/tagger"
    # Away from the checkout, with no PYTHONPATH: the installed copy, not the
    # editable one, and its native module is built in.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{installed}/usr/local/bin:/usr/bin:/bin"
    r = subprocess.run(["tagger", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "Usage: tagger" in r.stdout, r.stderr
    py = installed / "opt/tagger/bin/python"
    r = subprocess.run([str(py), "-c", "import tagger.native._native as n, tagger.cli.main as m; "
                        "print(n.__file__); print(m.__file__)"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.split():
        assert line.startswith(f"{installed}/opt/tagger/"), line


def test_unit_points_at_the_install_and_verifies(installed):
    unit = installed / "etc/systemd/system/tagger.service"
    text = unit.read_text()
    assert f"ExecStart={installed}/usr/local/bin/tagger run " in text
    # After a stop the agent could not answer (SIGKILL, a crash), the journal is restored.
    assert f"ExecStopPost=-{installed}/usr/local/bin/tagger actions --restore " in text
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0 and "not executable" not in r.stderr, r.stderr


def test_unit_security_exposure_below_issue_17_baseline():
    if not shutil.which("systemd-analyze"):
        pytest.skip("no systemd-analyze")
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                        str(REPO / "deploy/tagger.service")], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for tagger.service: ([0-9.]+)", r.stdout)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline not supported here: {r.stderr.strip()}")
    assert float(m.group(1)) < 5.2, r.stdout


def test_uninstall_removes_what_install_put(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    r = _make("install-system", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _make("uninstall-system", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    left = [p for p in tmp_path.rglob("*") if not p.is_dir()]
    assert left == []


def test_man_pages_cover_every_command(tmp_path):
    """tools/gen_man.py resolves the lazy command group: a page per command and
    subcommand, each with that command's options (click-man alone finds none)."""
    pytest.importorskip("click_man")
    from tagger.cli.main import COMMANDS
    r = subprocess.run([sys.executable, str(REPO / "tools/gen_man.py"), str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    pages = {p.name for p in tmp_path.glob("*.1")}
    assert {"tagger.1", "tagger-rules-check.1", "tagger-rules-test.1"} <= pages
    assert {f"tagger-{name}.1" for name in COMMANDS} <= pages
    assert "--duration" in (tmp_path / "tagger-record.1").read_text()
    committed = {p.name for p in (REPO / "docs/man").glob("*.1")}
    assert committed == pages, "docs/man is stale: run `make man`"


def test_every_package_is_installed():
    """Each package directory under tagger/ (and cli/) is in pyproject's
    ``packages``: a package missing there is left out of a real install, which
    the editable one in the checkout never shows."""
    import tomllib
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "tagger").rglob("__init__.py")
             if "__pycache__" not in p.parts}
    found |= {"tagger." + ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "cli").rglob("__init__.py")}
    assert found - listed == set()
