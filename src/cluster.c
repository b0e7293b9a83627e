/*
 * cluster — an ic_cluster's creation (single node or multi-node), its
 * reference count and lifetime, its log (cluster_log and where the lines
 * go), the main state's waits, and cluster_close. The registry, event log,
 * remote monitors, drain/shutdown and spawning are each in their own file
 * (src/registry.c, eventlog.c, remote_monitor.c, drain.c, spawn.c).
 *
 * Threads: any, unless a function says otherwise; c->log_lock guards the
 * log's destination, c->lock the registry (src/cluster.h).
 */
#include "cluster_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include <msgpuck.h>

#include "native.h"
#include "runtime.h"
#include "net/net.h"

#define DEFAULT_MAILBOX 1000000u
#define DEFAULT_SLICE 0.002

/* ---- the log ------------------------------------------------------------ */

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

/* A logger isolate that is no longer the destination ends once it has
 * written the lines already posted to it: a MessagePack nil after them is
 * its signal (a line is always a string). Called after the switch, so no
 * line can follow the nil. Releases the caller's hold on old. When the nil
 * cannot be posted (its mailbox is full, it is down) it ends with the
 * cluster, as before. */
static void retire_logger(ic_isolate *old) {
  ic_msg *m = msg_new(MSG_USER, "\xc0", 1);
  if (m) (void)isolate_post(old, m, NULL); /* takes m either way */
  isolate_release(old);
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
  if (old && old != logger) retire_logger(old);
  else if (old) isolate_release(old);
}

void cluster_set_log_fn(ic_cluster *c, ic_log_fn fn, void *ud) {
  plat_mutex_lock(&c->log_lock);
  ic_isolate *old = c->logger;
  c->logger = NULL;
  c->log_fn = fn ? fn : default_log;
  c->log_ud = fn ? ud : NULL;
  plat_mutex_unlock(&c->log_lock);
  if (old) retire_logger(old);
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
  c->runtime_extras = runtime_compile(ic_runtime_extras_lua, ic_runtime_extras_lua_len,
                                      "=isolate_cluster.runtime_extras", &c->boot_error);
  if (!c->runtime_extras) {
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
  blob_release(c->runtime_extras);
  blob_release(c->spawn_paths);
  free(c->boot_error);
  native_kinds_free(c);
  if (atomic_load(&c->main_fd) >= 0) close(atomic_load(&c->main_fd));
  plat_cond_destroy(&c->live_cond);
  plat_mutex_destroy(&c->rwatch_lock);
  plat_mutex_destroy(&c->log_lock);
  plat_mutex_destroy(&c->lock);
  free(c);
}

/* ---- the main state's waits, close --------------------------------------- */

/* The main state's wait: it marks itself IDLE, so that the next post to it
 * (isolate_wake) or a shutdown posts its semaphore, then looks at what it
 * waits for, and sleeps only if it is still missing. A post left from an
 * earlier wait only makes one look more. A SIGINT (sigint.c) posts too. */
int cluster_main_wait(ic_cluster *c, mailbox *q, uint64_t deadline) {
  ic_isolate *m = c->main;
  atomic_store(&m->sched, SCHED_IDLE);
  while (atomic_load(&m->sched) == SCHED_IDLE && (!q || mailbox_count(q) == 0) &&
         atomic_load(&c->state) == CLUSTER_RUNNING && !atomic_load(&m->sigint)) {
    if (plat_sem_wait_until(&m->th->wsem, deadline) == ETIMEDOUT) return 0;
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
    if (plat_sem_wait_until(&m->th->wsem, deadline) == ETIMEDOUT) {
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
  /* Not handed out: isolate, another node's isolate or node events (whose
   * iso is NULL and which hold the node's name). */
  for (size_t i = c->api_evpos; i < c->api_nev; i++) event_clear(&c->api_events[i]);
  free(c->api_events);
  c->api_events = NULL;
  c->api_nev = c->api_evpos = 0;
  size_t ntail;
  cluster_event *tail = cluster_take_api_tail(c, &ntail);
  if (tail) cluster_free_events(tail, ntail);
}
