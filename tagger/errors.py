"""Every exception tagger raises on purpose.

Each class also subclasses the builtin a caller would naturally catch
(pyca/cryptography style), so ``except FileNotFoundError`` keeps working.
"""

import errno as _errno
import os


class TaggerError(Exception):
    """Base of every error tagger raises on purpose."""


class NotFound(TaggerError, FileNotFoundError):
    """A kernel file or directory that does not exist."""


class Vanished(NotFound):
    """A cgroup or process that went away between two reads (a normal race)."""


class PermissionDenied(TaggerError, PermissionError):
    """The kernel refused access: usually not root, or a read-only mount."""


class KernelRefused(TaggerError, OSError):
    """The kernel rejected a write (EINVAL, ENOSPC, EBUSY...): ``errno`` says which."""

    def __init__(self, errno_, path, value, detail=""):
        msg = f"{path}: kernel refused {value!r}: {os.strerror(errno_)}"
        if detail:
            msg += f" ({detail})"
        super().__init__(errno_, msg)
        self.path = str(path)
        self.value = value
        self.detail = detail

    def __str__(self):
        return self.args[1]


class BpfError(TaggerError, OSError):
    """Loading, attaching or reading the BPF programs failed; ``errno`` says why."""

    def __init__(self, errno_, what):
        super().__init__(errno_, f"{what}: {os.strerror(errno_)}")

    def __str__(self):
        return self.args[1]


class BpfUnavailable(BpfError):
    """BPF cannot run here at all (no BTF, no privilege, old kernel)."""


class RulesError(TaggerError, ValueError):
    """A rules directory or expression that cannot be used; see its ``problems``."""


class ConfigError(TaggerError, ValueError):
    """A bad command-line value or configuration setting."""


_GONE = (_errno.ENODEV, _errno.ENOTDIR, _errno.ESRCH)


def from_oserror(err: OSError, path, value=None) -> TaggerError:
    """Map an OSError from a kernel file to the domain exception for it."""
    if err.errno == _errno.ENOENT:
        return Vanished(_errno.ENOENT, f"{path}: no such file (vanished?)")
    if value is None and err.errno in _GONE:
        # A read of what was there a moment ago: a cgroup removed after the
        # open (ENODEV), a directory replaced (ENOTDIR), a process reaped (ESRCH).
        return Vanished(err.errno, f"{path}: {err.strerror} (vanished?)")
    if err.errno in (_errno.EACCES, _errno.EPERM):
        return PermissionDenied(err.errno, f"{path}: permission denied (run as root?)")
    if value is not None:
        return KernelRefused(err.errno, path, value)
    return TaggerError(f"{path}: {err.strerror}")
