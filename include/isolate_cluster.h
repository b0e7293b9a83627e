/*
 * isolate_cluster — a cluster of Lua 5.4 isolates that talk by copied
 * MessagePack messages. The C interface (docs/c-api.md is its guide):
 * create a single-node cluster (or a node of a multi-node cluster over NATS,
 * ic_node_create), spawn Lua isolates (from source or a module name) with
 * MessagePack properties and native isolates (C handlers), send, request
 * with a timeout, receive and answer what isolates send to the program,
 * kill, look up and list paths, follow isolate up/down events, watch a file
 * descriptor from an event loop, read statistics, shut down.
 *
 * Conventions (as libuv's): functions return 0 or a negative IC_E* code;
 * ic_strerror() names it. Every function may be called from any thread
 * unless it says otherwise. Unless it says it blocks, a function returns at
 * once (it may take a short internal lock). Buffers passed in are copied
 * before the call returns (the caller keeps ownership); buffers handed out
 * are the caller's and are released with ic_free() (or the release function
 * named). On failure no output is set or handed out, unless the function
 * says otherwise.
 *
 * The C program plays the part the main Lua state plays in Lua: it has a ref
 * of its own (ic_cluster_main), messages it sends carry that ref as their
 * sender, and ic_receive / ic_receive_msg take the messages sent to it.
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
  IC_EREMOTE = -9,    /* the handler of a request raised an error */
  IC_ENET = -10,      /* multi-node: no NATS server could be reached (or it refused us) */
  IC_EUNREACHABLE = -11, /* multi-node: unknown node, or its retransmit window is full */
  IC_ETOOBIG = -12,   /* multi-node: too large to send (chunks over max_payload reach 32 MiB at most) */
  IC_EBUSY = -13,     /* another thread takes from the program's queues now
                         (ic_receive, ic_receive_msg, ic_request, ic_next_event) */
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

/* Gives every new Lua isolate's state the application's C functions.
 * L is the isolate's lua_State * (cast it: this header needs no lua.h);
 * the standard libraries are open, nothing of the isolate has run yet.
 * Typically: luaL_requiref(L, "mylib", luaopen_mylib, 0); lua_pop(L, 1);
 * or a package.preload entry. Called on the thread that boots the isolate
 * (any worker thread, several at once for different isolates: the hook
 * and ud must be thread-safe), inside a protected call: a Lua error it
 * raises, or a non-zero return, takes the isolate down with an "error: ..."
 * reason. It must not keep L, nor call this library's functions. */
typedef int (*ic_state_hook)(void *L, void *ud);

typedef struct ic_cluster_options {
  int workers;          /* worker threads; 0 = number of cores */
  size_t mailbox;       /* default mailbox capacity; 0 = 1,000,000 */
  double time_slice;    /* seconds a handler computes before preemption; 0 = 0.002 */
  ic_state_hook state_hook; /* or NULL */
  void *state_hook_ud;
} ic_cluster_options;

typedef struct ic_spawn_options {
  const char *path;     /* "/name", "/dir/" (unique segment appended) or NULL */
  int dedicated;        /* non-zero: the isolate gets an OS thread of its own */
  size_t mailbox;       /* 0 = the cluster's default */
  size_t memory_limit;  /* bytes of Lua heap; 0 = no limit */
  const char *node;     /* multi-node: the name of the node that runs the
                           isolate; NULL or this node's own name = here */
} ic_spawn_options;

/* Creates a cluster and starts its threads. opts may be NULL. On success
 * *out is the caller's, to be released with ic_cluster_destroy; on failure
 * *out is NULL. Errors: IC_EINVAL (NULL out, negative workers or
 * time_slice), IC_ENOMEM (also a thread that could not start). */
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
  const char *lua_path, *lua_cpath; /* package.path/cpath of the Lua isolates the
                                       program spawns here (ic_spawn_lua,
                                       ic_spawn_module) and of those other nodes
                                       spawn here; NULL = Lua's defaults */
} ic_node_options;

/* Creates this process's node of a multi-node cluster: connects, joins and
 * starts its threads (a process may hold several). On failure a message is
 * written to errbuf (if not NULL). Errors: IC_EINVAL (bad options: also a
 * NULL among the URLs, a negative or NaN connect_timeout), IC_ENET
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

/* The program's own ref (plain data); for a NULL c, {0, 0}, a ref of no
 * isolate. */
IC_EXTERN ic_ref ic_cluster_main(ic_cluster *c);

/* Spawns a Lua isolate whose entry function is what `source` (a Lua chunk,
 * len bytes, named chunkname in tracebacks) returns, e.g.
 *   "return function(context) context:on_message(function(m) return m end) end".
 * props: a MessagePack map (props_len bytes) or NULL. opts may be NULL.
 * On success *out (if not NULL) is the new isolate's ref. Errors: IC_EINVAL
 * (bad path, props not one MessagePack map), IC_EEXIST, IC_ESHUTDOWN,
 * IC_ENOMEM, IC_ESYSTEM. A chunk that does not compile or does not return a
 * function makes the isolate go down with an "error: ..." reason (see
 * ic_subscribe_events): the chunk is compiled by the new isolate, so this
 * call does not wait for it. */
IC_EXTERN int ic_spawn_lua(ic_cluster *c, const char *source, size_t len, const char *chunkname,
                           const char *props, size_t props_len, const ic_spawn_options *opts,
                           ic_ref *out);

/* The same with a module name: require(module) in the new isolate must
 * return the entry function.
 *
 * Both, with opts->node naming another node of a multi-node cluster
 * (docs/multinode.md): that node spawns the isolate (a module is found
 * through its own lua_path/lua_cpath) and *out is its ref there, usable at
 * once (messages sent to it queue behind the spawn). It is not linked to
 * the program: it lives until it stops, is killed or its node shuts down.
 * opts->node is only read during the call. The call does not wait for the
 * isolate to start there: a spawn that fails there is the isolate's down
 * event (ic_subscribe_events). It blocks only for an exact path "/name",
 * which is claimed from the live nodes first (as it is for a spawn here):
 * one round trip, at most 5 s. ic_spawn_lua sends Lua source, which needs
 * nodes created with allow_code and a secret (else IC_EINVAL). Further
 * errors: IC_EINVAL (opts->node on a single-node cluster), IC_EUNREACHABLE
 * (no live node has that name, or it is going down, or a node did not
 * answer the claim), IC_EEXIST (the path is held on any node),
 * IC_ETOOBIG, IC_ENOMEM, IC_ESHUTDOWN. */
IC_EXTERN int ic_spawn_module(ic_cluster *c, const char *module, const char *props, size_t props_len,
                              const ic_spawn_options *opts, ic_ref *out);

/* Sends one MessagePack value (len bytes, checked to be exactly one
 * well-formed value) to `to`, with the program's ref as its sender.
 * Errors: IC_EINVAL, IC_EDOWN, IC_EFULL, IC_ENOMEM; to another node's
 * isolate also IC_EUNREACHABLE and IC_ETOOBIG (a remote mailbox that is full
 * cannot refuse at once: that message becomes a dead letter there). Never
 * waits for room. */
IC_EXTERN int ic_send(ic_cluster *c, ic_ref to, const void *msgpack, size_t len);

/* Takes the next message sent to the program's ref, waiting up to timeout_s
 * (negative: until one comes or the cluster shuts down). On success *data
 * (MessagePack, the caller's: ic_free) and *len are set, and *sender if not
 * NULL. Errors: IC_ETIMEDOUT, IC_ESHUTDOWN, IC_ENOMEM, IC_EINVAL (a NaN
 * timeout). Blocks up to timeout_s. A request taken here cannot be answered
 * (use ic_receive_msg): its requester waits for its own timeout. Threads:
 * as ic_receive_msg. */
IC_EXTERN int ic_receive(ic_cluster *c, double timeout_s, char **data, size_t *len, ic_ref *sender);

/* A message taken by ic_receive_msg. data and len: the MessagePack value,
 * the caller's until ic_message_free. A request (is_request != 0) is
 * answered once, with ic_reply or ic_reply_error; the requester waits for
 * its own timeout if it never is. request_id is for this library only. */
typedef struct ic_message {
  char *data;
  size_t len;
  ic_ref sender;
  int is_request;
  uint64_t request_id;
} ic_message;

/* Takes the next message sent to the program's ref, as ic_receive, and
 * says whether it is a request (an isolate's `ref:request(x)` on a ref of
 * the program, e.g. one it was sent). On success *msg is filled (release it with
 * ic_message_free); on failure *msg is zeroed. Errors: IC_ETIMEDOUT,
 * IC_ESHUTDOWN, IC_ENOMEM (the message is lost), IC_EINVAL, IC_EBUSY. Blocks up to
 * timeout_s (negative: no limit). Threads: any, but one at a time with
 * ic_receive, ic_request and ic_next_event, which take from the same
 * queues of the program: while one of them runs on a thread, a call of
 * any of them from another thread returns IC_EBUSY at once (it neither
 * waits for the first nor disturbs it). */
IC_EXTERN int ic_receive_msg(ic_cluster *c, double timeout_s, ic_message *msg);

/* Releases msg->data and zeroes *msg (a NULL msg is ignored). */
IC_EXTERN void ic_message_free(ic_message *msg);

/* Answers the request msg with one MessagePack value (len bytes, copied).
 * On success msg->is_request is cleared (a second answer is IC_EINVAL).
 * Errors: IC_EINVAL (NULL, not a request or answered already, not exactly
 * one value), IC_EDOWN (the requester is down; msg counts as answered),
 * IC_ENOMEM. Any thread; does not block. */
IC_EXTERN int ic_reply(ic_cluster *c, ic_message *msg, const void *msgpack, size_t len);

/* Answers the request msg with an error: the requester's request raises
 * `text` (a NUL-terminated string, copied). Same errors as ic_reply. */
IC_EXTERN int ic_reply_error(ic_cluster *c, ic_message *msg, const char *text);

/* Sends one MessagePack value as a request to `to` and waits up to
 * timeout_s (negative: no limit) for the handler's answer (its first return
 * value). On IC_OK *reply is that value's MessagePack, *reply_len its
 * length. On IC_EREMOTE (the handler raised) and IC_EDOWN with a reason
 * (the isolate went down before answering: the text is
 * "isolate down: <reason>"), *reply is a NUL-terminated error text and
 * *reply_len its length. Either way *reply is the caller's (ic_free). On
 * every other error *reply is NULL and *reply_len 0: IC_EINVAL (NULL
 * arguments, not one value, NaN timeout, the program's own ref), IC_EDOWN
 * (down or unknown when sent), IC_EFULL, IC_ETIMEDOUT, IC_ESHUTDOWN (the
 * cluster shut down meanwhile), IC_ENOMEM, IC_EBUSY. Blocks the caller.
 * Threads: as ic_receive_msg; never from inside an isolate or a native
 * handler. */
IC_EXTERN int ic_request(ic_cluster *c, ic_ref to, const void *msgpack, size_t len, double timeout_s,
                         char **reply, size_t *reply_len);

/* The ref at path (on any live node of a multi-node cluster), waiting up to
 * wait_s (0: no wait) for it to be taken.
 * Errors: IC_ETIMEDOUT (not there; at once, without a wait, for a path no
 * isolate can hold: "/", "/dir/", "", "a"), IC_EINVAL (also a negative or
 * NaN wait_s), IC_ESHUTDOWN. Blocks up to wait_s. */
IC_EXTERN int ic_lookup(ic_cluster *c, const char *path, double wait_s, ic_ref *out);

/* The refs of the isolates whose path starts with prefix ("/workers/"), in
 * spawn order ("" lists every isolate with a path). On success *refs (the
 * caller's: ic_free; NULL when *n is 0) and *n are set; on failure neither is
 * touched. Errors: IC_EINVAL (a NULL argument), IC_ESHUTDOWN, IC_ENOMEM. */
IC_EXTERN int ic_lookup_prefix(ic_cluster *c, const char *prefix, ic_ref **refs, size_t *n);

/* Kills the isolate: it goes down with reason "killed" (at once if it runs
 * Lua code now, else at its next turn), its queued messages become dead
 * letters. Another node's isolate is killed there, through the link: IC_OK
 * says the kill is on its way (its down event follows). Errors: IC_EINVAL
 * (NULL, or the program's own ref), IC_EDOWN (already down, or of a node
 * that is not live). Does not block. */
IC_EXTERN int ic_kill(ic_cluster *c, ic_ref r);

/* ---- isolate and node up/down events -------------------------------------- */

enum { IC_EVENT_UP = 1, IC_EVENT_DOWN = 2, IC_EVENT_NODE_UP = 3, IC_EVENT_NODE_DOWN = 4 };

/* An isolate came up (its entry function returned) or went down, on this
 * node or (multi-node) on another; or (multi-node) another node joined the
 * cluster or left it. path, reason and node are NUL-terminated texts or
 * NULL, the caller's until ic_event_free.
 * - IC_EVENT_UP / IC_EVENT_DOWN: ref is the isolate's; path its path (NULL
 *   when it has none, and for another node's isolate once that node has
 *   forgotten it, as for most of their down events); reason (down only):
 *   "normal", "killed", "shutdown", "node down" (its node went down),
 *   "error: <message and traceback>" (a chunk that does not compile, an
 *   entry or a handler that raised)... as in Lua.
 * - IC_EVENT_NODE_UP / IC_EVENT_NODE_DOWN: ref is zero, path NULL; reason
 *   (down only): "left" (a clean shutdown), "unreachable" (no heartbeat
 *   within the failure-detection bound), "killed"... as on_node_down's.
 * node: the name of the node the event is about (for an isolate, the node
 * it lives on; NULL in a single-node cluster, or when no longer known). */
typedef struct ic_event {
  int kind;      /* IC_EVENT_UP, IC_EVENT_DOWN, IC_EVENT_NODE_UP or IC_EVENT_NODE_DOWN */
  ic_ref ref;
  char *path;    /* the isolate's path, or NULL */
  char *reason;  /* down events only, else NULL */
  char *node;    /* the node's name, or NULL */
} ic_event;

/* Starts recording events for the program: every isolate and node up and
 * down event from this call on, in the order they happened (an isolate's
 * down before its node's), for ic_next_event.
 * Idempotent. Events are kept until they are taken (take them, or they use
 * memory). Errors: IC_EINVAL, IC_ESHUTDOWN, IC_ENOMEM. Does not block (one
 * short lock). Any thread. */
IC_EXTERN int ic_subscribe_events(ic_cluster *c);

/* Takes the next event, waiting up to timeout_s (negative: no limit). On
 * success *ev is filled (release it with ic_event_free); on failure it is
 * zeroed. Errors: IC_EINVAL (NULL, NaN, not subscribed), IC_ETIMEDOUT,
 * IC_ESHUTDOWN (the cluster is down and every event was taken), IC_ENOMEM,
 * IC_EBUSY. Blocks up to timeout_s. Threads: as ic_receive_msg. */
IC_EXTERN int ic_next_event(ic_cluster *c, double timeout_s, ic_event *ev);

/* Releases ev's texts and zeroes *ev (NULL is ignored). */
IC_EXTERN void ic_event_free(ic_event *ev);

/* ---- native isolates --------------------------------------------------------
 *
 * An isolate whose handler is a C function. It has a ref, a path, a
 * mailbox, up/down events and monitors like a Lua isolate; it is scheduled
 * on the worker threads (or on a thread of its own with opts->dedicated)
 * and handles one message per call. It cannot be preempted: a handler must
 * return soon, and must never block (ic_request, ic_receive_msg, sleeping)
 * on a worker thread; it requests with ic_native_request, whose answer
 * comes in a later call. A kill or a shutdown takes it down between two
 * calls. Callbacks never run Lua and run one at a time per isolate, on the
 * thread running its turn (any worker thread; for on_down also the thread
 * of a shutdown).
 */
typedef struct ic_native ic_native; /* the running isolate, valid during a callback only */

/* A message for the isolate. msg->data is the library's, valid during the
 * call (copy what you keep). A request (msg->is_request) is answered with
 * ic_reply / ic_reply_error on *msg during the call; one left unanswered
 * is refused with "isolate down: <reason>" when the isolate goes down. To
 * answer later (e.g. from an ic_native_request callback), keep a copy of
 * *msg and its data and clear msg->is_request before returning: the
 * request is then the copy's to answer, and no longer refused for you. */
typedef void (*ic_native_handler)(ic_native *self, ic_message *msg, void *ud);

/* The isolate went down (reason "normal" after ic_native_stop, "killed",
 * "shutdown"): called once, last; free ud here. */
typedef void (*ic_native_down_fn)(void *ud, const char *reason);

/* The answer to ic_native_request, in a later call on the isolate's thread.
 * status IC_OK: data is the answer's MessagePack; IC_EREMOTE (the handler
 * raised) or IC_EDOWN (the isolate went down first): data is a
 * NUL-terminated error text; IC_ETIMEDOUT; IC_ESHUTDOWN: the requesting
 * isolate itself goes down first (data NULL). data is valid during the
 * call only. Called exactly once per accepted request. */
typedef void (*ic_native_reply_fn)(ic_native *self, int status, const char *data, size_t len, void *req_ud);

typedef struct ic_native_options {
  ic_native_handler on_message; /* required */
  ic_native_down_fn on_down;    /* or NULL */
  void *ud;                     /* given to both */
} ic_native_options;

/* Spawns a native isolate. opts (path, dedicated, mailbox; memory_limit is
 * ignored) may be NULL. On success *out (if not NULL) is its ref and
 * on_down will be called once; on failure no callback is ever called (ud
 * is still the caller's). Errors: IC_EINVAL (no on_message, bad path,
 * opts->node other than NULL or this node's name: it runs here), IC_EEXIST
 * (also held on another node), IC_ESHUTDOWN, IC_ENOMEM, IC_ESYSTEM,
 * IC_EUNREACHABLE (a node did not answer the path claim). Any thread. Does
 * not block, but in a multi-node cluster an exact path "/name" is first
 * claimed from the live nodes: one round trip, at most 5 s. */
IC_EXTERN int ic_spawn_native(ic_cluster *c, const ic_native_options *nopts, const ic_spawn_options *opts,
                              ic_ref *out);

/* The isolate's own ref, and its cluster (for ic_reply and the like);
 * {0, 0} and NULL for a NULL self. */
IC_EXTERN ic_ref ic_native_ref(ic_native *self);
IC_EXTERN ic_cluster *ic_native_cluster(ic_native *self);

/* As ic_send, with the native isolate as the sender. Errors as ic_send,
 * and IC_ESHUTDOWN when called from on_down's path (the isolate is going
 * down). Callbacks only; does not block. */
IC_EXTERN int ic_native_send(ic_native *self, ic_ref to, const void *msgpack, size_t len);

/* Sends a request from the native isolate; returns at once. On IC_OK, cb
 * is called once later (see ic_native_reply_fn) with req_ud; timeout_s
 * negative: no limit. On an error cb is never called: IC_EINVAL (NULL cb,
 * not one value, NaN, its own ref), IC_EDOWN, IC_EFULL, IC_ENOMEM,
 * IC_ESHUTDOWN. Callbacks only. */
IC_EXTERN int ic_native_request(ic_native *self, ic_ref to, const void *msgpack, size_t len, double timeout_s,
                                ic_native_reply_fn cb, void *req_ud);

/* The isolate goes down (reason "normal") once this callback returns; the
 * messages still queued become dead letters. Callbacks only. */
IC_EXTERN void ic_native_stop(ic_native *self);

/* ---- native isolates that Lua code spawns (and supervisors restart) --------
 *
 * A kind of native isolate registered by name: Lua code spawns one with
 * the entry `{ native = name }`, as in
 * `context:spawn_isolate({ native = "db" }, properties, opts)` (or the
 * cluster's), and a supervisor child spec `{ native = name, path = ...,
 * properties = ..., restart = ... }` starts one and starts a new one each
 * time it is restarted, exactly as a Lua child. Each spawn calls the factory for that
 * one isolate's callbacks and ud. */

/* Makes one native isolate of a kind: fills *out (on_message required,
 * on_down, ud) from props (the spawn's properties as a MessagePack map, or
 * NULL with props_len 0; valid during the call) and returns 0. A non-zero
 * return, or no on_message, refuses the spawn (the Lua call raises with
 * the kind's name); nothing of *out is called then. When the spawn fails
 * after the factory succeeded (a path in use...), out->on_down is called
 * with reason "error: spawn failed" so that ud is freed. Called on the
 * spawning thread (a worker running the spawning isolate, or the thread of
 * a Lua main state; several at once: factory_ud must be thread-safe); it
 * must return soon and must not call this library. */
typedef int (*ic_native_factory)(void *factory_ud, const char *props, size_t props_len, ic_native_options *out);

/* Registers the kind `name` (1-64 bytes, copied) with its factory; it stays
 * registered until ic_cluster_destroy, which does not touch factory_ud.
 * Errors: IC_EINVAL (NULL, empty or long name), IC_EEXIST (the name is
 * registered already), IC_ESHUTDOWN, IC_ENOMEM. Any thread; does not
 * block. Kinds are of this node: a spawn on another node cannot name one. */
IC_EXTERN int ic_register_native(ic_cluster *c, const char *name, ic_native_factory factory, void *factory_ud);

/* ---- the runtime's log ------------------------------------------------------ */

/* Receives one log line (NUL-terminated, no newline): an isolate that went
 * down with an error and its traceback, a failed on_shutdown handler... */
typedef void (*ic_log_callback)(void *ud, const char *line);

/* Where the runtime's log lines go: fn(ud, line), or stderr with fn NULL
 * (the default). A function that does nothing discards them. fn is called
 * on whichever thread logs (a worker, a shutdown's), one line at a time
 * (under a lock: it must return soon and must not call this library); it
 * stays in place after a shutdown, until ic_cluster_destroy. Errors:
 * IC_EINVAL. Does not block. */
IC_EXTERN int ic_cluster_set_log(ic_cluster *c, ic_log_callback fn, void *ud);

/* ---- event loops ----------------------------------------------------------- */

/* A file descriptor for poll/epoll/libuv: readable when the program may
 * have something to take (a message for ic_receive_msg, an event for
 * ic_next_event). When it polls readable, take with a timeout of 0 until
 * IC_ETIMEDOUT: a take that finds nothing is what arms the fd again (it may
 * then poll readable once with nothing to take). Never read or close it
 * yourself: the cluster owns it and closes it in ic_cluster_destroy. The
 * same fd on every call. Returns the fd (>= 0), IC_EINVAL or IC_ESYSTEM
 * (no eventfd). Any thread; does not block. Until the first call, the
 * cluster does no system call for it. */
IC_EXTERN int ic_cluster_fd(ic_cluster *c);

/* A cluster's counters, as cluster:stats() in Lua. */
typedef struct ic_stats {
  uint64_t isolates;     /* registered and not yet down (the program's own ref excluded) */
  uint64_t spawned;      /* since the cluster was created */
  uint64_t dead_letters; /* messages that reached no handler: queued to an isolate that went down */
  int workers;
} ic_stats;

/* Fills *out. Errors: IC_EINVAL. Does not block (one short lock). */
IC_EXTERN int ic_cluster_stats(ic_cluster *c, ic_stats *out);

/* One isolate's row, as cluster:stats().rows in Lua. */
typedef struct ic_isolate_stats {
  ic_ref ref;
  const char *path;      /* NULL when it has none */
  const char *state;     /* "running" (queued or in a turn), "waiting" (its handler
                            waits for a reply, a timer or a message), "idle" */
  const char *kind;      /* "lua", "dedicated" (a Lua isolate with its own thread), "native" */
  uint64_t mailbox;      /* messages queued */
  uint64_t messages_in;  /* taken from its mailbox */
  uint64_t messages_out; /* sent by it */
  uint64_t memory;       /* bytes of Lua heap in use as of its last turn */
  double run_seconds;    /* time spent running its code */
} ic_isolate_stats;

/* A row per live isolate (the program's own ref and the runtime's hidden
 * isolates excluded), in spawn order. On success *rows (NULL when *n is 0)
 * and *n are set; the rows and their texts are the caller's until
 * ic_isolate_stats_free. On failure neither is touched. Errors: IC_EINVAL,
 * IC_ENOMEM. Any thread; does not block (one short lock to list the
 * isolates; each isolate's counters are read without one). The numbers of
 * an isolate running now may be a turn behind. */
IC_EXTERN int ic_cluster_isolate_stats(ic_cluster *c, ic_isolate_stats **rows, size_t *n);
IC_EXTERN void ic_isolate_stats_free(ic_isolate_stats *rows, size_t n);

/* Bytes of a ref as a MessagePack value (the ext type Lua isolates read as a
 * ref): put them where a value goes in a message, e.g. as a map value. */
#define IC_REF_MSGPACK_SIZE 15

/* Writes r as a MessagePack value into buf (at least IC_REF_MSGPACK_SIZE
 * bytes); returns the number of bytes written (IC_REF_MSGPACK_SIZE), 0 for
 * a NULL buf. */
IC_EXTERN size_t ic_ref_encode(char *buf, ic_ref r);

/* Reads a ref value at data[0..len) (as ic_ref_encode writes it, or any
 * MessagePack ext encoding of type 1 with a 12-byte payload). Returns the
 * number of bytes it took, or 0 when data does not start with a ref. */
IC_EXTERN size_t ic_ref_decode(const char *data, size_t len, ic_ref *out);

/* Releases a buffer handed out by this library (NULL is ignored). */
IC_EXTERN void ic_free(void *p);

#ifdef __cplusplus
}
#endif

#endif
