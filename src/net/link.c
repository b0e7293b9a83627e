#include "link.h"

#include <stdlib.h>
#include <string.h>

void link_init(link *l, size_t max_frames, size_t max_bytes) {
  memset(l, 0, sizeof *l);
  l->max_frames = max_frames;
  l->max_bytes = max_bytes;
  l->next_seq = 1;
}

void link_rx_init(link_rx *r) {
  r->expect = 1;
  r->ack_due = 0;
}

size_t link_fini(link *l) {
  size_t n = l->count;
  for (size_t i = 0; i < l->count; i++) free(l->ring[(l->head + i) % l->cap].data);
  free(l->ring);
  l->ring = NULL;
  l->cap = l->head = l->count = l->bytes = 0;
  return n;
}

static int ring_grow(link *l) {
  size_t cap = l->cap ? l->cap * 2 : 64;
  if (cap > l->max_frames) cap = l->max_frames;
  link_frame *r = malloc(cap * sizeof *r);
  if (!r) return -1;
  for (size_t i = 0; i < l->count; i++) r[i] = l->ring[(l->head + i) % l->cap];
  free(l->ring);
  l->ring = r;
  l->cap = cap;
  l->head = 0;
  return 0;
}

int link_push(link *l, unsigned char *data, size_t len, int kind, uint64_t from_id, uint64_t corr,
              uint64_t now_ns) {
  if (l->count >= l->max_frames || (l->count && l->bytes + len > l->max_bytes)) return -1;
  if (l->count == l->cap && ring_grow(l)) return -1;
  link_frame *f = &l->ring[(l->head + l->count) % l->cap];
  f->seq = l->next_seq++;
  f->sent_ns = now_ns;
  f->data = data;
  f->len = len;
  f->kind = kind;
  f->from_id = from_id;
  f->corr = corr;
  l->count++;
  l->bytes += len;
  return 0;
}

size_t link_ack(link *l, uint64_t cum) {
  if (cum >= l->next_seq) return 0; /* acks what was never sent: not from this link */
  size_t n = 0;
  while (l->count && l->ring[l->head].seq <= cum) {
    link_frame *f = &l->ring[l->head];
    l->bytes -= f->len;
    free(f->data);
    f->data = NULL;
    l->head = (l->head + 1) % l->cap;
    l->count--;
    n++;
  }
  if (cum > l->acked) l->acked = cum;
  return n;
}

link_frame *link_unacked(link *l, size_t i) {
  if (i >= l->count) return NULL;
  return &l->ring[(l->head + i) % l->cap];
}

int link_accept(link_rx *r, uint64_t seq) {
  r->ack_due = 1;
  int verdict = link_rx_peek(r, seq);
  if (verdict == LINK_DELIVER) r->expect++;
  return verdict;
}
