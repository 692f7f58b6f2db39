"""Intel RDT through the resctrl filesystem: cache (L3 CBM) and memory-bandwidth
(MB) allocation for a group of tasks.

Layout and rules follow Documentation/filesystems/resctrl.rst (arch/x86 resctrl):

    /sys/fs/resctrl/schemata            the default group: "L3:0=fffff;1=fffff"
    /sys/fs/resctrl/info/L3/{cbm_mask,min_cbm_bits,num_closids,sparse_masks,shareable_bits}
    /sys/fs/resctrl/info/MB/{bandwidth_gran,min_bandwidth,num_closids,delay_linear}
    /sys/fs/resctrl/info/last_cmd_status   why the last mkdir or write failed
    /sys/fs/resctrl/<group>/{schemata,tasks}

Values are validated here the way the kernel does it (fs/resctrl/ctrlmondata.c
``cbm_validate``/``bw_validate``), with the kernel's own wording, so a bad rule
is refused before anything is written; a write the kernel still refuses raises
with the text of ``info/last_cmd_status``.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field

from tagger import errors
from tagger.kernelfs import HOST, KernelFS
from tagger.rules.spec import RdtSpec

from .control import ControlPoint
from .refusal import ActionRefused

RESCTRL = "/sys/fs/resctrl"

#: Top-level names in resctrl that are not control groups.
NOT_GROUPS = frozenset({"info", "mon_groups", "mon_data"})

_GROUP_NAME = re.compile(r"^[A-Za-z0-9_.@:+-]{1,64}$")


@dataclass(frozen=True)
class CacheInfo:
    """info/<L3|L2|L3CODE|L3DATA>/: what a capacity bitmask may be."""
    name: str
    cbm_mask: int            # all usable bits ("fffff")
    min_cbm_bits: int
    num_closids: int
    sparse_masks: bool       # non-contiguous masks allowed (info/*/sparse_masks = 1)
    shareable_bits: int = 0

    @property
    def cbm_len(self) -> int:
        return self.cbm_mask.bit_length()

    @property
    def hex_width(self) -> int:
        # The kernel prints masks zero-padded to the mask's width ("%0*x").
        return (self.cbm_len + 3) // 4


@dataclass(frozen=True)
class MbInfo:
    """info/MB/: memory-bandwidth throttling, in percent of the full bandwidth."""
    bandwidth_gran: int
    min_bandwidth: int
    num_closids: int
    delay_linear: bool = True
    max_bandwidth: int = 100   # "default_ctrl" for MBA in percent


@dataclass
class ResctrlInfo:
    caches: dict[str, CacheInfo] = field(default_factory=dict)
    mb: MbInfo | None = None
    #: resource name -> cache/domain ids present in the default group's schemata
    #: (ids can have gaps: a socket without an L3 id 1, offlined packages).
    domains: dict[str, list[int]] = field(default_factory=dict)

    @property
    def num_closids(self) -> int:
        """CLOSIDs usable at once: the smallest count over the enabled resources
        (resctrl.rst: "the number of CLOSIDs ... is the minimum across resources")."""
        counts = [c.num_closids for c in self.caches.values()]
        if self.mb:
            counts.append(self.mb.num_closids)
        return min(counts) if counts else 0


def _refuse(msg, limit=None, path=""):
    return ActionRefused(msg, limit or msg, path)


def parse_cbm(text: str, cache: CacheInfo) -> int:
    """``"0x0f"``, ``"0f"`` or ``"25%"`` -> a capacity bitmask valid for ``cache``.

    A percentage takes that share of the mask's bits (rounded, at least
    ``min_cbm_bits``) from the low end.  Raises ActionRefused with the kernel's words.
    """
    text = str(text).strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise _refuse(f"l3 {text!r}: not a percentage", "percentage") from None
        if not 0 < pct <= 100:
            raise _refuse(f"l3 {text!r}: percentage out of range (0,100]", "percentage out of range")
        bits = max(cache.min_cbm_bits, 1, round(cache.cbm_len * pct / 100))
        bits = min(bits, cache.cbm_len)
        return (1 << bits) - 1
    digits = text[2:] if text.lower().startswith("0x") else text
    if not digits or not re.fullmatch(r"[0-9a-fA-F]+", digits):
        raise _refuse(f"Non-hex character in the mask {text}", "Non-hex character in the mask")
    return validate_cbm(int(digits, 16), cache)


def validate_cbm(val: int, cache: CacheInfo) -> int:
    """The kernel's cbm_validate(): range, contiguity, minimum bits."""
    if (cache.min_cbm_bits > 0 and val == 0) or val > cache.cbm_mask:
        raise _refuse(f"Mask out of range ({val:x} not within cbm_mask {cache.cbm_mask:x})",
                      "Mask out of range")
    if val == 0:
        return val
    first = (val & -val).bit_length() - 1
    run = val >> first
    zero_bit = first + ((run + 1) & -(run + 1)).bit_length() - 1   # first 0 above first
    if not cache.sparse_masks and (val >> zero_bit) != 0:
        raise _refuse(f"The mask {val:x} has non-consecutive 1-bits", "non-consecutive 1-bits")
    if zero_bit - first < cache.min_cbm_bits:
        raise _refuse(f"Need at least {cache.min_cbm_bits} bits in the mask ({val:x})",
                      "min_cbm_bits")
    return val


def validate_mb(value, mb: MbInfo) -> int:
    """The kernel's bw_validate(): an integer percent in [min_bandwidth, 100],
    rounded up to ``bandwidth_gran`` (the kernel rounds the same way, so the
    value we journal is the one the hardware gets)."""
    if not mb.delay_linear:
        raise _refuse("No support for non-linear MB domains", "delay_linear")
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
        raise _refuse(f"Invalid MB value {value}", "Invalid MB value")
    bw = int(value)
    if bw < mb.min_bandwidth or bw > mb.max_bandwidth:
        raise _refuse(f"MB value {bw} out of range [{mb.min_bandwidth},{mb.max_bandwidth}]",
                      "MB value out of range")
    gran = max(1, mb.bandwidth_gran)
    return -(-bw // gran) * gran


def validate_group_name(name: str) -> str:
    if not name or name in NOT_GROUPS or name in (".", "..") or not _GROUP_NAME.match(name):
        raise _refuse(f"invalid resctrl group name {name!r}", "group name")
    return name


def _parse_schemata(text: str) -> dict[str, dict[int, str]]:
    out: dict[str, dict[int, str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or ":" not in line:
            continue
        res, doms = line.split(":", 1)
        ids = {}
        for dom in doms.split(";"):
            if "=" in dom:
                i, v = dom.split("=", 1)
                ids[int(i.strip())] = v.strip()
        out[res.strip()] = ids
    return out


class Resctrl:
    """One resctrl mount, read and written through ``fs``."""

    def __init__(self, fs: KernelFS = HOST, root: str = RESCTRL):
        self.fs = fs
        self.root = root.rstrip("/")

    def p(self, *parts) -> str:
        return "/".join((self.root, *parts))

    def available(self) -> bool:
        return self.fs.is_dir(self.p("info"))

    # --- info -------------------------------------------------------------
    def info(self) -> ResctrlInfo:
        if not self.available():
            raise ActionRefused(f"{self.root}: resctrl not mounted (no RDT, or "
                                f"`mount -t resctrl resctrl {self.root}`)", "resctrl mounted")
        info = ResctrlInfo()
        for name in self.fs.listdir(self.p("info")):
            d = self.p("info", name)
            if not self.fs.is_dir(d) or name.endswith("_MON"):
                continue
            if name == "MB":
                info.mb = MbInfo(
                    bandwidth_gran=self.fs.read_int(d + "/bandwidth_gran"),
                    min_bandwidth=self.fs.read_int(d + "/min_bandwidth"),
                    num_closids=self.fs.read_int(d + "/num_closids"),
                    delay_linear=(self.fs.read_optional(d + "/delay_linear") or "1").strip() == "1",
                )
            elif self.fs.exists(d + "/cbm_mask"):
                info.caches[name] = CacheInfo(
                    name=name,
                    cbm_mask=int(self.fs.read_text(d + "/cbm_mask").strip(), 16),
                    min_cbm_bits=self.fs.read_int(d + "/min_cbm_bits"),
                    num_closids=self.fs.read_int(d + "/num_closids"),
                    # Absent before Linux 6.7 (sparse masks came with it): contiguous only.
                    sparse_masks=(self.fs.read_optional(d + "/sparse_masks") or "0").strip() == "1",
                    shareable_bits=int((self.fs.read_optional(d + "/shareable_bits") or "0").strip() or "0", 16),
                )
        for res, ids in _parse_schemata(self.fs.read_text(self.p("schemata"))).items():
            info.domains[res] = sorted(ids)
        return info

    def last_cmd_status(self) -> str:
        return (self.fs.read_optional(self.p("info", "last_cmd_status")) or "").strip()

    # --- groups -----------------------------------------------------------
    def groups(self) -> list[str]:
        """Control groups other than the default (root) one."""
        return [n for n in self.fs.listdir(self.root)
                if n not in NOT_GROUPS and self.fs.is_dir(self.p(n))]

    def has_group(self, name: str) -> bool:
        return self.fs.is_dir(self.p(name))

    def create_group(self, name: str, info: ResctrlInfo | None = None) -> None:
        """mkdir a control group; each one takes a CLOSID (the default group has CLOSID 0)."""
        validate_group_name(name)
        info = info or self.info()
        used = 1 + len(self.groups())
        if used >= info.num_closids:
            raise _refuse(f"{self.p(name)}: out of CLOSIDs ({used} of {info.num_closids} in use)",
                          "out of CLOSIDs", self.p(name))
        try:
            self.fs.mkdir(self.p(name), exist_ok=False)
        except errors.KernelRefused as err:
            if err.errno == errno.ENOSPC:
                raise _refuse(f"{self.p(name)}: out of CLOSIDs", "out of CLOSIDs", self.p(name)) from err
            raise self._explained(err) from err

    def remove_group(self, name: str) -> None:
        """rmdir: the kernel moves the group's tasks back to the default group."""
        validate_group_name(name)
        try:
            self.fs.rmdir(self.p(name))
        except errors.NotFound:
            pass

    # --- schemata ---------------------------------------------------------
    def schemata_text(self, spec: RdtSpec, info: ResctrlInfo | None = None) -> str:
        """The exact text written to ``<group>/schemata`` for ``spec``: one line per
        resource, one ``id=value`` per cache id of the default group."""
        info = info or self.info()
        lines = []
        if spec.l3 is not None:
            # With CDP on, L3 is split into L3CODE and L3DATA; the mask goes to both.
            names = [n for n in ("L3", "L3CODE", "L3DATA") if n in info.caches]
            if not names:
                raise _refuse("l3: this machine has no L3 allocation (no info/L3)", "no L3 resource")
            for name in names:
                cache = info.caches[name]
                mask = parse_cbm(spec.l3, cache)
                ids = info.domains.get(name, [])
                lines.append(f"{name}:" + ";".join(f"{i}={mask:0{cache.hex_width}x}" for i in ids))
        if spec.mb is not None:
            if info.mb is None:
                raise _refuse("mb: this machine has no memory-bandwidth allocation (no info/MB)",
                              "no MB resource")
            bw = validate_mb(spec.mb, info.mb)
            lines.append("MB:" + ";".join(f"{i}={bw}" for i in info.domains.get("MB", [])))
        return "".join(line + "\n" for line in lines)

    def read_schemata(self, name: str) -> str:
        return self.fs.read_text(self.p(name, "schemata"))

    def write_schemata(self, name: str, text: str) -> None:
        path = self.p(name, "schemata") if name else self.p("schemata")
        try:
            self.fs.write_text(path, text)
        except errors.KernelRefused as err:
            raise self._explained(err) from err

    # --- tasks ------------------------------------------------------------
    def tasks(self, name: str) -> set[int]:
        path = self.p(name, "tasks") if name else self.p("tasks")
        try:
            return {int(t) for t in self.fs.read_text(path).split()}
        except errors.NotFound:
            return set()

    def assign(self, name: str, tids) -> int:
        """Move threads into group ``name`` ("" = default group), one write each:
        the kernel stops at the first failure of a multi-id write.  Threads that
        exited meanwhile (ESRCH) are skipped.  Returns how many were moved."""
        path = self.p(name, "tasks") if name else self.p("tasks")
        moved = 0
        for tid in tids:
            try:
                self.fs.write_text(path, str(tid))
                moved += 1
            except errors.KernelRefused as err:
                if err.errno == errno.ESRCH:
                    continue
                raise self._explained(err) from err
        return moved

    def _explained(self, err: errors.KernelRefused) -> ActionRefused:
        status = self.last_cmd_status()
        detail = status if status and status != "ok" else os.strerror(err.errno)
        return ActionRefused(f"{err.path}: kernel refused {err.value!r}: {detail}",
                             status or "kernel refused", err.path)


# --- control points (see tagger.actions.control) -------------------------------

ABSENT, PRESENT = "absent", "present"


class RdtGroup(ControlPoint):
    """Whether control group ``name`` exists.  Node-wide (cgroup ""): undoing a
    group tagger made is ``rmdir``, which hands its tasks back to the default group."""

    def __init__(self, resctrl: Resctrl, name: str):
        super().__init__(resctrl.fs, "", resctrl.p(name))
        self.resctrl, self.name = resctrl, validate_group_name(name)
        self.knob = f"rdt.group {name}"

    def present(self) -> bool:
        return True

    def read(self) -> str:
        return PRESENT if self.resctrl.has_group(self.name) else ABSENT

    def write(self, value: str) -> None:
        if value == PRESENT and not self.resctrl.has_group(self.name):
            self.resctrl.create_group(self.name)
        elif value == ABSENT and self.resctrl.has_group(self.name):
            self.resctrl.remove_group(self.name)


class RdtSchemata(ControlPoint):
    """The schemata of group ``name`` (node-wide); text as written, one line per resource."""

    def __init__(self, resctrl: Resctrl, name: str):
        super().__init__(resctrl.fs, "", resctrl.p(name))
        self.resctrl, self.name = resctrl, name
        self.knob = f"rdt.schemata {name}"

    def present(self) -> bool:
        # Node-wide; a group that is not there yet (a dry run never makes it)
        # has the empty schemata, and restoring "" writes nothing.
        return True

    def read(self) -> str:
        if not self.resctrl.has_group(self.name):
            return ""
        # Normalised ("MB:0= 30" is shown padded) so a restore writes back valid text.
        lines = []
        for res, doms in _parse_schemata(self.resctrl.read_schemata(self.name)).items():
            lines.append(f"{res}:" + ";".join(f"{i}={v}" for i, v in doms.items()))
        return "".join(line + "\n" for line in lines)

    def write(self, value: str) -> None:
        if value:
            self.resctrl.write_schemata(self.name, value)


class RdtTasks(ControlPoint):
    """The threads of one cgroup kept in group ``name`` ("" = the default group).

    Written every tick, not only on change: threads the workload started since
    the last tick begin in their parent's group, not necessarily ours."""

    sync_each_tick = True

    def __init__(self, resctrl: Resctrl, name: str, cgroup: str, threads_file: str):
        super().__init__(resctrl.fs, cgroup, threads_file.rsplit("/", 1)[0])
        self.resctrl, self.name, self.threads_file = resctrl, name, threads_file
        self.knob = f"rdt.tasks {name}"

    def threads(self) -> set[int]:
        try:
            return {int(t) for t in self.fs.read_text(self.threads_file).split()}
        except errors.NotFound:
            return set()

    def read(self) -> str:
        mine = self.threads()
        return self.name if mine and mine <= self.resctrl.tasks(self.name) else ""

    def write(self, value: str) -> None:
        mine = self.threads()
        if value:
            if self.resctrl.has_group(value):
                self.resctrl.assign(value, sorted(mine - self.resctrl.tasks(value)))
        elif self.resctrl.has_group(self.name):
            self.resctrl.assign("", sorted(mine & self.resctrl.tasks(self.name)))
