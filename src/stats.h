/*
 * stats — what cluster:stats() and ic_cluster_isolate_stats report per
 * isolate, read from each isolate's own counters (isolate.h stat_*): no
 * lock but the registry's, held only to list the isolates.
 */
#ifndef IC_STATS_H
#define IC_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "cluster.h"

typedef struct stats_row {
  ic_isolate *iso;       /* held until stats_rows_free: the path stays valid */
  uint64_t id;
  const char *path;      /* the isolate's (immutable while it is held), or NULL */
  const char *state;     /* "running" (queued or in a turn), "waiting" (a handler
                            waits for a reply, a timer, a message), "idle" */
  uint64_t mailbox;      /* messages queued */
  uint64_t in, out;      /* messages taken from its mailbox / sent */
  uint64_t memory;       /* bytes of Lua heap as of its last turn */
  double run_seconds;    /* time spent running */
  const char *kind;      /* "lua", "native", "dedicated" */
} stats_row;

typedef struct stats_rows {
  stats_row *rows;
  size_t n;
} stats_rows;

/* The rows, ordered by id (spawn order). 0 or ENOMEM. Any thread. */
int stats_rows_take(ic_cluster *c, stats_rows *out);
void stats_rows_free(stats_rows *r);

#endif
