/* SPDX-License-Identifier: GPL-2.0 */
/* Structs and constants shared by the BPF programs and the C hot path
 * (tagger/native).  Fixed-width types only: both sides compile this file,
 * and tagger/native/build.py feeds it to cffi, so Python never retypes it. */
#ifndef __TAGGER_H
#define __TAGGER_H

#define TG_MAX_CPUS       1024   /* power of two: masks a cpu index for the verifier */
#define TG_DEFAULT_SLOTS  16384  /* cgroups tracked at once; slot 0 is "cgroup not known yet" */
#define TG_HIST_BUCKETS   27     /* log2 of (ns >> TG_HIST_SHIFT): bucket k holds [2^k, 2^(k+1)) units, bucket 0 [0, 2) */
#define TG_HIST_SHIFT     10     /* histogram unit: 2^10 ns = 1.024 us (a shift, not a division, on the hot path) */
#define TG_CAUSES         3
#define TG_PATH_MAX       256
#define TG_COMM_LEN       16
#define TG_TOP_PREEMPTORS 4      /* preemptors remembered per cgroup and CPU */
#define TG_TOP_CULPRITS   4      /* culprits (by wait time) remembered per cgroup and CPU */
#define TG_TASKS          65536  /* entries of the per-task table, indexed by pid (power of two: a mask) */
#define TG_SEGS           32     /* run segments remembered per CPU (power of two: a mask) */
#define TG_SEG_IDLE       0xFFFFFFFFu  /* the holder of a segment the CPU spent idle */

/* Why a task was waiting on the run queue. */
enum tg_cause {
	TG_CAUSE_WAKEUP  = 0,    /* woken from sleep */
	TG_CAUSE_NEW     = 1,    /* new task (fork/clone) */
	TG_CAUSE_PREEMPT = 2,    /* switched out while still runnable */
};

enum tg_event_kind {
	TG_EV_MKDIR   = 1,
	TG_EV_RMDIR   = 2,
	TG_EV_RUNQ    = 3,       /* run-queue latency above targ_outlier_ns */
	TG_EV_IO      = 4,       /* block request latency above targ_outlier_ns */
};

/* Run-queue latency of one cause, counted since load. */
struct tg_runq {
	__u64 count;
	__u64 sum_ns;
	__u64 max_ns;            /* since the last read: user space zeroes it */
	__u32 hist[TG_HIST_BUCKETS];   /* wraps; user space takes deltas mod 2^32 */
	__u32 _pad;
};

/* Counters of one cgroup on one CPU (the kernel side), or summed over CPUs
 * (what tg_read_stats returns).  Monotonic except the *max_ns fields. */
struct tg_cg_stats {
	/* What every context switch writes comes first: with the row a whole
	 * number of cache lines (sched.bpf.c asserts it), a switch touches the
	 * row's first line, and the second for the wait (a short one's
	 * histogram bucket included), not five lines across the row. */
	__u64 cpu_ns;            /* on-CPU time (se.sum_exec_runtime), switch-in to switch-out */
	__u64 switches;          /* voluntary switch-outs (task blocked) */
	__u64 preempted;         /* involuntary switch-outs (still runnable) */
	__u64 preempts;          /* preemptions this cgroup's tasks caused */
	/* Run-queue wait by cause (sched.bpf.c, "Wait by cause"): every
	 * nanosecond of runq[].sum_ns is in exactly one of the four. */
	__u64 wait_self_ns;      /* the CPU ran a task of this same cgroup */
	__u64 wait_foreign_ns;   /* the CPU ran another cgroup's task */
	__u64 wait_throttled_ns; /* this cgroup was throttled (its own quota) on that CPU */
	__u64 wait_other_ns;     /* idle CPU not throttled (wake-up from idle), migrations, beyond the ring */
	/* Kernel-side only (not summed): this cgroup's last throttle on this
	 * CPU, as seen at the switch-out it caused: [thr_start, thr_end], rq
	 * clock; thr_end 0 until a task of it runs again (then worked out);
	 * thr_base the cfs_rq's throttled_clock_self_time at the throttle. */
	__u64 thr_start;
	__u64 thr_end;
	__u64 thr_base;
	__u64 thr_seen;          /* 1 + throttled_clock_self_time at the last wait here; 0 = none yet */
	struct tg_runq runq[TG_CAUSES];
	__u64 io_ops;            /* completed block requests */
	__u64 io_read_bytes;
	__u64 io_write_bytes;
	__u64 io_queue_ns;       /* rq allocated (or inserted) -> issue */
	__u64 io_device_ns;      /* issue -> complete */
	__u64 io_max_ns;         /* since the last read */
	__u32 io_hist[TG_HIST_BUCKETS];
	__u32 _pad;
	__u64 last_outlier_ns;   /* per-CPU rate limit of outlier events */
	/* Who preempted this cgroup's tasks, and how often, since the last read
	 * (user space takes and zeroes them).  A small table in the victim's
	 * own row: no hash map on the scheduler's hot path, bounded by design;
	 * a newcomer evicts the rarest entry (counted in preemptors_evicted). */
	__u32 preemptor[TG_TOP_PREEMPTORS];
	__u32 preempt_count[TG_TOP_PREEMPTORS];
	/* Whose tasks held the CPU while this cgroup's tasks waited, and for how
	 * long, since the last read (user space takes and zeroes them, like the
	 * preemptor table); a newcomer evicts the smallest entry
	 * (culprits_evicted).  Charged by wait time, not by count. */
	__u32 culprit[TG_TOP_CULPRITS];
	__u64 culprit_ns[TG_TOP_CULPRITS];
	__u64 _pad_row[2];       /* whole cache lines per row */
};

/* Per-CPU health counters: nothing is lost silently.  A whole number of
 * cache lines, so no two CPUs share one. */
struct tg_global {
	__u64 io_events;         /* block insert/issue/complete handled */
	__u64 unknown_cgroup;    /* events of cgroups without a slot (counted in slot 0) */
	__u64 ringbuf_drops;     /* events the ring buffer had no room for */
	__u64 preemptors_evicted;/* preemptor entries replaced by a newcomer */
	__u64 rq_full;           /* block requests the request map had no room for */
	__u64 slots_exhausted;   /* new cgroups that found no free slot */
	__u64 task_cache_miss;   /* switch-ins of a task with no entry in `tasks` (first seen, or taken by a pid TG_TASKS apart) */
	__u64 storage_busy;      /* cgroup lookups deferred: the storage was busy on this CPU */
	__u64 culprits_evicted;  /* culprit entries replaced by a newcomer */
	__u64 switch_unseen;     /* switch-outs of a task whose switch-in was not seen here */
	__u64 stale_waits;       /* waits not counted: stamped as the task, asleep, was migrated (TG_TASK_MOVED_ASLEEP) */
	__u64 stale_wait_ns;     /* ... and what the kernel counted of them (its run_delay grew by it) */
	__u64 _pad[4];           /* two whole cache lines per CPU */
};

/* In tg_task.slot_gen (a generation never gets near it): the task was
 * migrated while asleep in a delayed dequeue, so its next wait is not known
 * (sched.bpf.c, "Asleep and migrated").  A generation that differs makes
 * the next switch-in look the slot up again, which it then does once. */
#define TG_TASK_MOVED_ASLEEP (1ULL << 63)

/* Per-task state, in a table indexed by pid (direct-mapped, TG_TASKS
 * entries).  Not task storage: bpf_task_storage_get() is a helper call and
 * a lock on every switch, a quarter of the program's cost beyond an empty
 * one on a host with return thunks; an entry here is one inlined load.
 * An entry is the task's only while `tag` matches it: the tag mixes the
 * task's pid and start time with the entry's fields, so another task on
 * the same index (pids TG_TASKS apart), a task that reuses the pid, or an
 * entry torn by two CPUs writing it at once reads as no entry -- a task
 * seen for the first time (counted in task_cache_miss).
 * One cache line per entry (4 MiB in all; sched.bpf.c asserts the size):
 * tasks with neighbouring pids (a process and the child it talks to, a
 * thread pool) would otherwise share a line and, switching on two CPUs at
 * once, bounce it between them (docs/telemetry.md, "The per-task table"). */
struct tg_task {
	__u64 tag;
	__u64 run_delay;         /* sched_info.run_delay once its last wait was added */
	__u64 slot_gen;          /* slot_generation when `slot` was looked up (another: look again), | TG_TASK_MOVED_ASLEEP */
	__u32 nivcsw;            /* its involuntary switches when it last ran (low bits: only a change counts) */
	__u32 slot;
	__u32 _pad[8];           /* one cache line per entry */
};

/* One run segment of a CPU: from `start` (rq clock) a task of `slot`
 * (TG_SEG_IDLE: the idle task) held it, until the next segment began. */
struct tg_seg {
	__u64 start;
	__u32 slot;
	__u32 _pad;
};

/* The task on a CPU: what sched_switch needs of `prev` without a task
 * storage lookup (the task switched in on a CPU is the next one out).
 * What a switch reads and writes of its CPU is in the first cache line,
 * and the newest segments in the next: two lines, not four (the segment
 * fields were once two arrays, a start and its slot on different lines). */
struct tg_oncpu {
	__u64 task;              /* task_struct address, 0 = unknown */
	__u64 since_ns;          /* its se.sum_exec_runtime at switch-in */
	__u64 slot_gen;          /* slot_generation at switch-in */
	__u32 slot;
	__u32 seg_head;          /* index of the newest run segment */
	/* The task last switched out here and its se.sum_exec_runtime then:
	 * where its slice is credited from if it runs again unseen. */
	__u64 out_task;
	__u64 out_sum;
	__u64 _pad[2];           /* the header is one cache line */
	struct tg_seg seg[TG_SEGS];   /* the last TG_SEGS run segments, a ring */
};

/* Victim and preemptor cgroup slots, and preemptions: what
 * tg_read_pairs returns. */
struct tg_pair {
	__u32 victim;
	__u32 preemptor;
	__u64 count;
};

/* Victim and culprit cgroup slots, and the victim's wait while the
 * culprit held the CPU: what tg_read_culprits returns. */
struct tg_culprit {
	__u32 victim;
	__u32 culprit;
	__u64 wait_ns;
};

/* Value of the per-cgroup local storage: the cgroup's slot. */
struct tg_slot {
	__u32 slot;
	__u32 flags;
};

/* One ring-buffer record: cgroup lifecycle or a latency outlier. */
struct tg_event {
	__u32 kind;              /* enum tg_event_kind */
	__u32 slot;
	__u64 cgroup_id;         /* kernfs id of the cgroup (its inode number) */
	__u64 latency_ns;
	__u64 ts_ns;
	__u32 pid;
	__u32 hierarchy_id;      /* 0 = cgroup v2 */
	__u32 level;
	__u32 cause;
	char comm[TG_COMM_LEN];
	char path[TG_PATH_MAX];
};

#endif /* __TAGGER_H */
