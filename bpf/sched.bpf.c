// SPDX-License-Identifier: GPL-2.0
/* Scheduler probe: per cgroup, CPU time, run-queue latency by cause,
 * voluntary/involuntary switches and who preempted whom.
 *
 * One program on the hot path, sched_switch: there is no wakeup program.
 * The kernel already stamps each queued task with the rq clock
 * (task_struct.sched_info.last_queued, set at enqueue and when a preempted
 * task is re-queued at switch-out) and consumes it just after this
 * tracepoint, adding to the run_delay schedstat reports.  Reading it at
 * switch-in gives each wait exactly as the kernel counts it, at half the
 * BPF invocations per context switch.  The cause comes from the task's own
 * counters: nivcsw moved since it last ran -> preempted; never ran
 * (sched_info.pcount == 0) -> new; else woken.
 *
 * Hot-path budget (benchmarks/bench_bpf.py): sched_switch within 2.5x of an
 * empty program.  So the task on each CPU is remembered per CPU (struct
 * tg_oncpu), and each task caches its cgroup's slot with slot_generation,
 * so the cgroup storage is looked up only after something moved.  Per-task
 * state lives in task storage: it dies with the task (no stale state after
 * pid reuse), and no hash map is touched. */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "tagger.h"
#include "maps.bpf.h"
#include "core_fixes.bpf.h"

#define TASK_RUNNING 0

struct tg_task {
	__u64 slot_gen;          /* slot_generation when `slot` was looked up */
	__u64 nivcsw;            /* its involuntary switches when it last ran */
	__u64 run_delay;         /* sched_info.run_delay once its last wait was added */
	__u32 slot;
	__u32 seen;              /* nivcsw and run_delay are known (ran since we attached) */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tg_task);
} tasks SEC(".maps");

/* One cache line per CPU: each CPU writes only its own. */
struct tg_oncpu oncpu[TG_MAX_CPUS] SEC(".bss") __attribute__((aligned(64)));

/* The clock of the run queue a task is on.  The scheduler updated it under
 * the rq lock just before both tracepoints fire, and schedstat's run_delay
 * is measured with it, so reading it is both cheaper than
 * bpf_ktime_get_ns() (about 50 ns in a VM) and the kernel's own yardstick.
 * The rq is reached through the task's cfs_rq (set for every class by
 * set_task_rq()); `runqueues` itself is not in BTF on every kernel. */
static __always_inline __u64 task_rq_clock(struct task_struct *p)
{
	struct cfs_rq *cfs_rq = p->se.cfs_rq;

	if (bpf_core_field_exists(cfs_rq->rq) && cfs_rq)
		return cfs_rq->rq->clock;
	return bpf_ktime_get_ns();
}

/* One more preemption of the victim's tasks by `preemptor`, in the victim's
 * per-CPU row (this CPU only writes it: no atomics). */
static __always_inline void count_preemptor(struct tg_cg_stats *v, __u32 preemptor, struct tg_global *g)
{
	__u32 i, rarest = 0;

	for (i = 0; i < TG_TOP_PREEMPTORS; i++) {
		if (v->preemptor[i] == preemptor && v->preempt_count[i]) {
			v->preempt_count[i]++;
			return;
		}
	}
	for (i = 1; i < TG_TOP_PREEMPTORS; i++) {
		if (v->preempt_count[i] < v->preempt_count[rarest])
			rarest = i;
	}
	if (v->preempt_count[rarest])
		g->preemptors_evicted++;
	v->preemptor[rarest] = preemptor;
	v->preempt_count[rarest] = 1;
}

/* The wait that just ended, into the cgroup's run-queue counters. */
static __always_inline void account_wait(struct tg_cg_stats *s, __u32 slot, __u64 delta, __u32 cause,
					 struct task_struct *p, __u64 now, __u32 cpu)
{
	struct tg_runq *q = &s->runq[cause];
	struct tg_event *e;

	q->count++;
	q->sum_ns += delta;
	if (delta > q->max_ns)
		q->max_ns = delta;
	hist_add(q->hist, delta);

	if (!outlier_allowed(s, delta, now))
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		global_of(cpu)->ringbuf_drops++;
		return;
	}
	e->kind = TG_EV_RUNQ;
	e->slot = slot;
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

/* The body of every sched_switch variant; `storage` and the source of
 * `prev_state` are fixed per program (see the programs below). */
static __always_inline int on_switch(bool storage, struct task_struct *prev,
				     struct task_struct *next, __s64 prev_state)
{
	__u32 cpu = bpf_get_smp_processor_id();
	/* prev and next are on this CPU's run queue (the idle task too). */
	__u64 now = task_rq_clock(prev);
	struct tg_oncpu *cur = &oncpu[cpu & (TG_MAX_CPUS - 1)];
	struct tg_global *g = global_of(cpu);
	struct tg_cg_stats *s, *v = NULL;
	struct tg_task *t;
	__u64 queued, run_delay, wait;
	__u32 cause;
	/* Still runnable at switch-out: preempted (or yielded); the kernel
	 * re-queues it (sched_info.last_queued) right after this tracepoint. */
	bool preempted = prev->pid && prev_state == TASK_RUNNING;

	if (prev->pid && cur->task == (__u64)prev) {
		__u32 victim = cur->slot;

		/* Moved to another cgroup while running (a process entering its
		 * cgroup right after fork): the kernel charges this slice to the
		 * new cgroup, and so do we. */
		if (cur->slot_gen != slot_generation)
			lookup_slot(storage, prev->cgroups->dfl_cgrp, g, &victim);
		s = v = stats_of(cpu, victim);
		if (s) {
			/* The kernel's own CPU time (what cgroup cpu.stat sums):
			 * update_curr() ran in put_prev_task() before this
			 * tracepoint.  It excludes steal and IRQ time, which the
			 * rq clock includes. */
			s->cpu_ns += prev->se.sum_exec_runtime - cur->since_ns;
			if (preempted)
				s->preempted++;
			else
				s->switches++;
		}
	}
	cur->task = 0;
	if (!next->pid)
		return 0;        /* the idle task: nothing waits, nothing to count */
	t = bpf_task_storage_get(&tasks, next, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!t) {
		/* Task storage is busy on this CPU (an exiting task frees its
		 * storage holding the lock with only migration disabled, and can
		 * be preempted): this wait sample is lost (counted), but the
		 * slice about to run is still credited to the right cgroup. */
		__u32 slot = 0;

		g->task_storage_fail++;
		lookup_slot(storage, next->cgroups->dfl_cgrp, g, &slot);
		cur->task = (__u64)next;
		cur->since_ns = next->se.sum_exec_runtime;
		cur->slot = slot;
		cur->slot_gen = slot_generation;
		return 0;
	}
	/* Slot 0 is cached like any other: registering a cgroup bumps the
	 * generation, so its tasks look again. */
	if (t->slot_gen != slot_generation) {
		__u64 gen = slot_generation;

		if (lookup_slot(storage, next->cgroups->dfl_cgrp, g, &t->slot))
			t->slot_gen = gen;
	}
	cur->task = (__u64)next;
	cur->since_ns = next->se.sum_exec_runtime;
	cur->slot_gen = t->slot_gen;
	cur->slot = t->slot;

	/* This wait: since the last (re)queueing, plus what the kernel already
	 * added to run_delay if the load balancer moved the waiting task to
	 * another run queue (sched_info_dequeue) -- so the sum is run_delay. */
	queued = next->sched_info.last_queued;
	run_delay = next->sched_info.run_delay;
	wait = queued && now > queued ? now - queued : 0;
	if (t->seen && run_delay > t->run_delay)
		wait += run_delay - t->run_delay;
	cause = t->seen && next->nivcsw != t->nivcsw ? TG_CAUSE_PREEMPT :
		next->sched_info.pcount == 0 ? TG_CAUSE_NEW : TG_CAUSE_WAKEUP;
	t->nivcsw = next->nivcsw;
	t->run_delay = run_delay + (queued && now > queued ? now - queued : 0);
	t->seen = 1;
	if (!preempted && !wait)
		return 0;
	s = stats_of(cpu, t->slot);
	if (!s)
		return 0;
	if (preempted) {
		s->preempts++;
		if (v)
			count_preemptor(v, t->slot, g);
	}
	/* The same rq clock and stamps the kernel's run_delay uses. */
	if (wait)
		account_wait(s, t->slot, wait, cause, next, now, cpu);
	return 0;
}

/* The variants, one loaded per kernel (tg_open): prev_state is a tracepoint
 * argument since 5.18 (commit fa2c3254d7cf); before, the task's own state
 * is read, as bcc's runqlat does (it may already show a wake-up that raced
 * with the switch, which then counts as a voluntary switch). */
SEC("tp_btf/sched_switch")
int BPF_PROG(tg_sched_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	return on_switch(SLOT_STORAGE, prev, next, prev_state);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(tg_sched_switch_hash, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	return on_switch(SLOT_HASH, prev, next, prev_state);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(tg_sched_switch_hash_state, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	return on_switch(SLOT_HASH, prev, next, get_task_state_btf(prev));
}

/* Run by user space on each CPU just before it reads the counters
 * (BPF_PROG_TEST_RUN with BPF_F_TEST_RUN_ON_CPU, an IPI, so `current` is the
 * task that CPU is running): credits the running task's CPU time so far to
 * its cgroup.  Without it a task alone on a CPU, which may not switch for
 * seconds, would show nothing and then a spike.  The IPI runs with
 * interrupts off, as sched_switch does, so the two never interleave. */
static __always_inline int checkpoint(bool storage)
{
	struct task_struct *p = bpf_get_current_task_btf();
	__u32 cpu = bpf_get_smp_processor_id();
	struct tg_oncpu *cur = &oncpu[cpu & (TG_MAX_CPUS - 1)];
	struct tg_cg_stats *s;
	__u64 runtime;
	__u32 slot;

	if (!p->pid || cur->task != (__u64)p)
		return 0;
	slot = cur->slot;
	/* Storage busy: the switch-out credits this time instead. */
	if (cur->slot_gen != slot_generation && !lookup_slot(storage, p->cgroups->dfl_cgrp, global_of(cpu), &slot))
		return 0;
	s = stats_of(cpu, slot);
	if (!s)
		return 0;
	/* sum_exec_runtime lags by at most one scheduler tick (update_curr()). */
	runtime = p->se.sum_exec_runtime;
	s->cpu_ns += runtime - cur->since_ns;
	cur->since_ns = runtime;
	return 0;
}

SEC("raw_tp")
int tg_checkpoint(void *ctx)
{
	return checkpoint(SLOT_STORAGE);
}

SEC("raw_tp")
int tg_checkpoint_hash(void *ctx)
{
	return checkpoint(SLOT_HASH);
}

char LICENSE[] SEC("license") = "GPL";
