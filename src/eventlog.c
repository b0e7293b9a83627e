/*
 * eventlog — the cluster's log of isolate and node up/down events: appending
 * (and waking the subscribers), trimming what every reader has passed,
 * subscribing, and each isolate's read of the events it has not seen.
 *
 * Locks: c->lock guards the log and the subscriber list (as the registry,
 * which log_trim and subscribe read). Any thread.
 */
#include "cluster_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "net/net.h"

/* ---- event log (c->lock held) ------------------------------------------ */

/* A down event's reason when there was no memory to copy the real one:
 * never NULL, which reads as "normal" (a supervisor would take a crash for a
 * clean end). Not freed. Readers copy it as any other reason. */
static char LOG_REASON_LOST[] = "error: not enough memory (to record why the isolate went down)";

/* Lets go of what an event holds. */
void event_clear(cluster_event *e) {
  if (e->iso) isolate_release(e->iso);
  if (e->reason != LOG_REASON_LOST) free(e->reason);
  free(e->node);
}

/* Grows the log to at least `need` slots. 0 or ENOMEM. */
static int log_grow(ic_cluster *c, size_t need) {
  if (need <= c->log_cap) return 0;
  size_t cap = c->log_cap ? c->log_cap * 2 : 64;
  if (cap < need) cap = need;
  cluster_event *l = realloc(c->log, cap * sizeof *l);
  if (!l) return ENOMEM;
  c->log = l;
  c->log_cap = cap;
  return 0;
}

int log_reserve(ic_cluster *c, size_t n) {
  if (log_grow(c, c->log_len + c->log_reserved + n)) return ENOMEM;
  c->log_reserved += n;
  return 0;
}

void log_unreserve(ic_cluster *c) {
  if (c->log_reserved) c->log_reserved--;
}

static void log_trim(ic_cluster *c) {
  uint64_t keep = c->log_base + c->log_len;
  for (size_t i = 0; i < c->nsubs; i++)
    if (c->subs[i]->event_cursor < keep) keep = c->subs[i]->event_cursor;
  /* Isolates whose entry has not finished may still subscribe from spawn. */
  for (size_t i = 0; i < c->by_id_cap; i++) {
    ic_isolate *iso = c->by_id[i];
    if (iso && iso != TOMB && !iso->up && iso->spawn_cursor < keep) keep = iso->spawn_cursor;
  }
  if (keep <= c->log_base) return;
  size_t drop = (size_t)(keep - c->log_base);
  for (size_t i = 0; i < drop; i++) {
    event_clear(&c->log[i]);
  }
  memmove(c->log, c->log + drop, (c->log_len - drop) * sizeof *c->log);
  c->log_len -= drop;
  c->log_base = keep;
}

/* Returns the new entry, or NULL when out of memory (the event is lost and logged). */
cluster_event *log_append(ic_cluster *c, int kind, ic_isolate *iso, const char *reason) {
  if (c->log_len >= c->log_trim_at) {
    log_trim(c);
    /* A trim walks the registry (an isolate not up yet may still read from
     * its spawn position): at most once per as many events as there are
     * isolates, so that it costs each event the same however many there
     * are (every 1,024 events, a million isolates made it most of their
     * spawns' and shutdown's time). */
    size_t at = c->log_len * 2 > 1024 ? c->log_len * 2 : 1024;
    c->log_trim_at = at > c->by_id_len ? at : c->by_id_len;
  }
  /* This node's isolate: its slot was kept (log_reserve at its
   * registration). Anything else must leave the kept slots free. */
  size_t kept = c->log_reserved;
  if (iso && kept) kept--;
  if (log_grow(c, c->log_len + kept + 1)) {
    cluster_log(c, "isolate_cluster: out of memory: %s %s event was lost",
                kind == EVENT_NODE_UP || kind == EVENT_NODE_DOWN ? "a node" : "an isolate",
                kind == EVENT_UP || kind == EVENT_NODE_UP ? "up" : "down");
    return NULL;
  }
  c->log_reserved = kept;
  cluster_event *e = &c->log[c->log_len++];
  e->kind = kind;
  e->iso = iso;
  if (iso) isolate_retain(iso);
  e->reason = reason ? strdup(reason) : NULL;
  if (reason && !e->reason) e->reason = LOG_REASON_LOST;
  e->node = NULL;
  e->rnode = 0;
  e->rid = 0;
  for (size_t i = 0; i < c->nsubs; i++) {
    ic_isolate *s = c->subs[i];
    if (s == iso) continue;
    atomic_store(&s->events_pending, 1);
    isolate_wake(s, NULL);
  }
  return e;
}

void cluster_node_event(ic_cluster *c, int kind, const char *name, const char *reason) {
  plat_mutex_lock(&c->lock);
  cluster_event *e = log_append(c, kind, NULL, reason);
  if (e) e->node = strdup(name);
  plat_mutex_unlock(&c->lock);
}

void cluster_announce_up(ic_cluster *c, ic_isolate *iso) {
  plat_mutex_lock(&c->lock);
  /* Looked at under the lock: an isolate a shutdown has left running (and
   * taken out of the registry, marking it up) is never announced after
   * its down event. */
  if (!iso->up) {
    iso->up = 1;
    if (!iso->hidden) log_append(c, EVENT_UP, iso, NULL);
    /* Under c->lock: the other nodes hear of its up before its down. */
    if (!iso->hidden && c->net) net_announce_up(c->net, iso);
  }
  plat_mutex_unlock(&c->lock);
}

ic_isolate **cluster_subscribe(ic_cluster *c, ic_isolate *iso, int existing, size_t *n) {
  ic_isolate **out = NULL;
  *n = 0;
  plat_mutex_lock(&c->lock);
  if (!iso->subscribed) {
    if (c->nsubs == c->subs_cap) {
      size_t cap = c->subs_cap ? c->subs_cap * 2 : 16;
      ic_isolate **s = realloc(c->subs, cap * sizeof *s);
      if (!s) { plat_mutex_unlock(&c->lock); return NULL; }
      c->subs = s;
      c->subs_cap = cap;
    }
    c->subs[c->nsubs++] = iso;
    iso->subscribed = 1;
    if (iso->event_cursor < c->log_base) iso->event_cursor = c->log_base;
    if (iso->event_cursor < c->log_base + c->log_len) atomic_store(&iso->events_pending, 1);
  }
  if (existing) {
    /* Snapshot of what is up now; the up events already in the log are
     * covered by it. The read position stays: it is shared with the down
     * events, which are all still to be heard. */
    out = malloc((c->by_id_len + 1) * sizeof *out);
    if (out) {
      iso->up_replayed = c->log_base + c->log_len;
      size_t k = 0;
      for (size_t i = 0; i < c->by_id_cap; i++) {
        ic_isolate *x = c->by_id[i];
        if (!x || x == TOMB || x == iso || !x->up || x->kind == ISO_MAIN || x->hidden) continue;
        isolate_retain(x);
        out[k++] = x;
      }
      *n = k;
    }
  }
  plat_mutex_unlock(&c->lock);
  if (out) qsort(out, *n, sizeof *out, by_id_order);
  return out;
}

cluster_event *cluster_read_events(ic_cluster *c, ic_isolate *iso, size_t *n) {
  plat_mutex_lock(&c->lock);
  if (iso->event_cursor < c->log_base) iso->event_cursor = c->log_base;
  uint64_t end = c->log_base + c->log_len;
  size_t k = 0;
  cluster_event *out = NULL;
  if (iso->event_cursor < end) {
    out = malloc((size_t)(end - iso->event_cursor) * sizeof *out);
    int copied = out != NULL;
    for (uint64_t p = iso->event_cursor; copied && p < end; p++) {
      cluster_event *e = &c->log[p - c->log_base];
      if (e->iso == iso || (e->kind == EVENT_UP && p < iso->up_replayed)) continue;
      out[k] = *e;
      if (e->iso) isolate_retain(e->iso);
      out[k].reason = e->reason ? strdup(e->reason) : NULL;
      out[k].node = e->node ? strdup(e->node) : NULL;
      k++;
      if ((e->reason && !out[k - 1].reason) || (e->node && !out[k - 1].node)) copied = 0;
    }
    if (copied) {
      iso->event_cursor = end;
    } else {
      /* Out of memory: all or nothing (a down event without its reason
       * would be a wrong event). The events stay in the log, and the flag
       * brings the isolate back for them, else they would wait for the
       * next event. The log still holds each isolate: no release here is
       * the last. */
      if (out) cluster_free_events(out, k);
      out = NULL;
      k = 0;
      atomic_store(&iso->events_pending, 1);
    }
  }
  plat_mutex_unlock(&c->lock);
  *n = k;
  return out;
}

void cluster_free_events(cluster_event *ev, size_t n) {
  for (size_t i = 0; i < n; i++) {
    event_clear(&ev[i]);
  }
  free(ev);
}
