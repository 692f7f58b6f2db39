"""Pod and container names from the kubelet's log layout, read on the node itself.

A cgroup path names a pod by its uid and a container by its runtime id; the
names people use (namespace, pod, container) are known to the API server, and
on the node to the kubelet, which writes them into its log directories
(pkg/kubelet/kuberuntime/kuberuntime_container.go, BuildContainerLogsDirectory
and the legacy symlink)::

    <root>/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log
    <root>/containers/<pod>_<namespace>_<container>-<container id>.log  -> ../pods/...

Namespace, pod and container names are DNS labels or subdomains, so none holds
an ``_``; the uid is a UUID (an md5 hex string for static pods), the container
id 64 hex digits.  The names are read from the entries' names alone (no
readlink, no stat per entry).

    names = KubeletLogs("/var/log")
    names.refresh()                     # once a tick: two stat(2) calls
    names.pod(uid)                      # ("shop", "checkout-7d9f") or None
    names.container(cid)                # "nginx" or None

A directory is listed again only when its mtime (or inode) changes, so a tick
costs two ``stat`` calls; a node without them (no kubelet, or not mounted into
the agent's container) costs two failed ones and has no names.  The pod
sandbox ("pause") container has no log, so it has no entry here
(:mod:`tagger.cgroups` labels it ``POD``, the kubelet's name for it).
"""

from __future__ import annotations

import logging
import os
import re
import time

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/var/log"

_CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")
#: A directory whose mtime is this recent may change again within the same
#: timestamp tick (the kernel's coarse clock, a jiffy or more), unseen by a
#: compare of mtimes: list it again next time until it is older (as git does
#: with "racily clean" index entries).
_RACY_NS = 1_000_000_000


def parse_pod_dir(name: str) -> tuple[str, str, str] | None:
    """(namespace, pod, uid) of a ``<root>/pods`` entry name, else None."""
    parts = name.split("_")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2].lower()


def parse_container_log(name: str) -> tuple[str, str, str, str] | None:
    """(namespace, pod, container, container id) of a ``<root>/containers``
    entry name, else None."""
    if not name.endswith(".log"):
        return None
    stem = name[:-len(".log")]
    who, _, cid = stem.rpartition("-")
    if not _CONTAINER_ID.match(cid):
        return None
    parts = who.split("_")
    if len(parts) != 3 or not all(parts):
        return None
    pod, namespace, container = parts
    return namespace, pod, container, cid


class _Listing:
    """One directory's entry names, listed again only when it changed."""

    def __init__(self, path: str):
        self.path = path
        self._key = None            # (st_dev, st_ino, st_mtime_ns) of the listing held, or "missing"
        self.names: list[str] = []

    def refresh(self) -> bool:
        """List the directory if it changed since the last listing; True if listed."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._key == "missing":
                return False
            self._key, self.names = "missing", []
            return True
        except OSError as err:
            if self._key == "unreadable":
                return False
            log.warning("cannot read the kubelet's %s (%s): no pod or container names from it",
                        self.path, err.strerror)
            self._key, self.names = "unreadable", []
            return True
        key = (st.st_dev, st.st_ino, st.st_mtime_ns)
        if key == self._key:
            return False
        try:
            with os.scandir(self.path) as it:
                names = [e.name for e in it]
        except OSError as err:
            log.debug("listing %s: %s", self.path, err)
            names = []
        self.names = names
        # A change in the same timestamp tick as the listing would leave the
        # mtime as listed: keep a recent one unsettled, to be listed again.
        self._key = None if time.time_ns() - st.st_mtime_ns < _RACY_NS else key
        return True


class KubeletLogs:
    """pod uid -> (namespace, pod) and container id -> container name, from
    the kubelet's log directories under ``root`` (``/var/log``).  Names change
    only in :meth:`refresh`; its result says whether they did."""

    def __init__(self, root: str = DEFAULT_ROOT):
        self.root = root
        self._pods_dir = _Listing(os.path.join(root, "pods"))
        self._containers_dir = _Listing(os.path.join(root, "containers"))
        self._pods: dict[str, tuple[str, str]] = {}
        self._containers: dict[str, str] = {}
        #: how many times the names changed (0: never read, or nothing there)
        self.generation = 0

    def __repr__(self):
        return f"KubeletLogs({self.root!r}: {len(self._pods)} pods, {len(self._containers)} containers)"

    def refresh(self) -> bool:
        """Read what changed in the two directories; True if any name changed."""
        changed = False
        if self._pods_dir.refresh():
            pods = {}
            for name in self._pods_dir.names:
                got = parse_pod_dir(name)
                if got:
                    pods[got[2]] = (got[0], got[1])
            if pods != self._pods:
                self._pods, changed = pods, True
        if self._containers_dir.refresh():
            containers = {}
            for name in self._containers_dir.names:
                got = parse_container_log(name)
                if got:
                    containers[got[3]] = got[2]
            if containers != self._containers:
                self._containers, changed = containers, True
        if changed:
            self.generation += 1
            log.debug("%r", self)
        return changed

    def pod(self, uid: str) -> tuple[str, str] | None:
        """(namespace, pod name) of the pod with ``uid`` (dashed form), or None."""
        return self._pods.get(uid.lower())

    def container(self, cid: str) -> str | None:
        """The container name of runtime id ``cid`` (64 hex digits), or None."""
        return self._containers.get(cid.lower())

    def pods(self) -> dict[str, tuple[str, str]]:
        return dict(self._pods)

    def containers(self) -> dict[str, str]:
        return dict(self._containers)
