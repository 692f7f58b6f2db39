// SPDX-License-Identifier: GPL-2.0
/* cgroup lifecycle probe: gives each new v2 cgroup a slot at mkdir, before
 * its first task can run, and tells user space about every mkdir/rmdir
 * (v1 hierarchies included, so a v1 blkio cgroup can share the slot of the
 * v2 cgroup at the same path). */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "tagger.h"
#include "maps.bpf.h"

/* MKDIR/RMDIR events the ring buffer had no room for (also counted in
 * ringbuf_drops, with the outliers): user space reconciles its slot table
 * with the tree when this moves.  One shared counter, taken at lifecycle
 * rate only. */
__u64 lifecycle_drops SEC(".bss") = 0;

static __always_inline void emit(__u32 kind, struct cgroup *cgrp, const char *path, __u32 slot)
{
	struct tg_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		global_of(bpf_get_smp_processor_id())->ringbuf_drops++;
		__sync_fetch_and_add(&lifecycle_drops, 1);
		return;
	}
	e->kind = kind;
	e->slot = slot;
	e->cgroup_id = BPF_CORE_READ(cgrp, kn, id);
	e->latency_ns = 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = 0;
	e->hierarchy_id = BPF_CORE_READ(cgrp, root, hierarchy_id);
	e->level = BPF_CORE_READ(cgrp, level);
	e->cause = 0;
	e->comm[0] = 0;
	bpf_probe_read_kernel_str(e->path, sizeof(e->path), path);
	bpf_ringbuf_submit(e, 0);
}

/* A v2 cgroup's slot holder: its local storage, or (hash variant) an entry
 * under its id, created empty.  NULL when neither can be had. */
static __always_inline struct tg_slot *slot_holder(bool storage, struct cgroup *cgrp)
{
	struct tg_slot empty = {};
	__u64 id;

	if (storage)
		return bpf_cgrp_storage_get(&cgroup_slots, cgrp, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	id = cgrp->kn->id;
	bpf_map_update_elem(&cgroup_ids, &id, &empty, BPF_NOEXIST);
	return bpf_map_lookup_elem(&cgroup_ids, &id);
}

static __always_inline int on_mkdir(bool storage, struct cgroup *cgrp, const char *path)
{
	struct tg_global *g = global_of(bpf_get_smp_processor_id());
	struct tg_slot *s;
	__u32 slot = 0;
	__u64 id;

	/* v1 hierarchies: user space maps them by path. */
	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0) {
		emit(TG_EV_MKDIR, cgrp, path, 0);
		return 0;
	}
	s = slot_holder(storage, cgrp);
	if (!s) {
		g->slots_exhausted++;
	} else if (!s->slot) {
		if (bpf_map_pop_elem(&free_slots, &slot) == 0) {
			s->slot = slot;
			/* On a pure v2 host the blkcg is this very cgroup. */
			id = BPF_CORE_READ(cgrp, kn, id);
			bpf_map_update_elem(&blkcg_slots, &id, &slot, BPF_ANY);
		} else {
			g->slots_exhausted++;
		}
	} else {
		slot = s->slot;
	}
	emit(TG_EV_MKDIR, cgrp, path, slot);
	return 0;
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(tg_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	return on_mkdir(SLOT_STORAGE, cgrp, path);
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(tg_cgroup_mkdir_hash, struct cgroup *cgrp, const char *path)
{
	return on_mkdir(SLOT_HASH, cgrp, path);
}

/* A task moved to another cgroup: cached slots may be stale.  Only the
 * thread-group leader is traced, so every task re-checks its slot. */
SEC("tp_btf/cgroup_attach_task")
int BPF_PROG(tg_cgroup_attach_task, struct cgroup *dst_cgrp, const char *path,
	     struct task_struct *task, bool threadgroup)
{
	if (BPF_CORE_READ(dst_cgrp, root, hierarchy_id) == 0)
		__sync_fetch_and_add(&slot_generation, 1);
	return 0;
}

static __always_inline int on_rmdir(bool storage, struct cgroup *cgrp, const char *path)
{
	struct tg_slot *s;
	__u32 slot = 0, *blk;
	__u64 id;

	if (BPF_CORE_READ(cgrp, root, hierarchy_id) == 0) {
		if (storage) {
			s = bpf_cgrp_storage_get(&cgroup_slots, cgrp, 0, 0);
			if (s) {
				slot = s->slot;
				/* User space recycles the slot after its last read. */
				s->slot = 0;
			}
		} else {
			id = cgrp->kn->id;
			s = bpf_map_lookup_elem(&cgroup_ids, &id);
			if (s)
				slot = s->slot;
			/* ids are never reused: the entry would only take room. */
			bpf_map_delete_elem(&cgroup_ids, &id);
		}
		/* The blkcg entry on_mkdir made, gone with its cgroup whatever
		 * becomes of this event (else churn fills the map).  Only if it
		 * still holds this cgroup's slot: on a hybrid host a v1 blkio
		 * cgroup may have the same id (ids are per hierarchy). */
		id = BPF_CORE_READ(cgrp, kn, id);
		blk = bpf_map_lookup_elem(&blkcg_slots, &id);
		if (slot && blk && *blk == slot)
			bpf_map_delete_elem(&blkcg_slots, &id);
	}
	emit(TG_EV_RMDIR, cgrp, path, slot);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(tg_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	return on_rmdir(SLOT_STORAGE, cgrp, path);
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(tg_cgroup_rmdir_hash, struct cgroup *cgrp, const char *path)
{
	return on_rmdir(SLOT_HASH, cgrp, path);
}

char LICENSE[] SEC("license") = "GPL";
