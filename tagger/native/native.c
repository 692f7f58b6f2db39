// SPDX-License-Identifier: GPL-2.0
/* The C hot path: open, load, attach and detach tagger's BPF programs; read
 * every counter in one call per tick; drain the ring buffer into a
 * caller-owned array.  No Python runs per event, and nothing here allocates
 * per tick. */
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <bpf/btf.h>

#include "tagger.h"
#include "native.h"
#include "tagger.skel.h"
#include "prog_stats.h"

struct tg_handle {
	struct tagger_bpf *skel;
	struct ring_buffer *rb;
	struct tg_cg_stats *stats;   /* mmap of the stats map: [cpu][slot] */
	size_t stats_len;
	int ncpus;
	uint32_t max_slots;
	uint32_t features;           /* TG_FEAT_* of the variants loaded */
	int checkpoint_fd;
	/* tg_drain's target while ring_buffer__consume runs */
	struct tg_event *drain_out;
	uint32_t drain_cap, drain_n;
};

const char *tg_version(void)
{
	return TG_VERSION;
}

static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	/* Warnings only: the verifier log of a failed load is one. */
	if (level == LIBBPF_DEBUG || getenv("TAGGER_LIBBPF_QUIET"))
		return 0;
	return vfprintf(stderr, fmt, args);
}

static int on_event(void *ctx, void *data, size_t len)
{
	struct tg_handle *h = ctx;

	if (len < sizeof(struct tg_event))
		return 0;
	memcpy(&h->drain_out[h->drain_n++], data, sizeof(struct tg_event));
	/* Stop once the caller's array is full (this record is already
	 * copied); the rest stays in the ring for the next drain. */
	return h->drain_n == h->drain_cap ? -ENOSPC : 0;
}

/* Does this kernel's BTF know the tp_btf hook "btf_trace_<name>"? */
static bool btf_has_tracepoint(const struct btf *vmlinux, const char *name)
{
	char type[128];

	snprintf(type, sizeof(type), "btf_trace_%s", name);
	return btf__find_by_name_kind(vmlinux, type, BTF_KIND_TYPEDEF) > 0;
}

/* The number of arguments of tp_btf hook "btf_trace_<name>" (a typedef of a
 * pointer to a function whose first parameter is the context), or -1. */
static int btf_tracepoint_args(const struct btf *vmlinux, const char *name)
{
	const struct btf_type *t;
	char type[128];
	int id;

	snprintf(type, sizeof(type), "btf_trace_%s", name);
	id = btf__find_by_name_kind(vmlinux, type, BTF_KIND_TYPEDEF);
	if (id <= 0)
		return -1;
	t = btf__type_by_id(vmlinux, btf__resolve_type(vmlinux, id));
	if (!t || !btf_is_ptr(t))
		return -1;
	t = btf__type_by_id(vmlinux, t->type);
	if (!t || !btf_is_func_proto(t))
		return -1;
	return btf_vlen(t) - 1;
}

/* The value of enumerator `name` in any enum of the kernel, named or not
 * (CO-RE finds enumerators only in named enums). */
static bool btf_enumerator(const struct btf *vmlinux, const char *name, int64_t *value)
{
	uint32_t n = btf__type_cnt(vmlinux);

	for (uint32_t id = 1; id < n; id++) {
		const struct btf_type *t = btf__type_by_id(vmlinux, id);

		if (!btf_is_enum(t))
			continue;
		for (int i = 0; i < btf_vlen(t); i++) {
			const struct btf_enum *e = btf_enum(t) + i;

			if (strcmp(btf__name_by_offset(vmlinux, e->name_off), name) == 0) {
				*value = e->val;
				return true;
			}
		}
	}
	return false;
}

/* What this kernel has of TG_FEAT_*, from its BTF, before anything is
 * loaded (so `tagger doctor` names the variants without loading them).
 * *rqf_io_stat gets the RQF_IO_STAT bit when TG_FEAT_IO_DONE is set. */
static uint32_t probe_features(uint32_t *rqf_io_stat)
{
	struct btf *vmlinux = btf__load_vmlinux_btf();
	uint32_t feats = 0;
	int64_t v;

	*rqf_io_stat = 0;
	if (!vmlinux)
		return 0;
	/* The uapi enum as the kernel itself has it: newer than libbpf's headers. */
	if (btf_enumerator(vmlinux, "BPF_MAP_TYPE_CGRP_STORAGE", &v) &&
	    btf_enumerator(vmlinux, "BPF_FUNC_cgrp_storage_get", &v))
		feats |= TG_FEAT_CGRP_STORAGE;
	if (btf_tracepoint_args(vmlinux, "sched_switch") >= 4)
		feats |= TG_FEAT_PREV_STATE;
	if (btf_has_tracepoint(vmlinux, "block_io_done") &&
	    btf_enumerator(vmlinux, "__RQF_IO_STAT", &v) && v >= 0 && v < 32) {
		feats |= TG_FEAT_IO_DONE;
		*rqf_io_stat = 1U << v;
	}
	btf__free(vmlinux);
	return feats;
}

uint32_t tg_probe_features(void)
{
	uint32_t bit;

	return probe_features(&bit);
}

uint32_t tg_features(struct tg_handle *h)
{
	return h->features;
}

/* Load, of each program with variants, the one for `feats`; the map only
 * the other variant uses is not created (the kernel may not have its type). */
static void choose_variants(struct tagger_bpf *skel, uint32_t feats)
{
	bool storage = feats & TG_FEAT_CGRP_STORAGE;
	struct { struct bpf_program *prog; bool load; } progs[] = {
		{ skel->progs.tg_sched_switch, storage },
		{ skel->progs.tg_sched_switch_hash, !storage && (feats & TG_FEAT_PREV_STATE) },
		{ skel->progs.tg_sched_switch_hash_state, !(feats & TG_FEAT_PREV_STATE) },
		{ skel->progs.tg_checkpoint, storage },
		{ skel->progs.tg_checkpoint_hash, !storage },
		{ skel->progs.tg_cgroup_mkdir, storage },
		{ skel->progs.tg_cgroup_mkdir_hash, !storage },
		{ skel->progs.tg_cgroup_rmdir, storage },
		{ skel->progs.tg_cgroup_rmdir_hash, !storage },
		{ skel->progs.tg_block_rq_insert, storage },
		{ skel->progs.tg_block_rq_insert_hash, !storage },
		{ skel->progs.tg_block_rq_issue, storage },
		{ skel->progs.tg_block_rq_issue_hash, !storage },
		{ skel->progs.tg_block_io_done, feats & TG_FEAT_IO_DONE },
	};

	for (size_t i = 0; i < sizeof(progs) / sizeof(progs[0]); i++)
		bpf_program__set_autoload(progs[i].prog, progs[i].load);
	bpf_map__set_autocreate(skel->maps.cgroup_slots, storage);
	bpf_map__set_autocreate(skel->maps.cgroup_ids, !storage);
}

int tg_open(const struct tg_config *cfg, struct tg_handle **out)
{
	struct tg_handle *h;
	uint32_t rqf_io_stat;
	int err, fd;

	libbpf_set_print(libbpf_print);
	if (cfg->max_slots < 2)
		return -EINVAL;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->ncpus = libbpf_num_possible_cpus();
	if (h->ncpus <= 0 || h->ncpus > TG_MAX_CPUS) {
		err = h->ncpus <= 0 ? h->ncpus : -E2BIG;
		goto fail;
	}
	h->max_slots = cfg->max_slots;

	h->skel = tagger_bpf__open();
	if (!h->skel) {
		err = -errno;
		goto fail;
	}
	h->skel->rodata->targ_max_slots = cfg->max_slots;
	h->skel->rodata->targ_outlier_ns = cfg->outlier_ns;
	h->skel->rodata->targ_outlier_interval_ns = cfg->outlier_interval_ns;

	h->features = probe_features(&rqf_io_stat) & ~cfg->features_off;
	/* The storage variant of sched_switch takes prev_state (6.2 > 5.18). */
	if (!(h->features & TG_FEAT_PREV_STATE))
		h->features &= ~TG_FEAT_CGRP_STORAGE;
	/* Without block_io_done a request's latency ends at rq_complete. */
	h->skel->rodata->targ_has_io_done = h->features & TG_FEAT_IO_DONE;
	h->skel->rodata->targ_rqf_io_stat = rqf_io_stat;
	choose_variants(h->skel, h->features);

	err = bpf_map__set_max_entries(h->skel->maps.stats, (uint32_t)h->ncpus * cfg->max_slots);
	err = err ?: bpf_map__set_max_entries(h->skel->maps.free_slots, cfg->max_slots);
	err = err ?: bpf_map__set_max_entries(h->skel->maps.blkcg_slots, cfg->max_slots);
	err = err ?: bpf_map__set_max_entries(h->skel->maps.cgroup_ids, cfg->max_slots);
	if (err)
		goto fail;
	err = tagger_bpf__load(h->skel);
	if (err)
		goto fail;
	h->checkpoint_fd = bpf_program__fd(h->features & TG_FEAT_CGRP_STORAGE ?
					   h->skel->progs.tg_checkpoint : h->skel->progs.tg_checkpoint_hash);

	fd = bpf_map__fd(h->skel->maps.stats);
	h->stats_len = (size_t)h->ncpus * cfg->max_slots * sizeof(struct tg_cg_stats);
	h->stats = mmap(NULL, h->stats_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (h->stats == MAP_FAILED) {
		h->stats = NULL;
		err = -errno;
		goto fail;
	}
	h->rb = ring_buffer__new(bpf_map__fd(h->skel->maps.events), on_event, h, NULL);
	if (!h->rb) {
		err = -errno;
		goto fail;
	}
	*out = h;
	return 0;
fail:
	tg_close(h);
	return err < 0 ? err : -EINVAL;
}

int tg_attach(struct tg_handle *h)
{
	return tagger_bpf__attach(h->skel);
}

/* Detach every program, keeping maps and counters: tg_attach attaches them
 * again (benchmarks/bench_overhead_paired.py alternates conditions so). */
void tg_detach(struct tg_handle *h)
{
	tagger_bpf__detach(h->skel);
}

void tg_close(struct tg_handle *h)
{
	if (!h)
		return;
	ring_buffer__free(h->rb);
	if (h->stats)
		munmap(h->stats, h->stats_len);
	/* Destroying the skeleton detaches every link and frees the maps. */
	tagger_bpf__destroy(h->skel);
	free(h);
}

int tg_nr_cpus(struct tg_handle *h)
{
	return h->ncpus;
}

uint32_t tg_max_slots(struct tg_handle *h)
{
	return h->max_slots;
}

static void add_runq(struct tg_runq *dst, struct tg_runq *src)
{
	dst->count += src->count;
	dst->sum_ns += src->sum_ns;
	if (src->max_ns > dst->max_ns)
		dst->max_ns = src->max_ns;
	src->max_ns = 0;
	for (int b = 0; b < TG_HIST_BUCKETS; b++)
		dst->hist[b] += src->hist[b];
}

/* Sum every CPU's counters of slots [0, nslots) into out[], and restart the
 * "since the last read" maxima.  Zeroing a max races with a CPU raising it;
 * losing that one sample to the next tick is the price of taking no lock. */
int tg_read_stats(struct tg_handle *h, struct tg_cg_stats *out, uint32_t nslots)
{
	if (nslots > h->max_slots)
		nslots = h->max_slots;
	memset(out, 0, (size_t)nslots * sizeof(*out));
	for (int cpu = 0; cpu < h->ncpus; cpu++) {
		struct tg_cg_stats *row = h->stats + (size_t)cpu * h->max_slots;

		for (uint32_t i = 0; i < nslots; i++) {
			struct tg_cg_stats *s = &row[i], *d = &out[i];

			d->cpu_ns += s->cpu_ns;
			d->switches += s->switches;
			d->preempted += s->preempted;
			d->preempts += s->preempts;
			d->wait_self_ns += s->wait_self_ns;
			d->wait_foreign_ns += s->wait_foreign_ns;
			d->wait_throttled_ns += s->wait_throttled_ns;
			d->wait_other_ns += s->wait_other_ns;
			for (int c = 0; c < TG_CAUSES; c++)
				add_runq(&d->runq[c], &s->runq[c]);
			d->io_ops += s->io_ops;
			d->io_read_bytes += s->io_read_bytes;
			d->io_write_bytes += s->io_write_bytes;
			d->io_queue_ns += s->io_queue_ns;
			d->io_device_ns += s->io_device_ns;
			if (s->io_max_ns > d->io_max_ns)
				d->io_max_ns = s->io_max_ns;
			s->io_max_ns = 0;
			for (int b = 0; b < TG_HIST_BUCKETS; b++)
				d->io_hist[b] += s->io_hist[b];
		}
	}
	return (int)nslots;
}

/* Credit every CPU's running task with its CPU time so far (see
 * tg_checkpoint in sched.bpf.c): one IPI per online CPU. */
int tg_checkpoint(struct tg_handle *h)
{
	int fd = h->checkpoint_fd;
	int done = 0;

	for (int cpu = 0; cpu < h->ncpus; cpu++) {
		LIBBPF_OPTS(bpf_test_run_opts, opts, .flags = BPF_F_TEST_RUN_ON_CPU, .cpu = cpu);

		if (bpf_prog_test_run_opts(fd, &opts) == 0)
			done++;
		else if (errno != ENXIO)     /* ENXIO: an offline CPU */
			return -errno;
	}
	return done;
}

int tg_read_globals(struct tg_handle *h, struct tg_global *out)
{
	memset(out, 0, sizeof(*out));
	for (int cpu = 0; cpu < h->ncpus; cpu++) {
		const uint64_t *src = (const uint64_t *)&h->skel->bss->globals[cpu];
		uint64_t *dst = (uint64_t *)out;

		for (size_t k = 0; k < sizeof(*out) / sizeof(uint64_t); k++)
			dst[k] += src[k];
	}
	return 0;
}

int tg_drain(struct tg_handle *h, struct tg_event *out, uint32_t cap)
{
	int err;

	if (!cap)
		return 0;
	h->drain_out = out;
	h->drain_cap = cap;
	h->drain_n = 0;
	err = ring_buffer__consume(h->rb);
	if (err < 0 && err != -ENOSPC)
		return err;
	return (int)h->drain_n;
}

/* One per-row top-K table of struct tg_cg_stats: `k` entries of a u32
 * cgroup slot at `who_off` and a counter of `val_size` bytes (u32 or u64) at
 * `val_off`. */
struct top_table {
	size_t who_off, val_off, val_size;
	int k;
};

/* Every CPU's `t` tables of slots [0, nslots) into (victim, who, value)
 * triples, zeroed as they are read (a count added between the read and the
 * zeroing is lost: the price of taking no lock).  Returns the number written;
 * the same pair may appear once per CPU. */
static int read_top(struct tg_handle *h, const struct top_table *t, struct tg_pair *out,
		    uint32_t nslots, uint32_t cap)
{
	uint32_t n = 0;

	if (nslots > h->max_slots)
		nslots = h->max_slots;
	for (int cpu = 0; cpu < h->ncpus; cpu++) {
		struct tg_cg_stats *row = h->stats + (size_t)cpu * h->max_slots;

		for (uint32_t i = 0; i < nslots; i++) {
			char *base = (char *)&row[i];

			for (int k = 0; k < t->k; k++) {
				char *val = base + t->val_off + (size_t)k * t->val_size;
				uint64_t v = 0;

				memcpy(&v, val, t->val_size);       /* little-endian, as BPF's */
				if (!v)
					continue;
				if (n == cap)
					return (int)n;
				out[n].victim = i;
				memcpy(&out[n].preemptor, base + t->who_off + (size_t)k * sizeof(uint32_t),
				       sizeof(uint32_t));
				out[n].count = v;
				n++;
				memset(val, 0, t->val_size);
			}
		}
	}
	return (int)n;
}

#define TOP_TABLE(who, val, k) { offsetof(struct tg_cg_stats, who), offsetof(struct tg_cg_stats, val), \
				 sizeof(((struct tg_cg_stats *)0)->val[0]), (k) }

/* Who preempted each cgroup, and how often. */
int tg_read_pairs(struct tg_handle *h, struct tg_pair *out, uint32_t nslots, uint32_t cap)
{
	static const struct top_table preemptors = TOP_TABLE(preemptor, preempt_count, TG_TOP_PREEMPTORS);

	return read_top(h, &preemptors, out, nslots, cap);
}

/* Who held the CPU while each cgroup waited, and for how long (ns).
 * struct tg_culprit has tg_pair's layout. */
int tg_read_culprits(struct tg_handle *h, struct tg_culprit *out, uint32_t nslots, uint32_t cap)
{
	static const struct top_table culprits = TOP_TABLE(culprit, culprit_ns, TG_TOP_CULPRITS);
	_Static_assert(sizeof(struct tg_culprit) == sizeof(struct tg_pair) &&
		       offsetof(struct tg_culprit, culprit) == offsetof(struct tg_pair, preemptor) &&
		       offsetof(struct tg_culprit, wait_ns) == offsetof(struct tg_pair, count),
		       "tg_culprit and tg_pair share a layout");

	return read_top(h, &culprits, (struct tg_pair *)out, nslots, cap);
}

int tg_slot_push(struct tg_handle *h, uint32_t slot)
{
	if (slot == 0 || slot >= h->max_slots)
		return -EINVAL;
	/* A recycled slot starts from zero on every CPU. */
	for (int cpu = 0; cpu < h->ncpus; cpu++)
		memset(&h->stats[(size_t)cpu * h->max_slots + slot], 0, sizeof(struct tg_cg_stats));
	if (bpf_map_update_elem(bpf_map__fd(h->skel->maps.free_slots), NULL, &slot, 0))
		return -errno;
	return 0;
}

int tg_slot_pop(struct tg_handle *h, uint32_t *slot)
{
	if (bpf_map_lookup_and_delete_elem(bpf_map__fd(h->skel->maps.free_slots), NULL, slot))
		return -errno;
	return 0;
}

/* The free queue's head, left in place.  The queue is FIFO and user space
 * pushes each slot once, so everything it pushed before the head has been
 * taken since: what lets it tell slots handed out from slots still free
 * without emptying the queue under the mkdir handler. */
int tg_slot_peek(struct tg_handle *h, uint32_t *slot)
{
	if (bpf_map_lookup_elem(bpf_map__fd(h->skel->maps.free_slots), NULL, slot))
		return -errno;
	return 0;
}

uint64_t tg_lifecycle_drops(struct tg_handle *h)
{
	return __atomic_load_n(&h->skel->bss->lifecycle_drops, __ATOMIC_RELAXED);
}

int tg_register_cgroup(struct tg_handle *h, int cgroup_fd, uint32_t slot, uint32_t *existing)
{
	bool storage = h->features & TG_FEAT_CGRP_STORAGE;
	int fd = bpf_map__fd(storage ? h->skel->maps.cgroup_slots : h->skel->maps.cgroup_ids);
	struct tg_slot value = { .slot = slot };
	struct stat st;
	uint64_t id;
	void *key = &cgroup_fd;

	*existing = 0;
	if (!storage) {
		/* A cgroup's kernfs id is its directory's inode number (64-bit ino_t). */
		if (fstat(cgroup_fd, &st))
			return -errno;
		id = st.st_ino;
		key = &id;
	}
	if (bpf_map_update_elem(fd, key, &value, BPF_NOEXIST) == 0)
		goto registered;
	if (errno != EEXIST)
		return -errno;
	/* The mkdir handler got there first (or a slot-less entry exists). */
	if (bpf_map_lookup_elem(fd, key, &value))
		return -errno;
	if (value.slot) {
		*existing = value.slot;
		return -EEXIST;
	}
	value.slot = slot;
	if (bpf_map_update_elem(fd, key, &value, BPF_EXIST))
		return -errno;
registered:
	/* The hash variant takes any id: a cgroup removed before the update
	 * would keep its entry for good (the rmdir handler deletes only what
	 * is there when it runs).  kernfs empties a removed cgroup's directory
	 * before that handler runs, so this check after the update catches
	 * every such case. */
	if (!storage && fstatat(cgroup_fd, "cgroup.procs", &st, 0) && errno == ENOENT) {
		bpf_map_delete_elem(fd, key);
		return -ENOENT;
	}
	/* Tasks already running in this cgroup cached slot 0: look again. */
	__atomic_fetch_add(&h->skel->bss->slot_generation, 1, __ATOMIC_RELAXED);
	return 0;
}

int tg_map_blkcg(struct tg_handle *h, uint64_t cgroup_id, uint32_t slot)
{
	int fd = bpf_map__fd(h->skel->maps.blkcg_slots);

	if (!slot)
		return bpf_map_delete_elem(fd, &cgroup_id) && errno != ENOENT ? -errno : 0;
	if (bpf_map_update_elem(fd, &cgroup_id, &slot, BPF_ANY))
		return -errno;
	return 0;
}

/* Run-time statistics stay on while the returned fd is open: closing it (or
 * the process dying) turns them off again. */
int tg_enable_stats(void)
{
	int fd = bpf_enable_stats(BPF_STATS_RUN_TIME);

	return fd < 0 ? -errno : fd;
}

int tg_prog_stats(struct tg_handle *h, struct tg_prog_stat *out, uint32_t cap)
{
	return object_prog_stats(h->skel->obj, out, cap);
}
