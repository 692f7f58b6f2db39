"""Per-process run-queue wait (and context switches) from the kernel's own
accounting, for the fallback collector.

Two sources, best first:

* **taskstats** over generic netlink (pyroute2), one TASKSTATS_CMD_ATTR_TGID
  request per process: ``cpu_delay_total`` summed over the thread group,
  *including threads that already exited*, plus ``nvcsw``/``nivcsw``.
  Needs CAP_NET_ADMIN (the command is GENL_ADMIN_PERM).
* **/proc/PID/task/TID/schedstat**, field 2 (run_delay, ns), summed over live
  threads: no privilege needed, but an exited thread's wait is lost.

Both read ``sched_info.run_delay``, which the scheduler keeps whenever
CONFIG_SCHED_INFO is built in (since Linux 5.14 "sched: Simplify sched_info_on()"
it no longer depends on delay accounting).  The ``kernel.task_delayacct``
sysctl gates only the block-I/O, swap and reclaim delays, so tagger does not
need to switch it on; :class:`DelayAcctSwitch` does so on request and puts the
old value back on every exit path.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
from dataclasses import dataclass
from typing import Iterable

from . import errors
from .kernelfs import HOST, KernelFS, from_oserror

log = logging.getLogger(__name__)

DELAYACCT_SYSCTL = "/proc/sys/kernel/task_delayacct"


@dataclass(frozen=True)
class ProcDelay:
    """Cumulative figures of one process (thread group), as the kernel keeps them."""
    run_delay_ns: int              # time runnable but waiting for a CPU
    nvcsw: int = -1                # voluntary context switches (-1: unknown)
    nivcsw: int = -1               # involuntary (preempted) context switches
    age_s: float = float("nan")    # seconds since the process started (NaN: ask age_of)


class SchedstatSource:
    """run_delay from /proc/PID/task/*/schedstat (no privilege, live threads only)."""

    name = "schedstat"

    def __init__(self, fs: KernelFS = HOST):
        self.fs = fs

    def read(self, tgids: Iterable[int]) -> dict[int, ProcDelay]:
        out = {}
        for tgid in tgids:
            task_dir = f"/proc/{tgid}/task"
            try:
                tids = self.fs.listdir(task_dir)
            except errors.Vanished:
                continue                # the process exited: a normal race
            total = 0
            seen = False
            for text in self.fs.read_small_many([f"{task_dir}/{tid}/schedstat" for tid in tids]):
                if text is None:
                    continue            # the thread exited since the listing
                try:
                    total += int(text.split()[1])
                except (ValueError, IndexError):
                    continue
                seen = True
            if seen:
                out[tgid] = ProcDelay(total)
        return out

    def age_of(self, tgid: int) -> float:
        """Seconds since ``tgid`` started (/proc/PID/stat starttime), NaN if gone."""
        try:
            stat = self.fs.read_text(f"/proc/{tgid}/stat")
            uptime = float(self.fs.read_text("/proc/uptime").split()[0])
            # comm may hold spaces and parentheses: fields start after the last ")".
            start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        except (errors.TaggerError, ValueError, IndexError):
            return float("nan")
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")

    def close(self):
        pass


class TaskstatsSource:
    """cpu_delay_total, nvcsw, nivcsw per thread group over taskstats netlink."""

    name = "taskstats"

    def __init__(self):
        from pyroute2 import TaskStats
        from pyroute2.netlink import NLM_F_REQUEST
        from pyroute2.netlink.taskstats import TASKSTATS_CMD_GET, tcmd
        self._tcmd, self._cmd, self._flags = tcmd, TASKSTATS_CMD_GET, NLM_F_REQUEST
        self._sock = TaskStats()
        try:
            self._sock.bind()
            self.read([os.getpid()], strict=True)       # fails here, not mid-run, without CAP_NET_ADMIN
        except BaseException:
            self._sock.close()
            raise

    def read(self, tgids: Iterable[int], strict: bool = False) -> dict[int, ProcDelay]:
        from pyroute2.netlink.exceptions import NetlinkError
        out = {}
        for tgid in tgids:
            msg = self._tcmd()
            msg["cmd"] = self._cmd
            msg["version"] = 1
            msg["attrs"].append(["TASKSTATS_CMD_ATTR_TGID", int(tgid)])
            try:
                reply = list(self._sock.nlm_request(msg, self._sock.prid, msg_flags=self._flags))
            except (NetlinkError, OSError) as err:
                mapped = _netlink_error(err, tgid)
                if strict or not isinstance(mapped, errors.Vanished):
                    raise mapped from err
                continue                # the process exited: a normal race
            for m in reply:
                aggr = m.get_attr("TASKSTATS_TYPE_AGGR_TGID")
                stats = aggr.get_attr("TASKSTATS_TYPE_STATS") if aggr is not None else None
                if stats is not None:
                    out[int(tgid)] = ProcDelay(int(stats["cpu_delay_total"]), int(stats["nvcsw"]),
                                               int(stats["nivcsw"]), stats["ac_etime"] / 1e6)
        return out

    def age_of(self, tgid: int) -> float:
        got = self.read([tgid]).get(tgid)
        return got.age_s if got else float("nan")

    def close(self):
        self._sock.close()


def _netlink_error(err: Exception, tgid: int) -> errors.TaggerError:
    """A taskstats request's failure as the domain error the kernel's errno
    means (the one mapping, kernelfs.from_oserror): ESRCH is a process that exited."""
    code = getattr(err, "code", None) or getattr(err, "errno", None) or errno.EIO
    if code in (errno.EPERM, errno.EACCES):
        return errors.PermissionDenied(code, "taskstats: needs CAP_NET_ADMIN")
    return from_oserror(OSError(code, os.strerror(code)), f"taskstats TGID {tgid}")


def open_delay_source(fs: KernelFS = HOST, prefer: str = "auto"):
    """taskstats when this is the real host and the socket works, else schedstat.
    ``prefer``: "auto", "taskstats" (error if unavailable) or "schedstat"."""
    if prefer not in ("auto", "taskstats", "schedstat"):
        raise errors.ConfigError(f"run-delay source must be auto, taskstats or schedstat, not {prefer!r}")
    if prefer != "schedstat" and fs.is_real:
        try:
            return TaskstatsSource()
        except Exception as err:       # no pyroute2, no CAP_NET_ADMIN, no taskstats in the kernel
            if prefer == "taskstats":
                raise
            log.info("taskstats unavailable (%s); reading /proc/PID/task/*/schedstat instead", err)
    elif prefer == "taskstats":
        raise errors.ConfigError("taskstats needs the real host, not a fixture tree")
    return SchedstatSource(fs)


class DelayAcctSwitch:
    """Turn ``kernel.task_delayacct`` on for as long as this object is open and
    put the previous value back on close, at interpreter exit, or when
    garbage-collected: whichever comes first, exactly once."""

    def __init__(self, fs: KernelFS = HOST):
        self.fs = fs
        self.previous: str | None = None
        text = fs.read_optional(DELAYACCT_SYSCTL)
        if text is None:
            return                    # kernel < 5.14: no such switch
        if text.strip() != "1":
            fs.write_text(DELAYACCT_SYSCTL, "1")
            self.previous = text.strip()
            atexit.register(self.restore)

    @property
    def changed(self) -> bool:
        return self.previous is not None

    def restore(self):
        if self.previous is None:
            return
        previous, self.previous = self.previous, None
        try:
            self.fs.write_text(DELAYACCT_SYSCTL, previous)
        finally:
            atexit.unregister(self.restore)

    close = restore

    def __del__(self):
        try:
            self.restore()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()
