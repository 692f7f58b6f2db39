"""Every exception tagger raises on purpose.

Each class also subclasses the builtin a caller would naturally catch
(pyca/cryptography style), so ``except FileNotFoundError`` keeps working.
"""

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
