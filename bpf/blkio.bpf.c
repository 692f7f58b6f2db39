// SPDX-License-Identifier: GPL-2.0
/* Block I/O probe: per cgroup, completed requests, bytes, queue time
 * (insert -> issue), device time (issue -> complete) and a latency histogram.
 *
 * Completion runs in interrupt context, where the current task is whoever
 * was interrupted: the request is attributed at insert/issue to the bio's
 * blkcg (the io controller's cgroup; on a hybrid host a v1 blkio cgroup that
 * user space gave the slot of the v2 cgroup at the same path), falling back
 * to the issuing task's cgroup. */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "tagger.h"
#include "maps.bpf.h"
#include "core_fixes.bpf.h"

struct tg_rq {
	__u64 start_ns;          /* the kernel's own stamp (allocation), else insert */
	__u64 issue_ns;
	__u32 slot;
	__u32 done;              /* fully completed; accounting waits for block_io_done */
};

/* Set by user space before load when the kernel has the block_io_done
 * tracepoint (6.5, commit 5a80bd075f3b): the request's latency then ends
 * where the kernel's own I/O accounting ends, after the bio completion
 * callbacks, as in /sys/block/<dev>/stat.  That tracepoint fires only for
 * requests with RQF_IO_STAT, whose bit user space reads from the kernel's
 * BTF (the enumerator __RQF_IO_STAT: in an enum named rqf_flags from 6.14,
 * an anonymous one in 6.8-6.13); no bit known, no block_io_done. */
const volatile bool targ_has_io_done = false;
const volatile __u32 targ_rqf_io_stat = 0;

/* In-flight requests, keyed by the request's address (preallocated: no
 * allocation per event; a full map is counted in rq_full). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tg_rq);
} requests SEC(".maps");

static __always_inline __u32 slot_of_request(bool storage, struct request *rq, struct tg_global *g)
{
	struct bio *bio = BPF_CORE_READ(rq, bio);
	__u32 *slot, slot_id = 0;
	__u64 id;

	if (bio) {
		id = BPF_CORE_READ(bio, bi_blkg, blkcg, css.cgroup, kn, id);
		if (id) {
			slot = bpf_map_lookup_elem(&blkcg_slots, &id);
			if (slot && *slot)
				return *slot;
		}
	}
	/* No bio (flush) or a blkcg not mapped yet: the issuing task. */
	if (!lookup_slot(storage, bpf_get_current_task_btf()->cgroups->dfl_cgrp, g, &slot_id))
		return 0;
	return slot_id;
}

static __always_inline void track(bool storage, struct request *rq, bool issue)
{
	__u64 now = bpf_ktime_get_ns(), key = (__u64)rq;
	struct tg_global *g = global_of(bpf_get_smp_processor_id());
	struct tg_rq *r, fresh = {};

	g->io_events++;
	r = bpf_map_lookup_elem(&requests, &key);
	if (r && issue) {
		/* Issued after insert, or re-issued after a requeue. */
		r->issue_ns = now;
		return;
	}
	/* Inserted into a scheduler queue, or issued directly (no scheduler).
	 * The queue time starts where the kernel's own accounting starts
	 * (rq->start_time_ns, stamped at allocation: the plug wait counts, as
	 * in /sys/block/<dev>/stat and iostat's await); 0 if not stamped. */
	fresh.start_ns = BPF_CORE_READ(rq, start_time_ns);
	if (!fresh.start_ns || fresh.start_ns > now)
		fresh.start_ns = now;
	fresh.issue_ns = issue ? now : 0;
	fresh.slot = slot_of_request(storage, rq, g);
	if (bpf_map_update_elem(&requests, &key, &fresh, BPF_ANY))
		g->rq_full++;
}

SEC("tp_btf/block_rq_insert")
int BPF_PROG(tg_block_rq_insert, struct request *rq)
{
	track(SLOT_STORAGE, rq, false);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(tg_block_rq_issue, struct request *rq)
{
	track(SLOT_STORAGE, rq, true);
	return 0;
}

SEC("tp_btf/block_rq_insert")
int BPF_PROG(tg_block_rq_insert_hash, struct request *rq)
{
	track(SLOT_HASH, rq, false);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(tg_block_rq_issue_hash, struct request *rq)
{
	track(SLOT_HASH, rq, true);
	return 0;
}

/* The request is done: its latency into the cgroup's counters. */
static __always_inline void account_request(struct tg_rq *r, __u64 key, __u64 now, __u32 cpu)
{
	struct tg_cg_stats *s = stats_of(cpu, r->slot);
	__u64 lat, issue;
	struct tg_event *e;

	bpf_map_delete_elem(&requests, &key);
	if (!s)
		return;
	issue = r->issue_ns ? r->issue_ns : r->start_ns;
	lat = now - r->start_ns;
	s->io_ops++;
	s->io_queue_ns += issue - r->start_ns;
	s->io_device_ns += now - issue;
	if (lat > s->io_max_ns)
		s->io_max_ns = lat;
	hist_add(s->io_hist, lat);

	if (!outlier_allowed(s, lat, now))
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		global_of(cpu)->ringbuf_drops++;
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = TG_EV_IO;
	e->slot = r->slot;
	e->latency_ns = lat;
	e->ts_ns = now;
	bpf_ringbuf_submit(e, 0);
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(tg_block_rq_complete, struct request *rq, blk_status_t error,
	     unsigned int nr_bytes)
{
	__u64 key = (__u64)rq;
	__u32 cpu = bpf_get_smp_processor_id();
	struct tg_cg_stats *s;
	struct tg_rq *r;
	__u32 op;

	global_of(cpu)->io_events++;
	r = bpf_map_lookup_elem(&requests, &key);
	if (!r)
		return 0;        /* issued before we attached */
	s = stats_of(cpu, r->slot);
	if (!s)
		return 0;
	op = BPF_CORE_READ(rq, cmd_flags) & TG_REQ_OP_MASK;
	if (op == REQ_OP_READ)
		s->io_read_bytes += nr_bytes;
	else if (op == REQ_OP_WRITE)
		s->io_write_bytes += nr_bytes;
	/* A partial completion leaves the rest of the request in flight. */
	if (nr_bytes < BPF_CORE_READ(rq, __data_len))
		return 0;
	if (targ_has_io_done && (BPF_CORE_READ(rq, rq_flags) & targ_rqf_io_stat)) {
		r->done = 1;     /* block_io_done follows */
		return 0;
	}
	account_request(r, key, bpf_ktime_get_ns(), cpu);
	return 0;
}

SEC("tp_btf/block_io_done")
int BPF_PROG(tg_block_io_done, struct request *rq)
{
	__u64 key = (__u64)rq;
	struct tg_rq *r = bpf_map_lookup_elem(&requests, &key);

	if (r && r->done)
		account_request(r, key, bpf_ktime_get_ns(), bpf_get_smp_processor_id());
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
