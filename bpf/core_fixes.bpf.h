/* SPDX-License-Identifier: GPL-2.0 */
/* Kernel-version drift, in one place (bcc libbpf-tools style). */
#ifndef __CORE_FIXES_BPF_H
#define __CORE_FIXES_BPF_H

#include <vmlinux.h>
#include <bpf/bpf_core_read.h>

/* task_struct::state became __state in 5.14 (commit 2f064a59a11f,
 * "sched: Change task_struct::state"). */
struct task_struct___o {
	volatile long int state;
} __attribute__((preserve_access_index));

struct task_struct___x {
	unsigned int __state;
} __attribute__((preserve_access_index));

static __always_inline __s64 get_task_state(void *task)
{
	struct task_struct___x *t = task;

	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return BPF_CORE_READ((struct task_struct___o *)task, state);
}

/* The same from a pointer the verifier trusts (a tp_btf argument): a plain
 * load, no helper call, for the scheduler's hot path. */
static __always_inline __s64 get_task_state_btf(struct task_struct *task)
{
	struct task_struct___x *t = (void *)task;

	if (bpf_core_field_exists(t->__state))
		return t->__state;
	return ((struct task_struct___o *)(void *)task)->state;
}

/* request::cmd_flags holds the operation in its low bits (REQ_OP_MASK) since
 * 4.10; REQ_OP_BITS is 8 since 5.10 (commit ff07a02e9e8e). */
#define TG_REQ_OP_MASK ((1 << 8) - 1)

#endif /* __CORE_FIXES_BPF_H */
