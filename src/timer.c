#include "timer.h"

#include <errno.h>
#include <stdlib.h>

#include "isolate.h"
#include "mailbox.h"

int timer_init(timer_wheel *t) {
  t->heap = NULL;
  t->len = t->cap = 0;
  t->seq = 0;
  t->stopping = t->started = 0;
  if (plat_mutex_init(&t->lock)) return ENOMEM;
  if (plat_cond_init(&t->cond)) { plat_mutex_destroy(&t->lock); return ENOMEM; }
  return 0;
}

static int entry_before(const timer_entry *a, const timer_entry *b) {
  return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}

static void heap_up(timer_entry *h, size_t i) {
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!entry_before(&h[i], &h[p])) break;
    timer_entry tmp = h[i]; h[i] = h[p]; h[p] = tmp;
    i = p;
  }
}

static void heap_down(timer_entry *h, size_t n, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && entry_before(&h[l], &h[m])) m = l;
    if (r < n && entry_before(&h[r], &h[m])) m = r;
    if (m == i) return;
    timer_entry tmp = h[i]; h[i] = h[m]; h[m] = tmp;
    i = m;
  }
}

int timer_arm(timer_wheel *t, ic_isolate *iso, uint64_t id, uint64_t delay_ns) {
  uint64_t deadline = plat_now_ns() + delay_ns;
  plat_mutex_lock(&t->lock);
  if (t->len == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    timer_entry *h = realloc(t->heap, cap * sizeof *h);
    if (!h) { plat_mutex_unlock(&t->lock); return ENOMEM; }
    t->heap = h;
    t->cap = cap;
  }
  isolate_retain(iso);
  uint64_t seq = t->seq++;
  timer_entry *e = &t->heap[t->len++];
  e->deadline = deadline;
  e->seq = seq;
  e->id = id;
  e->iso = iso;
  heap_up(t->heap, t->len - 1);
  /* Only a new earliest deadline changes what the thread sleeps for. */
  if (t->heap[0].seq == seq) plat_cond_signal(&t->cond);
  plat_mutex_unlock(&t->lock);
  return 0;
}

uint64_t timer_next_deadline(timer_wheel *t) {
  plat_mutex_lock(&t->lock);
  uint64_t d = t->len ? t->heap[0].deadline : UINT64_MAX;
  plat_mutex_unlock(&t->lock);
  return d;
}

/* Posts e's timer message; 0, or ENOMEM when the message cannot be
 * allocated (then e keeps its hold on the isolate, for a retry). */
static int fire(timer_entry *e) {
  ic_isolate *iso = e->iso;
  if (atomic_load(&iso->alive)) {
    ic_msg *m = msg_new(MSG_TIMER, NULL, 0);
    if (!m) return ENOMEM;
    m->corr = e->id;
    isolate_post_sys(iso, m, NULL);
  }
  isolate_release(iso);
  return 0;
}

/* Out of memory when e fired: put it back, due again in a millisecond. A
 * timer is also what ends a wait (a request's timeout, a sleep), so losing
 * it could leave an isolate waiting for ever. The heap has room unless
 * timers were armed meanwhile; then it is lost, and its hold released.
 * Called with t->lock held. */
static void refire_later(timer_wheel *t, timer_entry *e) {
  if (t->len == t->cap) {
    isolate_release(e->iso);
    return;
  }
  e->deadline = plat_now_ns() + 1000000;
  e->seq = t->seq++;
  t->heap[t->len++] = *e;
  heap_up(t->heap, t->len - 1);
}

static void *timer_main(void *arg) {
  timer_wheel *t = arg;
  plat_mutex_lock(&t->lock);
  while (!t->stopping) {
    if (t->len == 0) {
      plat_cond_wait(&t->cond, &t->lock);
      continue;
    }
    uint64_t now = plat_now_ns();
    if (t->heap[0].deadline > now) {
      plat_cond_wait_until(&t->cond, &t->lock, t->heap[0].deadline);
      continue;
    }
    timer_entry e = t->heap[0];
    t->heap[0] = t->heap[--t->len];
    heap_down(t->heap, t->len, 0);
    /* Post outside the lock: waking takes other locks. */
    plat_mutex_unlock(&t->lock);
    int rc = fire(&e);
    plat_mutex_lock(&t->lock);
    if (rc) refire_later(t, &e);
  }
  plat_mutex_unlock(&t->lock);
  return NULL;
}

int timer_start(timer_wheel *t) {
  int rc = plat_thread_start(&t->thread, timer_main, t, 256u << 10);
  if (!rc) t->started = 1;
  return rc;
}

void timer_stop(timer_wheel *t) {
  plat_mutex_lock(&t->lock);
  t->stopping = 1;
  plat_cond_signal(&t->cond);
  plat_mutex_unlock(&t->lock);
  if (t->started) {
    plat_thread_join(t->thread);
    t->started = 0;
  }
  plat_mutex_lock(&t->lock);
  size_t n = t->len;
  timer_entry *h = t->heap;
  t->heap = NULL;
  t->len = t->cap = 0;
  plat_mutex_unlock(&t->lock);
  for (size_t i = 0; i < n; i++) isolate_release(h[i].iso);
  free(h);
}

void timer_fini(timer_wheel *t) {
  plat_cond_destroy(&t->cond);
  plat_mutex_destroy(&t->lock);
  free(t->heap);
}
