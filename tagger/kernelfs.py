"""The one door to /proc, /sys/fs/cgroup and /sys/fs/resctrl.

Every read and write of a kernel file goes through a :class:`KernelFS`, whose
root tests point at a temporary directory (a fixture tree for what this machine
lacks: resctrl, the cpu controller on cgroup v2).  errno becomes a domain
exception here, in :func:`from_oserror` (the types are in :mod:`tagger.errors`);
optional files read as ``None``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from . import errors


# --- the one errno mapping ------------------------------------------------------
#: errno of a read whose file, cgroup or process was there a moment ago: a
#: cgroup removed after the open (ENODEV), a directory replaced (ENOTDIR), a
#: process reaped (ESRCH).  ENOENT is always so.
_GONE = (errno.ENODEV, errno.ENOTDIR, errno.ESRCH)


def from_oserror(err: OSError, path, value=None) -> errors.TaggerError:
    """The domain exception for an OSError on kernel path ``path`` (``value``:
    what was being written, None for a read).  The only errno mapping: every
    reader of kernel files goes through KernelFS, which applies it."""
    if err.errno == errno.ENOENT:
        return errors.Vanished(errno.ENOENT, f"{path}: no such file (vanished?)")
    if value is None and err.errno in _GONE:
        return errors.Vanished(err.errno, f"{path}: {err.strerror} (vanished?)")
    if value is None and err.errno == errno.EOPNOTSUPP:
        # The file is there but this kernel keeps nothing in it: PSI files
        # with psi=0 (or CONFIG_PSI_DEFAULT_DISABLED).  Absent, like a missing file.
        return errors.NotFound(err.errno, f"{path}: not supported by this kernel")
    if err.errno in (errno.EACCES, errno.EPERM):
        return errors.PermissionDenied(err.errno, f"{path}: permission denied (run as root?)")
    if value is not None:
        return errors.KernelRefused(err.errno, path, value)
    return errors.TaggerError(f"{path}: {err.strerror}")


#: The kernel's list of online CPUs ("0-3,6").
ONLINE_CPUS = "/sys/devices/system/cpu/online"


def _count_cpulist(text: str) -> int:
    """CPUs in a kernel CPU list ("0-3,6" -> 5); 0 when it does not parse."""
    count = 0
    try:
        for part in text.strip().split(","):
            if not part:
                continue
            lo, _, hi = part.partition("-")
            count += (int(hi) if hi else int(lo)) - int(lo) + 1
    except ValueError:
        return 0
    return count


class KernelFS:
    """Kernel files under ``root`` ("/" on a real host)."""

    def __init__(self, root: str | os.PathLike = "/"):
        self.root = Path(root)
        self._online_cpus: int | None = None
        # Kernel paths are absolute: the real one is this prefix + the path
        # (string concatenation, no Path objects, in the per-tick fast paths).
        self._prefix = "" if self.is_real else str(self.root).rstrip("/")

    def __repr__(self):
        return f"KernelFS({str(self.root)!r})"

    @property
    def is_real(self) -> bool:
        return self.root == Path("/")

    def path(self, p: str | os.PathLike) -> Path:
        """The real path of kernel path ``p`` (e.g. "/sys/fs/cgroup/unified")."""
        p = str(p)
        return self.root / p.lstrip("/") if p.startswith("/") else self.root / p

    # --- reads ------------------------------------------------------------
    def read_text(self, p) -> str:
        real = self.path(p)
        try:
            with open(real, "r") as f:
                return f.read()
        except OSError as err:
            raise from_oserror(err, p) from err

    def read_optional(self, p) -> str | None:
        """Contents, or None when the file does not exist (an optional feature)."""
        try:
            return self.read_text(p)
        except errors.NotFound:
            return None

    def read_int(self, p) -> int:
        return int(self.read_text(p).split()[0])

    def read_keyed(self, p) -> dict[str, int]:
        """A flat keyed file such as cpu.stat: "key value" per line."""
        out = {}
        for line in self.read_text(p).splitlines():
            parts = line.split()
            if len(parts) == 2:
                try:
                    out[parts[0]] = int(parts[1])
                except ValueError:
                    pass
        return out

    def read_pressure(self, p) -> dict[str, dict[str, float]] | None:
        """A PSI file ({some,full} -> {avg10,avg60,avg300,total}); None if absent."""
        text = self.read_optional(p)
        if text is None:
            return None
        out = {}
        for line in text.splitlines():
            kind, *fields = line.split()
            out[kind] = {k: float(v) for k, v in (f.split("=") for f in fields)}
        return out

    def read_bytes(self, p) -> bytes:
        """A whole (binary) kernel file, e.g. /sys/kernel/btf/vmlinux."""
        try:
            with open(self.path(p), "rb") as f:
                return f.read()
        except OSError as err:
            raise from_oserror(err, p) from err

    # --- fast paths (cgroups, taskstats) -------------------------------------
    def subdirs(self, p) -> list[tuple[str, int]]:
        """(name, inode) of each directory directly in directory ``p``: one
        getdents, no stat (a cgroup v2 id is its directory's inode, which the
        directory entry carries).  Names decode as os.scandir's (see
        :mod:`tagger.names`).  A directory gone mid-walk raises Vanished."""
        try:
            with os.scandir(self._prefix + p) as it:
                return [(e.name, e.inode()) for e in it if e.is_dir(follow_symlinks=False)]
        except OSError as err:
            raise from_oserror(err, p) from err

    # --- facts of the machine --------------------------------------------
    def online_cpus(self) -> int:
        """How many CPUs are online: the one CPU count every module uses.

        Read once per KernelFS from /sys/devices/system/cpu/online (a CPU
        list such as "0-3,6"); a tree without that file (a fixture) or an
        unreadable one falls back to os.cpu_count(), which glibc takes from
        the same file on a real host.
        """
        if self._online_cpus is None:
            text = self.read_optional(ONLINE_CPUS)
            count = _count_cpulist(text) if text else 0
            self._online_cpus = count or os.cpu_count() or 1
        return self._online_cpus

    def exists(self, p) -> bool:
        return self.path(p).exists()

    def is_dir(self, p) -> bool:
        return self.path(p).is_dir()

    def listdir(self, p) -> list[str]:
        try:
            return sorted(os.listdir(self.path(p)))
        except OSError as err:
            raise from_oserror(err, p) from err

    def stat(self, p) -> os.stat_result:
        try:
            return os.stat(self.path(p))
        except OSError as err:
            raise from_oserror(err, p) from err

    # --- writes -----------------------------------------------------------
    def write_text(self, p, value: str) -> None:
        """Write one value; the kernel's refusal raises KernelRefused with its errno."""
        real = self.path(p)
        try:
            # No O_CREAT on a real host: a missing knob must be an error, not a new file.
            flags = os.O_WRONLY | (0 if self.is_real else os.O_CREAT | os.O_TRUNC)
            fd = os.open(real, flags, 0o644)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as err:
            raise from_oserror(err, p, value) from err

    def mkdir(self, p, exist_ok=True) -> None:
        try:
            os.makedirs(self.path(p), exist_ok=exist_ok)
        except OSError as err:
            raise from_oserror(err, p, "mkdir") from err

    def rmdir(self, p) -> None:
        try:
            os.rmdir(self.path(p))
        except OSError as err:
            raise from_oserror(err, p, "rmdir") from err

    # --- fast path: many small files (telemetry, issue 14) ------------------
    def read_small_many(self, paths) -> list[bytes | None]:
        """The bytes of many small kernel files (cgroupfs figures, cgroup.procs;
        below 64 KiB), one open/read/close each and no Path objects on the way:
        the cgroupfs collectors read thousands per tick.  ``paths`` are kernel
        paths ("/sys/fs/cgroup/unified/a/cpu.stat").  None for a file that is
        absent here (ENOENT, EOPNOTSUPP) or whose cgroup or process vanished
        (ENODEV, ENOTDIR, ESRCH: a normal race); anything else raises (a
        refused read is a set-up error, not a race)."""
        prefix = self._prefix
        out: list[bytes | None] = []
        for p in paths:
            try:
                fd = os.open(prefix + p, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    out.append(os.read(fd, 65536))
                finally:
                    os.close(fd)
            except OSError as err:
                # The one errno mapping: absent or gone (ENOENT, ENODEV after a
                # cgroup's rmdir, ENOTDIR, ESRCH, EOPNOTSUPP) reads as None,
                # anything else raises.
                mapped = from_oserror(err, p)
                if not isinstance(mapped, errors.NotFound):
                    raise mapped from err
                out.append(None)
        return out


#: The host's kernel files.  Modules take a ``fs`` argument defaulting to this.
HOST = KernelFS("/")
