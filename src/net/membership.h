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
 * Replays (docs/multinode.md, "Replays"): an incarnation heard of for the
 * first time (its heartbeat, or its hello) is only a candidate until it
 * echoes a fresh random nonce this node sent it (hello -> welcome): a copy
 * of an old frame of a node that died cannot, so replayed heartbeats never
 * bring a dead incarnation back (nor make a name look taken). Once a
 * member (or a candidate), only a heartbeat or bye whose counter is newer
 * than the last one taken from it counts.
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
/* Candidates held at once (the oldest makes room), and how long one not
 * heard again is kept; a candidate's hello is sent again at most this often
 * while it keeps sending heartbeats. */
#define MEMBERSHIP_CANDIDATES 64
#define MEMBERSHIP_CANDIDATE_NS MEMBERSHIP_DOWN_NS
#define MEMBERSHIP_HELLO_RETRY_NS 100000000ull

typedef struct member {
  uint32_t inc;
  char name[ENVELOPE_NAME_MAX + 1];
  int up;
  uint64_t last_seen_ns;
  uint64_t counter;       /* of the newest heartbeat (or bye) taken from it */
  uint64_t down_ns;       /* when it went down */
  uint64_t probed_ns;     /* last "no responders" probe sent (see net.c) */
  uint64_t suspect_ns;    /* first "no responders" answer since last heard, or 0 */
  link link;              /* outbound, only while up (inbound: src/net/inbound.h) */
  unsigned char *outbox;  /* the batch of frames not yet published (net.c) */
  size_t out_len, out_cap, out_frames;
  uint64_t rto_ns;        /* the link's retransmit wait now (net.c; 0: the base) */
  uint64_t resent_ns;     /* its last resend */
} member;

/* An incarnation heard of, not yet a member: it was sent a hello with
 * nonce and becomes a member when it echoes it (a welcome). */
typedef struct candidate {
  uint32_t inc;
  char name[ENVELOPE_NAME_MAX + 1];
  uint64_t nonce;
  uint64_t counter;       /* of its newest heartbeat taken (0: none yet) */
  uint64_t heard_ns;      /* last heard (it is forgotten MEMBERSHIP_CANDIDATE_NS later) */
  uint64_t asked_ns;      /* its last hello */
} candidate;

typedef struct membership {
  member **v;
  size_t n, cap;
  candidate cand[MEMBERSHIP_CANDIDATES];
  size_t ncand;
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

/* The candidate inc (not one forgotten by now_ns), or NULL. */
candidate *membership_candidate(membership *ms, uint32_t inc, uint64_t now_ns);
/* Makes inc a candidate, to be met by its echo of nonce (not 0); the oldest
 * candidate makes room when they are MEMBERSHIP_CANDIDATES already. len is
 * 1 to ENVELOPE_NAME_MAX. Not for an inc that is a member or a candidate. */
candidate *membership_add_candidate(membership *ms, uint32_t inc, const char *name, size_t len, uint64_t nonce,
                                    uint64_t now_ns);
void membership_drop_candidate(membership *ms, candidate *c);

/* Calls each(m, ud) for every member, then forgets them all, candidates
 * too (a node that rejoins as a new incarnation starts afresh). */
void membership_reset(membership *ms, void (*each)(member *m, void *ud), void *ud);

#endif
