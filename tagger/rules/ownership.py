"""Who may change the rules: the ownership and mode checks of ``tagger run``,
shared with ``tagger rules check`` (sshd's StrictModes, sudo's sudoers checks).

Rule files decide what is done to the machine, so a rules directory, a rule
file in it, or a directory above it that someone other than ``uid`` owns or
that group/others may write is refused.  A sticky directory owned by ``uid``
(/tmp, a Kubernetes ConfigMap mount) is allowed: others may add files there
but not replace root's, and their own files fail the per-file check.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OwnershipProblem:
    """One path someone else could change; ``fix`` is the command that mends it."""
    path: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.message}\n    fix: {self.fix}" if self.fix else self.message


def ownership_problems(directory: str | os.PathLike, uid: int | None = 0) -> list[OwnershipProblem]:
    """Every path of the rules directory ``directory`` (its ancestors, itself,
    its ``*.yaml``/``*.yml`` files) not owned by ``uid`` or writable by group or
    others; empty when the rules are safe to act on.  ``uid`` None checks the
    modes only (a checkout someone else will install).  A missing directory is
    one problem."""
    path = Path(directory).resolve()
    problems: list[OwnershipProblem] = []

    def check(p: Path, what: str, allow_sticky: bool = False, shown: str | None = None):
        shown = shown or str(p)     # rule files as the caller named them, for path:line:col
        try:
            st = os.stat(p)
        except OSError as err:
            problems.append(OwnershipProblem(shown, f"{p}: {err.strerror}"))
            return
        if uid is not None and st.st_uid != uid:
            problems.append(OwnershipProblem(shown, f"{what} {p} is owned by uid {st.st_uid}, not "
                                             f"{'root' if uid == 0 else f'uid {uid}'}",
                                             f"chown root:root {p}"))
        loose = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky_ok = allow_sticky and st.st_mode & stat.S_ISVTX and st.st_uid == (uid or 0)
        if loose and not sticky_ok:
            problems.append(OwnershipProblem(
                shown, f"{what} {p} is writable by {'group' if loose & stat.S_IWGRP else 'others'}"
                        f" (mode {stat.S_IMODE(st.st_mode):04o})", f"chmod go-w {p}"))

    if not path.is_dir():
        return [OwnershipProblem(str(directory), f"rules directory {directory}: not a directory")]
    for parent in reversed(path.parents):
        check(parent, "directory above the rules", allow_sticky=True)
    check(path, "rules directory", allow_sticky=True)
    for entry in sorted(path.iterdir()):
        if entry.suffix in (".yaml", ".yml"):
            check(entry, "rule file", shown=os.path.join(str(directory), entry.name))
    return problems
