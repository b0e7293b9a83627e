/*
 * link — the reliable, ordered stream from this node to one peer incarnation,
 * over a transport that may lose messages (core NATS is at-most-once: a
 * server restart or a fail-over drops what was in flight).
 *
 * Go-back-N: every data frame gets the next sequence number and stays in a
 * bounded retransmit window until the peer's cumulative ack covers it; the
 * receiving side delivers only the next expected number, drops duplicates
 * and gaps, and acks what it has. A full window refuses a new frame
 * (link_push returns -1) so the caller can refuse the send: nothing accepted
 * is ever dropped for lack of room.
 *
 * Pure data structure: no NATS, no threads. The owner serialises every call
 * (src/net/net.c holds its lock).
 */
#ifndef IC_NET_LINK_H
#define IC_NET_LINK_H

#include <stddef.h>
#include <stdint.h>

typedef struct link_frame {
  uint64_t seq;
  uint64_t sent_ns;  /* last (re)transmission */
  unsigned char *data; /* the whole sealed frame, malloc'ed */
  size_t len;
  int kind;          /* the message kind (MSG_*), for accounting */
  uint64_t from_id, corr;
} link_frame;

typedef struct link {
  /* Outbound: frames [acked + 1, next_seq) in a ring. */
  link_frame *ring;
  size_t cap, head, count; /* ring[head] holds seq acked + 1 */
  size_t bytes;
  size_t max_frames, max_bytes;
  uint64_t next_seq, acked;
} link;

/* The receiving half, kept apart (src/net/inbound.h shares it between
 * threads under its own lock). */
typedef struct link_rx {
  uint64_t expect; /* the next sequence number to deliver */
  int ack_due;     /* something arrived since the last ack went out */
} link_rx;

void link_init(link *l, size_t max_frames, size_t max_bytes);
/* Frees every frame still unacked; returns how many there were. */
size_t link_fini(link *l);

/* Sequence number the next link_push gets. */
static inline uint64_t link_next_seq(const link *l) { return l->next_seq; }

/* Is there room for frames more frames of bytes bytes in all? */
static inline int link_room(const link *l, size_t frames, size_t bytes) {
  return l->count + frames <= l->max_frames && (l->count == 0 || l->bytes + bytes <= l->max_bytes);
}

/* Appends a frame (ownership of data passes to the link on success only).
 * Its seq must be link_next_seq(l). Returns 0, or -1 when the window is full
 * or out of memory. */
int link_push(link *l, unsigned char *data, size_t len, int kind, uint64_t from_id, uint64_t corr,
              uint64_t now_ns);

/* The peer has everything up to cum: frees those frames. Returns how many.
 * An ack beyond what was sent is ignored. */
size_t link_ack(link *l, uint64_t cum);

/* The i-th unacked frame (0 = oldest), or NULL. */
link_frame *link_unacked(link *l, size_t i);

void link_rx_init(link_rx *r);

enum { LINK_DELIVER = 0, LINK_DUPLICATE = 1, LINK_GAP = 2 };
/* What a data frame with seq is: LINK_DELIVER (the next one), LINK_DUPLICATE
 * (already delivered) or LINK_GAP (an earlier one is missing; the sender
 * resends). Changes nothing. */
static inline int link_rx_peek(const link_rx *r, uint64_t seq) {
  return seq == r->expect ? LINK_DELIVER : seq < r->expect ? LINK_DUPLICATE : LINK_GAP;
}
/* A data frame with seq arrived: as link_rx_peek, and on LINK_DELIVER
 * (deliver it) expect advances. Sets ack_due. */
int link_accept(link_rx *r, uint64_t seq);
/* The cumulative ack to send: everything delivered so far. */
static inline uint64_t link_delivered(const link_rx *r) { return r->expect - 1; }

#endif
