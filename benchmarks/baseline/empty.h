/* The baseline extension's API, as cffi sees it (cdef) and empty.c implements it. */
#define BENCH_EMPTY_SWITCH 1
#define BENCH_EMPTY_WAKEUP 2

struct bench_empty;

int bench_empty_open(struct bench_empty **out, unsigned int hooks);
int bench_empty_prog_stats(struct bench_empty *e, struct tg_prog_stat *out, uint32_t cap);
void bench_empty_close(struct bench_empty *e);
