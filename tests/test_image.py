"""`make image` (issue 17): the OCI image built from a debootstrap root and the
project's wheel, checked the only way these machines allow (crun's setrlimit is
refused, so no container runs): mounted with `podman image mount` and entered
with chroot over the host's /sys, /proc and /dev (deploy/image/check.sh).
The bar: `tagger doctor` from the image's root reports BPF telemetry available.

Builds in the checkout (.image/, podman's storage) and fetches Debian packages
and wheels: the host only, not the kernel VMs.  A cold build takes about 3
minutes, a warm one (the Debian root and the dependencies cached) 15 s."""
import json
import os
import re
import signal
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.cgroup_fixture import wait_for

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "deploy/image/check.sh"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"localhost/tagger:{VERSION}"
SITE = "/opt/tagger/lib/python3.11/site-packages"

pytestmark = [pytest.mark.root, pytest.mark.writable_checkout, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def image():
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, podman, chroot)")
    r = subprocess.run(["make", "-C", str(REPO), "image"], capture_output=True, text=True, timeout=880)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"image: built {IMAGE}" in r.stdout, r.stdout
    return IMAGE


def in_image(*args, check_args=(), timeout=120):
    return subprocess.run([str(CHECK), *check_args, IMAGE, *args], capture_output=True, text=True,
                          timeout=timeout)


def image_mounted() -> bool:
    r = subprocess.run(["podman", "image", "mount"], capture_output=True, text=True, check=True)
    return any(line.split()[:1] == [IMAGE] for line in r.stdout.splitlines())


def podman_mounts() -> list[str]:
    """This namespace's mounts in podman's storage (the image's, and anything
    bind-mounted under it); other mounts on a shared host are not ours to count."""
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith("/var/lib/containers/")]


def test_doctor_from_the_image_reports_bpf(image):
    r = in_image("doctor", "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["exit_status"] == 0, r.stdout + r.stderr
    assert report["verdict"] == "tagger can run with BPF"
    checks = {c["name"]: c for c in report["checks"]}
    # Not only the probes: tagger's own programs, from the skeleton embedded in
    # the image's extension, loaded through the image's libbpf.
    assert checks["tagger BPF programs"]["ok"] is True, checks["tagger BPF programs"]
    assert checks["BTF"]["ok"] is True and checks["cgroup layout"]["ok"] is True


def test_stat_from_the_image_reads_the_kernel_through_bpf(image):
    """Beyond doctor's probes: the image's collector runs for a tick and counts
    the host's scheduler events (this test's own process switches at least)."""
    r = in_image("stat", "-i", "1s", "-c", "1", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.splitlines()[0])
    assert report["source"] == "bpf", report
    assert report["node"]["events"] > 0 and report["node"]["cpu.usage"] > 0, report["node"]


def test_the_image_runs_its_own_python_and_this_checkouts_tagger(image):
    r = in_image("/opt/tagger/bin/python", "-c",
                 "import sys, tagger, tagger.native._native as n; "
                 "print(sys.version.split()[0]); print(n.__file__); print(tagger.__version__)",
                 check_args=["--exec"])
    assert r.returncode == 0, r.stderr
    py, native, version = r.stdout.split()
    root_py = in_image("/usr/bin/python3", "-V", check_args=["--exec"]).stdout.split()[-1]
    assert py == root_py and py.startswith("3.11."), (py, root_py)   # Debian's, not the host venv's
    assert native.startswith(f"{SITE}/tagger/native/_native.") and native.endswith(".so")
    assert version == VERSION
    r = in_image("cat", f"{SITE}/tagger/doctor.py", check_args=["--exec"])
    assert r.stdout == (REPO / "tagger/doctor.py").read_text()


def test_image_config_and_what_it_leaves_out(image):
    r = subprocess.run(["podman", "image", "inspect", IMAGE], capture_output=True, text=True, check=True)
    config = json.loads(r.stdout)[0]["Config"]
    assert config["Entrypoint"] == ["/opt/tagger/bin/tagger"] and config["Cmd"] == ["run"]
    assert config["Labels"]["org.opencontainers.image.version"] == VERSION
    r = in_image("/bin/sh", "-c",
                 "for t in cc gcc clang pip pip3; do command -v $t; done; "
                 "find /var/lib/apt/lists /usr/share/doc /usr/share/man /tmp -mindepth 1; "
                 "ls -d /opt/tagger/lib/python3.11/site-packages/numpy/*/tests 2>/dev/null; true",
                 check_args=["--exec"])
    assert r.returncode == 0 and r.stdout.split() == [], r.stdout
    size = json.loads(subprocess.run(["podman", "image", "inspect", IMAGE], capture_output=True,
                                     text=True, check=True).stdout)[0]["Size"]
    print(f"{IMAGE}: {size / 1e6:.0f} MB")


def test_check_unmounts_when_the_command_fails(image):
    before = podman_mounts()
    r = in_image("/bin/sh", "-c", "exit 3", check_args=["--exec"])
    assert r.returncode == 3, r.stderr
    assert not image_mounted()
    assert podman_mounts() == before


def test_check_unmounts_when_stopped_by_a_signal(image):
    before = podman_mounts()
    proc = subprocess.Popen([str(CHECK), "--exec", IMAGE, "sleep", "300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(image_mounted, timeout=60, interval=0.2, what=f"podman image mount {IMAGE}")
        # The bind mounts are in the command's own mount namespace, never here.
        assert not [m for m in podman_mounts() if re.search(r"/merged/(sys|proc|dev)", m)]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 128 + signal.SIGTERM
    assert not image_mounted()
    assert podman_mounts() == before


def test_check_refuses_an_image_that_does_not_exist(image):
    r = subprocess.run([str(CHECK), "localhost/tagger:no-such-version"], capture_output=True, text=True)
    assert r.returncode == 1 and "make image builds it" in r.stderr
