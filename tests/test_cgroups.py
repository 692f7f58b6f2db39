"""Cgroup layout (fixture trees for v1, v2, hybrid; the real machine for real),
display names from a table of real-looking paths, and the registry."""

from __future__ import annotations

import os

import pytest

from tagger import errors
from tagger.cgroups import Layout, Registry, describe, normalize
from tagger.kernelfs import HOST, KernelFS

# --- fixture trees ----------------------------------------------------------------

MOUNTS_V2 = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
"""

MOUNTS_V1 = """\
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/blkio cgroup rw,nosuid,nodev,noexec,relatime,blkio 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
"""

# The development machines: v2 at .../unified holding no cpu/io controller.
MOUNTS_HYBRID = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/blkio cgroup rw,relatime,blkio 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


def make_tree(tmp_path, mounts, v2_root=None, controllers="", dirs=()):
    """A fake kernel tree: /proc/self/mounts, the v2 root's cgroup.controllers, dirs."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mounts").write_text(mounts)
    if v2_root:
        root = tmp_path / v2_root.lstrip("/")
        root.mkdir(parents=True)
        (root / "cgroup.controllers").write_text(controllers + "\n")
    for d in dirs:
        (tmp_path / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return KernelFS(tmp_path)


def test_layout_v2(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_V2, "/sys/fs/cgroup", "cpuset cpu io memory hugetlb pids")
    layout = Layout.detect(fs)
    assert layout.kind == "v2"
    assert layout.v2_root == "/sys/fs/cgroup"
    assert layout.controller_version("cpu") == 2
    assert layout.controller_version("io") == 2
    assert layout.controller_version("blkio") == 2      # same controller, v1 name
    assert layout.controller_version("cpuacct") is None
    assert layout.controller_dir("cpu", "/kubepods/burstable") == "/sys/fs/cgroup/kubepods/burstable"
    assert layout.controller_dir("cpu", "/") == "/sys/fs/cgroup"
    assert layout.v2_dir("a/b/") == "/sys/fs/cgroup/a/b"


def test_layout_v2_without_cpu_controller(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_V2, "/sys/fs/cgroup", "memory pids")
    layout = Layout.detect(fs)
    assert layout.controller_version("cpu") is None
    with pytest.raises(errors.NotFound, match="'cpu' is not available"):
        layout.controller_dir("cpu", "/a")


def test_layout_v1(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_V1)
    layout = Layout.detect(fs)
    assert layout.kind == "v1"
    assert layout.v2_root is None
    assert layout.controller_version("cpu") == 1
    assert layout.controller_version("cpuacct") == 1
    assert layout.controller_version("io") == 1           # blkio on v1
    assert layout.controller_version("pids") is None
    assert layout.controller_dir("cpu", "/a") == "/sys/fs/cgroup/cpu,cpuacct/a"
    assert layout.controller_dir("io", "/a") == "/sys/fs/cgroup/blkio/a"
    assert layout.v1_roots["name=systemd"] == "/sys/fs/cgroup/systemd"
    assert layout.walk_root == "/sys/fs/cgroup/cpu,cpuacct"
    with pytest.raises(errors.NotFound, match="v1-only"):
        layout.v2_dir("/a")


def test_layout_hybrid(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_HYBRID, "/sys/fs/cgroup/unified", "")
    layout = Layout.detect(fs)
    assert layout.kind == "hybrid"
    assert layout.v2_root == "/sys/fs/cgroup/unified"
    assert layout.v2_controllers == frozenset()
    assert layout.controller_version("cpu") == 1
    assert layout.controller_version("io") == 1
    assert layout.controller_version("pids") is None
    assert layout.controller_dir("cpu", "/x/y") == "/sys/fs/cgroup/cpu/x/y"
    assert layout.controller_dir("cpuacct", "/x/y") == "/sys/fs/cgroup/cpuacct/x/y"
    assert layout.controller_dir("blkio", "/x") == "/sys/fs/cgroup/blkio/x"
    assert layout.v2_dir("/x/y") == "/sys/fs/cgroup/unified/x/y"
    assert layout.walk_root == "/sys/fs/cgroup/unified"


def test_layout_escaped_mount_point(tmp_path):
    fs = make_tree(tmp_path, "cgroup2 /mnt/my\\040cgroups cgroup2 rw 0 0\n", "/mnt/my cgroups", "cpu")
    assert Layout.detect(fs).v2_root == "/mnt/my cgroups"


def test_layout_no_cgroups(tmp_path):
    fs = make_tree(tmp_path, "proc /proc proc rw 0 0\n")
    with pytest.raises(errors.NotFound, match="no cgroup hierarchy"):
        Layout.detect(fs)


@pytest.mark.skipif(not os.path.exists("/proc/self/mounts"), reason="needs /proc")
def test_layout_real_machine():
    """This machine is hybrid: cpu on v1, ids from v2 (skipped elsewhere if not)."""
    layout = Layout.detect(HOST)
    assert layout.kind in ("v1", "v2", "hybrid")
    if layout.kind != "hybrid":
        pytest.skip(f"this host is {layout.kind}, not the hybrid development machine")
    assert layout.controller_version("cpu") == 1
    assert os.path.isdir(layout.controller_dir("cpu", "/"))
    assert os.path.isfile(layout.controller_dir("cpu", "/") + "/cpu.cfs_quota_us")
    assert os.path.isfile(layout.v2_dir("/") + "/cgroup.controllers")
    assert os.stat(layout.v2_dir("/")).st_ino == 1          # the v2 root's id


# --- display names -------------------------------------------------------------------

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UID_ = UID.replace("-", "_")
CID = "4c01db0b339c" + "a" * 52
CID2 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

NAMES = [
    # path, display name, labels
    ("/", "/", {}),
    ("/system.slice/nginx.service", "nginx.service",
     {"kind": "unit", "unit": "nginx.service", "slice": "system.slice"}),
    ("/system.slice", "system.slice", {"kind": "slice", "unit": "system.slice"}),
    ("/system.slice/system-getty.slice/getty@tty1.service", "getty@tty1.service",
     {"kind": "unit", "unit": "getty@tty1.service", "slice": "system-getty.slice"}),
    ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope",
     {"kind": "unit", "unit": "session-3.scope", "slice": "user-1000.slice", "uid": "1000"}),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service", "foo.service",
     {"kind": "unit", "unit": "foo.service", "slice": "app.slice", "uid": "1000"}),
    ("/system.slice/postgresql.service/worker", "postgresql.service/worker",
     {"kind": "unit", "unit": "postgresql.service", "slice": "system.slice"}),
    # Kubernetes, cgroupfs driver
    ("/kubepods", "kubepods", {"kind": "kubepods"}),
    ("/kubepods/burstable", "kubepods-burstable", {"kind": "qos", "qos": "burstable"}),
    (f"/kubepods/burstable/pod{UID}", f"pod/{UID}",
     {"kind": "pod", "qos": "burstable", "pod_uid": UID}),
    (f"/kubepods/burstable/pod{UID}/{CID}", f"pod/{UID}/{CID[:12]}",
     {"kind": "container", "qos": "burstable", "pod_uid": UID, "container_id": CID}),
    (f"/kubepods/besteffort/pod{UID}/{CID}", f"pod/{UID}/{CID[:12]}",
     {"kind": "container", "qos": "besteffort", "pod_uid": UID, "container_id": CID}),
    (f"/kubepods/pod{UID}/{CID}", f"pod/{UID}/{CID[:12]}",
     {"kind": "container", "qos": "guaranteed", "pod_uid": UID, "container_id": CID}),
    (f"/kubepods/burstable/pod{UID}/crio-{CID}", f"pod/{UID}/{CID[:12]}",
     {"kind": "container", "qos": "burstable", "pod_uid": UID, "container_id": CID, "runtime": "crio"}),
    # Kubernetes, systemd driver
    ("/kubepods.slice/kubepods-burstable.slice", "kubepods-burstable", {"kind": "qos", "qos": "burstable"}),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice", f"pod/{UID}",
     {"kind": "pod", "qos": "burstable", "pod_uid": UID}),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
     f"pod/{UID}/{CID[:12]}",
     {"kind": "container", "qos": "burstable", "pod_uid": UID, "container_id": CID, "runtime": "containerd"}),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope",
     f"pod/{UID}/{CID[:12]}",
     {"kind": "container", "qos": "besteffort", "pod_uid": UID, "container_id": CID, "runtime": "crio"}),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope", f"pod/{UID}/{CID[:12]}",
     {"kind": "container", "qos": "guaranteed", "pod_uid": UID, "container_id": CID, "runtime": "docker"}),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope", f"pod/{UID}/{CID[:12]}",
     {"kind": "container", "qos": "guaranteed", "pod_uid": UID, "container_id": CID, "runtime": "crio-conmon"}),
    # kind / nested: kubepods under another container's cgroup
    (f"/docker/{CID2}/kubelet.slice/kubelet-kubepods.slice", "kubelet-kubepods.slice",
     {"kind": "slice", "unit": "kubelet-kubepods.slice", "slice": "kubelet.slice"}),
    (f"/kubelet/kubepods/burstable/pod{UID}/{CID}", f"pod/{UID}/{CID[:12]}",
     {"kind": "container", "qos": "burstable", "pod_uid": UID, "container_id": CID}),
    # docker / containerd / podman outside Kubernetes
    (f"/docker/{CID2}", f"docker-{CID2[:12]}", {"kind": "container", "container_id": CID2, "runtime": "docker"}),
    (f"/system.slice/docker-{CID2}.scope", f"docker-{CID2[:12]}",
     {"kind": "container", "container_id": CID2, "runtime": "docker"}),
    (f"/system.slice/containerd-{CID2}.scope", f"containerd-{CID2[:12]}",
     {"kind": "container", "container_id": CID2, "runtime": "containerd"}),
    (f"/default/{CID2}", CID2[:12], {"kind": "container", "container_id": CID2}),
    (f"/machine.slice/libpod-{CID2}.scope", f"podman-{CID2[:12]}",
     {"kind": "container", "container_id": CID2, "runtime": "podman"}),
    (f"/system.slice/docker-{CID2}.scope/init", f"docker-{CID2[:12]}/init",
     {"kind": "container", "container_id": CID2, "runtime": "docker"}),
    # plain paths
    ("/tagger-test-1/w", "w", {}),
    ("/docker", "docker", {}),
    ("/system.slice/docker-notanid.scope", "docker-notanid.scope",
     {"kind": "unit", "unit": "docker-notanid.scope", "slice": "system.slice"}),
]


@pytest.mark.parametrize("path,name,labels", NAMES, ids=[n[0][:60] for n in NAMES])
def test_describe(path, name, labels):
    assert describe(path) == (name, labels)


def test_describe_with_pod_names():
    pods = {UID: ("shop", "checkout-7d9f")}.get
    name, labels = describe(f"/kubepods/burstable/pod{UID}/{CID}", pod_names=pods)
    assert name == f"shop/checkout-7d9f/{CID[:12]}"
    assert labels["namespace"] == "shop" and labels["pod"] == "checkout-7d9f"
    assert describe(f"/kubepods/pod{UID}", pod_names=pods)[0] == "shop/checkout-7d9f"


def test_describe_returns_unshared_labels():
    describe("/system.slice/a.service")[1]["unit"] = "changed"
    assert describe("/system.slice/a.service")[1]["unit"] == "a.service"


def test_normalize():
    assert normalize("") == "/"
    assert normalize("a//b/") == "/a/b"
    with pytest.raises(ValueError):
        normalize("/a/../b")


# --- the registry on a fixture tree -------------------------------------------------

def test_registry_scan_and_refresh(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_HYBRID, "/sys/fs/cgroup/unified", "",
                   dirs=["/sys/fs/cgroup/unified/system.slice/nginx.service",
                         "/sys/fs/cgroup/unified/user.slice"])
    root = tmp_path / "sys/fs/cgroup/unified"
    reg = Registry(Layout.detect(fs))
    change = reg.scan()
    assert reg.paths() == ["/", "/system.slice", "/system.slice/nginx.service", "/user.slice"]
    assert change.added == set(reg.paths()) and not change.removed
    nginx = reg.id_of("/system.slice/nginx.service")
    assert nginx == os.stat(root / "system.slice/nginx.service").st_ino
    assert reg.path_of(nginx) == "/system.slice/nginx.service"
    assert reg.describe("/system.slice/nginx.service")[0] == "nginx.service"

    (root / "system.slice/nginx.service").rmdir()
    (root / "kubepods").mkdir()
    change = reg.scan()
    assert change.added == {"/kubepods"}
    assert change.removed == {"/system.slice/nginx.service"}
    assert reg.path_of(nginx) != "/system.slice/nginx.service"   # tmpfs may reuse the inode
    assert reg.id_of("/system.slice/nginx.service") is None

    table = reg.table()
    assert table.paths == reg.paths()
    assert table.names[table.index("/kubepods")] == "kubepods"
    assert int(table.ids[table.index("/kubepods")]) == reg.id_of("/kubepods")


def test_registry_dir_vanishing_mid_walk(tmp_path, monkeypatch):
    fs = make_tree(tmp_path, MOUNTS_V2, "/sys/fs/cgroup", "cpu",
                   dirs=["/sys/fs/cgroup/a/b", "/sys/fs/cgroup/c"])
    reg = Registry(Layout.detect(fs))
    real_scandir = os.scandir

    def racy_scandir(path):
        if str(path).endswith("/a"):
            raise FileNotFoundError(2, "gone", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", racy_scandir)
    reg.scan()
    assert "/a" in reg and "/a/b" not in reg and "/c" in reg


def test_registry_v1_only_has_no_ids(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_V1, dirs=["/sys/fs/cgroup/cpu,cpuacct/docker/x"])
    reg = Registry(Layout.detect(fs))
    reg.scan()
    assert reg.paths() == ["/", "/docker", "/docker/x"]
    assert reg.id_of("/docker/x") == 0
    assert not reg.has_ids


def test_registry_bpf_events(tmp_path):
    fs = make_tree(tmp_path, MOUNTS_V2, "/sys/fs/cgroup", "cpu")
    reg = Registry(Layout.detect(fs))
    reg.scan()
    reg.add(4242, "/new.slice/x.service")
    assert reg.path_of(4242) == "/new.slice/x.service"
    reg.remove(cgid=4242)
    assert reg.path_of(4242) is None and "/new.slice/x.service" not in reg


# --- the real machine ---------------------------------------------------------------

@pytest.mark.root
def test_registry_real_ids(make_cgroup):
    """The id the registry gives is the v2 directory's inode (what BPF sees),
    and the same relative path names the cgroup in the v1 cpu hierarchy."""
    layout = Layout.detect(HOST)
    cg = make_cgroup("reg", controllers=("cpu",) if layout.controller_version("cpu") == 1 else ())
    reg = Registry(layout)
    change = reg.scan()
    assert cg.path in change.added
    assert reg.id_of(cg.path) == cg.id
    assert reg.path_of(cg.id) == cg.path
    assert layout.controller_dir("cpu", cg.path) == str(cg.dir("cpu") if "cpu" in cg.dirs else cg.v2)
    child = cg.v2 / "child"
    child.mkdir()
    try:
        # Other tests on this host make cgroups too: look only at ours.
        assert cg.path + "/child" in reg.scan().added
        assert reg.path_of(os.stat(child).st_ino) == cg.path + "/child"
    finally:
        child.rmdir()
    assert cg.path + "/child" in reg.scan().removed


def test_registry_v1_ids_for_blkio(tmp_path):
    """Hybrid: a bio's blkcg is a v1 blkio cgroup; its id maps back to the same path."""
    fs = make_tree(tmp_path, MOUNTS_HYBRID, "/sys/fs/cgroup/unified", "",
                   dirs=["/sys/fs/cgroup/unified/a/b", "/sys/fs/cgroup/blkio/a/b", "/sys/fs/cgroup/cpu/a"])
    layout = Layout.detect(fs)
    reg = Registry(layout, v1_ids=("io",))
    reg.scan()
    blk = os.stat(tmp_path / "sys/fs/cgroup/blkio/a/b").st_ino
    assert reg.path_of(blk, controller="io") == "/a/b"
    assert reg.path_of(blk, controller="blkio") == "/a/b"
    assert reg.id_of("/a/b", controller="io") == blk
    assert reg.id_of("/a/b") == os.stat(tmp_path / "sys/fs/cgroup/unified/a/b").st_ino
    with pytest.raises(KeyError, match="v1_ids"):
        reg.path_of(1, controller="cpu")


@pytest.mark.root
@pytest.mark.cgroup_v1
def test_registry_real_blkio_ids(make_cgroup):
    layout = Layout.detect(HOST)
    if layout.controller_version("io") != 1:
        pytest.skip("the io controller is not on v1 here")
    cg = make_cgroup("blk", controllers=("blkio",))
    reg = Registry(layout, v1_ids=("io",))
    reg.scan()
    ino = os.stat(cg.dir("blkio")).st_ino
    assert reg.path_of(ino, controller="io") == cg.path
    assert reg.path_of(cg.id) == cg.path

