#include "isolate.h"
#include "mainq.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpuck.h>

#include "cluster.h"
#include "codec.h"
#include "lstate.h"
#include "native.h"
#include "net/net.h"

/* Messages one turn may handle before the isolate goes to the back of the
 * run queue (fairness between isolates, as skynet's weighted batches). */
#define TURN_BATCH 256

/* The down reason when there was no memory to copy the real one: never
 * "normal" by default, which would tell a supervisor that a crash was a
 * clean end. Not freed (isolate_release). */
static const char REASON_LOST[] = "error: not enough memory (to record why the isolate went down)";

ic_isolate *isolate_new(ic_cluster *c, int kind, size_t mailbox_capacity) {
  /* A pool isolate (nearly all of them) has no thread of its own, nor its
   * part (iso_thread): 136 bytes less each. */
  size_t size = kind == ISO_POOL ? sizeof(ic_isolate) : sizeof(ic_isolate) + sizeof(iso_thread);
  ic_isolate *iso = calloc(1, size);
  if (!iso) return NULL;
  iso_thread *th = kind == ISO_POOL ? NULL : (iso_thread *)(iso + 1);
  iso->th = th;
  if (plat_mutex_init(&iso->hook_lock)) goto no_hook_lock;
  if (monitor_set_init(&iso->monitors)) goto no_monitors;
  if (kind == ISO_DEDICATED) {
    if (plat_mutex_init(&th->wlock)) goto no_wlock;
    if (plat_cond_init(&th->wcond)) goto no_wcond;
  }
  if (kind == ISO_MAIN && plat_sem_init(&th->wsem)) goto no_wsem;
  atomic_init(&iso->sigint, 0);
  atomic_init(&iso->refs, 1);
  atomic_init(&iso->sched, SCHED_IDLE);
  atomic_init(&iso->alive, 1);
  atomic_init(&iso->events_pending, 0);
  atomic_init(&iso->interrupt, 0);
  atomic_init(&iso->preempt, 0);
  atomic_init(&iso->running_L, NULL);
  atomic_init(&iso->armed_L, NULL);
  atomic_init(&iso->arming, 0);
  iso->kind = kind;
  iso->cluster = c;
  /* The cluster owns its main isolate (c->main); a hold the other way round
   * would be a cycle. Every other isolate keeps its cluster alive. */
  if (kind != ISO_MAIN) cluster_retain(c);
  mailbox_init(&iso->mbox, mailbox_capacity);
  mailbox_init(&iso->sysq, 0);
  return iso;
no_wsem:
  if (kind == ISO_DEDICATED) plat_cond_destroy(&th->wcond);
no_wcond:
  if (kind == ISO_DEDICATED) plat_mutex_destroy(&th->wlock);
no_wlock:
  monitor_set_fini(&iso->monitors);
no_monitors:
  plat_mutex_destroy(&iso->hook_lock);
no_hook_lock:
  free(iso);
  return NULL;
}

void isolate_retain(ic_isolate *iso) { atomic_fetch_add_explicit(&iso->refs, 1, memory_order_relaxed); }

static void stop_children(ic_isolate *iso);
static void tell_parent(ic_isolate *iso);

/* Longest down reason a refused requester gets (a traceback may be long). */
#define REFUSAL_REASON_MAX 2048

/* The refusal of a request: a MSG_REPLY_ERROR whose value is the
 * MessagePack string "isolate down: <reason>" (every reply's value is
 * MessagePack), or NULL out of memory (the requester times out). */
static ic_msg *refusal(ic_isolate *iso, uint64_t corr) {
  static const char prefix[] = "isolate down";
  const char *reason = iso->reason;
  size_t rlen = reason ? strlen(reason) : 0;
  if (rlen > REFUSAL_REASON_MAX) rlen = REFUSAL_REASON_MAX;
  size_t len = sizeof prefix - 1 + (reason ? 2 + rlen : 0);
  ic_msg *r = msg_new(MSG_REPLY_ERROR, NULL, len + 5);
  if (!r) return NULL;
  char *w = mp_encode_strl(r->inline_data, (uint32_t)len);
  memcpy(w, prefix, sizeof prefix - 1);
  w += sizeof prefix - 1;
  if (reason) {
    memcpy(w, ": ", 2);
    memcpy(w + 2, reason, rlen);
    w += 2 + rlen;
  }
  r->len = (size_t)(w - r->inline_data);
  r->corr = corr;
  return r;
}

/* Fails request corr of `to` at once, with its spare (taken; may be NULL)
 * when there is no memory for the refusal with the whole reason. */
static void refuse_corr(ic_isolate *iso, ic_isolate *to, uint64_t corr, ic_msg *spare) {
  ic_msg *r = refusal(iso, corr);
  if (!r && spare) {
    char text[MSG_SPARE_TEXT + 1];
    snprintf(text, sizeof text, "isolate down: %s", iso->reason ? iso->reason : "normal");
    r = msg_fill_spare(spare, corr, text);
    spare = NULL;
  }
  msg_free(spare);
  if (r) isolate_post_sys(to, r, iso->worker);
}

/* Fails request corr of another node's isolate (node, id) at once, over the
 * net (which copies the bytes; after the net has stopped it refuses). */
static void refuse_remote(ic_isolate *iso, uint32_t node, uint64_t id, uint64_t corr) {
  /* (The main state's isolate may outlive its cluster; it takes no requests
   * through this set.) */
  if (iso->kind == ISO_MAIN) return;
  ic_cluster *c = iso->cluster;
  if (!c || !c->net) return;
  ic_msg *r = refusal(iso, corr);
  if (!r) return;
  net_send(c->net, node, id, MSG_REPLY_ERROR, corr, iso->id, r->data, r->len);
  msg_free(r);
}

/* Answers a request that will never be handled, so the requester fails fast. */
static void refuse_request(ic_isolate *iso, ic_msg *m) {
  if (m->kind != MSG_REQUEST) return;
  if (m->sender) {
    refuse_corr(iso, m->sender, m->corr, m->spare);
    m->spare = NULL;
  }
  else if (m->from_node) refuse_remote(iso, m->from_node, m->from_id, m->corr);
}

typedef struct remote_request {
  uint32_t node;
  uint64_t id, corr;
} remote_request;

int isolate_open_remote_request(ic_isolate *iso, uint32_t node, uint64_t id, uint64_t corr) {
  if (iso->ropen_len == iso->ropen_cap) {
    size_t cap = iso->ropen_cap ? iso->ropen_cap * 2 : 4;
    remote_request *v = realloc(iso->ropen, cap * sizeof *v);
    if (!v) return ENOMEM;
    iso->ropen = v;
    iso->ropen_cap = cap;
  }
  iso->ropen[iso->ropen_len++] = (remote_request){node, id, corr};
  return 0;
}

void isolate_close_remote_request(ic_isolate *iso, uint32_t node, uint64_t id, uint64_t corr) {
  /* From the newest: a request is mostly answered in the turn that took it. */
  for (size_t i = iso->ropen_len; i-- > 0;) {
    remote_request *x = &iso->ropen[i];
    if (x->node == node && x->id == id && x->corr == corr) {
      *x = iso->ropen[--iso->ropen_len];
      return;
    }
  }
}

typedef struct open_request {
  ic_isolate *sender; /* strong reference; NULL = free slot */
  uint64_t corr;
  ic_msg *spare;      /* the request's spare (owned), or NULL */
} open_request;

static size_t open_slot_of(const ic_isolate *sender, uint64_t corr, size_t mask) {
  uint64_t x = (uint64_t)(uintptr_t)sender ^ (corr * 0x9e3779b97f4a7c15ULL);
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 29;
  return (size_t)x & mask;
}

static void open_put(open_request *t, size_t mask, open_request e) {
  size_t j = open_slot_of(e.sender, e.corr, mask);
  while (t[j].sender) j = (j + 1) & mask;
  t[j] = e;
}

int isolate_open_request(ic_isolate *iso, ic_msg *m) {
  if ((iso->open_len + 1) * 2 > iso->open_cap) {
    size_t cap = iso->open_cap ? iso->open_cap * 2 : 8;
    open_request *t = calloc(cap, sizeof *t);
    if (!t) {
      /* Not tracked, so not to be handled: failed now, with its spare. */
      ic_msg *r = msg_take_spare(m, "not enough memory to take the request");
      if (r) isolate_post_sys(m->sender, r, iso->worker);
      return ENOMEM;
    }
    for (size_t i = 0; i < iso->open_cap; i++)
      if (iso->open_reqs[i].sender) open_put(t, cap - 1, iso->open_reqs[i]);
    free(iso->open_reqs);
    iso->open_reqs = t;
    iso->open_cap = cap;
  }
  isolate_retain(m->sender);
  open_put(iso->open_reqs, iso->open_cap - 1, (open_request){m->sender, m->corr, m->spare});
  m->spare = NULL;
  iso->open_len++;
  return 0;
}

void isolate_close_request(ic_isolate *iso, ic_isolate *sender, uint64_t corr) {
  msg_free(isolate_take_request(iso, sender, corr, NULL));
}

ic_msg *isolate_take_request(ic_isolate *iso, ic_isolate *sender, uint64_t corr, const char *text) {
  if (!iso->open_len || !sender) return NULL; /* (a free slot's sender is NULL) */
  open_request *t = iso->open_reqs;
  size_t mask = iso->open_cap - 1, j = open_slot_of(sender, corr, mask);
  while (t[j].sender != sender || t[j].corr != corr) {
    if (!t[j].sender) return NULL; /* not tracked */
    j = (j + 1) & mask;
  }
  ic_msg *spare = t[j].spare;
  t[j].sender = NULL;
  t[j].spare = NULL;
  iso->open_len--;
  /* Backward-shift deletion: the entries after j in its run move up when
   * their home slot is not in (j, k], so no lookup ever stops early. */
  for (size_t k = (j + 1) & mask; t[k].sender; k = (k + 1) & mask) {
    size_t h = open_slot_of(t[k].sender, t[k].corr, mask);
    int stays = j < k ? (h > j && h <= k) : (h > j || h <= k);
    if (stays) continue;
    t[j] = t[k];
    t[k].sender = NULL;
    t[k].spare = NULL;
    j = k;
  }
  isolate_release(sender); /* the caller's ref still holds it */
  if (spare && text) return msg_fill_spare(spare, corr, text);
  return spare;
}

/* Going down: every request taken and not answered fails at its requester
 * with this isolate's down reason. */
static void refuse_open_requests(ic_isolate *iso) {
  open_request *t = iso->open_reqs;
  size_t cap = iso->open_cap;
  iso->open_reqs = NULL;
  iso->open_len = iso->open_cap = 0;
  for (size_t i = 0; i < cap; i++) {
    if (!t[i].sender) continue;
    refuse_corr(iso, t[i].sender, t[i].corr, t[i].spare);
    isolate_release(t[i].sender);
  }
  free(t);
  remote_request *v = iso->ropen;
  size_t n = iso->ropen_len;
  iso->ropen = NULL;
  iso->ropen_len = iso->ropen_cap = 0;
  for (size_t i = 0; i < n; i++) refuse_remote(iso, v[i].node, v[i].id, v[i].corr);
  free(v);
}

static size_t drain_dead_letters(ic_isolate *iso) {
  size_t n = 0;
  ic_msg *m;
  while ((m = mailbox_pop(&iso->mbox)) != NULL) {
    refuse_request(iso, m);
    msg_free(m);
    n++;
  }
  while ((m = mailbox_pop(&iso->sysq)) != NULL) msg_free(m);
  return n;
}

int isolate_release_unless_last(ic_isolate *iso) {
  int r = atomic_load_explicit(&iso->refs, memory_order_relaxed);
  while (r > 1)
    if (atomic_compare_exchange_weak_explicit(&iso->refs, &r, r - 1, memory_order_acq_rel, memory_order_relaxed))
      return 1;
  return 0;
}

void isolate_release(ic_isolate *iso) { isolate_release_n(iso, 1); }

void isolate_release_n(ic_isolate *iso, int n) {
  if (atomic_fetch_sub_explicit(&iso->refs, n, memory_order_acq_rel) != n) return;
  ic_cluster *c = iso->kind == ISO_MAIN ? NULL : iso->cluster;
  /* Messages that raced in after the isolate went down. (The main isolate
   * may outlive its cluster: it counts nothing there.) */
  size_t dead = drain_dead_letters(iso);
  if (dead && c) atomic_fetch_add(&c->dead_letters, dead);
  if (iso->L) lstate_close(iso);
  if (iso->native) native_free(iso->native);
  pool_release(&iso->pool); /* also after a state that failed to open */
  refuse_open_requests(iso);
  stop_children(iso);
  if (iso->parent) isolate_release(iso->parent);
  free(iso->path);
  if (iso->reason != REASON_LOST) free(iso->reason);
  blob_release(iso->props);
  blob_release(iso->boot);
  blob_release(iso->paths);
  if (iso->kind == ISO_MAIN) plat_sem_destroy(&iso->th->wsem);
  if (iso->kind == ISO_DEDICATED) {
    plat_cond_destroy(&iso->th->wcond);
    plat_mutex_destroy(&iso->th->wlock);
  }
  plat_mutex_destroy(&iso->hook_lock);
  monitor_set_fini(&iso->monitors);
  free(iso);
  if (c) cluster_release(c);
}

/* Returns 1 when iso went into from's LIFO slot (sched_push). */
static int wake(ic_isolate *iso, worker *from) {
  int expected = SCHED_IDLE;
  /* The program watches a file descriptor (mainq.h): whatever its sched. */
  if (iso->kind == ISO_MAIN && iso->cluster) mainq_notify(iso->cluster);
  /* seq_cst: pairs with the owner's store of IDLE followed by its look at
   * the queues (isolate_run), so one of the two always sees the other. */
  if (atomic_load(&iso->sched) != SCHED_IDLE) return 0;
  if (!atomic_compare_exchange_strong(&iso->sched, &expected, SCHED_SCHEDULED)) return 0;
  if (iso->kind == ISO_POOL) {
    isolate_retain(iso); /* the run queue's hold */
    return sched_push(&iso->cluster->sched, iso, from);
  } else if (iso->kind == ISO_MAIN) {
    plat_sem_post(&iso->th->wsem);
  } else {
    plat_mutex_lock(&iso->th->wlock);
    plat_cond_signal(&iso->th->wcond);
    plat_mutex_unlock(&iso->th->wlock);
  }
  return 0;
}

void isolate_wake(ic_isolate *iso, worker *from) { wake(iso, from); }

/* The rest of a post once a slot is reserved: never fails. A send that has
 * just filled the sender's LIFO slot need not look at it (the hand-off
 * started its watch, sched_push). */
static inline void post_reserved(ic_isolate *to, ic_msg *m, worker *from) {
  if (m->sender) isolate_stat_add(&m->sender->stat_out, 1); /* before m is the receiver's */
  mailbox_push(&to->mbox, m);
  if (!wake(to, from) && from) sched_check_lifo(from);
}

const char *isolate_post(ic_isolate *to, ic_msg *m, worker *from) {
  if (!atomic_load_explicit(&to->alive, memory_order_acquire)) {
    msg_free_in(from ? &from->mcache : NULL, m);
    return "isolate down";
  }
  if (!mailbox_reserve(&to->mbox)) {
    msg_free_in(from ? &from->mcache : NULL, m);
    return "mailbox full";
  }
  post_reserved(to, m, from);
  return NULL;
}

const char *isolate_post_or_keep(ic_isolate *to, ic_msg *m, worker *from, int *kept) {
  *kept = 0;
  if (!atomic_load_explicit(&to->alive, memory_order_acquire)) {
    msg_free(m);
    return "isolate down";
  }
  if (!mailbox_reserve(&to->mbox)) {
    *kept = 1;
    return "mailbox full";
  }
  post_reserved(to, m, from);
  return NULL;
}

const char *isolate_post_sys(ic_isolate *to, ic_msg *m, worker *from) {
  if (!atomic_load_explicit(&to->alive, memory_order_acquire)) {
    msg_free(m);
    return "isolate down";
  }
  mailbox_reserve(&to->sysq); /* unbounded */
  mailbox_push(&to->sysq, m);
  isolate_wake(to, from);
  return NULL;
}

void isolate_interrupt(ic_isolate *iso, int code) {
  int expected = 0;
  atomic_compare_exchange_strong(&iso->interrupt, &expected, code);
  plat_mutex_lock(&iso->hook_lock);
  lstate_arm_hook(iso);
  plat_mutex_unlock(&iso->hook_lock);
}

void isolate_preempt(ic_isolate *iso) {
  atomic_store(&iso->preempt, 1);
  plat_mutex_lock(&iso->hook_lock);
  lstate_arm_hook(iso);
  plat_mutex_unlock(&iso->hook_lock);
}

void isolate_set_ending(ic_isolate *iso, const char *reason) {
  if (iso->ending) return;
  iso->ending = 1;
  iso->reason = strdup(reason ? reason : "normal");
  if (!iso->reason) iso->reason = (char *)REASON_LOST;
}

/* Goes down: no more messages accepted, state closed, registry entry and
 * path freed, down event published, queued messages counted as dead letters.
 * Runs on the thread that owns the isolate. */
static void isolate_finish(ic_isolate *iso) {
  ic_cluster *c = iso->cluster;
  atomic_store(&iso->alive, 0);
  atomic_store(&iso->sched, SCHED_DEAD);
  const char *reason = iso->reason ? iso->reason : "normal";
  /* Also the logger's own end: it is not up any more, so the line goes to
   * stderr. */
  if (strncmp(reason, "error", 5) == 0)
    cluster_log(c, "isolate_cluster: isolate %s (id %llu) went down: %s",
                iso->path ? iso->path : "(no path)", (unsigned long long)iso->id, reason);
  if (iso->L) lstate_close(iso);
  if (iso->native) native_finish(iso);
  refuse_open_requests(iso);
  size_t dead = drain_dead_letters(iso);
  if (dead) atomic_fetch_add(&c->dead_letters, dead);
  stop_children(iso);
  cluster_unregister(c, iso, reason);
  /* After its down event: a parent that ends now is reported after it.
   * (The caller's hold keeps iso alive past the registry's.) */
  tell_parent(iso);
}

void isolate_abandon(ic_isolate *iso, const char *reason) {
  isolate_set_ending(iso, reason);
  isolate_finish(iso);
}

int isolate_link_child(ic_isolate *parent, ic_isolate *child) {
  if (parent->nchildren == parent->children_cap) {
    /* Forget children already down before growing. */
    size_t k = 0;
    for (size_t i = 0; i < parent->nchildren; i++) {
      if (atomic_load(&parent->children[i]->alive)) parent->children[k++] = parent->children[i];
      else isolate_release(parent->children[i]);
    }
    parent->nchildren = k;
    if (k * 2 > parent->children_cap || parent->children_cap == 0) {
      size_t cap = parent->children_cap ? parent->children_cap * 2 : 8;
      ic_isolate **c = realloc(parent->children, cap * sizeof *c);
      if (!c) return ENOMEM;
      parent->children = c;
      parent->children_cap = cap;
    }
  }
  isolate_retain(child);
  parent->children[parent->nchildren++] = child;
  isolate_retain(parent);
  child->parent = parent;
  parent->live_children++;
  return 0;
}

/* A linked child went down: its parent may now have nothing left to run. */
static void tell_parent(ic_isolate *iso) {
  ic_isolate *parent = iso->parent;
  if (!parent) return;
  iso->parent = NULL;
  ic_msg *m = msg_new(MSG_CONTROL, NULL, 0);
  if (m) {
    m->corr = CONTROL_CHILD_DOWN;
    isolate_post_sys(parent, m, iso->worker);
  }
  /* Out of memory: the parent keeps counting this child as live, so it
   * stays up rather than ending early. */
  isolate_release(parent);
}

/* The children of an isolate that goes down are shut down with it (their
 * on_shutdown handlers run; their reason is "shutdown"). */
static void stop_children(ic_isolate *iso) {
  for (size_t i = 0; i < iso->nchildren; i++) {
    ic_isolate *child = iso->children[i];
    if (atomic_load(&child->alive)) {
      ic_msg *m = msg_new(MSG_CONTROL, NULL, 0);
      if (m) {
        m->corr = CONTROL_SHUTDOWN;
        isolate_post_sys(child, m, iso->worker);
      }
    }
    isolate_release(child);
  }
  free(iso->children);
  iso->children = NULL;
  iso->nchildren = iso->children_cap = 0;
}

/* A message for the isolate's code: its Lua state, or a native handler. */
static inline void dispatch(ic_isolate *iso, int kind, ic_msg *m) {
  if (iso->native) native_dispatch(iso, m);
  else lstate_dispatch(iso, kind, m);
}

/* wait: the isolate's wait mode, read by its owner before letting go. An
 * interrupt is work too: a kill or a shutdown whose control message could
 * not be allocated is only the interrupt and a wake, and the wake is lost
 * when it comes while the isolate runs (past the turn's own look at it). */
static int isolate_has_work(ic_isolate *iso, int wait) {
  if (mailbox_count(&iso->sysq) > 0 || atomic_load(&iso->events_pending)) return 1;
  if (atomic_load(&iso->interrupt)) return 1;
  if (wait == WAIT_PREEMPTED) return 1;
  return wait != WAIT_BLOCKED && mailbox_count(&iso->mbox) > 0;
}

static void handle_control(ic_isolate *iso, int code) {
  switch (code) {
  case CONTROL_SHUTDOWN:
    /* A graceful shutdown lets a handler that is still computing finish
     * (until the shutdown's deadline interrupts it); a handler that only
     * waits (receive, sleep, request) is not waited for. */
    if (iso->wait == WAIT_PREEMPTED) {
      iso->shutdown_pending = 1;
      break;
    }
    if (!iso->shutdown_handled) {
      iso->shutdown_handled = 1;
      if (iso->L) lstate_dispatch(iso, LSTATE_SHUTDOWN, NULL);
      /* on_shutdown itself may run past its slice: it is finished too. */
      if (iso->wait == WAIT_PREEMPTED) {
        iso->shutdown_pending = 1;
        break;
      }
    }
    isolate_set_ending(iso, "shutdown");
    break;
  case CONTROL_KILL:
    isolate_set_ending(iso, atomic_load(&iso->interrupt) == INTERRUPT_SHUTDOWN ? "shutdown" : "killed");
    break;
  case CONTROL_CHILD_DOWN:
    if (iso->live_children) iso->live_children--;
    if (iso->L && !iso->live_children) lstate_dispatch(iso, LSTATE_CHECK, NULL);
    break;
  default:
    break;
  }
}

/* The mailbox's next message for this turn, counted, or NULL. (The count
 * is looked at first: most turns find the mailbox empty after their one
 * message.) */
static inline ic_msg *take_message(ic_isolate *iso) {
  ic_msg *m;
  if (mailbox_count(&iso->mbox) == 0 || (m = mailbox_pop(&iso->mbox)) == NULL) return NULL;
  iso->turn_msgs++;
  isolate_stat_add(&iso->stat_in, 1);
  return m;
}

int isolate_run(ic_isolate *iso, worker *w) {
  ic_cluster *c = iso->cluster;
  /* A worker going straight on from its last turn starts this one when
   * that one ended: one clock read per turn (worker_clock). */
  uint64_t now = w ? worker_clock(w) : plat_now_ns();
  /* Only a handler preempted in an earlier turn is resumed in this one; one
   * preempted during this turn waits for the next (after the others). */
  int resume_preempted = iso->wait == WAIT_PREEMPTED;
  iso->worker = w;
  iso->slice_deadline = now + c->sched.slice_ns;
  atomic_store_explicit(&iso->preempt, 0, memory_order_relaxed);
  if (w) worker_begin_turn(w, iso, now);
  if (!iso->L && !iso->native && !iso->ending) lstate_boot(iso);
  if (atomic_load(&iso->interrupt) && !iso->ending) {
    /* Killed (or shut down past its time) between two turns. */
    isolate_set_ending(iso, atomic_load(&iso->interrupt) == INTERRUPT_KILL ? "killed" : "shutdown");
  }

  ic_msg *m;
  /* (The counts are looked at before each pop: most turns find the system
   * queue empty, and the mailbox empty after its one message.) */
  while (!iso->ending && mailbox_count(&iso->sysq) > 0 && (m = mailbox_pop(&iso->sysq)) != NULL) {
    int was_preempted = iso->wait == WAIT_PREEMPTED;
    if (m->kind == MSG_CONTROL) handle_control(iso, (int)m->corr);
    else dispatch(iso, m->kind, m);
    msg_free_in(w ? &w->mcache : NULL, m);
    if (!was_preempted && iso->wait == WAIT_PREEMPTED) resume_preempted = 0; /* out of time */
  }
  if (!resume_preempted && iso->wait == WAIT_PREEMPTED) goto end_turn;
  if (!iso->ending && atomic_load_explicit(&iso->events_pending, memory_order_relaxed) &&
      atomic_exchange(&iso->events_pending, 0))
    lstate_dispatch(iso, LSTATE_EVENTS, NULL);
  if (!iso->ending && iso->wait == WAIT_PREEMPTED && resume_preempted)
    lstate_dispatch(iso, LSTATE_RESUME, NULL);
  if (!iso->ending && iso->shutdown_pending && iso->wait != WAIT_PREEMPTED) handle_control(iso, CONTROL_SHUTDOWN);
  iso->turn_msgs = 0;
  while (iso->turn_msgs < TURN_BATCH && !iso->ending && !iso->shutdown_pending) {
    if (iso->wait == WAIT_BLOCKED || iso->wait == WAIT_PREEMPTED) break;
    if ((iso->turn_msgs & 15) == 15 && plat_now_ns() > iso->slice_deadline) break;
    if ((m = take_message(iso)) == NULL) break;
    /* The pump may go on with the next messages in the same resume: one
     * coroutine switch for a batch, not one per message. */
    iso->batching = 1;
    dispatch(iso, m->kind, m);
    iso->batching = 0;
    msg_free_in(w ? &w->mcache : NULL, m);
    while (iso->batch) {
      m = iso->batch;
      iso->batch = (ic_msg *)atomic_load_explicit(&m->link.next, memory_order_relaxed);
      msg_free_in(w ? &w->mcache : NULL, m);
    }
  }
end_turn:;
  if (w) msg_cache_flush(&w->mcache);
  uint64_t end = plat_now_ns();
  isolate_stat_add(&iso->stat_run_ns, end - now);
  atomic_store_explicit(&iso->stat_mem, iso->mem_used, memory_order_relaxed);
  if (w) worker_end_turn(w, end);
  iso->worker = NULL;
  if (iso->ending) {
    isolate_finish(iso);
    if (w) worker_clock_stale(w); /* the finish took time of its own */
    return RUN_DONE;
  }
  /* After the store below another worker may own the isolate: read what
   * this turn left before it. */
  int wait = iso->wait;
  atomic_store_explicit(&iso->wait_seen, wait, memory_order_relaxed);
  atomic_store(&iso->sched, SCHED_IDLE);
  /* A producer that saw SCHEDULED did not wake us: look again. */
  if (isolate_has_work(iso, wait)) {
    int expected = SCHED_IDLE;
    if (atomic_compare_exchange_strong(&iso->sched, &expected, SCHED_SCHEDULED)) return RUN_AGAIN;
  }
  return RUN_IDLE;
}

ic_msg *isolate_next_message(ic_isolate *iso) {
  for (;;) {
    /* (The same tests as the loop of isolate_run, and what would end the
     * turn early: a kill, a shutdown, the monitor's preemption.) */
    if (!iso->batching || iso->turn_msgs >= TURN_BATCH || iso->ending || iso->shutdown_pending) return NULL;
    if (atomic_load_explicit(&iso->interrupt, memory_order_relaxed) ||
        atomic_load_explicit(&iso->preempt, memory_order_relaxed))
      return NULL;
    if ((iso->turn_msgs & 15) == 15 && plat_now_ns() > iso->slice_deadline) return NULL;
    ic_msg *m = take_message(iso);
    if (!m) return NULL;
    atomic_store_explicit(&m->link.next, (msg_link *)iso->batch, memory_order_relaxed);
    iso->batch = m;
    if (!isolate_take_up(iso, m)) return m;
  }
}

static void *dedicated_main(void *arg) {
  ic_isolate *iso = arg;
  for (;;) {
    plat_mutex_lock(&iso->th->wlock);
    while (atomic_load(&iso->sched) == SCHED_IDLE) plat_cond_wait(&iso->th->wcond, &iso->th->wlock);
    plat_mutex_unlock(&iso->th->wlock);
    if (isolate_run(iso, NULL) == RUN_DONE) break;
  }
  /* Left running by a shutdown (its call blocked past the deadline): the
   * thread's hold is let go here, where nothing runs the isolate any more. */
  if (atomic_exchange(&iso->th->thread_state, THREAD_EXITED) == THREAD_LEFT) isolate_release(iso);
  return NULL;
}

int isolate_start_thread(ic_isolate *iso) {
  return plat_thread_start(&iso->th->thread, dedicated_main, iso, 8u << 20);
}

int isolate_kill(ic_isolate *iso) {
  if (!atomic_load(&iso->alive)) return -1;
  /* The interrupt alone ends it at its next turn (or, running, within a few
   * instructions); the control message makes sure an idle isolate gets that
   * turn. Either may find it already gone: killed all the same. */
  isolate_interrupt(iso, INTERRUPT_KILL);
  ic_msg *m = msg_new(MSG_CONTROL, NULL, 0);
  if (m) {
    m->corr = CONTROL_KILL;
    isolate_post_sys(iso, m, NULL);
  } else {
    isolate_wake(iso, NULL);
  }
  return 0;
}
