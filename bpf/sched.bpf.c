// SPDX-License-Identifier: GPL-2.0
/* Scheduler probe: per cgroup, CPU time, run-queue latency by cause,
 * voluntary/involuntary switches and who preempted whom.
 *
 * Per-task state (when it became runnable, why, when it got the CPU) lives
 * in task storage: it dies with the task, so pid reuse cannot leave stale
 * timestamps, and no hash map is touched on the hot path. */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "tagger.h"
#include "maps.bpf.h"
#include "core_fixes.bpf.h"

#define TASK_RUNNING 0

struct tg_task {
	__u64 enqueued_ns;       /* became runnable; 0 when not waiting */
	__u64 oncpu_ns;          /* switched in; 0 when not running */
	__u32 slot;              /* its cgroup's slot when it was switched in */
	__u32 cause;             /* enum tg_cause of the current wait */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tg_task);
} tasks SEC(".maps");

/* (victim, preemptor) -> preemptions; user space takes and empties it each
 * tick, so it holds one tick's pairs at most. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct tg_pair);
	__type(value, __u64);
} preempt_pairs SEC(".maps");

static __always_inline struct tg_task *task_state(struct task_struct *p, struct tg_global *g)
{
	struct tg_task *t = bpf_task_storage_get(&tasks, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (!t)
		g->task_storage_fail++;
	return t;
}

static __always_inline void mark_runnable(struct task_struct *p, __u32 cause)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct tg_global *g = global_of(cpu);
	struct tg_task *t;

	g->sched_events++;
	/* The idle task is always "running"; it never waits. */
	if (!p->pid)
		return;
	t = task_state(p, g);
	if (!t)
		return;
	/* A wakeup of a task that is still on a CPU, or already queued after a
	 * preemption, starts no new wait. */
	if (t->oncpu_ns || t->enqueued_ns)
		return;
	t->enqueued_ns = bpf_ktime_get_ns();
	t->cause = cause;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(tg_sched_wakeup, struct task_struct *p)
{
	mark_runnable(p, TG_CAUSE_WAKEUP);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(tg_sched_wakeup_new, struct task_struct *p)
{
	mark_runnable(p, TG_CAUSE_NEW);
	return 0;
}

static __always_inline void count_pair(__u32 victim, __u32 preemptor, struct tg_global *g)
{
	struct tg_pair key = { .victim = victim, .preemptor = preemptor };
	__u64 one = 1, *n;

	n = bpf_map_lookup_elem(&preempt_pairs, &key);
	if (n) {
		__sync_fetch_and_add(n, 1);
		return;
	}
	if (bpf_map_update_elem(&preempt_pairs, &key, &one, BPF_NOEXIST)) {
		/* Lost the race to another CPU, or the map is full. */
		n = bpf_map_lookup_elem(&preempt_pairs, &key);
		if (n)
			__sync_fetch_and_add(n, 1);
		else
			g->pairs_full++;
	}
}

/* The wait that just ended, into the cgroup's run-queue counters. */
static __always_inline void account_wait(struct tg_cg_stats *s, struct tg_task *t,
					 struct task_struct *p, __u64 now)
{
	__u64 delta = now - t->enqueued_ns;
	__u32 cause = t->cause < TG_CAUSES ? t->cause : TG_CAUSE_WAKEUP;
	struct tg_runq *q = &s->runq[cause];
	struct tg_event *e;

	q->count++;
	q->sum_ns += delta;
	if (delta > q->max_ns)
		q->max_ns = delta;
	q->hist[hist_bucket(delta)]++;

	if (!outlier_allowed(s, delta, now))
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		global_of(bpf_get_smp_processor_id())->ringbuf_drops++;
		return;
	}
	e->kind = TG_EV_RUNQ;
	e->slot = t->slot;
	e->cgroup_id = 0;
	e->latency_ns = delta;
	e->ts_ns = now;
	e->pid = p->pid;
	e->hierarchy_id = 0;
	e->level = 0;
	e->cause = cause;
	__builtin_memcpy(e->comm, p->comm, TG_COMM_LEN);
	e->path[0] = 0;
	bpf_ringbuf_submit(e, 0);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(tg_sched_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 cpu = bpf_get_smp_processor_id();
	struct tg_global *g = global_of(cpu);
	struct tg_cg_stats *s;
	struct tg_task *t;
	__u32 victim = 0;
	bool preempted = false;

	g->sched_events++;

	if (prev->pid) {
		t = task_state(prev, g);
		if (t) {
			/* Still runnable at switch-out: preempted (or yielded), so
			 * it waits on the run queue again from now. */
			preempted = prev_state == TASK_RUNNING;
			s = stats_of(cpu, t->slot);
			if (s) {
				if (t->oncpu_ns)
					s->cpu_ns += now - t->oncpu_ns;
				if (preempted)
					s->preempted++;
				else
					s->switches++;
			}
			victim = t->slot;
			t->oncpu_ns = 0;
			t->enqueued_ns = preempted ? now : 0;
			t->cause = TG_CAUSE_PREEMPT;
		}
	}

	if (!next->pid)
		return 0;
	t = task_state(next, g);
	if (!t)
		return 0;
	t->slot = slot_of_cgroup(next->cgroups->dfl_cgrp, g);
	t->oncpu_ns = now;
	s = stats_of(cpu, t->slot);
	if (!s)
		return 0;
	if (preempted) {
		s->preempts++;
		count_pair(victim, t->slot, g);
	}
	if (t->enqueued_ns) {
		account_wait(s, t, next, now);
		t->enqueued_ns = 0;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
