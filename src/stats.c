/*
 * stats — per-isolate rows (see stats.h). Costs one registry pass under
 * c->lock (a retain per isolate) and relaxed loads: cheap enough to call
 * every second on a large cluster.
 */
#include <errno.h>
#include <stdlib.h>

#include "stats.h"

/* On the rows, not the isolates: the sort touches one array only. */
static int by_id(const void *a, const void *b) {
  uint64_t x = ((const stats_row *)a)->id, y = ((const stats_row *)b)->id;
  return x < y ? -1 : x > y;
}

int stats_rows_take(ic_cluster *c, stats_rows *out) {
  out->rows = NULL;
  out->n = 0;
  size_t n;
  ic_isolate **isos = cluster_list_all(c, &n);
  if (n == SIZE_MAX) return ENOMEM;
  if (!n) {
    free(isos); /* room for the main state's isolate, which is not listed */
    return 0;
  }
  stats_row *rows = malloc(n * sizeof *rows);
  if (!rows) {
    for (size_t i = 0; i < n; i++) isolate_release(isos[i]);
    free(isos);
    return ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    ic_isolate *iso = isos[i];
    stats_row *r = &rows[i];
    r->iso = iso;
    r->id = iso->id;
    r->path = iso->path;
    int sch = atomic_load_explicit(&iso->sched, memory_order_relaxed);
    int wait = atomic_load_explicit(&iso->wait_seen, memory_order_relaxed);
    r->state = sch == SCHED_SCHEDULED ? "running"
               : (wait == WAIT_BLOCKED || wait == WAIT_RECEIVE) ? "waiting"
                                                                : "idle";
    r->mailbox = mailbox_count(&iso->mbox);
    r->in = atomic_load_explicit(&iso->stat_in, memory_order_relaxed);
    r->out = atomic_load_explicit(&iso->stat_out, memory_order_relaxed);
    r->memory = atomic_load_explicit(&iso->stat_mem, memory_order_relaxed);
    r->run_seconds = (double)atomic_load_explicit(&iso->stat_run_ns, memory_order_relaxed) / 1e9;
    r->kind = iso->native ? "native" : iso->kind == ISO_DEDICATED ? "dedicated" : "lua";
  }
  free(isos);
  qsort(rows, n, sizeof *rows, by_id);
  out->rows = rows;
  out->n = n;
  return 0;
}

void stats_rows_free(stats_rows *r) {
  for (size_t i = 0; i < r->n; i++) isolate_release(r->rows[i].iso);
  free(r->rows);
  r->rows = NULL;
  r->n = 0;
}
