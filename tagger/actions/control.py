"""A control point: one knob of one cgroup that an action sets and the journal
can put back.  Each kind (cpu.max, cpu.weight, cpu.idle, io.max) reads and writes a text
form that is the same on cgroup v1 and v2, so the journal does not care which
hierarchy the controller lives on.
"""

from __future__ import annotations

from dataclasses import dataclass

from tagger import errors
from tagger.cgroups import charged_cgroup
from tagger.kernelfs import KernelFS

from .refusal import ActionRefused


@dataclass(frozen=True)
class Safety:
    """Limits on how hard and how fast tagger may squeeze a cgroup.

    ``quota_floor``: no CPU quota below this many CPUs.
    ``max_step``: one change may take at most this fraction off a limit (None: any).
    ``cooldown``: seconds after a tightening before the same knob may be
    tightened again.  Loosening (and undoing) is never held back, and does not
    restart the cool-down: giving back is always safe, and a control loop must
    be able to squeeze again right after it released too far.
    """
    quota_floor: float = 0.1
    max_step: float | None = 0.5
    cooldown: float = 2.0


class ControlPoint:
    """One knob of one cgroup.  ``read``/``write`` take the knob's text form;
    ``write`` raises ActionRefused naming the kernel limit that refused."""

    #: journal name, e.g. "cpu.max" or "io.max 254:0"
    knob: str = ""
    #: written every tick, not only when its value changes (resctrl task
    #: lists: new threads of the cgroup must follow).
    sync_each_tick: bool = False

    def __init__(self, fs: KernelFS, cgroup: str, directory: str):
        self.fs = fs
        self.cgroup = cgroup
        self.dir = directory

    def __repr__(self):
        return f"{type(self).__name__}({self.cgroup!r}, {self.knob!r})"

    def present(self) -> bool:
        """The cgroup still exists in the hierarchy holding this knob."""
        return self.fs.is_dir(self.dir)

    def read_knob(self, name: str, controller: str, version: int) -> str:
        """The text of this cgroup's file ``name``; on v2 a missing file in an
        existing cgroup is the refusal :meth:`not_delegated` gives."""
        try:
            return self.fs.read_text(f"{self.dir}/{name}")
        except errors.NotFound:
            if version == 2 and self.present():
                raise self.not_delegated(controller, name) from None
            raise

    def not_delegated(self, controller: str, file: str) -> ActionRefused:
        """The refusal for ``file`` missing from this (existing) v2 cgroup: its
        parent does not delegate ``controller``, so the kernel accounts and limits
        its tasks in an ancestor, which the message names.  tagger enables no
        controller itself: which cgroups get one is the cgroup manager's choice
        (systemd's Delegate=, the container runtime), and enabling one changes the
        whole subtree (docs/cgroups.md, "Delegation on cgroup v2")."""
        parent = self.cgroup.rstrip("/").rsplit("/", 1)[0] or "/"
        charged = charged_cgroup(self.fs, self.dir, self.cgroup, controller)
        where = "the root cgroup" if charged == "/" else charged
        return ActionRefused(
            f"{self.cgroup}: no {file}: its parent {parent} does not delegate the {controller} controller "
            f"(no \"{controller}\" in {parent}/cgroup.subtree_control), so the kernel charges its "
            f"{'I/O' if controller == 'io' else controller} to {where} and limits it there; tagger "
            f"enables no controller: act on {where}, or delegate {controller} down to {self.cgroup}",
            f"{controller} not delegated", f"{self.dir}/{file}")

    def read(self) -> str:
        raise NotImplementedError

    def write(self, value: str) -> None:
        raise NotImplementedError

    def paced(self, current: str, wanted: str, safety: Safety, held_for: float | None) -> str:
        """The value to write now on the way from ``current`` to ``wanted``:
        floors, step limits and cool-down applied.  ``held_for`` is the time
        since tagger last tightened this knob (None: never)."""
        return wanted

    def tighter(self, old: str, new: str) -> bool:
        """``new`` gives the cgroup less than ``old`` (starts a cool-down)."""
        return False


class Tightenings:
    """When tagger last tightened each knob (by journal key): how long that
    tightening has held, which :attr:`Safety.cooldown` is compared with."""

    def __init__(self):
        self._at: dict[str, float] = {}

    def held_for(self, key: str, now: float) -> float | None:
        """Seconds since ``key`` was last tightened; None: never (or since restored)."""
        return now - self._at[key] if key in self._at else None

    def tightened(self, key: str, now: float) -> None:
        self._at[key] = now

    def forget(self, key: str) -> None:
        self._at.pop(key, None)
