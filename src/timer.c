#include "timer.h"

#include <errno.h>
#include <stdlib.h>

#include "isolate.h"
#include "mailbox.h"

int timer_init(timer_wheel *t) {
  t->heap = NULL;
  t->len = t->cap = 0;
  t->index = NULL;
  t->index_cap = 0;
  t->seq = 0;
  t->sleep_until = UINT64_MAX;
  t->stopping = t->started = 0;
  if (plat_mutex_init(&t->lock)) return ENOMEM;
  if (plat_cond_init(&t->cond)) { plat_mutex_destroy(&t->lock); return ENOMEM; }
  return 0;
}

/* ---- the index: (iso, id) -> heap position (t->lock held) ---------------- */

static size_t name_hash(const ic_isolate *iso, uint64_t id) {
  uint64_t x = (uint64_t)(uintptr_t)iso ^ (id * 0x9e3779b97f4a7c15ULL);
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 29;
  return (size_t)x;
}

static size_t index_find(const timer_wheel *t, const ic_isolate *iso, uint64_t id) {
  if (!t->index_cap) return SIZE_MAX;
  size_t mask = t->index_cap - 1;
  for (size_t j = name_hash(iso, id) & mask; t->index[j]; j = (j + 1) & mask) {
    const timer_entry *e = &t->heap[t->index[j] - 1];
    if (e->iso == iso && e->id == id) return j;
  }
  return SIZE_MAX;
}

static void index_put(timer_wheel *t, size_t pos) {
  timer_entry *e = &t->heap[pos];
  size_t mask = t->index_cap - 1, j = name_hash(e->iso, e->id) & mask;
  while (t->index[j]) j = (j + 1) & mask;
  t->index[j] = pos + 1;
  e->slot = j;
}

/* Room for one more name, keeping the index at most half full. */
static int index_reserve(timer_wheel *t) {
  if ((t->len + 1) * 2 <= t->index_cap) return 0;
  size_t cap = t->index_cap ? t->index_cap * 2 : 128;
  size_t *ix = calloc(cap, sizeof *ix);
  if (!ix) return ENOMEM;
  free(t->index);
  t->index = ix;
  t->index_cap = cap;
  for (size_t i = 0; i < t->len; i++) index_put(t, i);
  return 0;
}

/* Frees slot j. Backward-shift deletion: a later entry of the same run moves
 * up unless its home slot lies in (j, k], so no lookup stops early. */
static void index_remove(timer_wheel *t, size_t j) {
  size_t mask = t->index_cap - 1;
  t->index[j] = 0;
  for (size_t k = (j + 1) & mask; t->index[k]; k = (k + 1) & mask) {
    const timer_entry *e = &t->heap[t->index[k] - 1];
    size_t h = name_hash(e->iso, e->id) & mask;
    int stays = j < k ? (h > j && h <= k) : (h > j || h <= k);
    if (stays) continue;
    t->index[j] = t->index[k];
    t->heap[t->index[j] - 1].slot = j;
    t->index[k] = 0;
    j = k;
  }
}

/* ---- the heap (t->lock held) ------------------------------------------- */

static int entry_before(const timer_entry *a, const timer_entry *b) {
  return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}

static void heap_swap(timer_wheel *t, size_t i, size_t k) {
  timer_entry tmp = t->heap[i];
  t->heap[i] = t->heap[k];
  t->heap[k] = tmp;
  t->index[t->heap[i].slot] = i + 1;
  t->index[t->heap[k].slot] = k + 1;
}

static void heap_up(timer_wheel *t, size_t i) {
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!entry_before(&t->heap[i], &t->heap[p])) break;
    heap_swap(t, i, p);
    i = p;
  }
}

static void heap_down(timer_wheel *t, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < t->len && entry_before(&t->heap[l], &t->heap[m])) m = l;
    if (r < t->len && entry_before(&t->heap[r], &t->heap[m])) m = r;
    if (m == i) return;
    heap_swap(t, i, m);
    i = m;
  }
}

/* Takes the entry at pos out of the heap and the index; returns it (the
 * caller releases its isolate, outside the lock). */
static timer_entry heap_take(timer_wheel *t, size_t pos) {
  timer_entry e = t->heap[pos];
  index_remove(t, e.slot);
  if (--t->len > pos) {
    t->heap[pos] = t->heap[t->len];
    t->index[t->heap[pos].slot] = pos + 1;
    heap_down(t, pos);
    heap_up(t, pos);
  }
  return e;
}

/* ---- the interface ------------------------------------------------------ */

int timer_arm(timer_wheel *t, ic_isolate *iso, uint64_t id, uint64_t delay_ns, int periodic) {
  uint64_t deadline = plat_now_ns() + delay_ns;
  plat_mutex_lock(&t->lock);
  if (t->stopping) {
    /* Only code of an isolate left running past shutdown gets here. */
    plat_mutex_unlock(&t->lock);
    return ECANCELED;
  }
  size_t old = index_find(t, iso, id);
  if (old != SIZE_MAX) {
    /* Re-armed under the same name: move it (its hold on iso stays). */
    size_t pos = t->index[old] - 1;
    t->heap[pos].deadline = deadline;
    t->heap[pos].seq = t->seq++;
    t->heap[pos].periodic = periodic;
    heap_down(t, pos);
    heap_up(t, pos);
    if (deadline < t->sleep_until) plat_cond_signal(&t->cond);
    plat_mutex_unlock(&t->lock);
    return 0;
  }
  if (t->len == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    timer_entry *h = realloc(t->heap, cap * sizeof *h);
    if (!h) { plat_mutex_unlock(&t->lock); return ENOMEM; }
    t->heap = h;
    t->cap = cap;
  }
  if (index_reserve(t)) { plat_mutex_unlock(&t->lock); return ENOMEM; }
  isolate_retain(iso);
  size_t pos = t->len++;
  timer_entry *e = &t->heap[pos];
  e->deadline = deadline;
  e->seq = t->seq++;
  e->id = id;
  e->iso = iso;
  e->periodic = periodic;
  index_put(t, pos);
  heap_up(t, pos);
  /* Only a deadline before the one the thread sleeps until needs it awake
   * (a request arms a timeout and, answered, cancels it: with an empty heap
   * each would be the earliest, and wake the thread for nothing). */
  if (deadline < t->sleep_until) plat_cond_signal(&t->cond);
  plat_mutex_unlock(&t->lock);
  return 0;
}

void timer_cancel(timer_wheel *t, ic_isolate *iso, uint64_t id) {
  plat_mutex_lock(&t->lock);
  size_t j = index_find(t, iso, id);
  if (j == SIZE_MAX) {
    plat_mutex_unlock(&t->lock);
    return;
  }
  timer_entry e = heap_take(t, t->index[j] - 1);
  /* The thread may sleep until this deadline; waking early is harmless. */
  plat_mutex_unlock(&t->lock);
  /* The caller (iso's own code) holds iso: this is never its last hold. */
  isolate_release(e.iso);
}

int timer_held_before(timer_wheel *t, uint64_t deadline) {
  int held = 0;
  plat_mutex_lock(&t->lock);
  /* A scan: asked only by a drain (a few hundred times, at a program's end),
   * so the heap keeps one order for the thread that fires. */
  for (size_t i = 0; i < t->len && !held; i++) {
    const timer_entry *e = &t->heap[i];
    held = !e->periodic && e->deadline < deadline && atomic_load(&e->iso->alive);
  }
  plat_mutex_unlock(&t->lock);
  return held;
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
 * it could leave an isolate waiting for ever. Returns 0 when it is queued
 * again; -1 when it cannot be (no room without allocating, or the same
 * timer was armed again meanwhile): then the caller releases its hold,
 * outside the lock. Called with t->lock held. */
static int refire_later(timer_wheel *t, const timer_entry *e) {
  if (t->len == t->cap || index_find(t, e->iso, e->id) != SIZE_MAX || index_reserve(t)) return -1;
  size_t pos = t->len++;
  t->heap[pos] = *e;
  t->heap[pos].deadline = plat_now_ns() + 1000000;
  t->heap[pos].seq = t->seq++;
  index_put(t, pos);
  heap_up(t, pos);
  return 0;
}

static void *timer_main(void *arg) {
  timer_wheel *t = arg;
  plat_mutex_lock(&t->lock);
  while (!t->stopping) {
    if (t->len == 0) {
      t->sleep_until = UINT64_MAX;
      plat_cond_wait(&t->cond, &t->lock);
      continue;
    }
    uint64_t now = plat_now_ns();
    if (t->heap[0].deadline > now) {
      /* A cancel never wakes it: it wakes at this deadline for nothing. */
      t->sleep_until = t->heap[0].deadline;
      plat_cond_wait_until(&t->cond, &t->lock, t->sleep_until);
      continue;
    }
    t->sleep_until = 0; /* awake: arms need not signal */
    timer_entry e = heap_take(t, 0);
    /* Post outside the lock: waking takes other locks. */
    plat_mutex_unlock(&t->lock);
    int rc = fire(&e);
    plat_mutex_lock(&t->lock);
    if (rc && refire_later(t, &e) != 0) {
      plat_mutex_unlock(&t->lock);
      isolate_release(e.iso);
      plat_mutex_lock(&t->lock);
    }
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
  free(t->index);
  t->index = NULL;
  t->index_cap = 0;
  plat_mutex_unlock(&t->lock);
  for (size_t i = 0; i < n; i++) isolate_release(h[i].iso);
  free(h);
}

void timer_fini(timer_wheel *t) {
  plat_cond_destroy(&t->cond);
  plat_mutex_destroy(&t->lock);
  free(t->heap);
  free(t->index);
}
