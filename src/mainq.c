/*
 * mainq — the program's own ref waiting for messages and replies (see
 * mainq.h for the contract).
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "mainq.h"
#include "net/net.h"
#include "sigint.h"

void mainq_block_begin(mainq_block *b) {
  if (b->begun) return;
  b->begun = 1;
  b->token = sigint_begin(b->main);
}

int mainq_block_end(mainq_block *b) {
  if (!b->begun) return 0;
  b->begun = 0;
  return sigint_end(b->main, b->token);
}

static void drop_all(mailbox *q) {
  ic_msg *m;
  while ((m = mailbox_pop(q)) != NULL) msg_free(m);
}

int mainq_receive(ic_cluster *c, uint64_t deadline, int interruptible, ic_msg **out) {
  ic_isolate *main = c->main;
  mainq_block b = MAINQ_BLOCK(c);
  for (;;) {
    /* Interrupted while waiting: a message that came meanwhile stays queued
     * for the next receive. */
    if (b.begun && atomic_load(&main->sigint)) {
      mainq_block_end(&b);
      return MAINQ_INTERRUPTED;
    }
    drop_all(&main->sysq); /* late replies */
    ic_msg *m = mailbox_pop(&main->mbox);
    if (m) {
      if (mainq_block_end(&b)) raise(SIGINT);
      *out = m;
      return MAINQ_OK;
    }
    if (mailbox_count(&main->mbox) > 0) continue; /* a push half done */
    if (mainq_rearm(c)) continue;
    if (atomic_load(&c->state) != CLUSTER_RUNNING) break;
    if (interruptible) mainq_block_begin(&b);
    if (!cluster_main_wait(c, &main->mbox, deadline)) {
      if (mailbox_count(&main->mbox) > 0) continue;
      if (mainq_block_end(&b)) return MAINQ_INTERRUPTED;
      return MAINQ_TIMEOUT;
    }
  }
  if (mainq_block_end(&b)) return MAINQ_INTERRUPTED;
  return MAINQ_STOPPED;
}

/* cluster_main_wait for a reply: also while the cluster stops (on_shutdown
 * handlers may still answer), until it is down. 0 at the deadline. */
static int wait_reply(ic_cluster *c, uint64_t deadline) {
  ic_isolate *m = c->main;
  atomic_store(&m->sched, SCHED_IDLE);
  while (atomic_load(&m->sched) == SCHED_IDLE && mailbox_count(&m->sysq) == 0 &&
         atomic_load(&c->state) != CLUSTER_DOWN && !atomic_load(&m->sigint)) {
    if (plat_sem_wait_until(&m->th->wsem, deadline) == ETIMEDOUT) return 0;
  }
  return 1;
}

int mainq_request(ic_cluster *c, ic_isolate *to, uint32_t to_node, uint64_t to_id, ic_msg *m,
                  uint64_t timeout_ns, int interruptible, ic_msg **reply, const char **why) {
  ic_isolate *main = c->main;
  uint64_t corr = ++main->next_corr;
  /* Replies to earlier requests that timed out are of no use now. */
  drop_all(&main->sysq);
  if (to) {
    /* A request carries its own failure (mailbox.h): it can always be failed. */
    if (msg_add_spare(m)) {
      msg_free(m);
      *why = "out of memory";
      return MAINQ_REFUSED;
    }
    isolate_retain(main);
    m->sender = main;
    m->corr = corr;
    *why = isolate_post(to, m, NULL);
  } else {
    /* Another node's isolate: the net copies the bytes into its frame; the
     * reply comes back to the main state's system queue like a local one. */
    *why = c->net ? net_send(c->net, to_node, to_id, MSG_REQUEST, corr, main->id, m->data, m->len) : "isolate down";
    msg_free(m);
  }
  if (*why) return MAINQ_REFUSED;
  uint64_t deadline = plat_now_ns() + timeout_ns;
  mainq_block b = MAINQ_BLOCK(c);
  for (;;) {
    /* Interrupted while waiting: a reply, if one comes, is dropped later
     * as a late one. */
    if (b.begun && atomic_load(&main->sigint)) {
      mainq_block_end(&b);
      return MAINQ_INTERRUPTED;
    }
    ic_msg *x = mailbox_pop(&main->sysq);
    if (x) {
      if ((x->kind == MSG_REPLY || x->kind == MSG_REPLY_ERROR) && x->corr == corr) {
        if (mainq_block_end(&b)) raise(SIGINT); /* as in mainq_receive */
        *reply = x;
        return MAINQ_OK;
      }
      msg_free(x);
      continue;
    }
    if (mailbox_count(&main->sysq) > 0) continue;
    /* Down, not only stopping: on_shutdown handlers may still answer. */
    if (atomic_load(&c->state) == CLUSTER_DOWN) {
      mainq_block_end(&b);
      return MAINQ_STOPPED;
    }
    if (interruptible) mainq_block_begin(&b);
    if (!wait_reply(c, deadline) && mailbox_count(&main->sysq) == 0 && !atomic_load(&main->sigint)) {
      /* A SIGINT exactly at the timeout: the timeout wins, as before. */
      mainq_block_end(&b);
      return MAINQ_TIMEOUT;
    }
  }
}

int mainq_wait_events(ic_cluster *c, uint64_t deadline) {
  ic_isolate *m = c->main;
  for (;;) {
    int st = atomic_load(&c->state);
    if (st == CLUSTER_DOWN) return 1;
    if (st == CLUSTER_STOPPING) return cluster_wait_down(c, deadline);
    /* IDLE before the look: an event appended after it wakes this wait. */
    atomic_store(&m->sched, SCHED_IDLE);
    if (atomic_load(&m->events_pending) || atomic_load(&c->state) != CLUSTER_RUNNING) return 1;
    if (plat_sem_wait_until(&m->th->wsem, deadline) == ETIMEDOUT) return atomic_load(&m->events_pending);
  }
}

int mainq_fd(ic_cluster *c) {
  plat_mutex_lock(&c->lock); /* one creator */
  int fd = atomic_load(&c->main_fd);
  if (fd < 0) {
    fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    /* Readable at once: whatever is queued already is worth a look. */
    if (fd >= 0) {
      uint64_t one = 1;
      (void)!write(fd, &one, sizeof one);
      atomic_store(&c->main_fd, fd);
    }
  }
  plat_mutex_unlock(&c->lock);
  return fd;
}

void mainq_signal(ic_cluster *c) {
  uint64_t one = 1;
  /* Only fails when the counter would overflow: it is readable then. */
  (void)!write(atomic_load(&c->main_fd), &one, sizeof one);
}

int mainq_rearm(ic_cluster *c) {
  if (atomic_load(&c->main_fd_armed)) return 0;
  int fd = atomic_load(&c->main_fd);
  if (fd < 0) return 0;
  uint64_t v;
  (void)!read(fd, &v, sizeof v);
  atomic_store(&c->main_fd_armed, 1);
  atomic_thread_fence(memory_order_seq_cst); /* see mainq_notify */
  return 1;
}
