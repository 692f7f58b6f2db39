// SPDX-License-Identifier: GPL-2.0
/* Empty programs on the same hooks: the baseline the benchmarks divide by. */
#include <vmlinux.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("tp_btf/sched_switch")
int BPF_PROG(empty_sched_switch) { return 0; }

SEC("tp_btf/sched_wakeup")
int BPF_PROG(empty_sched_wakeup) { return 0; }

char LICENSE[] SEC("license") = "GPL";
