/*
 * native — isolates whose handler is a C function (see native.h and the
 * "native isolates" part of include/isolate_cluster.h).
 *
 * A native isolate never waits: its requests are kept in a small table of
 * pending answers (owner thread only), each with a timer of the cluster's
 * wheel named by the request's correlation id (a native isolate has no
 * other timers), and the answer, the timeout or the isolate's end calls
 * the request's callback exactly once.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "isolate_cluster.h"
#include "native.h"
#include "net/net.h"

typedef struct pending {
  uint64_t corr;
  ic_native_reply_fn cb;
  void *ud;
} pending;

struct ic_native {
  ic_isolate *iso;             /* set at each turn (iso owns this struct) */
  ic_native_handler on_message;
  ic_native_down_fn on_down;
  void *ud;
  pending *pend;               /* requests not answered yet */
  size_t npend, pend_cap;
  int finishing;               /* on_down's path: no new sends */
  /* Who calls on_down: SPAWNING until ic_spawn_native knows the spawn
   * succeeded (SPAWNED); an isolate that ends while SPAWNING (its start
   * failed, or it was killed at once) leaves the call to the spawner
   * (ENDED), which makes it only for a spawn that succeeded. */
  atomic_int phase;
};

enum { PHASE_SPAWNING = 0, PHASE_SPAWNED = 1, PHASE_ENDED = 2 };

void native_free(ic_native *n) {
  if (!n) return;
  free(n->pend);
  free(n);
}

/* Takes the pending request corr out of the table into *out; 0 if there
 * is none (answered or timed out already). */
static int take_pending(ic_native *n, uint64_t corr, pending *out) {
  for (size_t i = 0; i < n->npend; i++) {
    if (n->pend[i].corr != corr) continue;
    *out = n->pend[i];
    n->pend[i] = n->pend[--n->npend];
    return 1;
  }
  return 0;
}

static void answer(ic_native *n, ic_msg *m) {
  pending p;
  if (!take_pending(n, m->corr, &p)) return; /* late: timed out already */
  ic_cluster *c = n->iso->cluster;
  if (m->kind == MSG_TIMER) {
    p.cb(n, IC_ETIMEDOUT, NULL, 0, p.ud);
    return;
  }
  timer_cancel(&c->timers, n->iso, p.corr);
  if (m->kind == MSG_REPLY) {
    p.cb(n, IC_OK, m->data, m->len, p.ud);
    return;
  }
  char *text = api_error_text(m->data, m->len);
  /* The refusal of an isolate that went down before answering. */
  int status = text && strncmp(text, "isolate down", 12) == 0 ? IC_EDOWN : IC_EREMOTE;
  p.cb(n, status, text ? text : "out of memory", text ? strlen(text) : 13, p.ud);
  free(text);
}

void native_dispatch(ic_isolate *iso, ic_msg *m) {
  ic_native *n = iso->native;
  n->iso = iso;
  switch (m->kind) {
  case MSG_USER:
  case MSG_REQUEST: {
    ic_message msg = {(char *)m->data, m->len, {iso->cluster->node_id, m->sender ? m->sender->id : 0},
                      m->kind == MSG_REQUEST && m->sender, m->corr};
    /* Tracked while open: if the isolate goes down first, the requester is
     * refused at once instead of waiting for its timeout. Without memory to
     * track it, it has been failed at the requester already. */
    if (msg.is_request && isolate_open_request(iso, m) != 0) break;
    int tracked = msg.is_request;
    n->on_message(n, &msg, n->ud);
    if (tracked && !msg.is_request) isolate_close_request(iso, m->sender, m->corr);
    break;
  }
  case MSG_REPLY:
  case MSG_REPLY_ERROR:
  case MSG_TIMER:
    answer(n, m);
    break;
  default: /* monitors and the like: a native isolate sets none */
    break;
  }
}

void native_finish(ic_isolate *iso) {
  ic_native *n = iso->native;
  n->iso = iso;
  n->finishing = 1;
  while (n->npend) {
    pending p = n->pend[--n->npend];
    timer_cancel(&iso->cluster->timers, iso, p.corr);
    p.cb(n, IC_ESHUTDOWN, NULL, 0, p.ud);
  }
  if (atomic_exchange(&n->phase, PHASE_ENDED) == PHASE_SPAWNING) return;
  if (n->on_down) n->on_down(n->ud, iso->reason ? iso->reason : "normal");
}

/* Spawns a native isolate with handlers nopts and the rest of *a (its
 * native field is set here). 0 with *out retained, or an errno value
 * (cluster_spawn's, with err) and no callback of nopts ever called. */
static int spawn_with(ic_cluster *c, const ic_native_options *nopts, spawn_args *a, ic_isolate **out, char *err,
                      size_t errlen) {
  ic_native *n = calloc(1, sizeof *n);
  if (!n) {
    snprintf(err, errlen, "out of memory");
    return ENOMEM;
  }
  n->on_message = nopts->on_message;
  n->on_down = nopts->on_down;
  n->ud = nopts->ud;
  a->native = n;
  /* boot: never read (a native isolate has no Lua state to boot) */
  a->boot = "\xc0";
  a->boot_len = 1;
  ic_isolate *iso;
  int rc = cluster_spawn(c, a, &iso, err, errlen); /* takes n */
  if (rc) return rc;
  /* Down already (killed the moment it was registered): its end left
   * on_down to this thread. iso's hold keeps n. */
  if (atomic_exchange(&n->phase, PHASE_SPAWNED) == PHASE_ENDED && n->on_down)
    n->on_down(n->ud, iso->reason ? iso->reason : "normal");
  cluster_announce_up(c, iso);
  *out = iso;
  return 0;
}

int ic_spawn_native(ic_cluster *c, const ic_native_options *nopts, const ic_spawn_options *opts, ic_ref *out) {
  if (!c || !nopts || !nopts->on_message) return IC_EINVAL;
  spawn_args a = {ISO_POOL, 0, 0, NULL, 0, NULL, 0, NULL, NULL, NULL, 0, NULL, 1, NULL, 0, 0};
  if (opts) {
    a.kind = opts->dedicated ? ISO_DEDICATED : ISO_POOL;
    a.mailbox = opts->mailbox;
    a.path = opts->path;
    /* It runs on this node: another node's name is refused, as by
     * spawn_isolate. */
    if (opts->node && (!c->net || strcmp(opts->node, net_self_name(c->net)) != 0)) return IC_EINVAL;
  }
  /* An exact path is claimed from the other nodes first, as for any
   * spawn on a multi-node cluster (cluster.h: spawn_claim). */
  int claimed = 0;
  const char *why = spawn_claim(c, a.path, 0, NULL, &claimed);
  if (why) return strcmp(why, "path in use") == 0 ? IC_EEXIST : strcmp(why, "out of memory") == 0 ? IC_ENOMEM : IC_EUNREACHABLE;
  ic_isolate *iso;
  char err[256];
  int rc = spawn_with(c, nopts, &a, &iso, err, sizeof err);
  if (claimed) net_claim_done(c->net, a.path);
  if (rc) {
    switch (rc) {
    case EINVAL: return IC_EINVAL;
    case EEXIST: return IC_EEXIST;
    case ECANCELED: return IC_ESHUTDOWN;
    case ENOMEM: return IC_ENOMEM;
    default: return IC_ESYSTEM;
    }
  }
  if (out) {
    out->node = c->node_id;
    out->id = iso->id;
  }
  isolate_release(iso);
  return IC_OK;
}

/* ---- kinds: native isolates that Lua code spawns by name ------------------- */

typedef struct native_kind {
  struct native_kind *next;
  ic_native_factory make;
  void *ud;
  char name[];
} native_kind;

#define NATIVE_KIND_NAME_MAX 64

int ic_register_native(ic_cluster *c, const char *name, ic_native_factory make, void *ud) {
  if (!c || !name || !make) return IC_EINVAL;
  size_t len = strlen(name);
  if (len == 0 || len > NATIVE_KIND_NAME_MAX) return IC_EINVAL;
  native_kind *k = malloc(sizeof *k + len + 1);
  if (!k) return IC_ENOMEM;
  k->make = make;
  k->ud = ud;
  memcpy(k->name, name, len + 1);
  int rc = IC_OK;
  plat_mutex_lock(&c->lock);
  if (atomic_load(&c->state) != CLUSTER_RUNNING) rc = IC_ESHUTDOWN;
  for (native_kind *x = c->native_kinds; x && !rc; x = x->next)
    if (strcmp(x->name, name) == 0) rc = IC_EEXIST;
  if (!rc) {
    k->next = c->native_kinds;
    c->native_kinds = k;
  }
  plat_mutex_unlock(&c->lock);
  if (rc) free(k);
  return rc;
}

int native_spawn_kind(ic_cluster *c, const char *name, size_t len, spawn_args *a, ic_isolate **out, char *err,
                      size_t errlen) {
  /* A name from Lua is any string: one with a NUL byte would match the
   * kind named by its part before the NUL. Registered names have none. */
  if (memchr(name, 0, len)) {
    snprintf(err, errlen, "spawn_native: a native isolate kind's name cannot contain a NUL byte (got \"%s\\0...\")",
             name);
    return EINVAL;
  }
  ic_native_factory make = NULL;
  void *ud = NULL;
  plat_mutex_lock(&c->lock);
  for (native_kind *x = c->native_kinds; x; x = x->next) {
    if (strcmp(x->name, name) != 0) continue;
    make = x->make;
    ud = x->ud;
    break;
  }
  plat_mutex_unlock(&c->lock);
  if (!make) {
    snprintf(err, errlen, "spawn_native: no native isolate kind \"%s\" is registered (ic_register_native)", name);
    return EINVAL;
  }
  /* The kind stays registered until the cluster is freed: make and ud are
   * called without the lock. */
  ic_native_options o = {NULL, NULL, NULL};
  int made = make(ud, a->props, a->props ? a->props_len : 0, &o);
  if (made || !o.on_message) {
    /* A factory that failed may have filled o: its on_down is not called. */
    snprintf(err, errlen, "spawn_native: the factory of \"%s\" refused (%d)%s", name, made,
             made ? "" : ": no on_message");
    return ECHILD;
  }
  int rc = spawn_with(c, &o, a, out, err, errlen);
  /* Never spawned: ud is still the factory's to free, through on_down. */
  if (rc && o.on_down) o.on_down(o.ud, "error: spawn failed");
  return rc;
}

void native_kinds_free(ic_cluster *c) {
  native_kind *k = c->native_kinds;
  c->native_kinds = NULL;
  while (k) {
    native_kind *next = k->next;
    free(k);
    k = next;
  }
}

ic_ref ic_native_ref(ic_native *self) {
  ic_ref r = {0, 0}; /* for NULL: a ref of no isolate, which every call refuses */
  if (self) {
    r.node = self->iso->cluster->node_id;
    r.id = self->iso->id;
  }
  return r;
}

ic_cluster *ic_native_cluster(ic_native *self) { return self ? self->iso->cluster : NULL; }

int ic_native_send(ic_native *self, ic_ref to, const void *msgpack, size_t len) {
  if (!self || !api_one_value(msgpack, len, -1)) return IC_EINVAL;
  if (self->finishing) return IC_ESHUTDOWN;
  return api_send_from(self->iso->cluster, self->iso, to.node, to.id, msgpack, len, MSG_USER, 0, NULL);
}

int ic_native_request(ic_native *self, ic_ref to, const void *msgpack, size_t len, double timeout_s,
                      ic_native_reply_fn cb, void *req_ud) {
  if (!self || !cb || timeout_s != timeout_s || !api_one_value(msgpack, len, -1)) return IC_EINVAL;
  ic_isolate *iso = self->iso;
  ic_cluster *c = iso->cluster;
  if (to.node == c->node_id && to.id == iso->id) return IC_EINVAL; /* it would wait for itself */
  if (self->finishing) return IC_ESHUTDOWN;
  if (self->npend == self->pend_cap) {
    size_t cap = self->pend_cap ? self->pend_cap * 2 : 8;
    pending *p = realloc(self->pend, cap * sizeof *p);
    if (!p) return IC_ENOMEM;
    self->pend = p;
    self->pend_cap = cap;
  }
  uint64_t corr = ++iso->next_corr;
  if (timeout_s >= 0) {
    int rc = timer_arm(&c->timers, iso, corr, plat_seconds_to_ns(timeout_s), 0);
    if (rc) return rc == ECANCELED ? IC_ESHUTDOWN : IC_ENOMEM;
  }
  int rc = api_send_from(c, iso, to.node, to.id, msgpack, len, MSG_REQUEST, corr, NULL);
  if (rc) {
    if (timeout_s >= 0) timer_cancel(&c->timers, iso, corr);
    return rc;
  }
  pending p = {corr, cb, req_ud};
  self->pend[self->npend++] = p;
  return IC_OK;
}

void ic_native_stop(ic_native *self) {
  if (self) isolate_set_ending(self->iso, "normal");
}
