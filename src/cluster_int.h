/*
 * cluster_int.h — what the files of the cluster core (src/cluster.c,
 * registry.c, eventlog.c, remote_monitor.c, drain.c, spawn.c) share among
 * themselves and nothing else includes.
 *
 * Locks: as each declaration says; c->lock is the registry's and the event
 * log's (src/cluster.h).
 */
#ifndef IC_CLUSTER_INT_H
#define IC_CLUSTER_INT_H

#include "cluster.h"

/* A registry slot whose isolate has gone (open addressing). */
#define TOMB ((ic_isolate *)(uintptr_t)1)

static inline uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}
/* Lets go of what an event holds (src/eventlog.c). */
void event_clear(cluster_event *e);
/* Appends an event to the log and wakes the subscribers; c->lock held.
 * An event of an isolate of this node (iso) takes one of the slots
 * log_reserve kept for it, so it cannot fail; another (a node's, another
 * node's isolate's) needs room beyond those: NULL when out of memory (the
 * event is lost and logged). */
cluster_event *log_append(ic_cluster *c, int kind, ic_isolate *iso, const char *reason);
/* Keeps n more slots of the log free (growing it now); c->lock held. 0 or
 * ENOMEM. */
int log_reserve(ic_cluster *c, size_t n);
/* Gives back a slot kept for an event that will not come (an isolate that
 * goes down without having come up); c->lock held. */
void log_unreserve(ic_cluster *c);
/* qsort order of isolates by id (src/registry.c). */
int by_id_order(const void *a, const void *b);
/* Finishes every remote watch (src/remote_monitor.c): at shutdown. */
void rwatch_drop_all(ic_cluster *c);

#endif
