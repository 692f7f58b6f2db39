/* The C hot path's API, as cffi sees it (cdef) and as native.c implements it.
 * Every function returns a count or 0 on success, or a negative errno.
 * Python owns every buffer; C only fills them. */

/* Kernel features the BPF side has variants for: tg_open loads, of each
 * program, the variant for what the kernel has (bpf/maps.bpf.h). */
#define TG_FEAT_CGRP_STORAGE 1       /* BPF_MAP_TYPE_CGRP_STORAGE (6.2); else a hash map by cgroup id */
#define TG_FEAT_PREV_STATE   2       /* sched_switch's prev_state argument (5.18); else the task's state */
#define TG_FEAT_IO_DONE      4       /* block_io_done (6.5) and the RQF_IO_STAT bit in BTF; else rq_complete */

struct tg_config {
	uint32_t max_slots;          /* cgroups tracked at once (slot 0 reserved) */
	uint32_t features_off;       /* TG_FEAT_* to do without although the kernel has them (tests, benchmarks) */
	uint64_t outlier_ns;         /* run-queue/I-O latency that makes an event; 0 = none */
	uint64_t outlier_interval_ns;/* at most one outlier event per cgroup and CPU per interval */
};

struct tg_prog_stat {
	char name[64];
	uint64_t run_time_ns;        /* with stats enabled (tg_enable_stats) */
	uint64_t run_cnt;
};

struct tg_handle;

const char *tg_version(void);

uint32_t tg_probe_features(void);
int tg_open(const struct tg_config *cfg, struct tg_handle **out);
uint32_t tg_features(struct tg_handle *h);
int tg_attach(struct tg_handle *h);
void tg_detach(struct tg_handle *h);
void tg_close(struct tg_handle *h);
int tg_nr_cpus(struct tg_handle *h);
uint32_t tg_max_slots(struct tg_handle *h);

int tg_checkpoint(struct tg_handle *h);
int tg_read_stats(struct tg_handle *h, struct tg_cg_stats *out, uint32_t nslots);
int tg_read_globals(struct tg_handle *h, struct tg_global *out);
int tg_drain(struct tg_handle *h, struct tg_event *out, uint32_t cap);
int tg_read_pairs(struct tg_handle *h, struct tg_pair *out, uint32_t nslots, uint32_t cap);
int tg_read_culprits(struct tg_handle *h, struct tg_culprit *out, uint32_t nslots, uint32_t cap);

int tg_slot_push(struct tg_handle *h, uint32_t slot);
int tg_slot_pop(struct tg_handle *h, uint32_t *slot);
int tg_slot_peek(struct tg_handle *h, uint32_t *slot);
uint64_t tg_lifecycle_drops(struct tg_handle *h);
int tg_register_cgroup(struct tg_handle *h, int cgroup_fd, uint32_t slot, uint32_t *existing);
int tg_map_blkcg(struct tg_handle *h, uint64_t cgroup_id, uint32_t slot);

int tg_enable_stats(void);
int tg_prog_stats(struct tg_handle *h, struct tg_prog_stat *out, uint32_t cap);
