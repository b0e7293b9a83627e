/*
 * spawn — making an isolate from spawn_args (cluster_spawn: copies of its
 * options, its registration) and starting it: on the run queue (a pool
 * isolate) or on a thread of its own (a dedicated one).
 *
 * Threads: any; c->lock is taken to register and to record a dedicated
 * thread.
 */
#include "cluster_int.h"
#include "native.h"
#include "net/net.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

/* ---- spawning ------------------------------------------------------------ */

/* An isolate's package.path and cpath: one blob, a byte that says which of
 * the two are set and then both strings with their NULs, shared by the
 * isolates spawned with the same ones (nearly all of a program's are: a
 * copy each cost every isolate a few hundred bytes). c->spawn_paths is the
 * last one made, guarded by c->lock. */
static int paths_match(const ic_blob *b, const char *path, const char *cpath) {
  if (b->data[0] != ((path ? 1 : 0) | (cpath ? 2 : 0))) return 0;
  const char *p = b->data + 1;
  if (strcmp(p, path ? path : "") != 0) return 0;
  return strcmp(p + strlen(p) + 1, cpath ? cpath : "") == 0;
}

/* Sets iso's paths (NULL both: Lua's defaults): 0, or ENOMEM. */
static int set_paths(ic_cluster *c, ic_isolate *iso, const char *path, const char *cpath) {
  if (!path && !cpath) return 0;
  plat_mutex_lock(&c->lock);
  ic_blob *b = c->spawn_paths;
  if (b && paths_match(b, path, cpath)) {
    blob_retain(b);
  } else {
    size_t np = path ? strlen(path) : 0, nc = cpath ? strlen(cpath) : 0;
    b = blob_new(NULL, 1 + np + 1 + nc + 1);
    if (b) {
      b->data[0] = (char)((path ? 1 : 0) | (cpath ? 2 : 0));
      memcpy(b->data + 1, path ? path : "", np + 1);
      memcpy(b->data + 2 + np, cpath ? cpath : "", nc + 1);
      blob_release(c->spawn_paths);
      blob_retain(b);
      c->spawn_paths = b;
    }
  }
  plat_mutex_unlock(&c->lock);
  if (!b) return ENOMEM;
  iso->paths = b;
  iso->lua_path = path ? b->data + 1 : NULL;
  iso->lua_cpath = cpath ? b->data + 1 + strlen(b->data + 1) + 1 : NULL;
  return 0;
}

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
  if (set_paths(c, iso, a->lua_path, a->lua_cpath)) goto oom_iso;
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

/* ---- across nodes (cluster.h: spawn_claim, spawn_remote) ------------------ */

static int exact_path(const char *path) { return path && *path && path[strlen(path) - 1] != '/'; }

const char *spawn_claim(ic_cluster *c, const char *path, int remote, atomic_int *interrupt, int *claimed) {
  *claimed = 0;
  if (!c->net || !exact_path(path)) return NULL;
  /* The other node registers it: this node's own isolates and what it
   * knows of the others are looked at here, before the round. */
  if (remote && (cluster_path_in_use(c, path) || net_path_taken(c->net, path))) return "path in use";
  const char *why = net_claim(c->net, path, SPAWN_CLAIM_TIMEOUT, interrupt);
  if (!why) *claimed = 1;
  return why;
}

const char *spawn_remote(ic_cluster *c, const char *node, const spawn_args *a, uint64_t creator_id, int linked,
                         int claimed, uint32_t *rnode, uint64_t *rid) {
  const char *why = net_spawn(c->net, node, creator_id, linked, a->boot, a->boot_len, a->props, a->props_len,
                              a->path, a->mailbox, a->memory_limit, a->kind == ISO_DEDICATED, rnode, rid);
  if (claimed) net_claim_done(c->net, a->path); /* the replica holds it as pending now */
  return why;
}
