"""Block devices as rules name them: "MAJ:MIN", "/dev/vda" or "vda".

One lookup for the two places that need it: ``tagger rules check`` refuses a
device this node does not have (tagger.rules.node) and the actuator resolves
the device when it writes the limit (tagger.actions.io), with the same words.
blk-throttle limits whole disks only, so a partition is refused in both.
"""

from __future__ import annotations

import os
import re

from tagger.kernelfs import KernelFS

#: Not disks a limit is meant for: loop, RAM, network and removable devices.
SKIP_DISKS = ("loop", "ram", "zram", "nbd", "sr", "fd")

_MAJ_MIN = re.compile(r"^\d+:\d+$")


def is_numbers(device: str) -> bool:
    """"MAJ:MIN" (digits and colons): passed to the kernel as it is."""
    return ":" in device and all(p.isdigit() for p in device.split(":"))


def problem(fs: KernelFS, device: str, check_numbers: bool = False) -> tuple[str, str] | None:
    """Why a limit on ``device`` cannot apply on this node, and the limit it
    breaks ("device exists", "whole disk"), or None.  A "MAJ:MIN" is looked up
    only with ``check_numbers`` (the kernel's io.max refuses a missing one with
    ENODEV anyway)."""
    if is_numbers(device):
        if not check_numbers or not _MAJ_MIN.match(device):
            return None
        base = f"/sys/dev/block/{device}"
        if not fs.exists(base):
            return (f"io device {device!r}: no block device {device} on this node (/sys/dev/block)",
                    "device exists")
    else:
        base = f"/sys/class/block/{os.path.basename(device.rstrip('/'))}"
        if not fs.exists(base + "/dev"):
            return f"io device {device!r}: no such block device ({base})", "device exists"
    if fs.exists(base + "/partition"):
        return (f"io device {device!r} is a partition; blk-throttle limits whole disks, name the disk instead",
                "whole disk")
    return None


def numbers(fs: KernelFS, device: str | None) -> list[str]:
    """``"254:0"``, ``"/dev/vda"`` or ``"vda"`` -> ["254:0"]; None -> every whole
    disk.  The caller has checked :func:`problem` first."""
    if device is None:
        disks = [d for d in fs.listdir("/sys/block") if not d.startswith(SKIP_DISKS)]
        return [fs.read_text(f"/sys/block/{d}/dev").strip() for d in disks]
    if is_numbers(device):
        return [device]
    return [fs.read_text(f"/sys/class/block/{os.path.basename(device.rstrip('/'))}/dev").strip()]
