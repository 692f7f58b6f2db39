"""A fixture Kubernetes node: pods of every QoS class with their containers and
sandboxes, as the kubelet lays out their logs and as each kubelet cgroup driver
(cgroupfs, systemd) and container runtime names their cgroups.

No kubelet runs on these machines, so the layouts are written from the
kubelet's and the runtimes' sources:

* logs (pkg/kubelet/kuberuntime): ``pods/<namespace>_<pod>_<uid>/<container>/<restart>.log``
  and the symlink ``containers/<pod>_<namespace>_<container>-<id>.log`` to it;
  the sandbox has no log.
* cgroupfs driver (pkg/kubelet/cm): ``/kubepods[/burstable|/besteffort]/pod<uid>/<id>``
  (CRI-O: ``crio-<id>``).
* systemd driver: ``/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid, - as _>.slice/``
  ``<runtime>-<id>.scope`` (containerd ``cri-containerd-``, CRI-O ``crio-`` and
  its monitor ``crio-conmon-``, Docker ``docker-``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

DRIVERS = ("cgroupfs", "systemd")
RUNTIMES = ("containerd", "crio", "docker")


def _cid(*what: str) -> str:
    return hashlib.sha256("/".join(what).encode()).hexdigest()


@dataclass
class Pod:
    namespace: str
    name: str
    uid: str
    qos: str                                   # guaranteed, burstable, besteffort
    containers: list[str]
    ids: dict[str, str] = field(default_factory=dict)   # container name -> id

    def __post_init__(self):
        self.ids = {c: _cid(self.uid, c) for c in self.containers}
        self.sandbox = _cid(self.uid, "sandbox")


PODS = [
    Pod("shop", "checkout-7d9f5c-x2b7q", "8f1d4c2e-5a3b-4c6d-9e8f-0a1b2c3d4e5f", "guaranteed", ["app", "envoy"]),
    # A static pod: its uid is the manifest's md5, no dashes (pkg/kubelet/config).
    Pod("kube-system", "etcd-node-1", "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "guaranteed", ["etcd"]),
    Pod("shop", "cart-0", "1b2c3d4e-0000-4111-8222-333344445555", "burstable", ["cart"]),
    Pod("kube-system", "kube-proxy-lk2j9", "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f", "burstable", ["kube-proxy"]),
    Pod("batch", "report-28391-abcde", "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a", "besteffort", ["report"]),
    Pod("default", "web.v2-1", "4e5f6a7b-8c9d-4e0f-9a1b-2c3d4e5f6a7b", "besteffort", ["web", "log-shipper"]),
]


def write_logs(root: Path, pods=PODS) -> None:
    """The kubelet's log directories of ``pods`` under ``root`` (its /var/log)."""
    (root / "pods").mkdir(parents=True, exist_ok=True)
    (root / "containers").mkdir(parents=True, exist_ok=True)
    for pod in pods:
        write_pod_logs(root, pod)


def write_pod_logs(root: Path, pod: Pod) -> None:
    pod_dir = root / "pods" / f"{pod.namespace}_{pod.name}_{pod.uid}"
    for name, cid in pod.ids.items():
        (pod_dir / name).mkdir(parents=True, exist_ok=True)
        (pod_dir / name / "0.log").write_text("")
        # Absolute, as the kubelet writes it: dangling here, never followed.
        link = root / "containers" / f"{pod.name}_{pod.namespace}_{name}-{cid}.log"
        os.symlink(f"/var/log/pods/{pod_dir.name}/{name}/0.log", link)


def remove_pod_logs(root: Path, pod: Pod) -> None:
    for name, cid in pod.ids.items():
        (root / "containers" / f"{pod.name}_{pod.namespace}_{name}-{cid}.log").unlink()
    pod_dir = root / "pods" / f"{pod.namespace}_{pod.name}_{pod.uid}"
    for name in pod.ids:
        (pod_dir / name / "0.log").unlink()
        (pod_dir / name).rmdir()
    pod_dir.rmdir()


def pod_cgroup(pod: Pod, driver: str) -> str:
    if driver == "cgroupfs":
        return "/kubepods" + ("" if pod.qos == "guaranteed" else f"/{pod.qos}") + f"/pod{pod.uid}"
    uid = pod.uid.replace("-", "_")             # systemd escapes "-" in unit names
    if pod.qos == "guaranteed":
        return f"/kubepods.slice/kubepods-pod{uid}.slice"
    return f"/kubepods.slice/kubepods-{pod.qos}.slice/kubepods-{pod.qos}-pod{uid}.slice"


def container_dirs(cid: str, driver: str, runtime: str) -> list[str]:
    """The cgroup directory names of one container (CRI-O's monitor has one of its own)."""
    if driver == "cgroupfs":
        return [f"crio-{cid}"] if runtime == "crio" else [cid]
    prefix = {"containerd": "cri-containerd", "crio": "crio", "docker": "docker"}[runtime]
    out = [f"{prefix}-{cid}.scope"]
    if runtime == "crio":
        out.append(f"crio-conmon-{cid}.scope")
    return out


@dataclass
class Expected:
    """What a cgroup's labels must say."""
    path: str
    namespace: str
    pod: str
    container: str | None         # None for the pod's own cgroup
    qos: str


def node_cgroups(driver: str, runtime: str, pods=PODS) -> tuple[list[str], list[Expected]]:
    """(every kubepods cgroup path, parents first; what each pod and container
    cgroup must be labelled), sandboxes ("POD") included."""
    top = "/kubepods" if driver == "cgroupfs" else "/kubepods.slice"
    qos_dirs = {q: f"{top}/{q}" if driver == "cgroupfs" else f"{top}/kubepods-{q}.slice"
                for q in ("burstable", "besteffort")}
    paths = [top, *qos_dirs.values()]
    expected = []
    for pod in pods:
        pod_path = pod_cgroup(pod, driver)
        paths.append(pod_path)
        expected.append(Expected(pod_path, pod.namespace, pod.name, None, pod.qos))
        for name, cid in [("POD", pod.sandbox), *pod.ids.items()]:
            for d in container_dirs(cid, driver, runtime):
                paths.append(f"{pod_path}/{d}")
                expected.append(Expected(f"{pod_path}/{d}", pod.namespace, pod.name, name, pod.qos))
    return paths, expected


#: /proc/self/mounts of each cgroup layout: (mounts, v2 root or None, where the paths are made)
LAYOUTS = {
    "v2": ("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n",
           "/sys/fs/cgroup", ["/sys/fs/cgroup"]),
    "v1": ("tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0\n"
           "cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,name=systemd 0 0\n"
           "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0\n"
           "cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0\n",
           None, ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/systemd"]),
    "hybrid": ("cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
               "cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0\n"
               "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
               "cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0\n"
               "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n",
               "/sys/fs/cgroup/unified", ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/cpu",
                                          "/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/memory"]),
}


def write_cgroups(root: Path, layout: str, paths) -> None:
    """A fake kernel tree under ``root``: /proc/self/mounts of ``layout`` and
    ``paths`` made in each of its hierarchies with their CPU time, plus what
    the cgroupfs collector reads besides (uptime, /proc/stat, online CPUs)."""
    mounts, v2_root, hierarchies = LAYOUTS[layout]
    (root / "proc/self").mkdir(parents=True, exist_ok=True)
    (root / "proc/self/mounts").write_text(mounts)
    (root / "proc/uptime").write_text("1000.00 1900.00\n")
    (root / "proc/stat").write_text("cpu  100 0 100 1000 0 0 0 0 0 0\n")
    (root / "sys/devices/system/cpu").mkdir(parents=True, exist_ok=True)
    (root / "sys/devices/system/cpu/online").write_text("0-3\n")
    if v2_root:
        (root / v2_root.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (root / v2_root.lstrip("/") / "cgroup.controllers").write_text("cpu io memory pids\n"
                                                                         if layout == "v2" else "\n")
    for hierarchy in hierarchies:
        for p in ["/", *paths]:
            d = root / hierarchy.lstrip("/") / p.lstrip("/")
            d.mkdir(parents=True, exist_ok=True)
            # CPU time used: v2's cpu.stat, v1's cpuacct.usage (each read where its layout has it).
            (d / "cpu.stat").write_text("usage_usec 1000\nuser_usec 500\nsystem_usec 500\n")
            (d / "cpuacct.usage").write_text("1000000\n")
