"""Which kernels tagger's BPF side runs on, and which program variants it loads.

One build runs on every kernel from :data:`MIN_KERNEL` up: for each kernel
feature in :data:`FEATURES`, the BPF objects carry a program variant with it
and one without, and ``tg_open`` (tagger/native/native.c) probes the
kernel's BTF before load and loads one of each pair.  This module is where
Python (``tagger doctor``, the collector's health, the docs' table) learns
what those features are; the bits are the C side's ``TG_FEAT_*``.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

#: The oldest kernel the BPF side supports, by design (Ubuntu 22.04's 5.15):
#: below it, tagger runs on the cgroupfs fallback.
MIN_KERNEL = (5, 15)


@dataclass(frozen=True)
class Feature:
    bit: int           # TG_FEAT_* in tagger/native/native.h
    name: str
    since: str         # first mainline kernel with it
    with_it: str       # the variant loaded when the kernel has it
    without: str       # ... and when it has not: what tagger does instead


FEATURES = (
    Feature(1, "cgroup storage", "6.2",
            "cgroup-storage: each cgroup's slot in BPF_MAP_TYPE_CGRP_STORAGE",
            "cgroup-id-hash: each cgroup's slot in a hash map keyed by its kernfs id "
            "(looked up only after a task moved or a cgroup got its slot: same figures)"),
    Feature(2, "sched_switch prev_state", "5.18",
            "prev-state: preemption told by the tracepoint's prev_state argument",
            "task-state: preemption told by prev's own __state, read at the switch "
            "(a wake-up racing the switch counts as voluntary, as in bcc's runqlat)"),
    Feature(4, "block_io_done", "6.5 (RQF_IO_STAT in BTF: 6.8)",
            "io-done: a request's latency ends where /sys/block/*/stat ends it",
            "rq-complete: a request's latency ends at block_rq_complete "
            "(before the bio completion callbacks: a few microseconds shorter)"),
)


def variant_names(features: int) -> list[str]:
    """The short names of the variants loaded for ``features`` (TG_FEAT_* bits)."""
    return [(f.with_it if features & f.bit else f.without).split(":")[0] for f in FEATURES]


def describe(features: int) -> str:
    """``cgroup-storage, prev-state, io-done``: what ``tagger doctor`` names."""
    return ", ".join(variant_names(features))


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of ``release`` (default: this kernel's); (0, 0) if unparsable."""
    release = release or platform.release()
    try:
        major, minor = (int(x) for x in release.split("-")[0].split(".")[:2])
    except ValueError:
        return 0, 0
    return major, minor


def below_minimum(release: str | None = None) -> str | None:
    """Why the BPF side will not be tried on this kernel, or None."""
    version = kernel_version(release)
    if version >= MIN_KERNEL:
        return None
    return (f"Linux {release or platform.release()} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}, "
            "the oldest kernel tagger's BPF programs support")
