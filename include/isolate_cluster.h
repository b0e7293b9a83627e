/*
 * isolate_cluster — a cluster of Lua 5.4 isolates that talk by copied
 * MessagePack messages. The C interface: create a single-node cluster (or a
 * node of a multi-node cluster over NATS, ic_node_create), spawn
 * Lua isolates (from source or from a module name) with MessagePack
 * properties, send MessagePack messages to them, receive the messages sent to
 * the program's own ref, look up paths, shut down.
 *
 * Conventions (as libuv's): functions return 0 or a negative IC_E* code;
 * ic_strerror() names it. Every function may be called from any thread
 * unless it says otherwise. Buffers passed in are copied before the call
 * returns (the caller keeps ownership); buffers handed out are the caller's
 * and are released with ic_free().
 *
 * The C program plays the part the main Lua state plays in Lua: it has a ref
 * of its own (ic_cluster_main), messages it sends carry that ref as their
 * sender, and ic_receive takes the messages sent to it.
 *
 * This header needs no Lua header.
 */
#ifndef ISOLATE_CLUSTER_H
#define ISOLATE_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define IC_EXTERN __attribute__((visibility("default")))
#else
#define IC_EXTERN
#endif

/* Error codes (negative). */
enum {
  IC_OK = 0,
  IC_EINVAL = -1,     /* a bad argument: NULL, bad path, not a MessagePack map... */
  IC_ENOMEM = -2,     /* out of memory */
  IC_EDOWN = -3,      /* the isolate is down (or of another node) */
  IC_EFULL = -4,      /* its mailbox is full */
  IC_EEXIST = -5,     /* the path is already in use */
  IC_ETIMEDOUT = -6,  /* nothing came in time */
  IC_ESHUTDOWN = -7,  /* the cluster is shutting down or shut down */
  IC_ESYSTEM = -8,    /* a thread could not be started */
  IC_ENET = -9,       /* multi-node: no NATS server could be reached (or it refused us) */
  IC_EUNREACHABLE = -10, /* multi-node: unknown node, or its retransmit window is full */
  IC_ETOOBIG = -11,   /* multi-node: larger than the NATS server's max_payload */
};

/* Names an error code ("isolate down", ...). Never NULL. */
IC_EXTERN const char *ic_strerror(int err);

typedef struct ic_cluster ic_cluster;

/* Names an isolate anywhere in a cluster: the node part and the isolate's
 * number within that node. Plain data: copy it freely. */
typedef struct ic_ref {
  uint32_t node;
  uint64_t id;
} ic_ref;

typedef struct ic_cluster_options {
  int workers;          /* worker threads; 0 = number of cores */
  size_t mailbox;       /* default mailbox capacity; 0 = 1,000,000 */
  double time_slice;    /* seconds a handler computes before preemption; 0 = 0.002 */
} ic_cluster_options;

typedef struct ic_spawn_options {
  const char *path;     /* "/name", "/dir/" (unique segment appended) or NULL */
  int dedicated;        /* non-zero: the isolate gets an OS thread of its own */
  size_t mailbox;       /* 0 = the cluster's default */
  size_t memory_limit;  /* bytes of Lua heap; 0 = no limit */
} ic_spawn_options;

/* Creates a cluster and starts its threads. opts may be NULL. On success
 * *out is the caller's, to be released with ic_cluster_destroy. */
IC_EXTERN int ic_cluster_create(const ic_cluster_options *opts, ic_cluster **out);

/* A node of a multi-node cluster (docs/multinode.md). Strings are copied. */
typedef struct ic_node_options {
  const char *const *nats;  /* NATS server URLs (servers of one NATS cluster) */
  int nats_count;
  const char *cluster;      /* the cluster's name: 1-64 of [A-Za-z0-9_-] */
  const char *name;         /* this node's name, unique among the live nodes: likewise */
  const char *user, *password, *token; /* NULL = none */
  const char *secret;       /* authenticates node traffic; NULL = none */
  size_t secret_len;
  int allow_code;           /* accept Lua functions from other nodes (needs secret) */
  double connect_timeout;   /* seconds; 0 = 2 */
  const char *lua_path, *lua_cpath; /* package.path/cpath of isolates other nodes
                                       spawn here by module name; NULL = Lua's defaults */
} ic_node_options;

/* Creates this process's node of a multi-node cluster: connects, joins and
 * starts its threads (a process may hold several). On failure a message is
 * written to errbuf (if not NULL). Errors: IC_EINVAL (bad options), IC_ENET
 * (no server, refused credentials, a live node has the name), IC_ENOMEM.
 * Refs of other nodes' isolates work with ic_send and ic_lookup like local
 * ones. */
IC_EXTERN int ic_node_create(const ic_cluster_options *opts, const ic_node_options *node, ic_cluster **out,
                             char *errbuf, size_t errlen);

/* Shuts the cluster down: runs on_shutdown handlers, stops every isolate,
 * joins every thread. Returns 1 if everything finished within timeout_s,
 * 0 if not (handlers still computing were interrupted), IC_EINVAL for a
 * negative or NaN timeout. Blocks the caller, never past its own deadline
 * (plus a small margin), also while a shutdown asked for by an isolate runs.
 * Must not be called from inside an isolate. */
IC_EXTERN int ic_cluster_shutdown(ic_cluster *c, double timeout_s);

/* Shuts down (5 s) if that has not happened yet and releases the caller's
 * handle. Refs stay plain data; using c afterwards is undefined. */
IC_EXTERN void ic_cluster_destroy(ic_cluster *c);

/* The program's own ref. */
IC_EXTERN ic_ref ic_cluster_main(ic_cluster *c);

/* Spawns a Lua isolate whose entry function is what `source` (a Lua chunk,
 * len bytes, named chunkname in tracebacks) returns, e.g.
 *   "return function(context) context:on_message(function(m) return m end) end".
 * props: a MessagePack map (props_len bytes) or NULL. opts may be NULL.
 * On success *out (if not NULL) is the new isolate's ref. Errors: IC_EINVAL
 * (bad path, props not one MessagePack map), IC_EEXIST, IC_ESHUTDOWN,
 * IC_ENOMEM, IC_ESYSTEM. A chunk that does not compile or does not return a
 * function makes the isolate go down with an "error: ..." reason. */
IC_EXTERN int ic_spawn_lua(ic_cluster *c, const char *source, size_t len, const char *chunkname,
                           const char *props, size_t props_len, const ic_spawn_options *opts,
                           ic_ref *out);

/* The same with a module name: require(module) in the new isolate must
 * return the entry function. */
IC_EXTERN int ic_spawn_module(ic_cluster *c, const char *module, const char *props, size_t props_len,
                              const ic_spawn_options *opts, ic_ref *out);

/* Sends one MessagePack value (len bytes, checked to be exactly one
 * well-formed value) to `to`, with the program's ref as its sender.
 * Errors: IC_EINVAL, IC_EDOWN, IC_EFULL, IC_ENOMEM; to another node's
 * isolate also IC_EUNREACHABLE and IC_ETOOBIG (a remote mailbox that is full
 * cannot refuse at once: that message becomes a dead letter there). */
IC_EXTERN int ic_send(ic_cluster *c, ic_ref to, const void *msgpack, size_t len);

/* Takes the next message sent to the program's ref, waiting up to timeout_s
 * (negative: until one comes or the cluster shuts down). On success *data
 * (MessagePack, the caller's: ic_free) and *len are set, and *sender if not
 * NULL. Errors: IC_ETIMEDOUT, IC_ESHUTDOWN, IC_ENOMEM, IC_EINVAL (a NaN
 * timeout). Call it from one thread at a time. */
IC_EXTERN int ic_receive(ic_cluster *c, double timeout_s, char **data, size_t *len, ic_ref *sender);

/* The ref at path (on any live node of a multi-node cluster), waiting up to
 * wait_s (0: no wait) for it to be taken.
 * Errors: IC_ETIMEDOUT (not there), IC_EINVAL (also a negative or NaN
 * wait_s), IC_ESHUTDOWN. */
IC_EXTERN int ic_lookup(ic_cluster *c, const char *path, double wait_s, ic_ref *out);

/* The refs of the isolates whose path starts with prefix ("/workers/"), in
 * spawn order ("" lists every isolate with a path). On success *refs (the
 * caller's: ic_free; NULL when *n is 0) and *n are set; on failure neither is
 * touched. Errors: IC_EINVAL (a NULL argument), IC_ESHUTDOWN, IC_ENOMEM. */
IC_EXTERN int ic_lookup_prefix(ic_cluster *c, const char *prefix, ic_ref **refs, size_t *n);

/* Kills the isolate: it goes down with reason "killed" (at once if it runs
 * Lua code now, else at its next turn), its queued messages become dead
 * letters. Errors: IC_EINVAL (NULL, or the program's own ref), IC_EDOWN
 * (already down, or of another node). Does not block. */
IC_EXTERN int ic_kill(ic_cluster *c, ic_ref r);

/* A cluster's counters, as cluster:stats() in Lua. */
typedef struct ic_stats {
  uint64_t isolates;     /* registered and not yet down (the program's own ref excluded) */
  uint64_t spawned;      /* since the cluster was created */
  uint64_t dead_letters; /* messages that reached no handler: queued to an isolate that went down */
  int workers;
} ic_stats;

/* Fills *out. Errors: IC_EINVAL. Does not block (one short lock). */
IC_EXTERN int ic_cluster_stats(ic_cluster *c, ic_stats *out);

/* Bytes of a ref as a MessagePack value (the ext type Lua isolates read as a
 * ref): put them where a value goes in a message, e.g. as a map value. */
#define IC_REF_MSGPACK_SIZE 15

/* Writes r as a MessagePack value into buf (at least IC_REF_MSGPACK_SIZE
 * bytes); returns the number of bytes written (IC_REF_MSGPACK_SIZE). */
IC_EXTERN size_t ic_ref_encode(char *buf, ic_ref r);

/* Reads a ref value at data[0..len) (as ic_ref_encode writes it, or any
 * MessagePack ext encoding of type 1 with a 12-byte payload). Returns the
 * number of bytes it took, or 0 when data does not start with a ref. */
IC_EXTERN size_t ic_ref_decode(const char *data, size_t len, ic_ref *out);

/* Releases a buffer handed out by this library. */
IC_EXTERN void ic_free(void *p);

#ifdef __cplusplus
}
#endif

#endif
