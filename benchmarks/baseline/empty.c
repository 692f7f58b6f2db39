/* The benchmarks' baseline: empty programs on the hooks tagger traces
 * (bpf/empty.bpf.c), loaded and attached here, in an extension of the
 * benchmarks' own, so tagger's production extension does not carry them.
 * Every function returns 0 or a count on success, or a negative errno. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <linux/types.h>
#include <bpf/libbpf.h>

#include "tagger.h"
#include "native.h"          /* struct tg_prog_stat */
#include "prog_stats.h"      /* counted the way tg_prog_stats counts */
#include "empty.skel.h"

#include "empty.h"

struct bench_empty {
	struct empty_bpf *skel;
};

/* Only the hooks asked for (BENCH_EMPTY_*): tagger itself traces only
 * sched_switch, so its overhead floor is the switch alone. */
int bench_empty_open(struct bench_empty **out, unsigned int hooks)
{
	struct bench_empty *e = calloc(1, sizeof(*e));
	int err;

	if (!e)
		return -ENOMEM;
	e->skel = empty_bpf__open_and_load();
	if (!e->skel) {
		err = -errno;
		free(e);
		return err;
	}
	bpf_program__set_autoattach(e->skel->progs.empty_sched_switch, hooks & BENCH_EMPTY_SWITCH);
	bpf_program__set_autoattach(e->skel->progs.empty_sched_wakeup, hooks & BENCH_EMPTY_WAKEUP);
	err = empty_bpf__attach(e->skel);
	if (err) {
		empty_bpf__destroy(e->skel);
		free(e);
		return err;
	}
	*out = e;
	return 0;
}

int bench_empty_prog_stats(struct bench_empty *e, struct tg_prog_stat *out, uint32_t cap)
{
	return object_prog_stats(e->skel->obj, out, cap);
}

void bench_empty_close(struct bench_empty *e)
{
	if (!e)
		return;
	empty_bpf__destroy(e->skel);
	free(e);
}
