#include "cluster.h"
#include "native.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include <msgpuck.h>

#include "runtime.h"
#include "net/net.h"

#define TOMB ((ic_isolate *)(uintptr_t)1)
#define DEFAULT_MAILBOX 1000000u
#define DEFAULT_SLICE 0.002
/* Past a shutdown's deadline: how long killed Lua code has to stop, and how
 * long in all before a thread still in a blocking C call is left running. */
#define SHUTDOWN_KILL_MARGIN 0.25
#define SHUTDOWN_JOIN_MARGIN 0.5

/* ---- small helpers ------------------------------------------------------ */

static uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

static void default_log(void *ud, const char *text) {
  (void)ud;
  fprintf(stderr, "%s\n", text);
  fflush(stderr);
}

static void discard_log(void *ud, const char *text) {
  (void)ud;
  (void)text;
}

/* Lines go as MessagePack strings to the logger isolate; when it is gone or
 * its mailbox is full they go to stderr rather than nowhere. */
static void isolate_log(void *ud, const char *text) {
  ic_cluster *c = ud;
  size_t n = strlen(text);
  ic_msg *m = msg_new(MSG_USER, NULL, n + 5);
  if (m) {
    char *w = mp_encode_str(m->inline_data, text, (uint32_t)n);
    m->len = (size_t)(w - m->inline_data);
    if (!isolate_post(c->logger, m, NULL)) return;
  }
  default_log(NULL, text);
}

void cluster_set_logger(ic_cluster *c, ic_isolate *logger, int discard) {
  plat_mutex_lock(&c->log_lock);
  ic_isolate *old = c->logger;
  c->logger = logger;
  if (logger) {
    isolate_retain(logger); /* spawned hidden: lstate_spawn(..., hidden = 1) */
    c->log_fn = isolate_log;
    c->log_ud = c;
  } else {
    c->log_fn = discard ? discard_log : default_log;
    c->log_ud = NULL;
  }
  plat_mutex_unlock(&c->log_lock);
  if (old) isolate_release(old);
}

void cluster_set_log_fn(ic_cluster *c, ic_log_fn fn, void *ud) {
  plat_mutex_lock(&c->log_lock);
  ic_isolate *old = c->logger;
  c->logger = NULL;
  c->log_fn = fn ? fn : default_log;
  c->log_ud = fn ? ud : NULL;
  plat_mutex_unlock(&c->log_lock);
  if (old) isolate_release(old);
}

void cluster_log(ic_cluster *c, const char *fmt, ...) {
  char stackbuf[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(stackbuf, sizeof stackbuf, fmt, ap);
  va_end(ap);
  char *text = stackbuf;
  if (n >= (int)sizeof stackbuf) {
    char *big = malloc((size_t)n + 1);
    if (big) {
      va_start(ap, fmt);
      vsnprintf(big, (size_t)n + 1, fmt, ap);
      va_end(ap);
      text = big;
    }
  }
  plat_mutex_lock(&c->log_lock);
  c->log_fn(c->log_ud, text);
  plat_mutex_unlock(&c->log_lock);
  if (text != stackbuf) free(text);
}

/* Lets go of what an event holds. */
static void event_clear(cluster_event *e) {
  if (e->iso) isolate_release(e->iso);
  free(e->reason);
  free(e->node);
}

/* ---- creation and lifetime --------------------------------------------- */

ic_cluster *cluster_new(const cluster_opts *o, const char **err) {
  ic_cluster *c = calloc(1, sizeof *c);
  if (!c) { *err = "out of memory"; return NULL; }
  atomic_init(&c->refs, 1);
  atomic_init(&c->state, CLUSTER_RUNNING);
  c->nworkers = o && o->workers > 0 ? o->workers : plat_ncpu();
  c->default_mailbox = o && o->mailbox ? o->mailbox : DEFAULT_MAILBOX;
  c->slice_seconds = o && o->slice_seconds > 0 ? o->slice_seconds : DEFAULT_SLICE;
  c->state_hook = o ? o->state_hook : NULL;
  c->state_hook_ud = o ? o->state_hook_ud : NULL;
  c->log_fn = default_log;
  c->next_id = 1;
  /* A node part unlikely to collide with another node's, so a ref that
   * wanders into the wrong cluster is recognised as foreign. */
  c->node_id = (uint32_t)mix64(plat_now_ns() ^ (uintptr_t)c) | 1u;
  plat_mutex_init(&c->lock);
  plat_mutex_init(&c->log_lock);
  plat_cond_init(&c->live_cond);
  plat_mutex_init(&c->rwatch_lock);
  c->by_id_cap = 64;
  c->by_id = calloc(c->by_id_cap, sizeof *c->by_id);
  c->by_path_cap = 64;
  c->by_path = calloc(c->by_path_cap, sizeof *c->by_path);
  c->log_trim_at = 1024;
  atomic_init(&c->main_fd, -1);
  if (!c->by_id || !c->by_path) goto oom;
  c->runtime_code = runtime_compile(ic_runtime_lua, ic_runtime_lua_len, "=isolate_cluster.runtime", &c->boot_error);
  if (c->runtime_code)
    c->runtime_extras = runtime_compile(ic_runtime_extras_lua, ic_runtime_extras_lua_len,
                                        "=isolate_cluster.runtime_extras", &c->boot_error);
  if (!c->runtime_code || !c->runtime_extras) {
    /* runtime_compile leaves boot_error NULL only when memory ran out. */
    *err = c->boot_error ? c->boot_error : "cannot compile the isolate runtime: not enough memory";
    goto fail;
  }
  if (timer_init(&c->timers)) goto oom;
  if (sched_init(&c->sched, c, c->nworkers, c->slice_seconds)) { timer_fini(&c->timers); goto oom; }
  c->main = isolate_new(c, ISO_MAIN, c->default_mailbox);
  if (!c->main) goto oom_all;
  {
    char e[128];
    if (cluster_register(c, c->main, NULL, e, sizeof e)) goto oom_all;
    /* The main state is not an isolate: it is never "up" in the log. */
    c->main->up = 1;
    c->live--;
  }
  if (timer_start(&c->timers) || sched_start(&c->sched)) {
    *err = "cannot start threads";
    sched_stop(&c->sched, UINT64_MAX);
    timer_stop(&c->timers);
    goto fail_all;
  }
  return c;
oom_all:
  *err = "out of memory";
fail_all:
  sched_fini(&c->sched);
  timer_fini(&c->timers);
  if (c->main) isolate_release(c->main);
  goto fail;
oom:
  *err = "out of memory";
fail:
  blob_release(c->runtime_code);
  blob_release(c->runtime_extras);
  free(c->by_id);
  free(c->by_path);
  plat_cond_destroy(&c->live_cond);
  plat_mutex_destroy(&c->rwatch_lock);
  plat_mutex_destroy(&c->log_lock);
  plat_mutex_destroy(&c->lock);
  free(c);
  return NULL;
}

ic_cluster *cluster_new_node(const cluster_opts *o, const net_opts *no, char *err, size_t errlen) {
  const char *e = "unknown error";
  ic_cluster *c = cluster_new(o, &e);
  if (!c) {
    snprintf(err, errlen, "%s", e);
    return NULL;
  }
  /* Before any ref of this cluster exists: net_start sets the node part. */
  c->net = net_start(c, no, err, errlen);
  if (!c->net) {
    cluster_shutdown(c, 1.0);
    cluster_close(c);
    cluster_release(c);
    return NULL;
  }
  return c;
}

void cluster_retain(ic_cluster *c) { atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed); }

void cluster_release(ic_cluster *c) {
  if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1) return;
  /* Only reached after shutdown: every isolate has let go. */
  ic_isolate *main = c->main;
  c->main = NULL;
  if (main) isolate_release(main);
  net_free(c->net);
  for (size_t i = 0; i < c->log_len; i++) {
    event_clear(&c->log[i]);
  }
  free(c->log);
  free(c->subs);
  free(c->by_id);
  free(c->by_path);
  sched_fini(&c->sched);
  timer_fini(&c->timers);
  blob_release(c->runtime_code);
  blob_release(c->runtime_extras);
  free(c->boot_error);
  if (atomic_load(&c->main_fd) >= 0) close(atomic_load(&c->main_fd));
  plat_cond_destroy(&c->live_cond);
  plat_mutex_destroy(&c->rwatch_lock);
  plat_mutex_destroy(&c->log_lock);
  plat_mutex_destroy(&c->lock);
  free(c);
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

static int by_id_order(const void *a, const void *b) {
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

/* ---- event log (c->lock held) ------------------------------------------ */

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
static cluster_event *log_append(ic_cluster *c, int kind, ic_isolate *iso, const char *reason) {
  if (c->log_len >= c->log_trim_at) {
    log_trim(c);
    c->log_trim_at = c->log_len * 2 > 1024 ? c->log_len * 2 : 1024;
  }
  if (c->log_len == c->log_cap) {
    size_t cap = c->log_cap ? c->log_cap * 2 : 64;
    cluster_event *l = realloc(c->log, cap * sizeof *l);
    if (!l) {
      cluster_log(c, "isolate_cluster: out of memory: an isolate %s event was lost",
                  kind == EVENT_UP ? "up" : "down");
      return NULL;
    }
    c->log = l;
    c->log_cap = cap;
  }
  cluster_event *e = &c->log[c->log_len++];
  e->kind = kind;
  e->iso = iso;
  if (iso) isolate_retain(iso);
  e->reason = reason ? strdup(reason) : NULL;
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

/* ---- monitors of other nodes' isolates ---------------------------------- */

typedef struct remote_watch {
  struct remote_watch *next;
  uint32_t node;
  uint64_t id;
  monitor_set set;
} remote_watch;

/* Unlinks and returns the entries of (node, id) (every id of node when
 * all), rwatch_lock held. */
static remote_watch *rwatch_take(ic_cluster *c, uint32_t node, uint64_t id, int all) {
  remote_watch *taken = NULL, **pp = &c->rwatch;
  while (*pp) {
    remote_watch *w = *pp;
    if (w->node == node && (all || w->id == id)) {
      *pp = w->next;
      w->next = taken;
      taken = w;
    } else {
      pp = &w->next;
    }
  }
  return taken;
}

/* Fires (reason) or, with reason NULL, just lets go of a list of entries;
 * no lock held. */
static void rwatch_finish(remote_watch *w, const char *reason) {
  while (w) {
    remote_watch *next = w->next;
    if (reason) monitor_fire(&w->set, reason);
    monitor_set_fini(&w->set);
    free(w);
    w = next;
  }
}

int cluster_remote_monitor(ic_cluster *c, uint32_t node, uint64_t id, ic_isolate *watcher, uint64_t mid) {
  if (!c->net) return ESRCH;
  plat_mutex_lock(&c->rwatch_lock);
  remote_watch *w = c->rwatch;
  while (w && (w->node != node || w->id != id)) w = w->next;
  if (!w) {
    w = calloc(1, sizeof *w);
    if (!w || monitor_set_init(&w->set)) {
      plat_mutex_unlock(&c->rwatch_lock);
      free(w);
      return ENOMEM;
    }
    w->node = node;
    w->id = id;
    w->next = c->rwatch;
    c->rwatch = w;
  }
  int rc = monitor_add(&w->set, watcher, mid);
  plat_mutex_unlock(&c->rwatch_lock);
  if (rc) return rc;
  /* Looked at after the entry is in: a down event marks the replica first
   * and fires the entries after, so either it finds this entry or this look
   * sees it down. Down here with the entry still listed: its event has
   * passed (or is passing), and the entry's monitors hear "noproc". */
  if (!net_remote_alive(c->net, node, id)) {
    plat_mutex_lock(&c->rwatch_lock);
    remote_watch *gone = rwatch_take(c, node, id, 0);
    plat_mutex_unlock(&c->rwatch_lock);
    rwatch_finish(gone, "noproc");
  }
  return 0;
}

void cluster_remote_demonitor(ic_cluster *c, uint32_t node, uint64_t id, ic_isolate *watcher, uint64_t mid) {
  remote_watch *empty = NULL;
  plat_mutex_lock(&c->rwatch_lock);
  for (remote_watch **pp = &c->rwatch; *pp; pp = &(*pp)->next) {
    remote_watch *w = *pp;
    if (w->node != node || w->id != id) continue;
    monitor_remove(&w->set, watcher, mid);
    plat_mutex_lock(&w->set.lock);
    int none = w->set.n == 0;
    plat_mutex_unlock(&w->set.lock);
    if (none) {
      *pp = w->next;
      w->next = NULL;
      empty = w;
    }
    break;
  }
  plat_mutex_unlock(&c->rwatch_lock);
  rwatch_finish(empty, NULL);
}

void cluster_remote_node_gone(ic_cluster *c, uint32_t node) {
  plat_mutex_lock(&c->rwatch_lock);
  remote_watch *gone = rwatch_take(c, node, 0, 1);
  plat_mutex_unlock(&c->rwatch_lock);
  rwatch_finish(gone, "node down");
}

/* Lets go of every remote monitor (the net has stopped: no event comes). */
static void rwatch_drop_all(ic_cluster *c) {
  plat_mutex_lock(&c->rwatch_lock);
  remote_watch *all = c->rwatch;
  c->rwatch = NULL;
  plat_mutex_unlock(&c->rwatch_lock);
  rwatch_finish(all, NULL);
}

void cluster_remote_event(ic_cluster *c, int kind, uint32_t node, uint64_t id, const char *reason) {
  plat_mutex_lock(&c->lock);
  cluster_event *e = log_append(c, kind, NULL, reason);
  if (e) {
    e->rnode = node;
    e->rid = id;
  }
  plat_cond_broadcast(&c->live_cond); /* waiting lookups look at the replica too */
  if (kind == EVENT_UP && atomic_load(&c->main_path_waits)) isolate_wake(c->main, NULL);
  plat_mutex_unlock(&c->lock);
  if (kind == EVENT_DOWN) {
    plat_mutex_lock(&c->rwatch_lock);
    remote_watch *gone = rwatch_take(c, node, id, 0);
    plat_mutex_unlock(&c->rwatch_lock);
    rwatch_finish(gone, reason ? reason : "normal");
  }
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

/* ---- drain and shutdown ------------------------------------------------- */

static int isolate_busy(ic_isolate *iso) {
  return atomic_load(&iso->sched) == SCHED_SCHEDULED || mailbox_count(&iso->sysq) > 0 ||
         (mailbox_count(&iso->mbox) > 0 &&
          atomic_load_explicit(&iso->wait_seen, memory_order_relaxed) != WAIT_BLOCKED) ||
         atomic_load(&iso->events_pending);
}

static int cluster_quiet(ic_cluster *c, uint64_t deadline) {
  int quiet = 1;
  plat_mutex_lock(&c->lock);
  for (size_t i = 0; i < c->by_id_cap && quiet; i++) {
    ic_isolate *iso = c->by_id[i];
    if (!iso || iso == TOMB || iso->kind == ISO_MAIN) continue;
    if (isolate_busy(iso)) quiet = 0;
  }
  plat_mutex_unlock(&c->lock);
  /* A one-shot timer (or a wait's timeout) that fires before the deadline
   * is work still to come; a cancelled one or a finished wait's is gone
   * from the wheel, and an `every` never ends, so it is not waited for. */
  if (quiet && timer_held_before(&c->timers, deadline)) quiet = 0;
  return quiet;
}

int cluster_drain(ic_cluster *c, double timeout) {
  uint64_t deadline = plat_now_ns() + plat_seconds_to_ns(timeout);
  int calm = 0;
  /* Polls: draining happens once, at the end of a program, and polling keeps
   * the hot paths free of any drain bookkeeping. Two quiet looks in a row
   * rule out a message in flight between two isolates. */
  for (;;) {
    if (atomic_load(&c->state) != CLUSTER_RUNNING) return 1;
    if (atomic_load(&c->main->sigint)) return 0; /* Ctrl-C: stop draining */
    if (cluster_quiet(c, deadline)) {
      if (++calm >= 2) return 1;
    } else {
      calm = 0;
    }
    if (plat_now_ns() >= deadline) return 0;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
}

void cluster_broadcast_control(ic_cluster *c, int code) {
  /* Must reach every isolate even when memory has run out, or the shutdown
   * would wait out its whole deadline: so no allocation for the snapshot
   * (taken a chunk at a time), and an isolate whose control message cannot
   * be allocated is interrupted instead (it stops at its next turn, as a
   * kill does, without its on_shutdown handler). Called only once the
   * cluster has left CLUSTER_RUNNING: nothing registers any more, so the
   * table is not rebuilt and its slots stay put between chunks. */
  ic_isolate *chunk[64];
  size_t next = 0;
  for (;;) {
    size_t n = 0;
    plat_mutex_lock(&c->lock);
    for (; next < c->by_id_cap && n < sizeof chunk / sizeof chunk[0]; next++) {
      ic_isolate *iso = c->by_id[next];
      if (!iso || iso == TOMB || iso->kind == ISO_MAIN) continue;
      isolate_retain(iso);
      chunk[n++] = iso;
    }
    int more = next < c->by_id_cap;
    plat_mutex_unlock(&c->lock);
    for (size_t i = 0; i < n; i++) {
      ic_msg *m = msg_new(MSG_CONTROL, NULL, 0);
      if (code == CONTROL_KILL || !m) isolate_interrupt(chunk[i], INTERRUPT_SHUTDOWN);
      if (m) {
        m->corr = (uint64_t)code;
        isolate_post_sys(chunk[i], m, NULL);
      } else {
        isolate_wake(chunk[i], NULL);
      }
      isolate_release(chunk[i]);
    }
    if (!more) break;
  }
}

static int wait_live_zero(ic_cluster *c, uint64_t deadline) {
  plat_mutex_lock(&c->lock);
  while (c->live > 0) {
    if (plat_cond_wait_until(&c->live_cond, &c->lock, deadline) == ETIMEDOUT) break;
  }
  int done = c->live == 0;
  plat_mutex_unlock(&c->lock);
  return done;
}

/* Isolates left in the registry after the threads have stopped: close them
 * here, on the only thread left. */
static void reap_leftovers(ic_cluster *c) {
  for (;;) {
    ic_isolate *iso = NULL;
    plat_mutex_lock(&c->lock);
    for (size_t i = 0; i < c->by_id_cap; i++) {
      ic_isolate *x = c->by_id[i];
      if (x && x != TOMB && x->kind != ISO_MAIN) { iso = x; isolate_retain(iso); break; }
    }
    plat_mutex_unlock(&c->lock);
    if (!iso) return;
    isolate_abandon(iso, "shutdown");
    isolate_release(iso);
  }
}

void cluster_leave_isolate(ic_cluster *c, ic_isolate *iso) {
  cluster_log(c, "isolate_cluster: isolate %s (id %llu) did not stop (a blocking call?); its thread is left running",
              iso->path ? iso->path : "(no path)", (unsigned long long)iso->id);
  cluster_unregister(c, iso, "shutdown");
}

/* Joins the threads of dedicated isolates by deadline; one still stuck then
 * (in a blocking C call, beyond the reach of the count hook) is left to the
 * process rather than allowed to hang the shutdown. */
static void join_dedicated(ic_cluster *c, uint64_t deadline) {
  plat_mutex_lock(&c->lock);
  ic_isolate **d = c->dedicated;
  size_t n = c->ndedicated;
  c->dedicated = NULL;
  c->ndedicated = c->dedicated_cap = 0;
  plat_mutex_unlock(&c->lock);
  for (size_t i = 0; i < n; i++) {
    ic_isolate *iso = d[i];
    if (plat_thread_join_until(iso->thread, deadline) == ETIMEDOUT &&
        atomic_exchange(&iso->thread_state, THREAD_LEFT) != THREAD_EXITED) {
      /* Its hold stays with the thread, which lets go when its call
       * returns (dedicated_main); the struct outlives it. */
      plat_thread_detach(iso->thread);
      plat_pin_code();
      cluster_leave_isolate(c, iso);
      continue;
    }
    plat_thread_join(iso->thread); /* at once: it has ended or is ending */
    isolate_release(iso);
  }
  free(d);
}

int cluster_start_isolate(ic_cluster *c, ic_isolate *iso, worker *from) {
  /* iso->sched is SCHEDULED since before it was registered: this call owns
   * the first turn. */
  if (iso->kind == ISO_POOL) {
    isolate_retain(iso); /* the run queue's hold */
    sched_push(&c->sched, iso, from);
    return 0;
  }
  plat_mutex_lock(&c->lock);
  if (c->ndedicated == c->dedicated_cap) {
    size_t cap = c->dedicated_cap ? c->dedicated_cap * 2 : 8;
    ic_isolate **d = realloc(c->dedicated, cap * sizeof *d);
    if (!d) {
      plat_mutex_unlock(&c->lock);
      isolate_abandon(iso, "error: out of memory starting a dedicated isolate");
      return ENOMEM;
    }
    c->dedicated = d;
    c->dedicated_cap = cap;
  }
  isolate_retain(iso); /* the thread's hold, released by whoever joins it */
  int rc = isolate_start_thread(iso);
  if (rc) {
    plat_mutex_unlock(&c->lock);
    isolate_release(iso);
    isolate_abandon(iso, "error: cannot start a thread for a dedicated isolate");
    return rc;
  }
  c->dedicated[c->ndedicated++] = iso;
  plat_mutex_unlock(&c->lock);
  return 0;
}

/* The stopper holds the cluster (the main state may close its handle while
 * this shutdown still runs) and lets go as its last act. */
static void *stopper_main(void *arg) {
  ic_cluster *c = arg;
  cluster_shutdown(c, c->stopper_timeout);
  cluster_release(c);
  return NULL;
}

void cluster_request_shutdown(ic_cluster *c, double timeout) {
  plat_mutex_lock(&c->lock);
  if (!c->has_stopper && atomic_load(&c->state) == CLUSTER_RUNNING) {
    c->stopper_timeout = timeout;
    cluster_retain(c);
    if (plat_thread_start(&c->stopper, stopper_main, c, 256u << 10) == 0) c->has_stopper = 1;
    else cluster_release(c); /* not the last hold: the asking isolate has one */
  }
  plat_mutex_unlock(&c->lock);
}

int cluster_join_stopper(ic_cluster *c) {
  plat_mutex_lock(&c->lock);
  /* Once the cluster is down the stopper's work is done: joining it waits
   * for no more than the end of its function. Before, it is not waited for. */
  int join = c->has_stopper && atomic_load(&c->state) == CLUSTER_DOWN;
  if (join) c->has_stopper = 0;
  int left = c->has_stopper;
  plat_mutex_unlock(&c->lock);
  if (join) plat_thread_join(c->stopper);
  return !left;
}

void cluster_detach_stopper(ic_cluster *c) {
  plat_mutex_lock(&c->lock);
  int had = c->has_stopper;
  if (had) pthread_detach(c->stopper);
  c->has_stopper = 0;
  plat_mutex_unlock(&c->lock);
  /* The stopper, and the workers its shutdown still waits for, run on after
   * the cluster is closed (at the end of a script: while lua_close unloads
   * the module): the code they run must stay mapped. */
  if (had) plat_pin_code();
}

/* Whatever the main state waits for now, it looks again (it sees the state
 * change). Any thread. */
static void wake_main(ic_cluster *c) {
  atomic_store(&c->main->sched, SCHED_SCHEDULED);
  plat_sem_post(&c->main->wsem);
}

int cluster_wait_down(ic_cluster *c, uint64_t deadline) {
  plat_mutex_lock(&c->lock);
  while (atomic_load(&c->state) != CLUSTER_DOWN)
    if (plat_cond_wait_until(&c->live_cond, &c->lock, deadline) == ETIMEDOUT) break;
  int down = atomic_load(&c->state) == CLUSTER_DOWN;
  plat_mutex_unlock(&c->lock);
  return down;
}

int cluster_shutdown(ic_cluster *c, double timeout) {
  int expected = CLUSTER_RUNNING;
  if (!atomic_compare_exchange_strong(&c->state, &expected, CLUSTER_STOPPING)) {
    /* Already stopping or down: wait for whoever is doing it (another
     * thread: a shutdown asked for by an isolate), within this call's own
     * deadline, then report its result; not down by then: not in time. */
    int down = cluster_wait_down(c, plat_now_ns() + plat_seconds_to_ns(timeout));
    return down && atomic_load(&c->shutdown_in_time);
  }
  uint64_t start = plat_now_ns();
  uint64_t deadline = start + plat_seconds_to_ns(timeout);
  cluster_broadcast_control(c, CONTROL_SHUTDOWN);
  wake_main(c);
  int in_time = wait_live_zero(c, deadline);
  /* From here on it is past the deadline (or all is done): what follows is
   * the small margin, whatever the isolates do. */
  uint64_t past = plat_now_ns() > deadline ? plat_now_ns() : deadline;
  if (!in_time) {
    /* Interrupt what still runs: handlers stuck in Lua code are stopped by
     * the count hook within a few instructions. */
    cluster_broadcast_control(c, CONTROL_KILL);
    wait_live_zero(c, past + plat_seconds_to_ns(SHUTDOWN_KILL_MARGIN));
  }
  /* Every isolate is down or left running: say bye to the other nodes and
   * stop the net thread, before the scheduler it posts into stops. */
  uint64_t hard = past + plat_seconds_to_ns(SHUTDOWN_JOIN_MARGIN);
  net_stop(c->net, hard);
  rwatch_drop_all(c);
  /* A thread still in a turn then is in a blocking C call: left running. */
  sched_stop(&c->sched, hard);
  timer_stop(&c->timers);
  join_dedicated(c, hard);
  reap_leftovers(c);
  /* The main state's ref may be held by Lua values beyond this point; take
   * it out of the registry so the cluster owns nothing. */
  if (atomic_load(&c->api_subscribed)) {
    /* A C program's unread events (ic_next_event) outlive the log. */
    size_t n = 0;
    cluster_event *tail = cluster_read_events(c, c->main, &n);
    plat_mutex_lock(&c->lock);
    c->api_tail = tail;
    c->api_ntail = n;
    plat_mutex_unlock(&c->lock);
  }
  cluster_unregister(c, c->main, "shutdown");
  atomic_store(&c->main->alive, 0);
  /* The event log holds isolates (which hold the cluster): it goes now. */
  plat_mutex_lock(&c->lock);
  cluster_event *log = c->log;
  size_t nlog = c->log_len;
  c->log = NULL;
  c->log_len = c->log_cap = 0;
  c->log_base += nlog;
  plat_mutex_unlock(&c->lock);
  for (size_t i = 0; i < nlog; i++) {
    event_clear(&log[i]);
  }
  free(log);
  /* The logger isolate holds the cluster: let go of it (and back to stderr).
   * Another destination (nowhere, a C program's function) stays. */
  plat_mutex_lock(&c->log_lock);
  int had_logger = c->logger != NULL;
  plat_mutex_unlock(&c->log_lock);
  if (had_logger) cluster_set_logger(c, NULL, 0);
  atomic_store(&c->shutdown_in_time, in_time);
  plat_mutex_lock(&c->lock);
  atomic_store(&c->state, CLUSTER_DOWN);
  plat_cond_broadcast(&c->live_cond); /* other callers of cluster_shutdown */
  plat_mutex_unlock(&c->lock);
  /* A main thread blocked in receive/run returns now. */
  wake_main(c);
  return in_time;
}

/* ---- spawning ------------------------------------------------------------ */

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

int cluster_spawn(ic_cluster *c, const spawn_args *a, ic_isolate **out, char *errbuf, size_t errlen) {
  *out = NULL;
  if (atomic_load(&c->state) != CLUSTER_RUNNING) {
    if (a->native) native_free(a->native);
    snprintf(errbuf, errlen, "spawn_isolate after shutdown");
    return ECANCELED;
  }
  ic_isolate *iso = isolate_new(c, a->kind, a->mailbox ? a->mailbox : c->default_mailbox);
  if (!iso) {
    if (a->native) native_free(a->native);
    goto oom;
  }
  iso->native = a->native;
  iso->mem_limit = a->memory_limit;
  iso->lean = a->lean;
  iso->hidden = a->hidden;
  if (a->props && !(iso->props = blob_new(a->props, a->props_len))) goto oom_iso;
  if (!(iso->boot = blob_new(a->boot, a->boot_len))) goto oom_iso;
  if ((a->lua_path && !(iso->lua_path = dup_or_null(a->lua_path))) ||
      (a->lua_cpath && !(iso->lua_cpath = dup_or_null(a->lua_cpath))))
    goto oom_iso;
  /* Scheduled before anyone can see it: a message sent the moment its path
   * is registered must not queue it a second time (cluster_start_isolate
   * queues it). */
  atomic_store(&iso->sched, SCHED_SCHEDULED);
  iso->id = a->id;
  int rc = cluster_register(c, iso, a->path, errbuf, errlen);
  if (rc) {
    isolate_release(iso);
    return rc;
  }
  atomic_fetch_add(&c->spawned, 1);
  /* Linked before it starts: the child tells its parent when it goes down
   * (and may do so at once). */
  if (a->creator && !a->detached && isolate_link_child(a->creator, iso))
    cluster_log(c, "isolate_cluster: out of memory: isolate %llu is not linked to its parent",
                (unsigned long long)iso->id);
  rc = cluster_start_isolate(c, iso, a->creator ? a->creator->worker : NULL);
  if (rc) {
    snprintf(errbuf, errlen, "cannot start the isolate: %s", strerror(rc));
    isolate_release(iso);
    return rc;
  }
  *out = iso;
  return 0;
oom_iso:
  isolate_release(iso);
oom:
  snprintf(errbuf, errlen, "out of memory");
  return ENOMEM;
}

/* The main state's wait: it marks itself IDLE, so that the next post to it
 * (isolate_wake) or a shutdown posts its semaphore, then looks at what it
 * waits for, and sleeps only if it is still missing. A post left from an
 * earlier wait only makes one look more. A SIGINT (sigint.c) posts too. */
int cluster_main_wait(ic_cluster *c, mailbox *q, uint64_t deadline) {
  ic_isolate *m = c->main;
  atomic_store(&m->sched, SCHED_IDLE);
  while (atomic_load(&m->sched) == SCHED_IDLE && (!q || mailbox_count(q) == 0) &&
         atomic_load(&c->state) == CLUSTER_RUNNING && !atomic_load(&m->sigint)) {
    if (plat_sem_wait_until(&m->wsem, deadline) == ETIMEDOUT) return 0;
  }
  return 1;
}

ic_isolate *cluster_main_wait_path(ic_cluster *c, const char *path, uint64_t deadline) {
  ic_isolate *m = c->main, *iso = NULL;
  atomic_fetch_add(&c->main_path_waits, 1);
  for (;;) {
    /* IDLE before the look: a registration after it wakes this wait. */
    atomic_store(&m->sched, SCHED_IDLE);
    if ((iso = cluster_find_path(c, path)) != NULL) break;
    /* Another node's isolate holds it (its up event wakes this wait too):
     * the caller looks there. */
    if (c->net && net_path_taken(c->net, path)) break;
    if (atomic_load(&c->state) != CLUSTER_RUNNING || atomic_load(&m->sigint)) break;
    if (plat_sem_wait_until(&m->wsem, deadline) == ETIMEDOUT) {
      iso = cluster_find_path(c, path);
      break;
    }
  }
  atomic_fetch_sub(&c->main_path_waits, 1);
  return iso;
}

cluster_event *cluster_take_api_tail(ic_cluster *c, size_t *n) {
  plat_mutex_lock(&c->lock);
  cluster_event *tail = c->api_tail;
  *n = c->api_ntail;
  c->api_tail = NULL;
  c->api_ntail = 0;
  plat_mutex_unlock(&c->lock);
  return tail;
}

void cluster_close(ic_cluster *c) {
  /* Messages to the main state that nobody received hold their senders
   * (which hold the cluster). Only the main state's thread pops its queues,
   * so this is done here and not in a shutdown run by another thread. */
  ic_msg *m;
  while ((m = mailbox_pop(&c->main->mbox)) != NULL) {
    atomic_fetch_add(&c->dead_letters, 1);
    msg_free(m);
  }
  while ((m = mailbox_pop(&c->main->sysq)) != NULL) msg_free(m);
  for (size_t i = c->api_evpos; i < c->api_nev; i++) {
    isolate_release(c->api_events[i].iso);
    free(c->api_events[i].reason);
  }
  free(c->api_events);
  c->api_events = NULL;
  c->api_nev = c->api_evpos = 0;
  size_t ntail;
  cluster_event *tail = cluster_take_api_tail(c, &ntail);
  if (tail) cluster_free_events(tail, ntail);
}
