#include "mailbox.h"

#include <errno.h>
#include <msgpuck.h>

#include <stdlib.h>
#include <string.h>

#include "isolate.h"

ic_blob *blob_new(const char *data, size_t len) {
  ic_blob *b = malloc(sizeof *b + len);
  if (!b) return NULL;
  atomic_init(&b->refs, 1);
  b->len = len;
  if (len && data) memcpy(b->data, data, len); /* data NULL: room to fill */
  return b;
}

void blob_retain(ic_blob *b) { atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed); }

void blob_release(ic_blob *b) {
  if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) free(b);
}

/* ---- message blocks ---------------------------------------------------- */

int msg_depot_init(msg_depot *d) {
  atomic_init(&d->n, 0);
  for (int i = 0; i < MSG_DEPOT_MAX; i++) d->mags[i] = NULL;
  return plat_mutex_init(&d->lock);
}

static void free_chain(ic_msg *m) {
  while (m) {
    ic_msg *next = m->spare;
    free(m);
    m = next;
  }
}

void msg_depot_trim(msg_depot *d) {
  if (atomic_load_explicit(&d->n, memory_order_relaxed) == 0) return;
  ic_msg *mags[MSG_DEPOT_MAX];
  plat_mutex_lock(&d->lock);
  int n = atomic_load_explicit(&d->n, memory_order_relaxed);
  for (int i = 0; i < n; i++) mags[i] = d->mags[i];
  atomic_store_explicit(&d->n, 0, memory_order_relaxed);
  plat_mutex_unlock(&d->lock);
  for (int i = 0; i < n; i++) free_chain(mags[i]);
}

void msg_depot_fini(msg_depot *d) {
  msg_depot_trim(d);
  plat_mutex_destroy(&d->lock);
}

/* An empty cache takes a magazine from its depot, if there is one. */
static void cache_refill(msg_cache *c) {
  msg_depot *d = c->depot;
  if (!d || atomic_load_explicit(&d->n, memory_order_relaxed) == 0) return;
  plat_mutex_lock(&d->lock);
  int n = atomic_load_explicit(&d->n, memory_order_relaxed);
  if (n > 0) {
    c->free = d->mags[n - 1];
    c->n = MSG_MAGAZINE;
    atomic_store_explicit(&d->n, n - 1, memory_order_relaxed);
  }
  plat_mutex_unlock(&d->lock);
}

/* A full cache hands its newest MSG_MAGAZINE blocks to its depot, or back
 * to malloc when the depot is full (or there is none). */
static void cache_spill(msg_cache *c) {
  ic_msg *mag = c->free, *last = mag;
  for (int i = 1; i < MSG_MAGAZINE; i++) last = last->spare;
  c->free = last->spare;
  c->n -= MSG_MAGAZINE;
  last->spare = NULL;
  msg_depot *d = c->depot;
  if (d) {
    plat_mutex_lock(&d->lock);
    int n = atomic_load_explicit(&d->n, memory_order_relaxed);
    if (n < MSG_DEPOT_MAX) {
      d->mags[n] = mag;
      atomic_store_explicit(&d->n, n + 1, memory_order_relaxed);
      mag = NULL;
    }
    plat_mutex_unlock(&d->lock);
  }
  free_chain(mag);
}

void msg_cache_flush(msg_cache *c) {
  if (!c->rel) return;
  struct ic_isolate *iso = c->rel;
  c->rel = NULL;
  isolate_release_n(iso, c->rel_n);
}

void msg_cache_trim(msg_cache *c) {
  free_chain(c->free);
  c->free = NULL;
  c->n = 0;
}

ic_msg *msg_new_in(msg_cache *c, int kind, const char *data, size_t len) {
  ic_msg *m;
  int block = sizeof *m + len <= MSG_BLOCK;
  if (block && c && !c->free) cache_refill(c);
  if (block && c && c->free) {
    m = c->free;
    c->free = m->spare;
    c->n--;
  } else {
    m = malloc(block ? MSG_BLOCK : sizeof *m + len);
    if (!m) return NULL;
  }
  m->block = (uint8_t)block;
  atomic_init(&m->link.next, NULL);
  m->sender = NULL;
  m->from_node = 0;
  m->from_id = 0;
  m->corr = 0;
  m->shared = NULL;
  m->spare = NULL;
  m->kind = (uint8_t)kind;
  m->len = len;
  if (len && data) memcpy(m->inline_data, data, len); /* data NULL: room to fill */
  m->data = m->inline_data;
  return m;
}

ic_msg *msg_new(int kind, const char *data, size_t len) { return msg_new_in(NULL, kind, data, len); }

ic_msg *msg_new_shared(int kind, ic_blob *b) {
  ic_msg *m = malloc(sizeof *m);
  if (!m) return NULL;
  atomic_init(&m->link.next, NULL);
  m->sender = NULL;
  m->from_node = 0;
  m->from_id = 0;
  m->corr = 0;
  m->spare = NULL;
  m->block = 0;
  blob_retain(b);
  m->shared = b;
  m->kind = (uint8_t)kind;
  m->data = b->data;
  m->len = b->len;
  return m;
}

void msg_free_in(msg_cache *c, ic_msg *m) {
  if (!m) return;
  if (m->shared) blob_release(m->shared);
  if (m->sender) {
    if (!c) {
      isolate_release(m->sender);
    } else if (c->rel == m->sender && c->rel_n < INT32_MAX) {
      c->rel_n++;
    } else {
      msg_cache_flush(c);
      c->rel = m->sender;
      c->rel_n = 1;
    }
  }
  if (m->spare) msg_free_in(c, m->spare);
  if (m->block && c) {
    if (c->n == MSG_CACHE_MAX) cache_spill(c);
    m->spare = c->free;
    c->free = m;
    c->n++;
    return;
  }
  free(m);
}

void msg_free(ic_msg *m) { msg_free_in(NULL, m); }

int msg_add_spare(ic_msg *m) {
  /* room for the MessagePack string header (str 8) and the text */
  m->spare = msg_new(MSG_REPLY_ERROR, NULL, MSG_SPARE_TEXT + 2);
  return m->spare ? 0 : ENOMEM;
}

ic_msg *msg_fill_spare(ic_msg *spare, uint64_t corr, const char *text) {
  size_t n = strlen(text);
  if (n > MSG_SPARE_TEXT) n = MSG_SPARE_TEXT;
  char *w = mp_encode_str(spare->inline_data, text, (uint32_t)n);
  spare->len = (size_t)(w - spare->inline_data);
  spare->corr = corr;
  return spare;
}

ic_msg *msg_take_spare(ic_msg *m, const char *text) {
  ic_msg *spare = m->spare;
  m->spare = NULL;
  return spare ? msg_fill_spare(spare, m->corr, text) : NULL;
}

void mailbox_init(mailbox *q, size_t capacity) {
  atomic_init(&q->stub.next, NULL);
  atomic_init(&q->head, &q->stub);
  q->tail = &q->stub;
  atomic_init(&q->count, 0);
  q->capacity = capacity;
}

int mailbox_reserve(mailbox *q) {
  size_t n = atomic_fetch_add_explicit(&q->count, 1, memory_order_acq_rel);
  if (q->capacity && n >= q->capacity) {
    atomic_fetch_sub_explicit(&q->count, 1, memory_order_acq_rel);
    return 0;
  }
  return 1;
}

void mailbox_unreserve(mailbox *q) { atomic_fetch_sub_explicit(&q->count, 1, memory_order_acq_rel); }

static void mailbox_link(mailbox *q, msg_link *m) {
  atomic_store_explicit(&m->next, NULL, memory_order_relaxed);
  msg_link *prev = atomic_exchange_explicit(&q->head, m, memory_order_acq_rel);
  atomic_store_explicit(&prev->next, m, memory_order_release);
}

void mailbox_push(mailbox *q, ic_msg *m) { mailbox_link(q, &m->link); }

/* Every link but the stub (the node that keeps the list never empty) is a
 * message's first member, so a link converts back to its message. */
static ic_msg *msg_of(msg_link *l) { return (ic_msg *)l; }

ic_msg *mailbox_pop(mailbox *q) {
  msg_link *tail = q->tail;
  msg_link *next = atomic_load_explicit(&tail->next, memory_order_acquire);
  if (tail == &q->stub) {
    if (!next) return NULL;
    q->tail = next;
    tail = next;
    next = atomic_load_explicit(&next->next, memory_order_acquire);
  }
  if (next) {
    q->tail = next;
    atomic_fetch_sub_explicit(&q->count, 1, memory_order_acq_rel);
    return msg_of(tail);
  }
  /* tail is the last linked message; a producer may be mid-push behind it. */
  if (tail != atomic_load_explicit(&q->head, memory_order_acquire)) return NULL;
  mailbox_link(q, &q->stub);
  next = atomic_load_explicit(&tail->next, memory_order_acquire);
  if (next) {
    q->tail = next;
    atomic_fetch_sub_explicit(&q->count, 1, memory_order_acq_rel);
    return msg_of(tail);
  }
  return NULL;
}
