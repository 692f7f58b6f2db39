"""``tagger doctor``: what this machine supports, what each gap costs, how to fix it.

Each check is a small function returning a :class:`Check`.  Its ``level`` says
what a failure costs:

* ``base``     tagger cannot run at all (exit status 2);
* ``bpf``      the BPF collector cannot run; tagger runs on the cgroupfs
               fallback (exit status 1);
* ``optional`` a feature is missing (some metrics NaN, some actions refused).

Other modules add checks with :func:`register` (the native module registers
its own probes); a registered function may also return a plain
``(name, ok, detail, fix)`` tuple, taken as an optional check.  ``ok`` is
True, False, or None (not probed: an earlier check failed).

The BPF probes call bpf(2) directly through ctypes with tiny maps and an empty
program, so they need neither the native module nor bpftool; every fd they
get is closed at once.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

from . import errors
from .kernelfs import HOST, KernelFS

BASE, BPF, OPTIONAL = "base", "bpf", "optional"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None
    detail: str
    fix: str = ""
    impact: str = ""          # what the absence means for tagger
    level: str = OPTIONAL

    def to_dict(self) -> dict:
        return asdict(self)


CheckFn = Callable[["Context"], "Check | tuple | Iterable[Check]"]


class Context:
    """What the checks share: the kernel files, and results of earlier checks."""

    def __init__(self, fs: KernelFS = HOST, load_programs: bool = True):
        self.fs = fs
        self.load_programs = load_programs
        self.results: dict[str, Check] = {}

    def passed(self, name: str) -> bool:
        c = self.results.get(name)
        return bool(c and c.ok)


# --- bpf(2) through ctypes -------------------------------------------------------------
# Values from include/uapi/linux/bpf.h; the native module carries the real ones,
# these only let doctor probe before (or without) it.
_BPF_MAP_CREATE, _BPF_PROG_LOAD, _BPF_RAW_TRACEPOINT_OPEN, _BPF_BTF_LOAD = 0, 5, 17, 18
_MAP_ARRAY, _MAP_RINGBUF, _MAP_CGRP_STORAGE = 2, 27, 32
_PROG_TRACING, _TRACE_RAW_TP = 26, 23
_F_NO_PREALLOC = 1
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
_ATTR_SIZE = 128

_libc = None


def _bpf(cmd: int, attr: bytes) -> int:
    """bpf(cmd, attr) -> fd or -errno."""
    global _libc
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        return -errno.ENOSYS
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(_ATTR_SIZE))
    return ret if ret >= 0 else -ctypes.get_errno()


def _map_create(map_type, key_size, value_size, max_entries, flags=0, btf_fd=0, key_id=0, value_id=0) -> int:
    attr = struct.pack("=IIIIIII16sIIIII", map_type, key_size, value_size, max_entries, flags, 0, 0,
                       b"tagger_doctor", 0, btf_fd, key_id, value_id, 0)
    return _bpf(_BPF_MAP_CREATE, attr)


def _int_btf() -> int:
    """Load a BTF blob holding only `int` (type 1): local-storage maps need BTF ids."""
    strings = b"\0int\0"
    # struct btf_type {name_off, info (kind INT = 1 << 24), size} + INT encoding (signed, 32 bits)
    types = struct.pack("=IIII", 1, 1 << 24, 4, (1 << 24) | 32)
    header = struct.pack("=HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    blob = ctypes.create_string_buffer(header + types + strings)
    attr = struct.pack("=QQIII", ctypes.addressof(blob), 0, len(header + types + strings), 0, 0)
    return _bpf(_BPF_BTF_LOAD, attr)


def _close(fd: int):
    if fd >= 0:
        os.close(fd)


def _errno_text(ret: int) -> str:
    code = -ret
    return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"


def vmlinux_btf_type_id(name: str, kind: int = 8, path="/sys/kernel/btf/vmlinux", fs: KernelFS = HOST) -> int | None:
    """The id of BTF type ``name`` (default kind 8, TYPEDEF) in the kernel's BTF."""
    try:
        data = fs.read_bytes(path)
    except errors.TaggerError:
        return None
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from("=HBBIIIII", data)
    if magic != 0xEB9F:
        return None
    types = hdr_len + type_off
    strs = hdr_len + str_off
    want = name.encode() + b"\0"
    pos, end, type_id = types, types + type_len, 0
    # Extra bytes after each struct btf_type, per kind (include/uapi/linux/btf.h).
    fixed = {1: 4, 3: 12, 14: 4, 17: 4}
    per_member = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
    while pos < end:
        name_off, info, _size = struct.unpack_from("=III", data, pos)
        type_id += 1
        k = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        if k == kind and data.startswith(want, strs + name_off):
            return type_id
        pos += 12 + fixed.get(k, 0) + per_member.get(k, 0) * vlen
    return None


# --- the checks -------------------------------------------------------------------------------

_CAPS = {"CAP_SYS_ADMIN": 21, "CAP_NET_ADMIN": 12, "CAP_SYS_RESOURCE": 24, "CAP_PERFMON": 38, "CAP_BPF": 39}


def _caps(fs: KernelFS) -> set[str]:
    text = fs.read_optional("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            eff = int(line.split()[1], 16)
            return {n for n, bit in _CAPS.items() if eff >> bit & 1}
    return set()


def check_privileges(ctx: Context) -> Check:
    caps = _caps(ctx.fs)
    bpf_ok = "CAP_SYS_ADMIN" in caps or {"CAP_BPF", "CAP_PERFMON"} <= caps
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    detail = f"{who}; effective: {', '.join(sorted(caps)) or 'none of ' + ', '.join(_CAPS)}"
    return Check("privileges", bpf_ok, detail,
                 fix="run as root (sudo tagger ...), or grant CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE "
                     "and CAP_NET_ADMIN (systemd: AmbientCapabilities=)",
                 impact="loading BPF programs needs CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN); "
                        "changing cgroup and resctrl knobs needs write access to them",
                 level=BPF)


def check_kernel(ctx: Context) -> Check:
    from .native.variants import MIN_KERNEL, below_minimum

    release = platform.release()
    too_old = below_minimum(release)
    need = f"{MIN_KERNEL[0]}.{MIN_KERNEL[1]}"
    return Check("kernel", not too_old, f"Linux {release} (the BPF side supports {need} and later)",
                 fix=f"upgrade to Linux {need} or later (Debian 12 ships 6.1, Ubuntu 22.04 5.15)",
                 impact="tagger runs on the cgroupfs fallback: no run-queue percentiles, "
                        "preemption attribution or I/O latency",
                 level=BPF)


def check_btf(ctx: Context) -> Check:
    path = "/sys/kernel/btf/vmlinux"
    if ctx.fs.exists(path):
        size = ctx.fs.stat(path).st_size
        return Check("BTF", True, f"{path} ({size / 2**20:.1f} MiB)", level=BPF)
    return Check("BTF", False, f"{path} is missing",
                 fix="use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's is)",
                 impact="CO-RE programs cannot be relocated to this kernel, and tp_btf hooks need BTF",
                 level=BPF)


def check_bpf_syscall(ctx: Context) -> Check:
    fd = _map_create(_MAP_ARRAY, 4, 8, 1)
    unpriv = (ctx.fs.read_optional("/proc/sys/kernel/unprivileged_bpf_disabled") or "?").strip()
    if fd >= 0:
        _close(fd)
        return Check("bpf() syscall", True, f"array map created (unprivileged_bpf_disabled={unpriv})", level=BPF)
    why = _errno_text(fd)
    if -fd in (errno.EPERM, errno.EACCES):
        hint = (f"kernel.unprivileged_bpf_disabled={unpriv}: only CAP_BPF/CAP_SYS_ADMIN may call bpf()"
                if unpriv in ("1", "2") else "missing CAP_BPF")
        fix = "run as root or with CAP_BPF+CAP_PERFMON; in a container, allow bpf() in seccomp and grant the capabilities"
    elif -fd == errno.ENOSYS:
        hint, fix = "the kernel has no bpf() (CONFIG_BPF_SYSCALL=n) or seccomp blocks it", \
            "use a kernel with CONFIG_BPF_SYSCALL=y; allow bpf in the seccomp profile"
    else:
        hint, fix = "", "see dmesg"
    return Check("bpf() syscall", False, f"BPF_MAP_CREATE failed: {why}" + (f"; {hint}" if hint else ""),
                 fix=fix, impact="no BPF at all: only the cgroupfs fallback can run", level=BPF)


def _needs_bpf(ctx, name, level=BPF) -> Check | None:
    if not ctx.passed("bpf() syscall"):
        return Check(name, None, "not probed: bpf() is not usable", level=level)
    return None


def check_tp_btf(ctx: Context) -> Check:
    skipped = _needs_bpf(ctx, "tp_btf programs")
    if skipped:
        return skipped
    impact = "the scheduler hook (sched_switch) cannot attach: no CPU or run-queue figures"
    btf_id = vmlinux_btf_type_id("btf_trace_sched_switch", fs=ctx.fs)
    if btf_id is None:
        return Check("tp_btf programs", False, "btf_trace_sched_switch not found in the kernel's BTF",
                     fix="use a kernel with BTF (CONFIG_DEBUG_INFO_BTF=y), 5.5 or later", impact=impact, level=BPF)
    insns = bytes.fromhex("b700000000000000" "9500000000000000")     # r0 = 0; exit
    insn_buf = ctypes.create_string_buffer(insns)
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=IIQQIIQ", attr, 0, _PROG_TRACING, 2, ctypes.addressof(insn_buf),
                     ctypes.addressof(license_), 1, len(log), ctypes.addressof(log))
    struct.pack_into("=16s", attr, 48, b"tagger_doctor")
    struct.pack_into("=I", attr, 68, _TRACE_RAW_TP)            # expected_attach_type
    struct.pack_into("=I", attr, 108, btf_id)                  # attach_btf_id
    prog = _bpf(_BPF_PROG_LOAD, bytes(attr))
    if prog < 0:
        verifier = log.value.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return Check("tp_btf programs", False,
                     f"loading an empty tp_btf/sched_switch program failed: {_errno_text(prog)} {verifier[0]}",
                     fix="Linux 5.5+ with BTF; CAP_BPF+CAP_PERFMON", impact=impact, level=BPF)
    try:
        # Attach it for a moment (the empty program does nothing): proves attach works too.
        link = _bpf(_BPF_RAW_TRACEPOINT_OPEN, struct.pack("=QI", 0, prog))
        if link < 0:
            return Check("tp_btf programs", False, f"attaching tp_btf/sched_switch failed: {_errno_text(link)}",
                         fix="CAP_PERFMON (or root); check the lockdown mode (/sys/kernel/security/lockdown)",
                         impact=impact, level=BPF)
        _close(link)
    finally:
        _close(prog)
    return Check("tp_btf programs", True, f"empty tp_btf/sched_switch loaded and attached (BTF id {btf_id})",
                 level=BPF)


def check_ringbuf(ctx: Context) -> Check:
    skipped = _needs_bpf(ctx, "ring buffer")
    if skipped:
        return skipped
    fd = _map_create(_MAP_RINGBUF, 0, 0, 4096)
    if fd >= 0:
        _close(fd)
        return Check("ring buffer", True, "BPF_MAP_TYPE_RINGBUF created", level=BPF)
    return Check("ring buffer", False, f"BPF_MAP_TYPE_RINGBUF: {_errno_text(fd)}",
                 fix="Linux 5.8 or later", impact="no cgroup lifecycle or latency-outlier events", level=BPF)


def _storage(ctx: Context, name: str, map_type: int, since: str, impact: str, level: str) -> Check:
    skipped = _needs_bpf(ctx, name, level)
    if skipped:
        return skipped
    btf = _int_btf()
    if btf < 0:
        return Check(name, False, f"BPF_BTF_LOAD: {_errno_text(btf)}", fix=f"Linux {since} with BTF",
                     impact=impact, level=level)
    try:
        fd = _map_create(map_type, 4, 4, 0, _F_NO_PREALLOC, btf, 1, 1)
    finally:
        _close(btf)
    if fd >= 0:
        _close(fd)
        return Check(name, True, "map created", level=level)
    return Check(name, False, f"map create: {_errno_text(fd)}", fix=f"Linux {since} or later",
                 impact=impact, level=level)


def check_cgroup_storage(ctx: Context) -> Check:
    return _storage(ctx, "cgroup storage", _MAP_CGRP_STORAGE, "6.2",
                    "each cgroup's slot lives in a hash map keyed by cgroup id instead (same figures)",
                    OPTIONAL)


def check_native(ctx: Context) -> Check:
    """tagger's own programs: the native module is built, and (as root) they load and attach."""
    try:
        from tagger import native
    except Exception as err:      # noqa: BLE001 - any import failure means "not usable"
        return Check("tagger BPF programs", False, f"tagger.native does not import: {err}",
                     fix="rebuild: make install", impact="no BPF collector", level=BPF)
    if native.lib is None:
        return Check("tagger BPF programs", False, f"native module not built ({native.IMPORT_ERROR})",
                     fix="make install (needs clang, libbpf-dev, bpftool)", impact="no BPF collector", level=BPF)
    if not ctx.load_programs:
        return Check("tagger BPF programs", None, "native module built; load not tried (--no-load)", level=BPF)
    if not (ctx.passed("bpf() syscall") and ctx.passed("BTF")):
        return Check("tagger BPF programs", None, "not loaded: BTF or bpf() missing", level=BPF)
    try:
        from tagger.native.probes import Probes
        with Probes(max_slots=64) as probes:
            probes.attach()
    except Exception as err:      # noqa: BLE001 - report whatever the loader said
        return Check("tagger BPF programs", False, f"load/attach failed: {err}",
                     fix="run with -vv for the libbpf log; check the items above",
                     impact="no BPF collector: the cgroupfs fallback runs instead", level=BPF)
    return Check("tagger BPF programs", True, "loaded, attached and detached", level=BPF)


def check_variants(ctx: Context) -> list[Check]:
    """The program variants tagger loads on this kernel, from its BTF (like
    ``tetra probe``): one line per kernel feature with a variant."""
    from tagger import native

    if native.lib is None:
        return [Check("BPF program variants", None, "not probed: native module not built")]
    from tagger.native.variants import FEATURES, describe

    have = int(native.lib.tg_probe_features())
    out = [Check("BPF program variants", True, describe(have))]
    for f in FEATURES:
        ok = bool(have & f.bit)
        out.append(Check(f"  {f.name}", ok, f.with_it if ok else f.without,
                         fix=f"Linux {f.since}", impact="" if ok else "a variant without it runs instead"))
    return out


def check_cgroups(ctx: Context) -> list[Check]:
    from . import errors
    from .cgroups import Layout
    try:
        layout = Layout.detect(ctx.fs)
    except (errors.TaggerError, OSError) as err:
        return [Check("cgroup layout", False, str(err), fix="mount cgroup2 at /sys/fs/cgroup",
                      impact="nothing to measure or act on", level=BASE)]
    out = []
    if layout.v2_root is None:
        out.append(Check("cgroup layout", False, f"v1 only ({', '.join(sorted(layout.v1_roots))})",
                         fix="boot with systemd.unified_cgroup_hierarchy=1 (v2) or mount cgroup2 "
                             "at /sys/fs/cgroup/unified (hybrid)",
                         impact="BPF sees cgroup v2 ids only: without v2 it cannot tell workloads apart; "
                                "the fallback reads v1 files",
                         level=BPF))
    else:
        ctrls = " ".join(sorted(layout.v2_controllers)) or "none"
        out.append(Check("cgroup layout", True, f"{layout.kind}: v2 at {layout.v2_root} (ids; controllers: {ctrls})",
                         level=BPF))
    for ctrl, why in (("cpu", "cpu quota actions and cpu.throttled"),
                      ("io", "io limit actions and the fallback's io.* figures"),
                      ("memory", "mem.current")):
        v = layout.controller_version(ctrl)
        if v is None:
            out.append(Check(f"{ctrl} controller", False, "not available",
                             fix=f"enable it: echo +{ctrl} > {layout.v2_root or '/sys/fs/cgroup'}/cgroup.subtree_control"
                                 if layout.v2_root else f"mount the v1 {ctrl} hierarchy",
                             impact=f"no {why}", level=OPTIONAL))
        else:
            out.append(Check(f"{ctrl} controller", True, f"cgroup v{v} at {layout.controller_root(ctrl)}"))
    return out


def check_psi(ctx: Context) -> Check:
    if ctx.fs.exists("/proc/pressure/cpu"):
        return Check("pressure (PSI)", True, "/proc/pressure/{cpu,io,memory}")
    return Check("pressure (PSI)", False, "/proc/pressure is missing",
                 fix="boot with psi=1 (CONFIG_PSI=y)", impact="psi.* columns are NaN")


def check_resctrl(ctx: Context) -> Check:
    impact = "rdt actions (cache and memory-bandwidth masks) are refused"
    if ctx.fs.is_dir("/sys/fs/resctrl/info"):
        res = [r for r in ctx.fs.listdir("/sys/fs/resctrl/info") if r != "last_cmd_status"]
        return Check("resctrl", True, f"mounted at /sys/fs/resctrl (resources: {', '.join(res) or 'none'})")
    filesystems = ctx.fs.read_optional("/proc/filesystems") or ""
    cpuinfo = ctx.fs.read_optional("/proc/cpuinfo") or ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    rdt = sorted(flags & {"rdt_a", "cat_l3", "cat_l2", "cdp_l3", "mba"})
    if "resctrl" in filesystems.split():
        return Check("resctrl", False, f"supported but not mounted (CPU flags: {', '.join(rdt) or 'none'})",
                     fix="mount -t resctrl resctrl /sys/fs/resctrl", impact=impact)
    return Check("resctrl", False, f"kernel has no resctrl (CPU RDT flags: {', '.join(rdt) or 'none'})",
                 fix="needs an Intel RDT / AMD PQoS CPU and CONFIG_X86_CPU_RESCTRL=y", impact=impact)


def check_delay_accounting(ctx: Context) -> Check:
    value = (ctx.fs.read_optional("/proc/sys/kernel/task_delayacct") or "").strip()
    sched = ctx.fs.exists("/proc/self/schedstat")
    source = None
    if ctx.fs.is_real:
        try:
            from .taskstats import TaskstatsSource
            TaskstatsSource().close()
            source = "taskstats"
        except Exception:         # noqa: BLE001 - no pyroute2, no CAP_NET_ADMIN, no taskstats
            source = None
    if source is None and sched:
        source = "/proc/PID/schedstat"
    sysctl = f"kernel.task_delayacct={value}" if value else "no kernel.task_delayacct (Linux < 5.14)"
    if source is None:
        return Check("delay accounting", False, f"{sysctl}; neither taskstats nor /proc/PID/schedstat",
                     fix="CONFIG_SCHED_INFO=y (via CONFIG_SCHEDSTATS or CONFIG_TASK_DELAY_ACCT)",
                     impact="the fallback has no runq.wait")
    note = "" if value != "0" else " (run delay does not need it; it gates I/O and swap delays only)"
    return Check("delay accounting", True, f"fallback run delay from {source}; {sysctl}{note}")


def check_jit(ctx: Context) -> Check:
    value = (ctx.fs.read_optional("/proc/sys/net/core/bpf_jit_enable") or "").strip()
    if value in ("1", "2"):
        return Check("BPF JIT", True, f"net.core.bpf_jit_enable={value}")
    return Check("BPF JIT", False, f"net.core.bpf_jit_enable={value or 'missing'}",
                 fix="sysctl -w net.core.bpf_jit_enable=1",
                 impact="interpreted BPF: scheduler hooks cost several times more per event")


#: The checks, in the order shown.  The native module may add its own with register().
CHECKS: list[CheckFn] = [
    check_kernel, check_privileges, check_btf, check_bpf_syscall, check_tp_btf, check_ringbuf,
    check_cgroup_storage, check_jit, check_cgroups, check_native, check_variants,
    check_psi, check_delay_accounting, check_resctrl,
]


def register(fn: CheckFn, before: str | None = None) -> CheckFn:
    """Add a check (optionally before the check function named ``before``)."""
    if before is not None:
        for i, existing in enumerate(CHECKS):
            if existing.__name__ == before:
                CHECKS.insert(i, fn)
                return fn
    CHECKS.append(fn)
    return fn


def _as_checks(fn: CheckFn, got) -> list[Check]:
    if isinstance(got, Check):
        return [got]
    if isinstance(got, tuple) and got and isinstance(got[0], str):
        return [Check(*got)]
    if got is None:
        return []
    return [c if isinstance(c, Check) else Check(*c) for c in got]


def run_checks(fs: KernelFS = HOST, checks: Iterable[CheckFn] | None = None,
               load_programs: bool = True) -> list[Check]:
    """Run every check; a check that crashes is reported as failed, not raised."""
    ctx = Context(fs, load_programs)
    out = []
    for fn in list(CHECKS if checks is None else checks):
        try:
            results = _as_checks(fn, fn(ctx))
        except Exception as err:      # noqa: BLE001 - doctor must report, not crash
            name = fn.__name__.removeprefix("check_").replace("_", " ")
            results = [Check(name, False, f"the check itself failed: {type(err).__name__}: {err}",
                             level=OPTIONAL)]
        for c in results:
            ctx.results[c.name] = c
            out.append(c)
    return out


EXIT_BPF, EXIT_FALLBACK, EXIT_CANNOT_RUN = 0, 1, 2


def verdict(checks: Iterable[Check]) -> tuple[int, str]:
    """(exit status, sentence): 0 BPF can run, 1 only the fallback, 2 not at all."""
    checks = list(checks)
    if any(c.ok is False for c in checks if c.level == BASE):
        return EXIT_CANNOT_RUN, "tagger cannot run here"
    bad = [c.name for c in checks if c.level == BPF and c.ok is False]
    if bad:
        return EXIT_FALLBACK, f"tagger runs on the cgroupfs fallback only (BPF blocked by: {', '.join(bad)})"
    return EXIT_BPF, "tagger can run with BPF"
