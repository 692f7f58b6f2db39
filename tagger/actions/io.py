"""I/O limit control points: bytes and operations per second, per block device.

cgroup v2: one ``io.max`` line per device, ``"MAJ:MIN rbps=N wbps=N riops=N wiops=N"``
("max" = no limit).  cgroup v1: ``blkio.throttle.{read,write}_{bps,iops}_device``,
one ``"MAJ:MIN N"`` line per device, where writing 0 removes the rule
(Documentation/admin-guide/cgroup-v1/blkio-controller.rst).  Both read and
write the v2 text form here, so the journal holds the same thing either way.

Limits apply to whole disks; blk-throttle has no per-partition rules.
"""

from __future__ import annotations


from tagger import blockdev, errors
from tagger.kernelfs import KernelFS
from tagger.knobs import (IO_KEYS, IO_LIMIT_MIN, IO_V1_FILES, format_io_limits, format_io_max_line, io_max_device,
                          parse_io_limits)
from tagger.rules.spec import IoSpec

from .control import ControlPoint, Safety
from .refusal import ActionRefused

def spec_limits(spec: IoSpec) -> dict[str, int | None]:
    out = spec.limits()
    for k, v in out.items():
        if v is not None and v < IO_LIMIT_MIN:
            # v1 reads 0 as "no rule" and a stopped disk is never what a rule means.
            raise ActionRefused(f"io {k}={v}: a limit must be at least 1 per second", f"{k} >= 1")
    return {k: None if v is None else int(v) for k, v in out.items()}


def resolve_devices(fs: KernelFS, device: str | None) -> list[str]:
    """``"254:0"``, ``"/dev/vda"`` or ``"vda"`` -> ["254:0"]; None -> every whole disk."""
    found = None if device is None else blockdev.problem(fs, device)
    if found is not None:
        raise ActionRefused(*found)
    return blockdev.numbers(fs, device)


class IoLimit(ControlPoint):
    """The limits of one cgroup on one device."""

    def __init__(self, fs: KernelFS, cgroup: str, directory: str, version: int, device: str):
        super().__init__(fs, cgroup, directory)
        self.version = version
        self.device = device
        self.knob = f"io.max {device}"

    def read(self) -> str:
        if self.version == 2:
            # No io.max: the parent does not delegate io, and the kernel charges
            # this cgroup's I/O to an ancestor (named in the refusal).
            rest = io_max_device(self.read_knob("io.max", "io", 2), self.device)
            return format_io_limits(parse_io_limits(rest or ""))
        limits: dict[str, int | None] = {}
        for k, f in IO_V1_FILES.items():
            v = io_max_device(self.fs.read_text(f"{self.dir}/{f}"), self.device)
            limits[k] = int(v) if v and int(v) > 0 else None
        return format_io_limits(limits)

    def write(self, text: str) -> None:
        limits = parse_io_limits(text)
        try:
            if self.version == 2:
                self.fs.write_text(f"{self.dir}/io.max", format_io_max_line(self.device, limits))
                return
            for k, f in IO_V1_FILES.items():
                v = limits[k]
                self.fs.write_text(f"{self.dir}/{f}", f"{self.device} {0 if v is None else v}")
        except errors.KernelRefused as err:
            raise ActionRefused(f"{self.cgroup}: {err} (blk-throttle refuses partitions, unknown "
                                f"devices and malformed limits)", "kernel refused", err.path) from err

    def tighter(self, old: str, new: str) -> bool:
        cur, want = parse_io_limits(old), parse_io_limits(new)
        return any(w is not None and (c is None or w < c) for c, w in zip(cur.values(), want.values()))

    def paced(self, current: str, wanted: str, safety: Safety, held_for: float | None) -> str:
        cur, want = parse_io_limits(current), parse_io_limits(wanted)
        if self.tighter(current, wanted) and held_for is not None and held_for < safety.cooldown:
            return current
        if safety.max_step is not None:
            for k in IO_KEYS:
                c, w = cur[k], want[k]
                # From "no limit" there is no rate to step from: the first limit goes straight in.
                if c is not None and w is not None and w < c:
                    want[k] = max(w, int(c * (1 - safety.max_step)))
        return format_io_limits(want)
