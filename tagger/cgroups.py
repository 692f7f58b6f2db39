"""Cgroup layout and registry: where each hierarchy lives, and id <-> path <-> name.

A workload is known by its path relative to the hierarchy root ("/" is the
root).  On a hybrid host (v2 mounted at /sys/fs/cgroup/unified, the controllers
on v1, as on the development machines) that one path names it in every
hierarchy: the v2 directory gives the cgroup id the BPF programs see (its inode
number), the v1 cpu directory holds its quota, the v1 blkio directory its I/O
figures.

    layout = Layout.detect(fs=HOST)
    layout.controller_version("cpu")        # 1, 2 or None
    layout.controller_dir("cpu", "/a/b")     # "/sys/fs/cgroup/cpu/a/b"
    registry = Registry(layout)
    registry.scan()
    registry.path_of(cgid), registry.id_of(path), registry.describe(path)

Everything is read through a :class:`~tagger.kernelfs.KernelFS`, so tests point
``fs`` at a temp tree holding a fake ``/proc/self/mounts``.
"""

from __future__ import annotations

import errno
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Mapping, Protocol

from . import errors
from .kernelfs import HOST, KernelFS

log = logging.getLogger(__name__)

#: v1 controllers a "cgroup" mount's options may name (Documentation/admin-guide/cgroup-v1).
V1_CONTROLLERS = frozenset({
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio",
    "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc",
})

#: The same controller under its other hierarchy's name (v1 "blkio" is v2 "io").
_ALIASES = {"io": "blkio", "blkio": "io"}


def _unescape_mount_field(s: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \ooo (fs/proc_namespace.c).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def normalize(relpath: str) -> str:
    """A relative cgroup path in canonical form: leading "/", no trailing "/"."""
    parts = [p for p in str(relpath).split("/") if p and p != "."]
    if ".." in parts:
        raise ValueError(f"cgroup path may not contain '..': {relpath!r}")
    return "/" + "/".join(parts)


def _join(root: str, relpath: str) -> str:
    rel = normalize(relpath)
    return root if rel == "/" else root.rstrip("/") + rel


def charged_cgroup(fs: KernelFS, directory: str, relpath: str, controller: str) -> str:
    """The cgroup a v2 ``controller`` accounts and limits ``relpath``'s tasks in:
    ``relpath`` itself if its parent delegates ``controller`` (lists it in
    cgroup.subtree_control), else the nearest ancestor whose parent does, else
    "/".  ``directory`` is ``relpath``'s directory in the v2 hierarchy.

    On v2 a controller acts on a cgroup only when every ancestor enables it for
    its children; below the last one that does, the cgroup's CPU time and I/O
    count (and are limited) as the ancestor's own (cgroup-v2.rst, "Enabling and
    Disabling", "Top-down Constraint")."""
    rel, d = normalize(relpath), directory.rstrip("/")
    while rel != "/":
        parent_dir = d.rsplit("/", 1)[0]
        delegated = fs.read_optional(parent_dir + "/cgroup.subtree_control")
        if delegated is None or controller in delegated.split():
            return rel
        rel, d = rel.rsplit("/", 1)[0] or "/", parent_dir
    return "/"


@dataclass(frozen=True)
class Layout:
    """Where the cgroup hierarchies are mounted on this host.

    ``kind`` is "v2" (unified only), "v1" (legacy only) or "hybrid" (both: v2
    holds the ids, controllers are on v1 unless listed in the v2 root's
    ``cgroup.controllers``).  Paths are kernel paths (as under ``fs.root``)."""

    kind: str
    v2_root: str | None
    v1_roots: Mapping[str, str]                 # controller or "name=systemd" -> mount point
    v2_controllers: frozenset[str] = frozenset()
    fs: KernelFS = field(default=HOST, repr=False, compare=False)

    # --- detection ----------------------------------------------------------
    @classmethod
    def detect(cls, fs: KernelFS = HOST) -> "Layout":
        """Read ``/proc/self/mounts`` (and the v2 root's cgroup.controllers)."""
        return cls.from_mounts(fs.read_text("/proc/self/mounts"), fs)

    @classmethod
    def from_mounts(cls, mounts_text: str, fs: KernelFS = HOST) -> "Layout":
        v2_root = None
        v1_roots: dict[str, str] = {}
        for line in mounts_text.splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            where, fstype, opts = _unescape_mount_field(fields[1]), fields[2], fields[3].split(",")
            if fstype == "cgroup2":
                # The first cgroup2 mount wins; later ones are bind mounts of the same tree.
                v2_root = v2_root or where
            elif fstype == "cgroup":
                for opt in opts:
                    if opt in V1_CONTROLLERS or opt.startswith("name="):
                        v1_roots.setdefault(opt, where)
        if v2_root is None and not v1_roots:
            raise errors.NotFound(errno.ENOENT, "no cgroup hierarchy is mounted (see /proc/self/mounts)")
        v2_controllers: frozenset[str] = frozenset()
        if v2_root is not None:
            text = fs.read_optional(_join(v2_root, "/") + "/cgroup.controllers")
            v2_controllers = frozenset((text or "").split())
        if v2_root is None:
            kind = "v1"
        elif v1_roots:
            kind = "hybrid"
        else:
            kind = "v2"
        return cls(kind, v2_root, dict(v1_roots), v2_controllers, fs)

    # --- queries --------------------------------------------------------------
    def controller_version(self, name: str) -> int | None:
        """1 if ``name`` is on a v1 hierarchy, 2 if the v2 root lists it in
        cgroup.controllers, None if it is not available.  "io" and "blkio" are
        the same controller."""
        for n in (name, _ALIASES.get(name)):
            if n and n in self.v1_roots:
                return 1
        for n in (name, _ALIASES.get(name)):
            if n and self.v2_root is not None and n in self.v2_controllers:
                return 2
        return None

    def controller_root(self, controller: str) -> str:
        """Mount point of the hierarchy holding ``controller``; NotFound if none."""
        version = self.controller_version(controller)
        if version == 1:
            name = controller if controller in self.v1_roots else _ALIASES[controller]
            return self.v1_roots[name]
        if version == 2:
            return self.v2_root
        raise errors.NotFound(
            errno.ENOENT,
            f"cgroup controller {controller!r} is not available: not mounted on v1 and not in "
            f"{self.v2_root or 'the (missing) v2 root'}/cgroup.controllers")

    def controller_dir(self, controller: str, relpath: str) -> str:
        """Kernel path of ``relpath`` in the hierarchy holding ``controller``."""
        return _join(self.controller_root(controller), relpath)

    def v2_dir(self, relpath: str) -> str:
        """Kernel path of ``relpath`` in the v2 hierarchy; NotFound on a v1-only host."""
        if self.v2_root is None:
            raise errors.NotFound(errno.ENOENT, "no cgroup v2 hierarchy is mounted (v1-only host)")
        return _join(self.v2_root, relpath)

    @property
    def walk_root(self) -> str:
        """The hierarchy the registry walks: v2 where mounted (it carries the ids
        BPF sees), else the v1 cpu hierarchy, else name=systemd, else any."""
        if self.v2_root is not None:
            return self.v2_root
        for key in ("cpu", "cpuacct", "name=systemd"):
            if key in self.v1_roots:
                return self.v1_roots[key]
        return next(iter(self.v1_roots.values()))

    def summary(self) -> dict:
        """Plain data for ``tagger doctor`` and logs."""
        where = {}
        for ctrl in ("cpu", "cpuacct", "io", "memory", "cpuset", "pids"):
            v = self.controller_version(ctrl)
            where[ctrl] = None if v is None else {"version": v, "root": self.controller_root(ctrl)}
        return {"kind": self.kind, "v2_root": self.v2_root, "v2_controllers": sorted(self.v2_controllers),
                "v1_roots": dict(self.v1_roots), "controllers": where}


# --- display names ------------------------------------------------------------

_HEX_ID = re.compile(r"^[0-9a-f]{64}$")
_SCOPE_PREFIXES = (          # runtime scope/dir prefix -> runtime label
    ("cri-containerd-", "containerd"),
    ("crio-conmon-", "crio-conmon"),
    ("crio-", "crio"),
    ("docker-", "docker"),
    ("libpod-conmon-", "podman-conmon"),
    ("libpod-", "podman"),
    ("containerd-", "containerd"),
)
_POD_CGROUPFS = re.compile(r"^pod([0-9a-fA-F-]{8,})$")
_POD_SYSTEMD = re.compile(r"^kubepods(?:-(burstable|besteffort))?-pod([0-9a-fA-F_]{8,})\.slice$")
_QOS_SYSTEMD = re.compile(r"^kubepods-(burstable|besteffort)\.slice$")
_SYSTEMD_UNIT = re.compile(r"^.+\.(service|scope|slice|socket|mount|swap|target|device)$")
_USER_SLICE = re.compile(r"^user-(\d+)\.slice$")


def _container_id(component: str) -> tuple[str, str] | None:
    """(runtime, id) for a container's cgroup directory name, else None."""
    name = component[:-len(".scope")] if component.endswith(".scope") else component
    for prefix, runtime in _SCOPE_PREFIXES:
        if name.startswith(prefix):
            cid = name[len(prefix):]
            if _HEX_ID.match(cid):
                return runtime, cid
    if _HEX_ID.match(name):            # cgroupfs driver, docker/containerd: the bare id
        return "", name
    return None


PodNames = Callable[[str], "tuple[str, str] | None"]   # pod uid -> (namespace, pod name)
ContainerNames = Callable[[str], "str | None"]          # container id -> container name

#: The kubelet's name for a pod's sandbox ("pause") container, which has no
#: name of its own (pkg/kubelet/leaky: PodInfraContainerName; cAdvisor's
#: ``container="POD"``).
SANDBOX_CONTAINER = "POD"


def names_workload(labels: Mapping[str, str]) -> bool:
    """Whether a description with these labels depends on workload names
    (a Kubernetes pod or container: it has a pod uid)."""
    return "pod_uid" in labels


class WorkloadNames(Protocol):
    """Where a :class:`Registry` learns pod and container names (such as
    :class:`tagger.kubelet.KubeletLogs`): ``refresh()`` once a tick says
    whether any name changed since the last one."""

    def pod(self, uid: str) -> tuple[str, str] | None: ...
    def container(self, cid: str) -> str | None: ...
    def refresh(self) -> bool: ...


def _kubernetes(parts: list[str], pod_names: PodNames | None,
                container_names: ContainerNames | None = None) -> tuple[str, dict[str, str]] | None:
    """Kubepods paths of both kubelet cgroup drivers (cgroupfs and systemd)."""
    try:
        k = next(i for i, p in enumerate(parts) if p in ("kubepods", "kubepods.slice"))
    except StopIteration:
        return None
    rest = parts[k + 1:]
    labels: dict[str, str] = {}
    qos = "guaranteed"
    uid = None
    i = 0
    if rest and (rest[0] in ("burstable", "besteffort") or _QOS_SYSTEMD.match(rest[0])):
        m = _QOS_SYSTEMD.match(rest[0])
        qos = m.group(1) if m else rest[0]
        i = 1
    if i < len(rest):
        m = _POD_CGROUPFS.match(rest[i]) or _POD_SYSTEMD.match(rest[i])
        if m:
            uid = m.group(m.lastindex).replace("_", "-")   # systemd driver escapes '-' as '_'
            i += 1
    if uid is None:
        if i == 0 and not rest:
            return "kubepods", {"kind": "kubepods"}
        if i == 1 and len(rest) == 1:
            return f"kubepods-{qos}", {"kind": "qos", "qos": qos}
        return None                    # something else under kubepods: the generic name
    labels = {"kind": "pod", "qos": qos, "pod_uid": uid}
    pod_name = f"pod/{uid}"
    known = pod_names(uid) if pod_names else None
    if known:
        labels["namespace"], labels["pod"] = known
        pod_name = f"{known[0]}/{known[1]}"
    if i == len(rest):
        return pod_name, labels
    cont = _container_id(rest[i])
    if cont is None:
        return None
    runtime, cid = cont
    labels["kind"] = "container"
    labels["container_id"] = cid
    if runtime:
        labels["runtime"] = runtime
    container = container_names(cid) if container_names else None
    if container is None and known and container_names:
        # Every container the kubelet starts has a log; in a pod whose names
        # are known, the one without is its sandbox.  (Also, for the moment
        # between its cgroup's mkdir and the kubelet's symlink, a container
        # being created: the names are read again when the directory changes.)
        container = SANDBOX_CONTAINER
    short = cid[:12]
    if container is not None:
        labels["container"] = container
        short = container + ("-conmon" if runtime.endswith("-conmon") else "")
    tail = "/".join(rest[i + 1:])
    return f"{pod_name}/{short}" + (f"/{tail}" if tail else ""), labels


def describe(path: str, pod_names: PodNames | None = None,
             container_names: ContainerNames | None = None) -> tuple[str, dict[str, str]]:
    """(display name, labels) for a cgroup path, from the path alone.

    Labels: ``kind`` (unit, pod, container, qos, kubepods), ``unit``/``slice``
    for systemd, ``qos``/``pod_uid``/``container_id``/``runtime`` for
    Kubernetes and container runtimes; ``namespace``/``pod`` only when
    ``pod_names`` maps the pod uid, ``container`` only when
    ``container_names`` maps the container id (in a pod ``pod_names`` knows,
    a container it does not map is the pod's sandbox, ``POD``).  A pod's
    display name is ``namespace/pod`` when known, a container's
    ``namespace/pod/container``.  Unknown shapes get their last component."""
    path = normalize(path)
    if pod_names is None and container_names is None:
        name, labels = _describe_cached(path)
        return name, dict(labels)      # the cache's dict stays unshared
    return _describe(path, pod_names, container_names)


@lru_cache(maxsize=65536)
def _describe_cached(path: str) -> tuple[str, dict[str, str]]:
    return _describe(path, None, None)


def _describe(path: str, pod_names: PodNames | None,
              container_names: ContainerNames | None) -> tuple[str, dict[str, str]]:
    if path == "/":
        return "/", {}
    parts = path[1:].split("/")
    k8s = _kubernetes(parts, pod_names, container_names)
    if k8s is not None:
        return k8s

    # The innermost container or systemd unit names the workload: containers
    # outside Kubernetes (/docker/<id>, /system.slice/docker-<id>.scope,
    # /machine.slice/libpod-<id>.scope, containerd's cgroupfs /<namespace>/<id>)
    # and units; a sub-cgroup inside one (delegation) keeps its name as a prefix.
    for i in range(len(parts) - 1, -1, -1):
        tail = "/".join(parts[i + 1:])
        cont = _container_id(parts[i])
        if cont is not None:
            runtime, cid = cont
            if not runtime and i > 0 and parts[i - 1] == "docker":
                runtime = "docker"
            labels = {"kind": "container", "container_id": cid}
            if runtime:
                labels["runtime"] = runtime
            prefix = f"{runtime}-" if runtime else ""
            return f"{prefix}{cid[:12]}" + (f"/{tail}" if tail else ""), labels
        if _SYSTEMD_UNIT.match(parts[i]):
            unit = parts[i]
            labels = {"kind": "slice" if unit.endswith(".slice") else "unit", "unit": unit}
            slices = [p for p in parts[:i] if p.endswith(".slice")]
            if slices:
                labels["slice"] = slices[-1]
            for p in parts[:i + 1]:
                m = _USER_SLICE.match(p)
                if m:
                    labels["uid"] = m.group(1)
            return unit + (f"/{tail}" if tail else ""), labels
    return parts[-1], {}


# --- the registry ---------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    """What one :meth:`Registry.scan` found: paths that appeared and vanished."""
    added: frozenset[str]
    removed: frozenset[str]


class Registry:
    """id <-> path <-> display name + labels for every cgroup in the v2 tree.

    ``scan()`` walks the tree again (one ``getdents`` per cgroup, no ``stat``:
    the v2 id is the directory's inode number, which ``os.scandir`` gives for
    free) and reports what changed.  Cgroups that vanish mid-walk are skipped.
    On a v1-only host the walk covers the cpu (or name=systemd) hierarchy and
    every id is 0 (BPF cannot tell v1 cgroups apart).

    Paths are in the internal form of :mod:`tagger.names` (``os.scandir``'s
    decoding), which is also how :meth:`add` must be given BPF events' paths:
    a name that is not UTF-8 then has one path, not one per route it came by."""

    def __init__(self, layout: Layout, fs: KernelFS | None = None, pod_names: PodNames | None = None,
                 v1_ids: Iterable[str] = (), workload_names: WorkloadNames | None = None):
        self.layout = layout
        self.fs = fs if fs is not None else layout.fs
        #: pod and container names (tagger.kubelet); :meth:`refresh_names` reads them again
        self.workload_names = workload_names
        self.pod_names = pod_names or (workload_names.pod if workload_names is not None else None)
        self.container_names = workload_names.container if workload_names is not None else None
        # v1 hierarchies whose own cgroup ids must map back to paths too: on a
        # hybrid host a bio's blkcg is a cgroup of the v1 blkio hierarchy, with
        # an id (inode) of that hierarchy, not the v2 one.
        self._v1_roots = {c: layout.controller_root(c) for c in v1_ids if layout.controller_version(c) == 1}
        self._v1_by_id: dict[str, dict[int, str]] = {c: {} for c in self._v1_roots}
        self._v1_by_path: dict[str, dict[str, int]] = {c: {} for c in self._v1_roots}
        self._by_path: dict[str, int] = {}
        self._by_id: dict[int, str] = {}
        self._names: dict[str, tuple[str, dict[str, str]]] = {}
        self.scans = 0

    def __len__(self) -> int:
        return len(self._by_path)

    def __contains__(self, path: str) -> bool:
        return normalize(path) in self._by_path

    @property
    def has_ids(self) -> bool:
        return self.layout.v2_root is not None

    def paths(self) -> list[str]:
        """Every known path, parents before children."""
        return list(self._by_path)

    def items(self, controller: str | None = None) -> Iterable[tuple[int, str]]:
        """(id, path) pairs, parents before children; with ``controller``, of
        the hierarchy holding it (see ``v1_ids``)."""
        return ((i, p) for p, i in self._id_maps(controller)[1].items())

    def scan(self) -> Change:
        """Walk the hierarchy; return what appeared and vanished since the last scan."""
        found = self._walk(self.layout.walk_root, self.has_ids)
        for ctrl, root in self._v1_roots.items():
            v1 = self._walk(root, True)
            self._v1_by_path[ctrl] = v1
            self._v1_by_id[ctrl] = {i: p for p, i in v1.items()}
        old = self._by_path
        added = found.keys() - old.keys()
        removed = old.keys() - found.keys()
        # A path whose inode changed was removed and made again between scans.
        recreated = {p for p in found.keys() & old.keys() if found[p] != old[p]}
        self._by_path = found
        self._by_id = {i: p for p, i in found.items() if i}
        for p in removed:
            self._names.pop(p, None)
        self.scans += 1
        return Change(frozenset(added | recreated), frozenset(removed | recreated))

    def _walk(self, root: str, ids: bool) -> dict[str, int]:
        root_id = self.fs.stat(root).st_ino if ids else 0
        found: dict[str, int] = {}
        base = root.rstrip("/")
        # Depth-first, children pushed in reverse name order: rows come out
        # parents before children, siblings in name order (a stable row order).
        stack = [("/", root_id)]
        while stack:
            rel, ino = stack.pop()
            found[rel] = ino
            prefix = "" if rel == "/" else rel
            try:
                children = self.fs.subdirs(base + prefix)
            except errors.NotFound:
                continue              # the cgroup went away mid-walk: a normal race
            except errors.PermissionDenied as err:
                log.debug("cannot list %s: %s", base + prefix, err)
                continue
            children.sort(reverse=True)
            for name, child_ino in children:
                stack.append((f"{prefix}/{name}", child_ino if ids else 0))
        return found

    # --- events from the BPF cgroup mkdir/rmdir ring buffer -------------------
    def add(self, cgid: int, path: str) -> None:
        """Record a cgroup made since the last scan (BPF mkdir event)."""
        path = normalize(path)
        old = self._by_path.get(path)
        if old:
            self._by_id.pop(old, None)
        self._by_path[path] = cgid
        if cgid:
            self._by_id[cgid] = path

    def remove(self, cgid: int | None = None, path: str | None = None) -> None:
        """Forget a cgroup removed since the last scan (BPF rmdir event)."""
        if path is None and cgid is not None:
            path = self._by_id.get(cgid)
        if path is None:
            return
        path = normalize(path)
        cgid = self._by_path.pop(path, None)
        if cgid:
            self._by_id.pop(cgid, None)
        self._names.pop(path, None)

    # --- lookups ----------------------------------------------------------------
    def _id_maps(self, controller: str | None):
        if controller is not None and controller in self._v1_roots:
            return self._v1_by_id[controller], self._v1_by_path[controller]
        for alias in (controller, _ALIASES.get(controller or "")):
            if alias in self._v1_roots:
                return self._v1_by_id[alias], self._v1_by_path[alias]
        if controller is not None and self.layout.controller_version(controller) == 1:
            raise KeyError(f"controller {controller!r} is on v1: make the Registry with v1_ids=({controller!r},)")
        return self._by_id, self._by_path

    def path_of(self, cgid: int, rescan: bool = False, controller: str | None = None) -> str | None:
        """Path of the cgroup with v2 id ``cgid``; with ``rescan``, walk again once
        if unknown.  With ``controller`` ("io"), ``cgid`` is an id of the
        hierarchy holding it (v1 on a hybrid host: a bio's blkcg)."""
        by_id = self._id_maps(controller)[0]
        path = by_id.get(int(cgid))
        if path is None and rescan:
            self.scan()
            path = self._id_maps(controller)[0].get(int(cgid))
        return path

    def id_of(self, path: str, controller: str | None = None) -> int | None:
        """v2 id of ``path`` (0 on a v1-only host), or None if unknown; with
        ``controller``, its id in the hierarchy holding that controller."""
        return self._id_maps(controller)[1].get(normalize(path))

    def refresh_names(self) -> bool:
        """Read the workload names again (cheap when nothing changed: see
        tagger.kubelet); if any changed, forget the descriptions of pods and
        containers (:func:`names_workload`), so the next :meth:`describe` of
        each has them.  True if they changed: a caller keeping descriptions
        of its own drops those too.  Names may come after the cgroup (a
        pod's cgroup is made before its log directory) and go before it."""
        if self.workload_names is None or not self.workload_names.refresh():
            return False
        self._names = {p: d for p, d in self._names.items() if not names_workload(d[1])}
        return True

    def describe(self, path: str) -> tuple[str, dict[str, str]]:
        """(display name, labels) of ``path`` (also for paths not seen yet),
        with the names known at the last :meth:`refresh_names`."""
        path = normalize(path)
        got = self._names.get(path)
        if got is None:
            got = describe(path, self.pod_names, self.container_names)
            if path in self._by_path:
                self._names[path] = got
        return got

    def name_of(self, path: str) -> str:
        return self.describe(path)[0]

    def table(self, paths: Iterable[str] | None = None):
        """A :class:`~tagger.snapshot.CgroupTable` of ``paths`` (default: all known)."""
        from .snapshot import CgroupTable
        paths = self.paths() if paths is None else [normalize(p) for p in paths]
        described = [self.describe(p) for p in paths]
        return CgroupTable.from_paths(
            paths,
            names=[d[0] for d in described],
            labels=[dict(d[1]) for d in described],
            ids=[self._by_path.get(p) or 0 for p in paths],
        )
