/*
 * node — the inside of a node's net (src/net/net.h), shared by the files
 * that implement it: net.c (lifecycle, the net thread, membership, links,
 * replication, delivery), claims.c (path claims) and interop.c (plain NATS
 * clients on path subjects). Not part of the core's interface: the core
 * includes net.h only. Functions here are named net__* (internal).
 *
 * Locks: as in net.h (net->lock guards the membership, the links, the
 * claims and the interop slots; never held while taking c->lock).
 */
#ifndef IC_NET_NODE_H
#define IC_NET_NODE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>
#include <nats/nats.h>

#include "cluster.h"
#include "envelope.h"
#include "inbound.h"
#include "kin.h"
#include "membership.h"
#include "net.h"
#include "paths.h"
#include "reasm.h"
#include "transport.h"

/* Retransmit window per link: a send past it is refused ("node unreachable"). */
#define WINDOW_FRAMES 65536
#define WINDOW_BYTES (64u << 20)
/* A frame unacked this long is sent again (with every later one). Each
 * resend without progress doubles the wait for that link, up to
 * RETRANSMIT_MAX_NS; an ack that moves on brings it back: a receiver slow to
 * catch up is not buried under copies of what it has not read yet. */
#define RETRANSMIT_NS 300000000ull
#define RETRANSMIT_MAX_NS 2400000000ull
/* The net thread sends due acks this often while it works through its
 * queue, and at most this often otherwise (but at once when the data
 * callback asks, after ACK_EVERY frames): an ack wakes the peer's net
 * thread, and acks sent at each wake-up would bounce between two nodes as
 * long as any traffic flows, each costing both nodes a wake-up of their
 * net thread and a message. A held ack goes out this long after the last. */
#define ACK_INTERVAL_NS 10000000ull
/* A duplicate ack resends at once what is older than this (fast
 * retransmit: a peer that dropped frames, e.g. a joiner that got them before
 * it knew the sender, says so by acking what it has), unless the link
 * resent less than half its current wait ago. */
#define FAST_RETRANSMIT_NS 20000000ull
/* ic.node waits this long after its first heartbeat to meet the live nodes
 * (they answer at once) and receive their isolates before it returns, so a
 * path it claims right away is checked against theirs. */
#define JOIN_WINDOW_NS 250000000ull
/* A claim asks the nodes this node knows. Two nodes that start together can
 * each miss the other's first heartbeat and would then not ask each other
 * (each would be granted by the others and both would own the path). So no
 * claim goes out before one heartbeat period after the join window, plus a
 * margin: by then every node that started with this one has been heard from
 * (its periodic heartbeat), and rival claims meet the name tie-break. */
#define CLAIM_SETTLE_NS (JOIN_WINDOW_NS + MEMBERSHIP_HEARTBEAT_NS + 250000000ull)
/* Data frames to one peer are gathered into one NATS message (a batch:
 * 'I' 'B' then [u32 length][frame]...), published by the net thread as soon
 * as it runs (a sender wakes it), or by the sender once a batch is this big:
 * fewer writes and fewer messages for the server and the receiver. */
#define BATCH_MAGIC0 'I'
#define BATCH_MAGIC1 'B'
#define BATCH_MAX (60u << 10)
/* The receiver asks the net thread for an ack at once after this many
 * accepted frames (otherwise the ack goes with its next tick, at most
 * TICK_NS later): the sender's window empties well before it fills. */
#define ACK_EVERY 4096
/* The tag of a data subject message the data subscription's callback hands
 * to the net thread (transport_enqueue), see struct net's `deferred`. */
#define TAG_DEFERRED 1
/* The net thread's tick. */
#define TICK_NS 50000000ull
/* Inbound frames handled before the thread looks at its timers again. */
#define BATCH 4096
#define DEFAULT_CONNECT_TIMEOUT 2.0
/* A clean stop waits at most this long for the peers' acks (drain_links). */
#define STOP_DRAIN_SECONDS 2.0
#define SUBJECT_MAX 256

/* The node part of the ref that stands for a plain NATS client's request
 * (interop): its id names the reply subject in net->interop. Never an
 * incarnation (new_incarnation avoids it). */
#define INTEROP_NODE 0xFFFFFFFFu
/* Interop requests waiting for their reply, at most (the oldest are
 * forgotten: their clients have long timed out). */
#define INTEROP_MAX 65536

/* Kinds of data frames between nets only (beyond the MSG_* kinds). */
enum { NET_ISO_UP = 20, NET_ISO_DOWN = 21, NET_SPAWN = 22, NET_CLAIM = 23, NET_CLAIM_REPLY = 24, NET_CHUNK = 25,
       NET_KILL = 26 };

/* Messages over the server's max_payload travel in chunks (chunks.c): at
 * most this large, and the partial messages of all peers together hold at
 * most REASSEMBLY_MAX bytes at a receiver. */
#define CHUNKED_MAX (32u << 20)
#define REASSEMBLY_MAX (128u << 20)
/* A partial message whose chunks stopped coming this long ago, while its
 * peer stays live (a silent peer is down after MEMBERSHIP_DOWN_NS, and its
 * partial message goes with it), is dropped. */
#define REASSEMBLY_IDLE_NS (30ull * 1000000000ull)


/* A path claim of this node (see net_claim), guarded by net->lock. */
typedef struct claim {
  char *path;
  uint64_t id;
  int granted;        /* the round is over and won: held until net_claim_done */
  int denied;
  uint32_t *waiting;  /* incarnations whose answer is awaited */
  size_t nwaiting;
  struct claim *next;
} claim;

struct net {
  ic_cluster *c;        /* not retained: the cluster owns the net */
  transport *t;         /* NULL once stopped (guarded by lock) */
  char *cluster_name, *name;
  char hb_subject[SUBJECT_MAX], data_subject[SUBJECT_MAX], path_subject[SUBJECT_MAX];
  char probe_subject[SUBJECT_MAX]; /* "ic.<cluster>.probe.<name>." + ">" */
  size_t probe_prefix_len;
  size_t path_prefix_len;   /* "ic.<cluster>.path." */
  unsigned char *secret;
  envelope_key key;
  char *lua_path, *lua_cpath; /* for isolates spawned here by other nodes */
  int code_ok;          /* allow_code and a secret */
  uint32_t inc;
  int64_t max_payload;
  atomic_ullong spawn_seq;  /* "/dir/" segments of spawns on other nodes */
  atomic_ullong counter;    /* of this node's heartbeats and byes (envelope.h) */
  atomic_int name_taken;    /* a live node of another incarnation has our name */
  atomic_int flush_wanted;  /* a batch waits for the net thread to publish it */
  atomic_int ack_wanted;    /* the data callback asked for acks now */

  /* Data frames are delivered by the data subscription's cnats callback
   * (on_data in net.c) straight into the receivers' mailboxes: frame and
   * sequence checks, duplicate suppression, a payload check in C
   * (wirecheck.h). A frame it cannot finish there (another kind, a payload
   * only the full decoder can judge, a full mailbox) goes with the rest of
   * its NATS message to the net thread (TAG_DEFERRED), and so does every
   * data message after it until the net thread has handled them all:
   * `deferred` counts those queued, and while it is not 0 the callback
   * delivers nothing itself, so one peer's frames are delivered in order
   * by one thread at a time. */
  inbound in;
  atomic_int deferred;
  /* Isolates whose last reference the data callback held: the net thread
   * lets go of them (release_from_callback in net.c). A stack through
   * ic_isolate's late_next. */
  _Atomic(struct ic_isolate *) late_release;
  reasm reasm;              /* chunked messages in progress (net thread only) */
  atomic_int rx_closed;     /* stopping: the callback drops data */
  int transport_leaked;     /* cnats kept callbacks past the close: n must stay */

  plat_mutex lock;
  membership ms;
  paths replica;            /* the other nodes' isolates (own lock) */
  /* Interop requests waiting for a reply (guarded by lock): a ring of
   * reply subjects; slot id k lives at interop[k % INTEROP_MAX]. */
  char **interop;
  uint64_t interop_next;
  claim *claims;            /* this node's claims in progress or held (lock) */
  /* Children across nodes (src/net/kin.h; lock): those this node's
   * isolates spawned elsewhere (inc, child id -> creator id) and those
   * other nodes' isolates spawned here (inc, creator id -> child id). */
  kin kids_out, kids_in;
  uint64_t claim_seq;
  plat_cond claims_cond;    /* an answer came, or a node went down */
  uint64_t claims_from_ns;  /* set once before the net thread starts: no claim asks before this */

  plat_thread thread;
  int has_thread;
  atomic_int stop;
  /* Net thread only: */
  uint64_t connected_since; /* 0 while disconnected */
  uint64_t seen_reconnects;
  int handing_over;         /* handling a message the data callback handed over */
  uint64_t last_acks_ns;    /* send_acks last ran */
  lua_State *vL;            /* the payload checker's state */
};

/* The data subject of node `name`. */
void net__peer_subject(const struct net *n, const char *name, char *out);
/* Does the payload decode under the limits (functions only with code_ok)? Net thread. */
int net__payload_ok(struct net *n, const char *data, size_t len, int code_ok);
/* Frames and queues one data frame to m (net->lock held); takes frame on success. */
const char *net__send_locked(struct net *n, member *m, unsigned char *frame, int kind, uint64_t to_id,
                             uint64_t corr, uint64_t from_id, const char *data, size_t len);
/* Sends kind with payload to one member (inc), or to every live one (0). */
void net__send_to_members(struct net *n, uint32_t inc, int kind, uint64_t id, const char *data, size_t len);
/* The refusal of a message of len payload bytes over max_payload, or NULL. */
const char *net__too_large(struct net *n, size_t len);
/* Delivers a checked message, request or reply from a peer to its local
 * receiver, or refuses it (dead letter, error reply). Net thread. */
void net__deliver(struct net *n, const envelope *e);
/* Sends an error reply (a MessagePack string) to requester of node `node`. */
void net__reply_error_to_remote(struct net *n, uint32_t node, uint64_t requester, uint64_t corr, uint64_t from_id,
                                const char *why);
/* Posts an error reply (a MessagePack string) to local requester `requester`. */
void net__reply_error_to_local(ic_cluster *c, uint64_t requester, uint64_t corr, const char *why);

/* chunks.c: does a payload of len bytes need chunks? */
int net__chunked(const struct net *n, size_t len);
/* Sends it in chunks to m (net->lock held); NULL or why not (nothing sent). */
const char *net__send_chunked(struct net *n, member *m, int kind, uint64_t to_id, uint64_t corr, uint64_t from_id,
                              const char *data, size_t len);
/* A NET_CHUNK frame arrived in sequence (net thread): returns the message's
 * kind when it completed it (and delivered or refused it), else 0. */
int net__chunk_arrived(struct net *n, const envelope *e);
/* Peer inc went: its partial message is dropped. Net thread. */
void net__chunks_forget(struct net *n, uint32_t inc);
/* Drops (refused: a dead letter or an error reply) the partial messages
 * whose chunks stopped coming REASSEMBLY_IDLE_NS ago. Net thread. */
void net__chunks_expire(struct net *n, uint64_t now);

/* claims.c */
void net__claims_forget(struct net *n, uint32_t inc);
void net__answer_claim(struct net *n, const envelope *e);
void net__claim_answered(struct net *n, const envelope *e);

/* interop.c */
const char *net__interop_reply(struct net *n, uint64_t slot, int kind, const char *data, size_t len);
void net__handle_interop(struct net *n, natsMsg *msg, const char *subject);

#endif
