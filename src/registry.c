/*
 * registry — the cluster's isolates by id and by path (open-addressing
 * tables with tombstones), registering and unregistering, the path rules,
 * and the lookups and listings over them (find, wait for a path, prefix).
 *
 * Locks: c->lock guards both tables; every function here takes it (the
 * static helpers expect it held). Any thread.
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

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

/* ---- registry (c->lock held) ------------------------------------------- */

/* Rebuilds a table that is half full (live entries and tombstones of
 * isolates gone): twice as large when the live entries need it, else the
 * same size, which only clears the tombstones (spawn/exit churn must not
 * grow it for ever). */
static size_t table_new_cap(size_t live, size_t cap) { return (live + 1) * 4 > cap ? cap * 2 : cap; }

static int id_table_grow(ic_cluster *c) {
  size_t cap = table_new_cap(c->by_id_len, c->by_id_cap);
  ic_isolate **t = calloc(cap, sizeof *t);
  if (!t) return ENOMEM;
  for (size_t i = 0; i < c->by_id_cap; i++) {
    ic_isolate *iso = c->by_id[i];
    if (!iso || iso == TOMB) continue;
    size_t j = mix64(iso->id) & (cap - 1);
    while (t[j]) j = (j + 1) & (cap - 1);
    t[j] = iso;
  }
  free(c->by_id);
  c->by_id = t;
  c->by_id_cap = cap;
  c->by_id_tomb = 0;
  return 0;
}

static int path_table_grow(ic_cluster *c) {
  size_t cap = table_new_cap(c->by_path_len, c->by_path_cap);
  ic_isolate **t = calloc(cap, sizeof *t);
  if (!t) return ENOMEM;
  for (size_t i = 0; i < c->by_path_cap; i++) {
    ic_isolate *iso = c->by_path[i];
    if (!iso || iso == TOMB) continue;
    size_t j = hash_str(iso->path) & (cap - 1);
    while (t[j]) j = (j + 1) & (cap - 1);
    t[j] = iso;
  }
  free(c->by_path);
  c->by_path = t;
  c->by_path_cap = cap;
  c->by_path_tomb = 0;
  return 0;
}

static size_t path_slot(ic_cluster *c, const char *path) {
  size_t mask = c->by_path_cap - 1, j = hash_str(path) & mask;
  for (;;) {
    ic_isolate *iso = c->by_path[j];
    if (!iso) return SIZE_MAX;
    if (iso != TOMB && strcmp(iso->path, path) == 0) return j;
    j = (j + 1) & mask;
  }
}

/* The slot that holds iso itself. Deleting by identity, not by name: the
 * entry found by name could be another isolate's, and the one left behind
 * would dangle once iso is freed. */
static size_t path_slot_of(ic_cluster *c, const ic_isolate *iso) {
  size_t mask = c->by_path_cap - 1, j = hash_str(iso->path) & mask;
  for (;;) {
    ic_isolate *x = c->by_path[j];
    if (!x) return SIZE_MAX;
    if (x == iso) return j;
    j = (j + 1) & mask;
  }
}

static size_t id_slot(ic_cluster *c, uint64_t id) {
  size_t mask = c->by_id_cap - 1, j = mix64(id) & mask;
  for (;;) {
    ic_isolate *iso = c->by_id[j];
    if (!iso) return SIZE_MAX;
    if (iso != TOMB && iso->id == id) return j;
    j = (j + 1) & mask;
  }
}

static int valid_path(const char *p) {
  if (p[0] != '/' || p[1] == '\0') return 0;
  for (const char *s = p; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch < 0x20 || ch == 0x7f) return 0;
    if (ch == '/' && s[1] == '/') return 0;
  }
  return 1;
}

int cluster_path_is_name(const char *path) {
  return valid_path(path) && path[strlen(path) - 1] != '/';
}

int cluster_register(ic_cluster *c, ic_isolate *iso, const char *path, char *errbuf, size_t errlen) {
  char *own = NULL;
  if (path) {
    if (!valid_path(path)) {
      snprintf(errbuf, errlen,
               "invalid path \"%s\" (a path is \"/name\" or \"/dir/\", without empty segments or control characters)",
               path);
      return EINVAL;
    }
  }
  plat_mutex_lock(&c->lock);
  if (path) {
    size_t n = strlen(path);
    if (path[n - 1] == '/') {
      /* "/dir/": append a number no isolate of this cluster has had as a
       * segment there, skipping any "/dir/N" a user took by name. In a
       * multi-node cluster the node's incarnation makes the segment unique
       * across the nodes too, and the other nodes' names are skipped. */
      own = malloc(n + 40);
      if (own) {
        do {
          if (c->net)
            snprintf(own, n + 40, "%s%08x-%llu", path, (unsigned)c->node_id, (unsigned long long)++c->path_seq);
          else
            snprintf(own, n + 40, "%s%llu", path, (unsigned long long)++c->path_seq);
        } while (path_slot(c, own) != SIZE_MAX || (c->net && net_path_taken(c->net, own)));
      }
    } else {
      /* Unique across the live nodes too (their replica, src/net/paths.h). */
      if (path_slot(c, path) != SIZE_MAX || (c->net && net_path_taken(c->net, path))) {
        plat_mutex_unlock(&c->lock);
        snprintf(errbuf, errlen, "path \"%s\" is already in use", path);
        return EEXIST;
      }
      own = strdup(path);
    }
    if (!own) goto oom;
  }
  if ((c->by_id_len + c->by_id_tomb + 1) * 2 > c->by_id_cap && id_table_grow(c)) goto oom;
  if (own && (c->by_path_len + c->by_path_tomb + 1) * 2 > c->by_path_cap && path_table_grow(c)) goto oom;
  if (iso->id && id_slot(c, iso->id) != SIZE_MAX) {
    plat_mutex_unlock(&c->lock);
    free(own);
    snprintf(errbuf, errlen, "isolate id %llu is already in use", (unsigned long long)iso->id);
    return EEXIST;
  }
  /* Its up and down events will surely come: their slots in the log are
   * kept now, so that a spawn short of memory fails here instead of a
   * subscriber missing the event later. */
  if (iso->kind != ISO_MAIN && !iso->hidden && log_reserve(c, 2)) goto oom;
  if (!iso->id) iso->id = c->next_id++;
  iso->path = own;
  {
    size_t mask = c->by_id_cap - 1, j = mix64(iso->id) & mask;
    while (c->by_id[j] && c->by_id[j] != TOMB) j = (j + 1) & mask;
    if (c->by_id[j] == TOMB) c->by_id_tomb--;
    c->by_id[j] = iso;
    c->by_id_len++;
  }
  if (own) {
    size_t mask = c->by_path_cap - 1, j = hash_str(own) & mask;
    while (c->by_path[j] && c->by_path[j] != TOMB) j = (j + 1) & mask;
    if (c->by_path[j] == TOMB) c->by_path_tomb--;
    c->by_path[j] = iso;
    c->by_path_len++;
  }
  iso->spawn_cursor = c->log_base + c->log_len;
  iso->event_cursor = iso->spawn_cursor;
  c->live++;
  isolate_retain(iso);
  plat_cond_broadcast(&c->live_cond); /* waiting lookups */
  if (own && atomic_load(&c->main_path_waits)) isolate_wake(c->main, NULL);
  plat_mutex_unlock(&c->lock);
  return 0;
oom:
  plat_mutex_unlock(&c->lock);
  free(own);
  snprintf(errbuf, errlen, "out of memory");
  return ENOMEM;
}

ic_isolate *cluster_find_id(ic_cluster *c, uint64_t id) {
  plat_mutex_lock(&c->lock);
  size_t j = id_slot(c, id);
  ic_isolate *iso = j == SIZE_MAX ? NULL : c->by_id[j];
  if (iso) isolate_retain(iso);
  plat_mutex_unlock(&c->lock);
  return iso;
}

ic_isolate *cluster_find_path(ic_cluster *c, const char *path) {
  plat_mutex_lock(&c->lock);
  size_t j = path_slot(c, path);
  ic_isolate *iso = j == SIZE_MAX || c->by_path[j]->hidden ? NULL : c->by_path[j];
  if (iso) isolate_retain(iso);
  plat_mutex_unlock(&c->lock);
  return iso;
}

int cluster_path_in_use(ic_cluster *c, const char *path) {
  plat_mutex_lock(&c->lock);
  int used = path_slot(c, path) != SIZE_MAX;
  plat_mutex_unlock(&c->lock);
  return used;
}

ic_isolate *cluster_wait_path(ic_cluster *c, const char *path, uint64_t deadline) {
  ic_isolate *iso = NULL;
  plat_mutex_lock(&c->lock);
  for (;;) {
    size_t j = path_slot(c, path);
    if (j != SIZE_MAX && !c->by_path[j]->hidden) {
      iso = c->by_path[j];
      isolate_retain(iso);
      break;
    }
    /* Another node's isolate holds it: the caller looks there. */
    if (c->net && net_path_taken(c->net, path)) break;
    if (atomic_load(&c->state) != CLUSTER_RUNNING) break;
    if (plat_cond_wait_until(&c->live_cond, &c->lock, deadline) == ETIMEDOUT) {
      j = path_slot(c, path);
      if (j != SIZE_MAX && !c->by_path[j]->hidden) {
        iso = c->by_path[j];
        isolate_retain(iso);
      }
      break;
    }
  }
  plat_mutex_unlock(&c->lock);
  return iso;
}

int by_id_order(const void *a, const void *b) {
  uint64_t x = (*(ic_isolate *const *)a)->id, y = (*(ic_isolate *const *)b)->id;
  return x < y ? -1 : x > y;
}

ic_isolate **cluster_find_prefix(ic_cluster *c, const char *prefix, size_t *n) {
  size_t plen = strlen(prefix), k = 0;
  plat_mutex_lock(&c->lock);
  ic_isolate **out = malloc((c->by_path_len + 1) * sizeof *out);
  if (out) {
    for (size_t i = 0; i < c->by_path_cap; i++) {
      ic_isolate *iso = c->by_path[i];
      if (!iso || iso == TOMB || iso->hidden || strncmp(iso->path, prefix, plen) != 0) continue;
      isolate_retain(iso);
      out[k++] = iso;
    }
  }
  plat_mutex_unlock(&c->lock);
  if (out) qsort(out, k, sizeof *out, by_id_order);
  *n = k;
  return out;
}

void cluster_each_up(ic_cluster *c, void (*fn)(ic_isolate *iso, void *ud), void *ud) {
  plat_mutex_lock(&c->lock);
  for (size_t i = 0; i < c->by_id_cap; i++) {
    ic_isolate *x = c->by_id[i];
    if (!x || x == TOMB || !x->up || x->kind == ISO_MAIN || x->hidden || !atomic_load(&x->alive)) continue;
    fn(x, ud);
  }
  plat_mutex_unlock(&c->lock);
}

ic_isolate **cluster_list_all(ic_cluster *c, size_t *n) {
  *n = 0;
  plat_mutex_lock(&c->lock);
  ic_isolate **out = c->by_id_len ? malloc(c->by_id_len * sizeof *out) : NULL;
  if (!out && c->by_id_len) *n = SIZE_MAX;
  for (size_t i = 0; out && i < c->by_id_cap; i++) {
    ic_isolate *x = c->by_id[i];
    if (!x || x == TOMB || x->kind == ISO_MAIN || x->hidden) continue;
    isolate_retain(x);
    out[(*n)++] = x;
  }
  plat_mutex_unlock(&c->lock);
  return out;
}

void cluster_unregister(ic_cluster *c, ic_isolate *iso, const char *reason) {
  plat_mutex_lock(&c->lock);
  size_t j = id_slot(c, iso->id);
  if (j == SIZE_MAX) { plat_mutex_unlock(&c->lock); return; }
  c->by_id[j] = TOMB;
  c->by_id_len--;
  c->by_id_tomb++;
  if (iso->path) {
    size_t k = path_slot_of(c, iso);
    if (k != SIZE_MAX) {
      c->by_path[k] = TOMB;
      c->by_path_len--;
      c->by_path_tomb++;
    }
  }
  if (iso->subscribed) {
    for (size_t i = 0; i < c->nsubs; i++)
      if (c->subs[i] == iso) { c->subs[i] = c->subs[--c->nsubs]; break; }
    iso->subscribed = 0;
  }
  if (iso->kind != ISO_MAIN) {
    /* Never announced up: that kept slot is not needed. */
    if (!iso->hidden && !iso->up) log_unreserve(c);
    /* Every isolate's end is published, also one that failed before it
     * came up: supervisors must hear of it. */
    if (!iso->hidden) log_append(c, EVENT_DOWN, iso, reason);
    /* Also one that never came up, as locally (a remote supervisor hears
     * of a child that failed to start). */
    if (!iso->hidden && c->net) net_announce_down(c->net, iso, reason);
    c->live--;
    plat_cond_broadcast(&c->live_cond);
  }
  iso->up = 1; /* no longer holds the log back */
  plat_mutex_unlock(&c->lock);
  /* Its monitors hear of it with the same reason, once it is out of the
   * registry: a lookup no longer finds what a monitor reported down. */
  monitor_fire(&iso->monitors, reason ? reason : "normal");
  isolate_release(iso);
}
