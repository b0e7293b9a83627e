/*
 * membership — which node incarnations of the cluster are alive, as this
 * node has heard them (see docs/multinode.md, "Membership").
 *
 * A node is known by its incarnation id (the node part of its refs), chosen
 * at random when it starts. Every node publishes a heartbeat every
 * MEMBERSHIP_HEARTBEAT_NS; a peer not heard for MEMBERSHIP_DOWN_NS is down
 * ("unreachable"), a bye makes it down at once ("left"). A down incarnation
 * stays down for good (fencing): heartbeats from it are ignored, so a
 * process that was declared down must start again with a new incarnation.
 * Silence is not held against peers while this node's own connection was
 * down: the clock of every peer restarts when the connection comes back.
 *
 * Pure data structure: no NATS, no threads; src/net/net.c serialises calls.
 */
#ifndef IC_NET_MEMBERSHIP_H
#define IC_NET_MEMBERSHIP_H

#include <stddef.h>
#include <stdint.h>

#include "envelope.h"
#include "link.h"

#define MEMBERSHIP_HEARTBEAT_NS 500000000ull /* 0.5 s */
#define MEMBERSHIP_DOWN_NS 3000000000ull     /* 3 s of silence */
/* The faster path for a peer whose connection is gone (killed): after 1 s of
 * silence it is probed; NATS answers "no responders" when it has no
 * subscription any more, and a second such answer at least 1 s after the
 * first (a fail-over between NATS servers can make one transient) takes it
 * down ("killed") before the silence bound. */
#define MEMBERSHIP_PROBE_NS 1000000000ull
#define MEMBERSHIP_CONFIRM_NS 1000000000ull
/* Down incarnations remembered (for fencing and names) beyond the live ones. */
#define MEMBERSHIP_DOWN_KEEP 1024

typedef struct member {
  uint32_t inc;
  char name[ENVELOPE_NAME_MAX + 1];
  int up;
  uint64_t last_seen_ns;
  uint64_t down_ns;       /* when it went down */
  uint64_t probed_ns;     /* last "no responders" probe sent (see net.c) */
  uint64_t suspect_ns;    /* first "no responders" answer since last heard, or 0 */
  link link;              /* outbound, only while up (inbound: src/net/inbound.h) */
  unsigned char *outbox;  /* the batch of frames not yet published (net.c) */
  size_t out_len, out_cap, out_frames;
  uint64_t rto_ns;        /* the link's retransmit wait now (net.c; 0: the base) */
  uint64_t resent_ns;     /* its last resend */
} member;

typedef struct membership {
  member **v;
  size_t n, cap;
} membership;

void membership_init(membership *ms);
void membership_fini(membership *ms);

member *membership_find(membership *ms, uint32_t inc);
/* The live member of that name, or NULL. */
member *membership_find_name(membership *ms, const char *name, size_t len);

/* Adds a live member (its link initialised). NULL when out of memory. */
member *membership_add(membership *ms, uint32_t inc, const char *name, size_t len, uint64_t now_ns,
                       size_t window_frames, size_t window_bytes);

/* Marks m down: frees its link (returns the unacked frames in *lost) and
 * keeps the entry for fencing. */
void membership_set_down(membership *ms, member *m, uint64_t now_ns, size_t *lost);

/* Calls each(m, ud) for every member, then forgets them all (a node that
 * rejoins as a new incarnation starts afresh). */
void membership_reset(membership *ms, void (*each)(member *m, void *ud), void *ud);

#endif
