/* SPDX-License-Identifier: GPL-2.0 */
/* Maps and settings shared by every probe.  Each probe's object carries a
 * weak copy; `bpftool gen object` links them into one. */
#ifndef __MAPS_BPF_H
#define __MAPS_BPF_H

#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include "tagger.h"

/* Settings, written into .rodata before load. */
const volatile __u32 targ_max_slots __weak = TG_DEFAULT_SLOTS;
const volatile __u64 targ_outlier_ns __weak = 0;            /* 0: no outlier events */
const volatile __u64 targ_outlier_interval_ns __weak = 1000000000ULL;

/* Counters: one struct per (cpu, slot), cpu-major, so each CPU writes only
 * its own cache lines and user space reads them all through one mmap.
 * max_entries = nr_cpus * targ_max_slots, set before load. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tg_cg_stats);
} stats SEC(".maps") __weak;

/* cgroup -> slot, in one of two variants of every program that looks a
 * slot up (user space loads one of each pair, tg_open):
 *
 * - cgroup local storage (6.2+): the hot path finds a cgroup's slot without
 *   a hash lookup; v1 blkio cgroups carry the slot of the v2 cgroup at the
 *   same path (set by user space);
 * - a hash map keyed by the cgroup's kernfs id (what bpf_get_current_cgroup_id
 *   returns), for kernels without BPF_MAP_TYPE_CGRP_STORAGE.
 *
 * The scheduler looks a slot up only after something moved (slot_generation),
 * so the hash variant costs the hot path almost nothing more. */
struct {
	__uint(type, BPF_MAP_TYPE_CGRP_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tg_slot);
} cgroup_slots SEC(".maps") __weak;

/* max_entries = targ_max_slots, set before load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TG_DEFAULT_SLOTS);
	__type(key, __u64);
	__type(value, struct tg_slot);
} cgroup_ids SEC(".maps") __weak;

/* The variant a program is built for: always a constant, so each program
 * references one of the two maps only (the other may not exist). */
#define SLOT_STORAGE true
#define SLOT_HASH    false

/* Free slots: user space fills it and returns slots of removed cgroups;
 * the cgroup_mkdir handler takes from it. */
struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, TG_DEFAULT_SLOTS);
	__type(value, __u32);
} free_slots SEC(".maps") __weak;

/* v1/v2 blkcg cgroup id -> slot: the bio's blkcg is reached through an
 * untrusted pointer walk, so it is looked up by id rather than through
 * cgroup storage.  Filled by user space (and by the mkdir handler on v2). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TG_DEFAULT_SLOTS);
	__type(key, __u64);
	__type(value, __u32);
} blkcg_slots SEC(".maps") __weak;

/* Lifecycle events and latency outliers. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps") __weak;

/* Health counters, per CPU (read through the skeleton's .bss mmap);
 * one cache line each, so CPUs never share a line. */
struct tg_global globals[TG_MAX_CPUS] __weak SEC(".bss") __attribute__((aligned(64)));

/* Bumped whenever a task may have changed cgroup (cgroup_attach_task) or a
 * cgroup got its slot from user space: tasks cache their slot with the
 * generation it was looked up in, so the scheduler hot path does no cgroup
 * storage lookup unless something moved. */
__u64 slot_generation __weak SEC(".bss") __attribute__((aligned(64))) = 0;
/* Keeps the line of slot_generation (read by every switch, written almost
 * never) free of anything else. */
__u8 _slot_generation_line[56] __weak SEC(".bss");

static __always_inline struct tg_cg_stats *stats_of(__u32 cpu, __u32 slot)
{
	__u32 idx;

	if (slot >= targ_max_slots)
		slot = 0;
	idx = cpu * targ_max_slots + slot;
	return bpf_map_lookup_elem(&stats, &idx);
}

static __always_inline struct tg_global *global_of(__u32 cpu)
{
	return &globals[cpu & (TG_MAX_CPUS - 1)];
}

/* The slot of a cgroup into *slot: 0 (counted) when it has none yet.
 * Returns false when the storage is busy on this CPU (another BPF program
 * using it was preempted or interrupted here): the caller keeps what it
 * knew and asks again later.  F_CREATE makes NULL mean only that, not "no
 * storage" (a cgroup without one gets an empty one, once).  The hash
 * variant is never busy. */
static __always_inline bool lookup_slot(bool storage, struct cgroup *cgrp, struct tg_global *g, __u32 *slot)
{
	struct tg_slot *s;

	if (storage) {
		s = bpf_cgrp_storage_get(&cgroup_slots, cgrp, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (!s) {
			g->storage_busy++;
			return false;
		}
	} else {
		__u64 id = cgrp->kn->id;

		s = bpf_map_lookup_elem(&cgroup_ids, &id);
	}
	*slot = s ? s->slot : 0;
	if (!*slot)
		g->unknown_cgroup++;
	return true;
}

/* log2 bucket of a latency in units of 2^TG_HIST_SHIFT ns (about a
 * microsecond, as bcc's runqlat -u, without a 64-bit division). */
static __always_inline __u32 hist_bucket(__u64 ns)
{
	__u64 us = ns >> TG_HIST_SHIFT;
	__u32 r = 0, shift;

	shift = (us > 0xFFFFFFFF) << 5; us >>= shift; r |= shift;
	shift = (us > 0xFFFF) << 4; us >>= shift; r |= shift;
	shift = (us > 0xFF) << 3; us >>= shift; r |= shift;
	shift = (us > 0xF) << 2; us >>= shift; r |= shift;
	shift = (us > 0x3) << 1; us >>= shift; r |= shift;
	r |= (us >> 1);
	return r < TG_HIST_BUCKETS ? r : TG_HIST_BUCKETS - 1;
}

/* One more sample of `ns` in a log2 histogram.  The 6.1 verifier loses the
 * bound of hist_bucket's branchless arithmetic on the way to the index, so
 * the bound is checked again where it is used, behind a barrier the
 * compiler cannot fold it through. */
static __always_inline void hist_add(__u32 *hist, __u64 ns)
{
	__u32 b = hist_bucket(ns);

	barrier_var(b);
	if (b < TG_HIST_BUCKETS)
		hist[b]++;
}

/* Outlier events are rate limited per cgroup (per CPU) in the kernel. */
static __always_inline bool outlier_allowed(struct tg_cg_stats *s, __u64 lat, __u64 now)
{
	if (!targ_outlier_ns || lat < targ_outlier_ns)
		return false;
	if (now - s->last_outlier_ns < targ_outlier_interval_ns)
		return false;
	s->last_outlier_ns = now;
	return true;
}

#endif /* __MAPS_BPF_H */
