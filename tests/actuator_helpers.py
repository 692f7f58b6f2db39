"""What the actuator tests share: a safety that lets every change through at
once, an empty tick, and an Actuator on a fixture tree."""

from __future__ import annotations

from tagger.actions.actuator import Actuator
from tagger.actions.control import Safety
from tagger.kernelfs import KernelFS
from tagger.snapshot import Snapshot

#: No step limit, no cool-down: each apply() writes what is asked.
FREE = Safety(quota_floor=0.1, max_step=None, cooldown=0)


def tick(t):
    """A snapshot with no cgroups: the actuator only needs its time."""
    return Snapshot.synthetic([], t=t)


def act_on_tree(tmp_path, layout, **kw) -> Actuator:
    """An Actuator on the fixture tree under ``tmp_path`` (FREE unless ``safety=``)."""
    kw.setdefault("safety", FREE)
    return Actuator(layout, fs=KernelFS(tmp_path), state_dir=tmp_path / "state", durable=False, **kw)
