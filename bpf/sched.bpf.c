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
 * state lives in a table indexed by pid (struct tg_task): no helper call,
 * no lock and no hash map on the hot path.
 *
 * Wait by cause.  Each CPU keeps a ring of its last TG_SEGS run segments
 * (who held the CPU from when: struct tg_oncpu).  A task switched in after
 * waiting on this run queue since sched_info.last_queued walks back over
 * the segments that overlap its wait and charges each overlap once: to
 * self (a task of its own cgroup held the CPU), foreign (another cgroup's
 * did: that cgroup is charged as a culprit, by wait time), throttled (the
 * overlap falls in its own cgroup's throttle on this CPU) or other (the CPU
 * idled with the task runnable and not throttled -- the wake-up of an idle
 * CPU --, the part of the wait spent on another run queue before a
 * migration, or, outside a throttle, older than the ring).  So the four
 * sum to the wait exactly.
 *
 * A throttle is seen at the switch-out it causes: the task leaves the CPU
 * still runnable with its cfs_rq's throttle_count set.  It began then (or at
 * the cfs_rq's throttled_clock_self, 6.8+) and lasted, on kernels with
 * throttled_clock_self_time (6.8+), exactly as long as that counter grew;
 * before 6.8, until the cgroup's first task runs again on that CPU.
 *
 * A task that blocks as its quota runs out (a page fault, a lock), or wakes
 * into a cgroup already throttled on its CPU, causes no such switch-out: the
 * kernel starts the cfs_rq's throttled_clock_self at that wake-up instead.
 * So a wait that finds no window open but the counter grown since the
 * cgroup's last wait on this CPU began in a throttle, which lasted as long
 * as the counter grew (6.8+).  Before 6.8 such a wait counts as other (or
 * foreign, if the CPU ran someone else meanwhile).
 *
 * Asleep and migrated (6.12+, delayed dequeue).  EEVDF leaves a task that
 * sleeps having run more than its share on the run queue, asleep
 * (se.sched_delayed), until its lag is spent; the load balancer may migrate
 * it meanwhile.  Enqueued on its new run queue it is stamped then
 * (sched_info.last_queued), and nothing clears the stamp before it next
 * runs: its next wait counts from the migration, its sleep included -- in
 * the kernel's run_delay too.  (A light stress-ng parent, asleep while its
 * worker ran 25 s, woke with a "wait" of 24.6 s, and its cgroup read a
 * demand of 25 CPUs.)  sched_migrate_task marks such a task's entry
 * (TG_TASK_MOVED_ASLEEP); the wait ending at its next switch-in began at a
 * wake-up no hook here sees, so it is not counted (stale_waits). */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "tagger.h"
#include "maps.bpf.h"
#include "core_fixes.bpf.h"

#define TASK_RUNNING 0

/* Per-task state (struct tg_task, in tagger.h), indexed by pid: one cache
 * line per entry (see struct tg_task).  The padding is spelled out in the
 * struct, not an aligned attribute, because cffi parses tagger.h too. */
_Static_assert(sizeof(struct tg_task) == 64, "struct tg_task: one cache line per entry");
_Static_assert(sizeof(struct tg_cg_stats) % 64 == 0, "struct tg_cg_stats: rows of whole cache lines");
_Static_assert(sizeof(struct tg_oncpu) % 64 == 0 && __builtin_offsetof(struct tg_oncpu, seg) == 64,
	       "struct tg_oncpu: a header line, then the segments");
struct tg_task tasks[TG_TASKS] SEC(".bss") __attribute__((aligned(64)));

/* Who a task is (its entry's tag mixes in the entry's own fields, so an
 * entry half written by another CPU does not pass for the task's). */
static __always_inline __u64 task_ident(struct task_struct *p)
{
	return p->start_time ^ ((__u64)p->pid << 44);
}

static __always_inline __u64 tag_of(__u64 ident, struct tg_task *t)
{
	return (ident ^ t->run_delay ^ (t->slot_gen << 7) ^ ((__u64)t->nivcsw << 32 | t->slot)) | 1;
}

static __always_inline __u64 task_tag(struct task_struct *p, struct tg_task *t)
{
	return tag_of(task_ident(p), t);
}

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

/* The cfs_rq of a task: its cgroup's on this CPU (cpu controller). */
static __always_inline bool cfs_rq_throttled(struct cfs_rq *cfs_rq)
{
	if (!bpf_core_field_exists(cfs_rq->throttle_count) || !cfs_rq)
		return false;
	return cfs_rq->throttle_count > 0;
}

/* The time a cfs_rq has spent throttled so far (6.8+), or 0. */
static __always_inline __u64 cfs_rq_throttled_time(struct cfs_rq *cfs_rq)
{
	if (!bpf_core_field_exists(cfs_rq->throttled_clock_self_time) || !cfs_rq)
		return 0;
	return cfs_rq->throttled_clock_self_time;
}

/* The task leaving the CPU is throttled (its quota ran out): open a
 * throttle window in its cgroup's row on this CPU, unless one is open. */
static __always_inline void note_throttle(struct tg_cg_stats *v, struct cfs_rq *cfs_rq, __u64 now)
{
	__u64 start = now;

	if (v->thr_start && !v->thr_end)
		return;
	if (bpf_core_field_exists(cfs_rq->throttled_clock_self)) {
		__u64 since = cfs_rq->throttled_clock_self;

		if (since && since <= now)
			start = since;
	}
	v->thr_start = start;
	v->thr_end = 0;
	v->thr_base = cfs_rq_throttled_time(cfs_rq);
}

/* One more share of the victim's wait held by `culprit`, in the victim's
 * per-CPU row (this CPU only writes it: no atomics). */
static __always_inline void count_culprit(struct tg_cg_stats *v, __u32 culprit, __u64 ns, struct tg_global *g)
{
	__u32 i, least = 0;

	for (i = 0; i < TG_TOP_CULPRITS; i++) {
		if (v->culprit[i] == culprit && v->culprit_ns[i]) {
			v->culprit_ns[i] += ns;
			return;
		}
	}
	for (i = 1; i < TG_TOP_CULPRITS; i++) {
		if (v->culprit_ns[i] < v->culprit_ns[least])
			least = i;
	}
	if (v->culprit_ns[least])
		g->culprits_evicted++;
	v->culprit[least] = culprit;
	v->culprit_ns[least] = ns;
}

/* The part of [lo, hi) inside the throttle window [ts, te]. */
static __always_inline __u64 overlap(__u64 lo, __u64 hi, __u64 ts, __u64 te)
{
	if (ts > lo)
		lo = ts;
	if (te < hi)
		hi = te;
	return hi > lo ? hi - lo : 0;
}

/* Charge this CPU's part of a wait, [queued, now), by who held the CPU
 * (see "Wait by cause" above); `extra` is the part spent on another run
 * queue before a migration.  Walks at most TG_SEGS segments, newest first. */
static __always_inline void attribute_wait(struct tg_oncpu *cur, struct tg_cg_stats *s, __u32 slot,
					   struct cfs_rq *cfs_rq, __u64 queued, __u64 now, __u64 extra,
					   struct tg_global *g)
{
	__u64 end = now, self = 0, foreign = 0, throttled = 0;
	__u64 ts = 0, te = 0, len = cfs_rq_throttled_time(cfs_rq);
	__u32 i, head = cur->seg_head;

	if (s->thr_start && !s->thr_end) {
		/* A task of the cgroup runs again: the throttle is over. */
		__u64 base = s->thr_base;

		s->thr_end = len > base && s->thr_start + (len - base) < now ?
			     s->thr_start + (len - base) : now;
	} else if (s->thr_seen && len + 1 > s->thr_seen) {
		/* Woke into a throttle (see "A task that blocks" above). */
		__u64 grown = len + 1 - s->thr_seen;

		s->thr_start = queued;
		s->thr_end = queued + grown < now ? queued + grown : now;
	}
	s->thr_seen = len + 1;
	if (s->thr_start) {
		ts = s->thr_start;
		te = s->thr_end;
	}
	for (i = 0; i < TG_SEGS; i++) {
		__u32 idx = (head - i) & (TG_SEGS - 1);
		__u64 start = cur->seg[idx].start, lo, ns, thr;
		__u32 holder = cur->seg[idx].slot;

		if (!start)
			break;           /* the ring is not full yet */
		lo = start > queued ? start : queued;
		ns = end > lo ? end - lo : 0;
		if (holder == slot) {
			self += ns;
		} else if (ns) {
			thr = te > ts ? overlap(lo, end, ts, te) : 0;
			throttled += thr;
			if (holder != TG_SEG_IDLE && ns > thr) {
				foreign += ns - thr;
				count_culprit(s, holder, ns - thr, g);
			}
		}
		if (start <= queued) {
			end = queued;
			break;
		}
		if (start < end)
			end = start;
	}
	/* Older than the ring (or before it filled): [queued, end) is unseen,
	 * but the throttle window is known without it. */
	if (end > queued && te > ts)
		throttled += overlap(queued, end, ts, te);
	s->wait_self_ns += self;
	s->wait_foreign_ns += foreign;
	s->wait_throttled_ns += throttled;
	/* The rest: idle and not throttled, beyond the ring, migrations. */
	s->wait_other_ns += (now - queued) - self - foreign - throttled + extra;
}

/* A new run segment: `slot`'s task (or the idle task) holds the CPU from
 * `now`.  A switch between two tasks of one cgroup continues its segment:
 * the walk charges it the same either way, and a cgroup whose threads
 * switch among themselves thousands of times a second (a VM's vCPU and I/O
 * threads) takes one entry of the ring, not all of them. */
static __always_inline void push_segment(struct tg_oncpu *cur, __u64 now, __u32 slot)
{
	__u32 head = cur->seg_head & (TG_SEGS - 1);

	if (cur->seg[head].slot == slot && cur->seg[head].start)
		return;
	head = (head + 1) & (TG_SEGS - 1);
	cur->seg_head = head;
	cur->seg[head].start = now;
	cur->seg[head].slot = slot;
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
	__u32 victim = 0;
	__u64 ident, queued, run_delay, wait, local, extra = 0;
	__u64 gen;
	__u32 cause;
	bool arrived, seen, moved_asleep;
	/* Still runnable at switch-out: preempted (or yielded); the kernel
	 * re-queues it (sched_info.last_queued) right after this tracepoint. */
	bool preempted = prev->pid && prev_state == TASK_RUNNING;

	if (prev->pid && cur->task) {
		__u64 runtime = prev->se.sum_exec_runtime, from = cur->since_ns;

		victim = cur->slot;

		if (cur->task != (__u64)prev) {
			/* prev is not the task whose switch-in this CPU saw last:
			 * a switch-out never reached this program (on the 6.18
			 * development host, 2-5 a second with both CPUs busy, each
			 * time of the sandbox init's own threads; no recursion
			 * misses; none on Debian's 6.1 and 6.12).  prev's slice
			 * began where the kernel says (se.prev_sum_exec_runtime,
			 * set as it was picked), or where we credited it when it
			 * last left this CPU. */
			__u64 since_seen = now - cur->seg[cur->seg_head & (TG_SEGS - 1)].start;

			g->switch_unseen++;
			from = prev->se.prev_sum_exec_runtime;
			if (cur->out_task == (__u64)prev && cur->out_sum > from)
				from = cur->out_sum;
			/* It ran after the last switch seen here, no longer (and an
			 * RT task's prev_sum_exec_runtime is not reset as it is
			 * picked). */
			if (runtime > from && runtime - from > since_seen)
				from = runtime - since_seen;
			victim = 0;
			lookup_slot(storage, prev->cgroups->dfl_cgrp, g, &victim);
		} else if (cur->slot_gen != slot_generation) {
			/* Moved to another cgroup while running (a process
			 * entering its cgroup right after fork): the kernel
			 * charges this slice to the new cgroup, and so do we. */
			lookup_slot(storage, prev->cgroups->dfl_cgrp, g, &victim);
		}
		cur->out_task = (__u64)prev;
		cur->out_sum = runtime;
		s = v = stats_of(cpu, victim);
		if (s) {
			/* The kernel's own CPU time (what cgroup cpu.stat sums):
			 * update_curr() ran in put_prev_task() before this
			 * tracepoint.  It excludes steal and IRQ time, which the
			 * rq clock includes. */
			s->cpu_ns += runtime > from ? runtime - from : 0;
			if (preempted) {
				s->preempted++;
				if (cfs_rq_throttled(prev->se.cfs_rq))
					note_throttle(s, prev->se.cfs_rq, now);
			} else {
				s->switches++;
			}
		}
	}
	cur->task = 0;
	if (!next->pid) {
		/* the idle task: nothing waits, nothing to count */
		push_segment(cur, now, TG_SEG_IDLE);
		return 0;
	}
	t = &tasks[next->pid & (TG_TASKS - 1)];
	ident = task_ident(next);
	seen = t->tag == tag_of(ident, t);
	if (!seen) {
		g->task_cache_miss++;
		t->slot = 0;
	}
	moved_asleep = seen && (t->slot_gen & TG_TASK_MOVED_ASLEEP);
	/* Slot 0 is cached like any other: registering a cgroup bumps the
	 * generation, so its tasks look again. */
	gen = slot_generation;
	if (!seen || t->slot_gen != gen)
		t->slot_gen = lookup_slot(storage, next->cgroups->dfl_cgrp, g, &t->slot) ? gen : gen - 1;
	cur->task = (__u64)next;
	cur->since_ns = next->se.sum_exec_runtime;
	cur->slot_gen = t->slot_gen;
	cur->slot = t->slot;

	/* This wait: since the last (re)queueing, plus what the kernel already
	 * added to run_delay if the load balancer moved the waiting task to
	 * another run queue (sched_info_dequeue) -- so the sum is run_delay. */
	queued = next->sched_info.last_queued;
	run_delay = next->sched_info.run_delay;
	local = queued && now > queued ? now - queued : 0;
	if (seen && run_delay > t->run_delay)
		extra = run_delay - t->run_delay;
	/* A wait before a migration began after the task last began to run
	 * (sched_info.last_arrival, on this clock).  More than that is not
	 * this task's history: e.g. a thread that took over its leader's pid
	 * and start time at exec (de_thread) and so its entry. */
	if (extra && extra > now - next->sched_info.last_arrival)
		extra = 0;
	wait = local + extra;
	cause = seen && (__u32)next->nivcsw != t->nivcsw ? TG_CAUSE_PREEMPT :
		next->sched_info.pcount == 0 ? TG_CAUSE_NEW : TG_CAUSE_WAKEUP;
	t->nivcsw = next->nivcsw;
	t->run_delay = run_delay + local;
	t->tag = tag_of(ident, t);
	/* Every arrival the kernel counts (sched_info.pcount: the task was
	 * stamped when queued) is one wait, a wait of 0 ns included: a task
	 * woken onto an idle CPU is often switched in on the rq clock it was
	 * queued at.  Leaving those out made a sleeper's percentiles the
	 * percentiles of its rare waits (cyclictest alone on this host: 5
	 * counted a second of its 600 arrivals, p99 1.1 ms). */
	arrived = queued || extra;
	if (arrived && moved_asleep) {
		/* Its stamp is the migration's, not its wake-up's (above). */
		g->stale_waits++;
		g->stale_wait_ns += wait;
		arrived = false;
	}
	s = NULL;
	if (preempted || arrived)    /* prev's row, when both are of one cgroup */
		s = v && t->slot == victim ? v : stats_of(cpu, t->slot);
	if (s) {
		if (preempted) {
			s->preempts++;
			if (v)
				count_preemptor(v, t->slot, g);
		}
		/* The same rq clock and stamps the kernel's run_delay uses. */
		if (arrived) {
			account_wait(s, t->slot, wait, cause, next, now, cpu);
			if (local)
				attribute_wait(cur, s, t->slot, next->se.cfs_rq, queued, now, extra, g);
			else
				s->wait_other_ns += extra;
		}
	}
	/* The segments the wait walked are complete: next's begins now. */
	push_segment(cur, now, t->slot);
	return 0;
}

/* A task asleep in a delayed dequeue is migrated: its next wait is not
 * known (see "Asleep and migrated").  An entry not yet the task's is
 * claimed as its first switch-in would (its slot looked up then).  Before
 * 6.12 no task is asleep on a run queue: nothing to do. */
SEC("tp_btf/sched_migrate_task")
int BPF_PROG(tg_sched_migrate_task, struct task_struct *p, int dest_cpu)
{
	struct tg_task *t;

	if (!bpf_core_field_exists(p->se.sched_delayed) || !p->se.sched_delayed || !p->pid)
		return 0;
	t = &tasks[p->pid & (TG_TASKS - 1)];
	if (t->tag != task_tag(p, t)) {
		t->run_delay = p->sched_info.run_delay;
		t->nivcsw = p->nivcsw;
		t->slot = 0;
		t->slot_gen = 0;
	}
	t->slot_gen |= TG_TASK_MOVED_ASLEEP;
	t->tag = task_tag(p, t);
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
