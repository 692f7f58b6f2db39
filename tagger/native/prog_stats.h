/* Run-time statistics of every loaded program of a BPF object: shared by the
 * extension (tg_prog_stats) and the benchmarks' baseline extension
 * (benchmarks/baseline), which must count the same way to be compared. */
#ifndef TG_PROG_STATS_H
#define TG_PROG_STATS_H

#include <errno.h>
#include <stdio.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

static int object_prog_stats(struct bpf_object *obj, struct tg_prog_stat *out, uint32_t cap)
{
	struct bpf_program *prog;
	uint32_t n = 0;

	bpf_object__for_each_program(prog, obj) {
		struct bpf_prog_info info = {};
		uint32_t len = sizeof(info);

		if (n == cap)
			break;
		if (bpf_program__fd(prog) < 0)
			continue;        /* a variant not loaded on this kernel */
		if (bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len))
			return -errno;
		snprintf(out[n].name, sizeof(out[n].name), "%s", bpf_program__name(prog));
		out[n].run_time_ns = info.run_time_ns;
		out[n].run_cnt = info.run_cnt;
		n++;
	}
	return (int)n;
}

#endif
