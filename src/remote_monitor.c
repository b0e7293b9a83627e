/*
 * remote_monitor — monitors that this node's isolates hold on other nodes'
 * isolates: the watch list, and finishing its entries when the watched
 * isolate goes down, its node goes down, or the cluster shuts down. Also
 * cluster_remote_event, which logs another node's isolate event.
 *
 * Locks: c->rwatch_lock guards the watch list; the monitor messages are
 * posted after it is let go. Any thread (the net's and the isolates').
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
void rwatch_drop_all(ic_cluster *c) {
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
