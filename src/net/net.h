/*
 * net — a node of a multi-node cluster: the one narrow interface between the
 * core and the network side (transport, link, membership). The core calls
 * it only for a ref whose node part is not this node's; a single-node
 * cluster has no net (c->net == NULL) and never comes here.
 *
 * The net owns one thread, the net thread, which alone reads the
 * transport's inbound queue: it runs membership (heartbeats, failure
 * detection), acks and retransmissions, checks every payload with the
 * hardened decoder (in a lua_State of its own, touched by no other thread)
 * and posts what passes into the receivers' mailboxes, in the order each
 * link delivers it. Senders (any thread) frame, window and publish their
 * message under net->lock, so the frames of a link leave in sequence order.
 *
 * Locks: net->lock guards the membership and every link. It is never held
 * while taking c->lock or posting to an isolate.
 */
#ifndef IC_NET_NET_H
#define IC_NET_NET_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct ic_cluster;
struct net;

typedef struct net_opts {
  const char **urls;          /* NATS server URLs, at least one */
  int nurls;
  const char *cluster;        /* cluster name: a NATS subject token */
  const char *name;           /* node name */
  const char *user, *password, *token;
  const char *tls_ca, *tls_cert, *tls_key;
  const char *secret;         /* NULL = node traffic is not authenticated */
  size_t secret_len;
  int allow_code;             /* accept Lua functions from other nodes (needs secret) */
  double connect_timeout;     /* seconds; 0 = default */
  const char *lua_path, *lua_cpath; /* package.path/cpath for isolates other
                                 nodes spawn here (NULL = Lua's defaults) */
} net_opts;

/* Validates the options, connects, subscribes, starts the net thread and
 * announces the node. Sets c->node_id to the node's incarnation. Returns
 * the net, or NULL with a message in err. Main thread, once per cluster. */
struct net *net_start(struct ic_cluster *c, const net_opts *o, char *err, size_t errlen);
/* Waits for the peers' acks, says bye, stops the net thread, closes the
 * connection, all by until (monotonic ns; the shutdown's own bound), give or
 * take the bye's brief flush. Idempotent; after it every send refuses.
 * Called by cluster_shutdown. */
void net_stop(struct net *n, uint64_t until);
void net_free(struct net *n);

/* Frames and sends a message of kind (MSG_USER, MSG_REQUEST, MSG_REPLY,
 * MSG_REPLY_ERROR) to isolate to_id of node incarnation `node`, from local
 * isolate from_id. The bytes are copied. Returns NULL when the link has
 * accepted it (it will arrive exactly once while both nodes live), or why
 * not: "isolate down" (that node is down), "node unreachable" (unknown
 * node, or its retransmit window is full), "message too large...". Any
 * thread. */
const char *net_send(struct net *n, uint32_t node, uint64_t to_id, int kind, uint64_t corr,
                     uint64_t from_id, const char *data, size_t len);

/* Replication of this node's isolates to the others (src/net/paths.h).
 * Called by the cluster under c->lock, so that an isolate's up always
 * leaves before its down. iso is up and not hidden. */
struct ic_isolate;
void net_announce_up(struct net *n, struct ic_isolate *iso);
void net_announce_down(struct net *n, struct ic_isolate *iso, const char *reason);

/* The replica of the other nodes' isolates. Any thread. */
/* Is (node, id) possibly up: not known down, and of a live node? */
int net_remote_alive(struct net *n, uint32_t node, uint64_t id);
int net_find_path(struct net *n, const char *path, uint32_t *node, uint64_t *id);
int net_path_taken(struct net *n, const char *path);
char *net_path_of(struct net *n, uint32_t node, uint64_t id);           /* malloc'ed or NULL */
struct ic_blob *net_props_of(struct net *n, uint32_t node, uint64_t id); /* retained or NULL */
/* (node, id) pairs of the remote isolates whose path starts with prefix
 * (NULL: every remote isolate that is up);
 * malloc'ed arrays, *count set; 0 or -1 when out of memory. */
int net_prefix(struct net *n, const char *prefix, uint32_t **nodes, uint64_t **ids, size_t *count);

/* Asks node `name` to spawn an isolate (SPEC §5 opts.node): boot is the
 * encoded entry (a module name, or a function when code is allowed), props
 * a MessagePack map or NULL, path "/name", "/dir/" or NULL. The request is
 * queued on the reliable link like a message. Returns NULL with the new
 * isolate's ref in *node, *id (this node chose the id, so the ref is usable
 * at once: messages sent to it queue behind the spawn), or why not. If the
 * spawn fails there, the isolate's down event says why. Any thread.
 *
 * linked: the new isolate is a child of local isolate creator_id, as a
 * local child is (src/isolate.h): that node shuts it down when the creator
 * goes down or this node does, and its down reaches the creator as a
 * CONTROL_CHILD_DOWN (the caller counts it among the creator's live
 * children when this returns NULL). */
const char *net_spawn(struct net *n, const char *name, uint64_t creator_id, int linked, const char *boot,
                      size_t boot_len, const char *props, size_t props_len, const char *path, size_t mailbox_cap,
                      size_t memory_limit, int dedicated, uint32_t *node, uint64_t *id);

/* Kills isolate id of node incarnation `node` there (reason "killed"),
 * through the link. NULL when the kill is on its way (the isolate's down
 * event follows), or why not: "isolate down" (known down, or of a node that
 * is not live). Any thread. */
const char *net_kill(struct net *n, uint32_t node, uint64_t id);
/* The claim round for an exact path "/name" (docs/multinode.md, "Claims"):
 * asks every live node and waits for their answers, or for the silent ones
 * to be declared down, at most timeout_s. Returns NULL when the path is
 * this node's to register, "path in use", "no answer" (a node neither
 * answered nor was declared down in time), or "interrupted" (*interrupt,
 * when not NULL, became set: the main state's Ctrl-C, looked at every
 * 50 ms). A granted claim holds the path against other nodes' claims until
 * net_claim_done, which the caller must call once it has registered the
 * isolate (or failed to). Blocks the calling thread for one round trip.
 * Any thread but the net thread. */
const char *net_claim(struct net *n, const char *path, double timeout_s, atomic_int *interrupt);
void net_claim_done(struct net *n, const char *path);

/* Lua functions may cross between the nodes (allow_code and a secret). */
int net_code_ok(const struct net *n);
/* The node's package.path and package.cpath for the isolates it spawns
 * that no Lua state spawns (NULL: Lua's defaults). Any thread. */
const char *net_lua_path(const struct net *n);
const char *net_lua_cpath(const struct net *n);

/* Copies the name of node incarnation `node` into buf (this node included);
 * 0, or -1 when unknown. Any thread. */
int net_node_name(struct net *n, uint32_t node, char *buf, size_t len);
const char *net_self_name(const struct net *n);
/* Sorted, malloc'ed array of the live nodes' names (this one included);
 * the caller frees each and the array. NULL when out of memory. */
char **net_nodes(struct net *n, size_t *count);

#endif
