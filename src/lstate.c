#include "lstate.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "pool.h"
#include "runtime.h"
#include "net/net.h"

/* Longest wait for the other nodes' answers to a path claim: beyond the
 * failure-detection bound (src/net/membership.h), so a node that cannot
 * answer has been declared down by then. */
#define CLAIM_TIMEOUT 5.0

/* Registry keys: the addresses of these constants. */
static const char CTX_KEY = 'c';
static const char JOBS_KEY = 'j';

/* Instructions between two looks at the interrupt flag and the slice clock
 * when a hook stays set (TSan builds, or a handler not yet able to yield). */
#define HOOK_COUNT 1000
/* Instructions between two calls of the hook once it is armed (see
 * interrupt_hook): a kill or a preemption acts within that many. */
#define HOOK_LOOK_COUNT 100

/* ---- per-state data ------------------------------------------------------ */

static int ctx_gc(lua_State *L) {
  lstate_ctx *ctx = lua_touserdata(L, 1);
  codec_buf_free(&ctx->buf);
  return 0;
}

lstate_ctx *lstate_ctx_of(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &CTX_KEY);
  lstate_ctx *ctx = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return ctx;
}

/* ---- guards: C resources held across Lua allocations ---------------------- */

/*
 * A C resource that a Lua error must not leak (an array of retained
 * isolates, a list of events): the guard userdata is made in Lua's memory
 * *before* the resource is acquired, so a memory error raised while the
 * result is pushed leaves the resource with the guard, whose __gc frees it.
 * guard_drop frees it at once on the way out.
 */
static const char GUARD_KEY = 'g';

typedef void (*guard_free_fn)(void *p, size_t n);
typedef struct guard {
  guard_free_fn free;
  void *p;     /* NULL: holds nothing */
  size_t n;
} guard;

static void guard_drop(guard *g) {
  void *p = g->p;
  g->p = NULL;
  if (p) g->free(p, g->n);
}

static int guard_gc(lua_State *L) {
  guard_drop(lua_touserdata(L, 1));
  return 0;
}

/* Pushes an empty guard. May raise, before anything is acquired. */
static guard *guard_push(lua_State *L, guard_free_fn fn) {
  guard *g = lua_newuserdatauv(L, sizeof *g, 0);
  g->free = fn;
  g->p = NULL;
  g->n = 0;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &GUARD_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, guard_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &GUARD_KEY);
  }
  lua_setmetatable(L, -2);
  return g;
}

/* guard_free_fn for an array of n retained isolates (malloc'ed). */
static void release_isolates(void *p, size_t n) {
  ic_isolate **v = p;
  for (size_t i = 0; i < n; i++) isolate_release(v[i]);
  free(v);
}

/* guard_free_fn for one retained isolate. */
static void release_isolate(void *p, size_t n) {
  (void)n;
  isolate_release(p);
}

/* ---- refs ---------------------------------------------------------------- */

/* A ref is a userdata whose metatable is this state's ref metatable, known
 * by identity (ctx->ref_mt): checking one (every send) costs no string
 * lookup, unlike luaL_testudata. */
static lref *ref_test_ctx(lua_State *L, int idx, const lstate_ctx *ctx) {
  lref *r = lua_touserdata(L, idx);
  if (!r || !ctx || !lua_getmetatable(L, idx)) return NULL;
  int same = lua_topointer(L, -1) == ctx->ref_mt;
  lua_pop(L, 1);
  return same ? r : NULL;
}

static lref *lref_check_ctx(lua_State *L, int idx, const lstate_ctx *ctx) {
  lref *r = ref_test_ctx(L, idx, ctx);
  if (!r) luaL_typeerror(L, idx, "isolate_ref");
  return r;
}

lref *lref_test(lua_State *L, int idx) { return ref_test_ctx(L, idx, lstate_ctx_of(L)); }

lref *lref_check(lua_State *L, int idx) { return lref_check_ctx(L, idx, lstate_ctx_of(L)); }

/* Pushes the cached ref for (node, id) and returns 1, or leaves the stack
 * as it was and returns 0. Each exit pops exactly what it pushed: the cache
 * has no entry for a node this state has not met yet, and none for an id
 * whose ref was collected. */
static int ref_cache_get(lua_State *L, const lstate_ctx *ctx, uint32_t node, uint64_t id) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->cache_ref);
  if (lua_rawgeti(L, -1, (lua_Integer)node) != LUA_TTABLE) {
    lua_pop(L, 2); /* cache, nil */
    return 0;
  }
  if (lua_rawgeti(L, -1, (lua_Integer)id) != LUA_TUSERDATA) {
    lua_pop(L, 3); /* cache, node table, nil */
    return 0;
  }
  lua_replace(L, -3);
  lua_pop(L, 1);
  return 1;
}

/* Value on top is a new ref userdata: remember it (weakly). */
static void ref_cache_put(lua_State *L, const lstate_ctx *ctx, uint32_t node, uint64_t id) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->cache_ref);
  if (lua_rawgeti(L, -1, (lua_Integer)node) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 4);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, (lua_Integer)node);
  }
  lua_pushvalue(L, -3);
  lua_rawseti(L, -2, (lua_Integer)id);
  lua_pop(L, 2);
}

static void ref_new(lua_State *L, const lstate_ctx *ctx, ic_isolate *iso, uint32_t node,
                    uint64_t id) {
  lref *r = lua_newuserdatauv(L, sizeof *r, 0);
  r->iso = NULL;
  r->remote = NULL;
  r->node = node;
  r->id = id;
  luaL_setmetatable(L, LREF_MT);
  if (iso) {
    isolate_retain(iso);
    r->iso = iso;
  }
  ref_cache_put(L, ctx, node, id);
}

static void lref_push_ctx(lua_State *L, const lstate_ctx *ctx, ic_isolate *iso) {
  uint32_t node = iso->cluster->node_id;
  if (ref_cache_get(L, ctx, node, iso->id)) return;
  ref_new(L, ctx, iso, node, iso->id);
}

void lref_push(lua_State *L, ic_isolate *iso) { lref_push_ctx(L, lstate_ctx_of(L), iso); }

void lref_push_wire(lua_State *L, ic_cluster *c, uint32_t node, uint64_t id) {
  const lstate_ctx *ctx = lstate_ctx_of(L);
  if (ref_cache_get(L, ctx, node, id)) return;
  /* The userdata first, then the hold, which it takes over: a memory error
   * while making it leaves no hold behind. An isolate already gone (or of
   * another cluster) gives a ref that refuses messages with "isolate down"
   * but still compares and prints; one of another node of this cluster goes
   * through the cluster's net. */
  ref_new(L, ctx, NULL, node, id);
  lref *r = lua_touserdata(L, -1);
  if (c && node == c->node_id) {
    r->iso = cluster_find_id(c, id);
  } else if (c && c->net) {
    cluster_retain(c);
    r->remote = c;
  }
}

static int ref_to_wire(lua_State *L, int idx, void *ud, uint32_t *node, uint64_t *id) {
  (void)ud;
  lref *r = lref_test(L, idx);
  if (!r) return 0;
  /* A ref of this node goes out with the node's current incarnation (it
   * changes when the node rejoins: src/net/membership.h). */
  *node = r->iso ? atomic_load(&r->iso->cluster->node_id) : r->node;
  *id = r->id;
  return 1;
}

static void ref_from_wire(lua_State *L, uint32_t node, uint64_t id, void *ud) {
  lref_push_wire(L, ud, node, id);
}

/* The chunk name the isolate runtime is loaded under (l_boot): its
 * coroutine.wrap, resume and yield copy as the standard functions they
 * stand for (SPEC §2, §4), not as closures over the runtime's state. */
#define RUNTIME_SOURCE "=isolate_cluster.runtime"

codec_hooks lstate_hooks(ic_cluster *c) {
  codec_hooks h = {ref_to_wire, ref_from_wire, c, RUNTIME_SOURCE};
  return h;
}

static ic_cluster *ref_cluster(lua_State *L, lref *r) {
  (void)L;
  return r->iso ? r->iso->cluster : r->remote;
}

/* The id a message from this state to a ref of cluster c names as its
 * sender: this isolate, or c's main state. */
static uint64_t state_sender_id(lstate_ctx *ctx, ic_cluster *c) {
  return ctx->self ? ctx->self->id : c->main->id;
}

/* Sends to a ref of another node: the net frames, windows and publishes
 * (src/net/net.h). NULL or why it failed. */
static const char *post_remote(lstate_ctx *ctx, lref *r, int kind, const char *data, size_t len,
                               uint64_t corr) {
  ic_cluster *c = r->remote;
  if (atomic_load(&c->state) == CLUSTER_DOWN) return "isolate down";
  return net_send(c->net, r->node, r->id, kind, corr, state_sender_id(ctx, c), data, len);
}

/* The isolate that sends from this state: itself, or the main state of the
 * receiving isolate's cluster. */
static ic_isolate *state_sender(lstate_ctx *ctx, ic_isolate *to) {
  return ctx->self ? ctx->self : to->cluster->main;
}

static worker *state_worker(lstate_ctx *ctx) { return ctx->self ? ctx->self->worker : NULL; }

/*
 * Encode buffers. Every encode in a state writes into the state's scratch
 * buffer (ctx->buf), which keeps its memory from one message to the next, so
 * a send costs no allocation for its bytes beyond the message itself. But an
 * encode can be re-entered: it allocates Lua objects, so the collector may
 * run a __gc finalizer in the middle of it, and that finalizer may send
 * (encode) too. The rule that keeps both intact: ctx->buf.len is 0 whenever
 * no encode into it is in flight (codec_encode puts len back on error, and
 * every user copies the bytes out and empties it before any Lua code can
 * run again). An encode that finds it non-empty is nested inside another
 * and takes a buffer of its own (in a userdata, so an error cannot leak it).
 * A nested encode that starts before the outer one has written its first
 * byte finds the buffer empty and uses it: it is done, and the buffer empty
 * again, before the outer encode writes, which reads the buffer's address
 * afresh at each write.
 */
static const char SCRATCH_MT_KEY = 's';

static int scratch_gc(lua_State *L) {
  codec_buf_free(lua_touserdata(L, 1));
  return 0;
}

/* Sets a metatable { __gc = gc } (made on first use, kept in the registry
 * under key) on the userdata on top: most states never need one. */
static void set_gc_metatable(lua_State *L, const void *key, lua_CFunction gc) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
  }
  lua_setmetatable(L, -2);
}

/* Pushes a userdata holding an empty buffer freed by its __gc. */
static codec_buf *private_buf_push(lua_State *L) {
  codec_buf *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  set_gc_metatable(L, &SCRATCH_MT_KEY, scratch_gc);
  return b;
}

/* Encodes the value at idx into the scratch buffer, or into a private one
 * (pushed on the stack) when the scratch buffer is in use or the caller asks
 * for one (own: the bytes must outlive Lua calls that may raise). Raises on
 * an uncopyable value, with nothing left in flight. The caller copies the
 * bytes out of the scratch buffer, then calls encode_end, with no Lua call
 * in between. idx must be an absolute index (a private buffer is pushed). */
static codec_buf *encode_begin(lua_State *L, lstate_ctx *ctx, int idx, const char *root, int own) {
  codec_buf *b = ctx->buf.len == 0 && !own ? &ctx->buf : private_buf_push(L);
  codec_hooks h = lstate_hooks(NULL);
  codec_encode(L, idx, root, &h, &ctx->lim, b);
  return b;
}

/* above: how many values the caller pushed since encode_begin (a private
 * buffer's userdata is just below them, and is removed). */
static void encode_end(lua_State *L, lstate_ctx *ctx, codec_buf *b, int above) {
  if (b == &ctx->buf) {
    b->len = 0;
    return;
  }
  codec_buf_free(b);
  lua_remove(L, -1 - above);
}

static inline ic_msg *encode_msg_ctx(lua_State *L, lstate_ctx *ctx, int idx, const char *root, int kind) {
  codec_buf *b = encode_begin(L, ctx, idx, root, 0);
  ic_msg *m = msg_new(kind, b->data, b->len);
  encode_end(L, ctx, b, 0);
  return m;
}

ic_msg *lstate_encode_msg(lua_State *L, int idx, const char *root, int kind) {
  return encode_msg_ctx(L, lstate_ctx_of(L), lua_absindex(L, idx), root, kind);
}

void lstate_encode_push(lua_State *L, int idx, const char *root) {
  lstate_ctx *ctx = lstate_ctx_of(L);
  /* A private buffer: lua_pushlstring may raise (memory) before it copies. */
  codec_buf *b = encode_begin(L, ctx, lua_absindex(L, idx), root, 1);
  lua_pushlstring(L, b->data, b->len);
  encode_end(L, ctx, b, 1);
}

static int decode_protected(lua_State *L) {
  const ic_msg *m = lua_touserdata(L, 1);
  ic_cluster *c = lua_touserdata(L, 2);
  lstate_ctx *ctx = lstate_ctx_of(L);
  codec_hooks h = lstate_hooks(c);
  codec_decode(L, m->data, m->len, &h, &ctx->lim);
  return 1;
}

int lstate_decode_msg(lua_State *L, ic_cluster *c, const ic_msg *m) {
  if (m->len == 0) {
    lua_pushnil(L);
    return LUA_OK;
  }
  lua_pushcfunction(L, decode_protected);
  lua_pushlightuserdata(L, (void *)m);
  lua_pushlightuserdata(L, c);
  return lua_pcall(L, 2, 1, 0);
}

static int push_send_result(lua_State *L, const char *why) {
  if (why) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, why);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Posts m (owned by the call from here on) to `to` with this state as its
 * sender. Returns NULL or why it failed. */
static const char *post_from(lstate_ctx *ctx, ic_isolate *to, ic_msg *m) {
  ic_isolate *from = state_sender(ctx, to);
  isolate_retain(from);
  m->sender = from;
  return isolate_post(to, m, state_worker(ctx));
}

/* Builds and posts a message of kind to r. Returns NULL or why it failed. */
static const char *post_value(lua_State *L, lstate_ctx *ctx, lref *r, int kind, int idx,
                              uint64_t corr) {
  if (!r->iso && r->remote) {
    codec_buf *b = encode_begin(L, ctx, idx, "msg", 0);
    const char *why = post_remote(ctx, r, kind, b->data, b->len, corr); /* runs no Lua code */
    encode_end(L, ctx, b, 0);
    return why;
  }
  if (!r->iso) return "isolate down";
  if (!atomic_load_explicit(&r->iso->alive, memory_order_acquire)) return "isolate down";
  /* A number, boolean or short string: encoded on the stack, without the
   * encoder's set-up. */
  char small[CODEC_SCALAR_MAX];
  size_t len = codec_encode_scalar(L, idx, small);
  ic_msg *m = len && len <= ctx->lim.max_bytes ? msg_new(kind, small, len)
                                               : encode_msg_ctx(L, ctx, idx, "msg", kind);
  if (!m) return "out of memory";
  m->corr = corr;
  return post_from(ctx, r->iso, m);
}

/* The first i in 1..n where refs[i] is not a ref, or 0. Runs no Lua code
 * (raw reads and metatable checks run neither metamethods nor the
 * collector). */
static lua_Integer first_non_ref(lua_State *L, int refs_idx, lua_Integer n, const lstate_ctx *ctx) {
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, refs_idx, i);
    int is_ref = ref_test_ctx(L, -1, ctx) != NULL;
    lua_pop(L, 1);
    if (!is_ref) return i;
  }
  return 0;
}

/* send_all(refs, msg) -> number accepted, { [i] = reason } | nil.
 * The message is encoded once; every receiver's message points into the same
 * reference-counted bytes. */
int lstate_send_all(lua_State *L, int refs_idx, int msg_idx) {
  luaL_checktype(L, refs_idx, LUA_TTABLE);
  luaL_checkany(L, msg_idx);
  lstate_ctx *ctx = lstate_ctx_of(L);
  lua_Integer n = (lua_Integer)lua_rawlen(L, refs_idx), bad = first_non_ref(L, refs_idx, n, ctx);
  if (bad) return luaL_error(L, "send_all: refs[%d] is not a ref", (int)bad);
  /* Each receiver's outcome, in memory Lua owns: nothing may raise while the
   * shared bytes exist. */
  lua_Integer room = n;
  const char **whys = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof *whys, 0);
  codec_buf *b = encode_begin(L, ctx, msg_idx, "msg", 0);
  ic_blob *blob = blob_new(b->data, b->len);
  encode_end(L, ctx, b, 0);
  if (!blob) return luaL_error(L, "out of memory");
  /* The encode can run finalizers, and one may have changed the table:
   * checked again, and from here on no Lua code runs until the posts are
   * done. */
  n = (lua_Integer)lua_rawlen(L, refs_idx);
  if (n > room) n = room;
  if ((bad = first_non_ref(L, refs_idx, n, ctx)) != 0) {
    blob_release(blob);
    return luaL_error(L, "send_all: refs[%d] is not a ref", (int)bad);
  }
  lua_Integer sent = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, refs_idx, i);
    lref *r = lua_touserdata(L, -1);
    lua_pop(L, 1); /* still referenced by refs */
    const char *why = "isolate down";
    if (r->iso) {
      ic_msg *m = msg_new_shared(MSG_USER, blob);
      why = m ? post_from(ctx, r->iso, m) : "out of memory";
    } else if (r->remote) {
      why = post_remote(ctx, r, MSG_USER, blob->data, blob->len, 0);
    }
    whys[i - 1] = why;
    if (!why) sent++;
  }
  blob_release(blob);
  lua_pushinteger(L, sent);
  if (sent == n) {
    lua_pushnil(L);
    return 2;
  }
  lua_createtable(L, 0, (int)(n - sent));
  for (lua_Integer i = 1; i <= n; i++) {
    if (!whys[i - 1]) continue;
    lua_pushstring(L, whys[i - 1]);
    lua_rawseti(L, -2, i);
  }
  return 2;
}

/*
 * ref:send(msg, wait_s): waiting for room in a full mailbox. There is no
 * signal when a receiver makes room, so the sender looks again at growing
 * intervals, from SEND_PAUSE_MIN up to SEND_PAUSE_MAX: soon after room
 * appears, at a cost of at most a few hundred looks a second while it waits.
 * The main state blocks its thread (on its own condition variable, which
 * shutdown also signals); an isolate hands the message to the runtime's
 * waiter (runtime_extras.lua, send_wait), which suspends only the calling
 * handler between looks. Either way the wait ends at the deadline ("mailbox
 * full"), when the receiver goes down ("isolate down") or when the cluster
 * shuts down ("shutdown").
 */
#define SEND_PAUSE_MIN_NS 100000ull  /* 0.1 ms */
#define SEND_PAUSE_MAX_NS 5000000ull /* 5 ms */

static const char PENDING_MT_KEY = 'p';

/* A message that waits for room, owned by this userdata until it is taken
 * (posted, or freed when its receiver is down); __gc frees it otherwise. */
typedef struct pending_send {
  ic_msg *m;
} pending_send;

static int pending_gc(lua_State *L) {
  pending_send *p = lua_touserdata(L, 1);
  msg_free(p->m);
  p->m = NULL;
  return 0;
}

static int is_full(const char *why) { return why && strcmp(why, "mailbox full") == 0; }

/* Posts p's message if there is room now; takes it unless the mailbox is
 * still full. */
static const char *pending_post(pending_send *p, ic_isolate *to, worker *from) {
  if (!p->m) return "isolate down";
  if (atomic_load(&to->cluster->state) != CLUSTER_RUNNING) {
    msg_free(p->m);
    p->m = NULL;
    return "shutdown";
  }
  int kept;
  const char *why = isolate_post_or_keep(to, p->m, from, &kept);
  if (!kept) p->m = NULL;
  return why;
}

/* The main state's wait: blocks this thread until p's message is taken or
 * the deadline passes. */
static const char *pending_wait_main(pending_send *p, ic_isolate *to, uint64_t deadline) {
  uint64_t pause = SEND_PAUSE_MIN_NS;
  for (;;) {
    uint64_t now = plat_now_ns();
    if (now >= deadline) return "mailbox full";
    uint64_t until = deadline - now > pause ? now + pause : deadline;
    /* Returns early when the cluster stops (or anything is posted to the
     * main state): then the next try says so. */
    cluster_main_wait(to->cluster, NULL, until);
    const char *why = pending_post(p, to, NULL);
    if (!is_full(why)) return why;
    if (pause < SEND_PAUSE_MAX_NS) pause *= 2;
  }
}

/* The monotonic deadline wait_s seconds from now (saturating). */
static uint64_t wait_deadline(double wait_s) {
  uint64_t now = plat_now_ns(), ns = plat_seconds_to_ns(wait_s); /* saturates */
  return wait_s == HUGE_VAL || ns > UINT64_MAX - now ? UINT64_MAX : now + ns;
}

static int is_unreachable(const char *why) { return why && strcmp(why, "node unreachable") == 0; }

/* The main state's wait for room in the link's window to another node (it
 * drains as the peer acks): the message [2] is encoded once, into a buffer
 * of its own, and tried again as pending_wait_main does, until it is taken,
 * the deadline, the cluster stopping or the isolate or its node going down. */
static const char *remote_wait_main(lua_State *L, lstate_ctx *ctx, lref *r, uint64_t deadline) {
  ic_cluster *c = r->remote;
  codec_buf *b = encode_begin(L, ctx, 2, "msg", 1);
  const char *why = "node unreachable";
  uint64_t pause = SEND_PAUSE_MIN_NS;
  for (;;) {
    uint64_t now = plat_now_ns();
    if (now >= deadline) break;
    uint64_t until = deadline - now > pause ? now + pause : deadline;
    cluster_main_wait(c, NULL, until);
    if (atomic_load(&c->state) != CLUSTER_RUNNING) {
      why = "shutdown";
      break;
    }
    if (!net_remote_alive(c->net, r->node, r->id)) {
      why = "isolate down";
      break;
    }
    why = post_remote(ctx, r, MSG_USER, b->data, b->len, 0);
    if (!is_unreachable(why)) break;
    if (pause < SEND_PAUSE_MAX_NS) pause *= 2;
  }
  encode_end(L, ctx, b, 0);
  return why;
}

/* The wait_s argument: nil/none = do not wait, else seconds >= 0. */
static double check_wait_s(lua_State *L, int idx) {
  return lstate_check_seconds(L, idx, "send", "wait_s", 0);
}

/* Continuation of a send handed to the runtime's waiter: its results. */
static int send_wait_k(lua_State *L, int status, lua_KContext base) {
  (void)status;
  return lua_gettop(L) - (int)base;
}

/* ref:send(msg, wait_s) with a wait. [1] ref, [2] msg, [3] wait_s. */
static int send_waiting(lua_State *L, lstate_ctx *ctx, lref *r, double wait_s) {
  /* Another node's mailbox is not seen from here: the message goes into the
   * link's bounded window (src/net/link.h). When that is full the main state
   * waits for room in it; an isolate is answered at once. */
  if (!r->iso && r->remote) {
    const char *why = post_value(L, ctx, r, MSG_USER, 2, 0);
    if (ctx->self || wait_s == 0 || !is_unreachable(why)) return push_send_result(L, why);
    return push_send_result(L, remote_wait_main(L, ctx, r, wait_deadline(wait_s)));
  }
  if (!r->iso || !atomic_load_explicit(&r->iso->alive, memory_order_acquire))
    return push_send_result(L, "isolate down");
  lua_settop(L, 3);
  int base = 3;
  /* The message's owner exists before the message, so that no error can
   * leak it. An isolate needs the runtime's waiter too: send_wait of the
   * extras, which the loader in upvalue 2 returns (loading them first). */
  if (ctx->self) {
    if (lua_type(L, lua_upvalueindex(2)) != LUA_TFUNCTION) return luaL_error(L, "ref:send: this state cannot wait");
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_call(L, 0, 1);
    if (lua_getfield(L, -1, "send_wait") != LUA_TFUNCTION) return luaL_error(L, "ref:send: this state cannot wait");
    lua_remove(L, -2);
  }
  pending_send *p = lua_newuserdatauv(L, sizeof *p, 0);
  p->m = NULL;
  set_gc_metatable(L, &PENDING_MT_KEY, pending_gc);
  ic_msg *m = encode_msg_ctx(L, ctx, 2, "msg", MSG_USER);
  if (!m) return push_send_result(L, "out of memory");
  ic_isolate *from = state_sender(ctx, r->iso);
  isolate_retain(from);
  m->sender = from;
  p->m = m;
  /* The first try is a plain send's; only the later ones stop at shutdown. */
  int kept;
  const char *why = isolate_post_or_keep(r->iso, m, state_worker(ctx), &kept);
  if (!kept) p->m = NULL;
  /* A state waiting for room in its own mailbox would wait for itself: the
   * wait could only run out. */
  int own = ctx->self ? r->iso == ctx->self : r->iso->kind == ISO_MAIN;
  if (!kept || wait_s == 0 || own) return push_send_result(L, why);
  uint64_t deadline = wait_deadline(wait_s);
  if (!ctx->self) return push_send_result(L, pending_wait_main(p, r->iso, deadline));
  /* [4] waiter, [5] pending: waiter(pending, ref, wait_s) may yield. */
  lua_pushvalue(L, 1);
  lua_pushnumber(L, wait_s);
  lua_callk(L, 3, LUA_MULTRET, base, send_wait_k);
  return send_wait_k(L, LUA_OK, base);
}

/* ref:send(msg [, wait_s]). The state's ctx is upvalue 1 (as of every ref
 * method). */
static int l_ref_send(lua_State *L) {
  lstate_ctx *ctx = lua_touserdata(L, lua_upvalueindex(1));
  lref *r = lref_check_ctx(L, 1, ctx);
  luaL_checkany(L, 2);
  if (lua_gettop(L) > 2 && !lua_isnil(L, 3)) return send_waiting(L, ctx, r, check_wait_s(L, 3));
  return push_send_result(L, post_value(L, ctx, r, MSG_USER, 2, 0));
}

static int l_ref_kill(lua_State *L) {
  lref *r = lref_check(L, 1);
  if (r->iso && r->iso->kind == ISO_MAIN) return luaL_error(L, "the main state's ref cannot be killed");
  if (!r->iso || isolate_kill(r->iso) != 0) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "isolate down");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Pushes the decoded property map of r, or nil. */
static int decode_blob_protected(lua_State *L) {
  ic_blob *b = lua_touserdata(L, 1);
  ic_cluster *c = lua_touserdata(L, 2);
  codec_hooks h = lstate_hooks(c);
  codec_decode(L, b->data, b->len, &h, &lstate_ctx_of(L)->lim);
  return 1;
}

static void push_props(lua_State *L, lref *r) {
  if (!r->iso && r->remote) {
    /* Another node's isolate: its properties came with its up event. */
    ic_blob *b = net_props_of(r->remote->net, r->node, r->id);
    if (!b) {
      lua_pushnil(L);
      return;
    }
    lua_pushcfunction(L, decode_blob_protected);
    lua_pushlightuserdata(L, b);
    lua_pushlightuserdata(L, r->remote);
    int st = lua_pcall(L, 2, 1, 0);
    blob_release(b);
    if (st != LUA_OK) lua_error(L);
    return;
  }
  if (!r->iso || !r->iso->props) {
    lua_pushnil(L);
    return;
  }
  lstate_ctx *ctx = lstate_ctx_of(L);
  codec_hooks h = lstate_hooks(ref_cluster(L, r));
  codec_decode(L, r->iso->props->data, r->iso->props->len, &h, &ctx->lim);
}

/* Pushes a remote ref's path (from the replica), or nil. */
static void push_remote_path(lua_State *L, lref *r) {
  char *p = r->remote ? net_path_of(r->remote->net, r->node, r->id) : NULL;
  if (!p) {
    lua_pushnil(L);
    return;
  }
  lua_pushstring(L, p); /* may raise only for memory: then p is lost, bounded */
  free(p);
}

static int l_ref_property(lua_State *L) {
  lref *r = lref_check(L, 1);
  luaL_checkany(L, 2);
  push_props(L, r);
  if (lua_isnil(L, -1)) return 1;
  lua_pushvalue(L, 2);
  lua_gettable(L, -2);
  return 1;
}

static int l_ref_properties(lua_State *L) {
  lref *r = lref_check(L, 1);
  push_props(L, r);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
  }
  return 1;
}

static int l_ref_index(lua_State *L) {
  /* Methods first: ref:send is the hot path, and each method checks its
   * own receiver. */
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  lref *r = lref_check(L, 1);
  const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
  if (k && strcmp(k, "path") == 0) {
    if (r->iso && r->iso->path) lua_pushstring(L, r->iso->path);
    else if (!r->iso && r->remote) push_remote_path(L, r);
    else lua_pushnil(L);
    return 1;
  }
  if (k && strcmp(k, "id") == 0) {
    lua_pushinteger(L, (lua_Integer)r->id);
    return 1;
  }
  if (k && strcmp(k, "node") == 0) {
    ic_cluster *c = ref_cluster(L, r);
    char name[128];
    if (r->iso && c->net) lua_pushstring(L, net_self_name(c->net));
    else if (c && c->net && net_node_name(c->net, r->node, name, sizeof name) == 0) lua_pushstring(L, name);
    else lua_pushnil(L);
    return 1;
  }
  lua_pushnil(L);
  return 1;
}

static int l_ref_eq(lua_State *L) {
  lref *a = lref_test(L, 1), *b = lref_test(L, 2);
  lua_pushboolean(L, a && b && a->node == b->node && a->id == b->id);
  return 1;
}

static int l_ref_tostring(lua_State *L) {
  lref *r = lref_check(L, 1);
  if (r->iso && r->iso->path)
    lua_pushfstring(L, "isolate_ref(%s, %I:%I)", r->iso->path, (lua_Integer)r->node,
                    (lua_Integer)r->id);
  else if (r->iso && r->iso->kind == ISO_MAIN)
    lua_pushfstring(L, "isolate_ref(main, %I:%I)", (lua_Integer)r->node, (lua_Integer)r->id);
  else if (r->remote) {
    push_remote_path(L, r);
    if (lua_isnil(L, -1))
      lua_pushfstring(L, "isolate_ref(%I:%I)", (lua_Integer)r->node, (lua_Integer)r->id);
    else
      lua_pushfstring(L, "isolate_ref(%s, %I:%I)", lua_tostring(L, -1), (lua_Integer)r->node, (lua_Integer)r->id);
  } else
    lua_pushfstring(L, "isolate_ref(%I:%I)", (lua_Integer)r->node, (lua_Integer)r->id);
  return 1;
}

static int l_ref_gc(lua_State *L) {
  lref *r = lua_touserdata(L, 1);
  if (r->remote) {
    ic_cluster *c = r->remote;
    r->remote = NULL;
    cluster_release(c);
  }
  if (r->iso) {
    ic_isolate *iso = r->iso;
    r->iso = NULL;
    isolate_release(iso);
  }
  return 0;
}

lstate_ctx *lstate_open(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &CTX_KEY);
  if (lua_type(L, -1) == LUA_TUSERDATA) {
    lstate_ctx *ctx = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return ctx;
  }
  lua_pop(L, 1);
  lstate_ctx *ctx = lua_newuserdatauv(L, sizeof *ctx, 0);
  memset(ctx, 0, sizeof *ctx);
  codec_limits_default(&ctx->lim);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, ctx_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &CTX_KEY);


  lua_newtable(L);
  ctx->cache_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushboolean(L, 0);
  ctx->last_sender_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  if (luaL_newmetatable(L, LREF_MT)) {
    static const luaL_Reg methods[] = {
        {"kill", l_ref_kill}, {"property", l_ref_property}, {"properties", l_ref_properties}, {NULL, NULL}};
    luaL_newlibtable(L, methods);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &CTX_KEY);
    luaL_setfuncs(L, methods, 1);
    /* send: upvalues ctx and the runtime's extras loader (an isolate sets
     * it, see core.set_send_wait). */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &CTX_KEY);
    lua_pushnil(L);
    lua_pushcclosure(L, l_ref_send, 2);
    lua_setfield(L, -2, "send");
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "methods"); /* the state sets methods.request itself */
    lua_pushcclosure(L, l_ref_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_ref_eq);
    lua_setfield(L, -2, "__eq");
    lua_pushcfunction(L, l_ref_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, l_ref_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, "isolate_ref");
    lua_setfield(L, -2, "__name");
    lua_pushliteral(L, "isolate_ref");
    lua_setfield(L, -2, "__metatable");
  }
  ctx->ref_mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  return ctx;
}

/* ---- arguments every state checks alike ------------------------------------ */

/* These errors carry no position: in an isolate the call passes through the
 * runtime's own functions first, and the message must read the same in the
 * main state and in isolates. */

const char *lstate_check_path(lua_State *L, int idx, const char *fname) {
  if (lua_type(L, idx) != LUA_TSTRING) {
    lua_pushfstring(L, "%s: a path must be a string, got %s", fname, luaL_typename(L, idx));
    lua_error(L);
  }
  size_t len;
  const char *path = lua_tolstring(L, idx, &len);
  if (strlen(path) != len) {
    /* Shown with its NUL bytes escaped, so the message itself is whole. */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < len; i++) {
      if (path[i]) luaL_addchar(&b, path[i]);
      else luaL_addstring(&b, "\\0");
    }
    luaL_pushresult(&b);
    lua_pushfstring(L, "%s: invalid path \"%s\": a path cannot contain a NUL byte", fname, lua_tostring(L, -1));
    lua_error(L);
  }
  return path;
}

double lstate_check_seconds(lua_State *L, int idx, const char *fname, const char *what, int positive) {
  int isnum;
  lua_Number t = lua_tonumberx(L, idx, &isnum);
  if (isnum && lua_type(L, idx) == LUA_TNUMBER && (positive ? t > 0 : t >= 0)) return (double)t;
  char got[64];
  if (!isnum || lua_type(L, idx) != LUA_TNUMBER) snprintf(got, sizeof got, "%s", luaL_typename(L, idx));
  else if (t != t) snprintf(got, sizeof got, "NaN");
  else snprintf(got, sizeof got, "%g", (double)t);
  lua_pushfstring(L, "%s: %s must be a %snumber of seconds%s, got %s", fname, what, positive ? "positive " : "",
                  positive ? "" : " >= 0", got);
  return lua_error(L);
}

lua_Integer lstate_opt_integer(lua_State *L, int t, const char *fname, const char *what, lua_Integer dflt,
                               lua_Integer min, lua_Integer max) {
  lua_Integer v = dflt;
  if (lua_getfield(L, t, what) != LUA_TNIL) {
    int ok = 0;
    /* lua_tointegerx alone would take "10" too: options are values, not
     * text, as times are. */
    if (lua_type(L, -1) == LUA_TNUMBER) v = lua_tointegerx(L, -1, &ok);
    if (!ok || v < min || v > max) {
      if (max == LUA_MAXINTEGER)
        lua_pushfstring(L, "%s: opts.%s must be an integer >= %I, got ", fname, what, (LUAI_UACINT)min);
      else
        lua_pushfstring(L, "%s: opts.%s must be an integer from %I to %I, got ", fname, what, (LUAI_UACINT)min,
                        (LUAI_UACINT)max);
      if (lua_type(L, -2) == LUA_TNUMBER) luaL_tolstring(L, -2, NULL);
      else lua_pushstring(L, luaL_typename(L, -2));
      lua_concat(L, 2);
      lua_error(L);
    }
  }
  lua_pop(L, 1);
  return v;
}

int lstate_opt_flag(lua_State *L, int t, const char *fname, const char *what) {
  int ty = lua_getfield(L, t, what);
  if (ty != LUA_TNIL && ty != LUA_TBOOLEAN) {
    lua_pushfstring(L, "%s: opts.%s must be a boolean, got %s", fname, what, luaL_typename(L, -1));
    lua_error(L);
  }
  int v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

void lstate_check_options(lua_State *L, int idx, const char *fname, const char *const *allowed) {
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -1);
      const char *const *a = allowed;
      while (*a && strcmp(*a, k) != 0) a++;
      if (*a) continue;
      lua_pushfstring(L, "%s: unknown option \"%s\"", fname, k);
    } else {
      lua_pushfstring(L, "%s: unknown option %s (option names are strings)", fname, luaL_tolstring(L, -1, NULL));
    }
    lua_error(L);
  }
}

/* core.check_options(opts, fname, name...): lstate_check_options for the
 * option tables the Lua side reads. */
int lstate_core_check_options(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *fname = luaL_checkstring(L, 2);
  const char *allowed[16];
  int n = lua_gettop(L) - 2;
  if (n > 15) return luaL_error(L, "check_options: too many names");
  for (int i = 0; i < n; i++) allowed[i] = luaL_checkstring(L, i + 3);
  allowed[n] = NULL;
  lstate_check_options(L, 1, fname, allowed);
  return 0;
}

/* core.check_seconds(value, fname, what [, positive]) -> value: the runtime
 * checks its times here, so that isolates raise what the main state does. */
static int l_core_check_seconds(lua_State *L) {
  const char *fname = luaL_checkstring(L, 2), *what = luaL_checkstring(L, 3);
  lua_pushnumber(L, lstate_check_seconds(L, 1, fname, what, lua_toboolean(L, 4)));
  return 1;
}

/* ---- spawn and lookup ------------------------------------------------------ */


int lstate_spawn(lua_State *L, ic_cluster *c, int arg, ic_isolate *creator, int hidden) {
  if (atomic_load(&c->state) != CLUSTER_RUNNING) return luaL_error(L, "spawn_isolate after shutdown");
  int et = lua_type(L, arg);
  /* Named here, not by luaL_argerror: inside an isolate the C function
   * behind context:spawn_isolate is core.spawn, a name the user never wrote. */
  if (et != LUA_TFUNCTION && et != LUA_TSTRING)
    return luaL_error(L, "spawn_isolate: the entry must be a function or a module name, got %s",
                      luaL_typename(L, arg));
  int has_props = !lua_isnoneornil(L, arg + 1);
  if (has_props && lua_type(L, arg + 1) != LUA_TTABLE)
    return luaL_error(L, "spawn_isolate: properties must be a table, got %s", luaL_typename(L, arg + 1));
  const char *path = NULL, *node = NULL;
  int dedicated = 0, detached = 0, lean = 0;
  lua_Integer mbox = (lua_Integer)c->default_mailbox, memlimit = 0;
  if (!lua_isnoneornil(L, arg + 2)) {
    if (lua_type(L, arg + 2) != LUA_TTABLE)
      return luaL_error(L, "spawn_isolate: opts must be a table, got %s", luaL_typename(L, arg + 2));
    int o = arg + 2;
    static const char *const known[] = {"path", "dedicated", "detached", "mailbox", "memory_limit", "node", "lean", NULL};
    lstate_check_options(L, o, "spawn_isolate", known);
    /* The string stays on the stack until the spawn is done: opts need
     * not hold it (an __index may have made it), and the encodes below run
     * the collector. */
    if (lua_getfield(L, o, "path") != LUA_TNIL) {
      if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "opts.path must be a string");
      path = lstate_check_path(L, -1, "spawn_isolate");
    } else {
      lua_pop(L, 1);
    }
    dedicated = lstate_opt_flag(L, o, "spawn_isolate", "dedicated");
    detached = lstate_opt_flag(L, o, "spawn_isolate", "detached");
    lean = lstate_opt_flag(L, o, "spawn_isolate", "lean");
    mbox = lstate_opt_integer(L, o, "spawn_isolate", "mailbox", mbox, 1, LUA_MAXINTEGER);
    /* 0: no limit */
    memlimit = lstate_opt_integer(L, o, "spawn_isolate", "memory_limit", 0, 0, LUA_MAXINTEGER);
    /* Stays on the stack until the spawn is done, as path does. */
    if (lua_getfield(L, o, "node") != LUA_TNIL) {
      if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "spawn_isolate: opts.node must be a node name");
      node = lua_tostring(L, -1);
      if (!c->net) return luaL_error(L, "spawn_isolate: opts.node needs a multi-node cluster (ic.node)");
      if (strcmp(node, net_self_name(c->net)) == 0) node = NULL; /* this node */
    } else {
      lua_pop(L, 1);
    }
  }
  /* The caller's hold on the new isolate, while its ref is made; made
   * before the encodes, whose bytes no allocation may come between. */
  guard *g = guard_push(L, release_isolate);
  if (node && et == LUA_TFUNCTION && !net_code_ok(c->net))
    return luaL_error(L, "a Lua function entry cannot be spawned on another node (node \"%s\") unless the "
                      "nodes have allow_code and a secret: give a module name", node);
  if (node && path && *path && path[strlen(path) - 1] != '/' &&
      (cluster_path_in_use(c, path) || net_path_taken(c->net, path)))
    return luaL_error(L, "path \"%s\" is already in use", path);
  /* Encode everything first: the encodes may raise, and nothing is
   * allocated outside Lua until they have succeeded. The bytes go to a
   * buffer of the spawn's own: the reads below and the encodes themselves
   * can run finalizers, which may send (and so use the state's scratch
   * buffer) in between. */
  lstate_ctx *ctx = lstate_ctx_of(L);
  codec_hooks h = lstate_hooks(NULL);
  codec_buf *buf = private_buf_push(L);
  size_t props_len = 0;
  if (has_props) {
    codec_encode(L, arg + 1, "properties", &h, &ctx->lim, buf);
    props_len = buf->len;
  }
  codec_encode(L, arg, "entry", &h, &ctx->lim, buf);
  /* Multi-node: an exact path is claimed from the other nodes first (one
   * round trip); the claim is held until the isolate is registered. A
   * hidden runtime isolate (the logger) is this node's own business. From
   * here on nothing raises before net_claim_done. */
  int claimed = 0;
  if (c->net && !hidden && path && *path && path[strlen(path) - 1] != '/') {
    const char *why = net_claim(c->net, path, CLAIM_TIMEOUT);
    if (why && strcmp(why, "path in use") == 0) return luaL_error(L, "path \"%s\" is already in use", path);
    if (why) return luaL_error(L, "path \"%s\" could not be claimed: %s", path, why);
    claimed = 1;
  }
  if (node) {
    /* Another node spawns it (module name: with its own package.path) and
     * the ref is known at once: this node chose the new isolate's id. */
    uint32_t rnode;
    uint64_t rid;
    const char *why = net_spawn(c->net, node, creator ? creator->id : c->main->id, buf->data + props_len,
                                buf->len - props_len, has_props ? buf->data : NULL, props_len, path,
                                (size_t)mbox, (size_t)memlimit, dedicated, &rnode, &rid);
    if (claimed) net_claim_done(c->net, path); /* the replica holds it as pending now */
    codec_buf_free(buf);
    if (why) return luaL_error(L, "spawn_isolate on node \"%s\" failed: %s", node, why);
    lref_push_wire(L, c, rnode, rid);
    return 1;
  }

  const char *lua_path = NULL, *lua_cpath = NULL;
  lua_getglobal(L, "package"); /* stays on the stack: keeps the strings alive */
  if (lua_type(L, -1) == LUA_TTABLE) {
    if (lua_getfield(L, -1, "path") == LUA_TSTRING) lua_path = lua_tostring(L, -1);
    if (lua_getfield(L, -2, "cpath") == LUA_TSTRING) lua_cpath = lua_tostring(L, -1);
  }
  /* From here on nothing raises until the isolate is started. */
  spawn_args a = {dedicated ? ISO_DEDICATED : ISO_POOL, (size_t)mbox, (size_t)memlimit,
                  has_props ? buf->data : NULL, props_len,
                  buf->data + props_len, buf->len - props_len,
                  lua_path, lua_cpath, path, hidden, creator, detached, NULL, 0, lean};
  ic_isolate *iso;
  char err[256];
  int failed = cluster_spawn(c, &a, &iso, err, sizeof err);
  if (claimed) net_claim_done(c->net, path);
  codec_buf_free(buf);
  if (failed) return luaL_error(L, "%s", err);
  g->p = iso;
  lref_push(L, iso);
  guard_drop(g); /* the ref and the registry hold it now */
  return 1;
}

int lstate_lookup(lua_State *L, ic_cluster *c, int arg, uint64_t deadline) {
  return lstate_lookup_with(L, c, arg, NULL, &deadline);
}

static ic_isolate *find_or_wait(void *ud, ic_cluster *c, const char *path) {
  uint64_t deadline = *(uint64_t *)ud;
  return deadline ? cluster_wait_path(c, path, deadline) : cluster_find_path(c, path);
}

int lstate_push_remote_path(lua_State *L, ic_cluster *c, const char *path) {
  uint32_t node;
  uint64_t id;
  if (!c->net || !net_find_path(c->net, path, &node, &id)) return 0;
  lref_push_wire(L, c, node, id);
  return 1;
}

int lstate_lookup_with(lua_State *L, ic_cluster *c, int arg, lstate_find_fn find, void *ud) {
  const char *path = lstate_check_path(L, arg, "lookup_isolate");
  if (!cluster_path_is_name(path)) {
    /* "/", "/dir/", "a": never an isolate's path, so not worth a wait */
    lua_pushnil(L);
    lua_pushboolean(L, 1);
    return 2;
  }
  guard *g = guard_push(L, release_isolate);
  /* A wait also ends when another node's isolate holds the path (the
   * replica, src/net/paths.h): then its ref is pushed. */
  ic_isolate *iso = (find ? find : find_or_wait)(ud, c, path);
  if (!iso) {
    if (!lstate_push_remote_path(L, c, path)) lua_pushnil(L);
    return 1;
  }
  g->p = iso;
  lref_push(L, iso);
  guard_drop(g);
  return 1;
}

/* Pushes a list of refs to the n isolates of the guarded array, then frees
 * the array. */
static void push_ref_list(lua_State *L, guard *g) {
  ic_isolate **all = g->p;
  lua_createtable(L, (int)g->n, 0);
  for (size_t i = 0; i < g->n; i++) {
    lref_push(L, all[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  guard_drop(g);
}

/* Appends to the list at idx, after its first `n` items, the refs of the
 * other nodes' isolates whose path starts with prefix (NULL: all that are
 * up), in the order they came up there. */
static void push_remote_refs(lua_State *L, ic_cluster *c, const char *prefix, int idx, lua_Integer n) {
  idx = lua_absindex(L, idx);
  uint32_t *nodes;
  uint64_t *ids;
  size_t rn;
  if (net_prefix(c->net, prefix, &nodes, &ids, &rn)) luaL_error(L, "out of memory");
  /* In Lua-owned memory before anything may raise. */
  uint64_t *pairs = lua_newuserdatauv(L, (rn + 1) * 2 * sizeof *pairs, 0);
  for (size_t i = 0; i < rn; i++) {
    pairs[2 * i] = nodes[i];
    pairs[2 * i + 1] = ids[i];
  }
  free(nodes);
  free(ids);
  for (size_t i = 0; i < rn; i++) {
    lref_push_wire(L, c, (uint32_t)pairs[2 * i], pairs[2 * i + 1]);
    lua_rawseti(L, idx, n + (lua_Integer)i + 1);
  }
  lua_pop(L, 1);
}

int lstate_lookup_prefix(lua_State *L, ic_cluster *c, int arg) {
  const char *prefix = lstate_check_path(L, arg, "lookup_isolates");
  guard *g = guard_push(L, release_isolates);
  if (!(g->p = cluster_find_prefix(c, prefix, &g->n))) return luaL_error(L, "out of memory");
  lua_Integer n = (lua_Integer)g->n;
  push_ref_list(L, g);
  if (c->net) push_remote_refs(L, c, prefix, -1, n); /* then the other nodes' */
  return 1;
}

int lstate_stats(lua_State *L, ic_cluster *c) {
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)atomic_load(&c->dead_letters));
  lua_setfield(L, -2, "dead_letters");
  lua_pushinteger(L, (lua_Integer)atomic_load(&c->spawned));
  lua_setfield(L, -2, "spawned");
  plat_mutex_lock(&c->lock);
  lua_Integer live = (lua_Integer)c->live;
  plat_mutex_unlock(&c->lock);
  lua_pushinteger(L, live);
  lua_setfield(L, -2, "isolates");
  lua_pushinteger(L, c->nworkers);
  lua_setfield(L, -2, "workers");
  return 1;
}

/* ---- core functions of an isolate state ------------------------------------ */

static ic_isolate *self_of(lua_State *L) { return *(ic_isolate **)lua_getextraspace(L); }

static int l_core_self(lua_State *L) {
  lref_push(L, self_of(L));
  return 1;
}

static int l_core_main(lua_State *L) {
  lref_push(L, self_of(L)->cluster->main);
  return 1;
}

/* core.request(ref, msg, corr) -> true | false, why */
static int l_core_request(lua_State *L) {
  lstate_ctx *ctx = self_of(L)->lctx;
  lref *r = lref_check_ctx(L, 1, ctx);
  lua_Integer corr = luaL_checkinteger(L, 3);
  return push_send_result(L, post_value(L, ctx, r, MSG_REQUEST, 2, (uint64_t)corr));
}

/* core.reply(ref, corr, ok, value) -> true | false, why. The value is
 * encoded before anything is allocated, so an uncopyable reply raises. */
static int l_core_reply(lua_State *L) {
  lref *r = lref_check(L, 1);
  lua_Integer corr = luaL_checkinteger(L, 2);
  int ok = lua_toboolean(L, 3);
  if (!r->iso && !r->remote) return push_send_result(L, "isolate down");
  ic_msg *m = lstate_encode_msg(L, 4, ok ? "reply" : "error", ok ? MSG_REPLY : MSG_REPLY_ERROR);
  if (m && !r->iso) {
    /* to another node's requester: the net copies the bytes */
    ic_isolate *self = self_of(L);
    const char *why = post_remote(self->lctx, r, m->kind, m->data, m->len, (uint64_t)corr);
    msg_free(m);
    isolate_close_remote_request(self, r->node, r->id, (uint64_t)corr);
    return push_send_result(L, why);
  }
  if (!m) return push_send_result(L, "out of memory");
  m->corr = (uint64_t)corr;
  ic_isolate *self = self_of(L);
  ic_isolate *to = r->iso;
  const char *why = isolate_post_sys(to, m, self->worker);
  /* Answered (or its requester is gone): no longer refused at the end. */
  isolate_close_request(self, to, (uint64_t)corr);
  return push_send_result(L, why);
}

/* core.timer(id, seconds [, periodic]): arms this isolate's timer id. */
static int l_core_timer(lua_State *L) {
  lua_Integer id = luaL_checkinteger(L, 1);
  lua_Number s = luaL_checknumber(L, 2);
  int periodic = lua_toboolean(L, 3);
  ic_isolate *self = self_of(L);
  int rc = timer_arm(&self->cluster->timers, self, (uint64_t)id, plat_seconds_to_ns(s), periodic);
  if (rc == ECANCELED) return luaL_error(L, "cannot arm a timer: the cluster has shut down");
  if (rc) return luaL_error(L, "out of memory arming a timer");
  return 0;
}

/* core.cancel_timer(id): a wait that has finished or a timer cancelled. */
static int l_core_cancel_timer(lua_State *L) {
  lua_Integer id = luaL_checkinteger(L, 1);
  ic_isolate *self = self_of(L);
  timer_cancel(&self->cluster->timers, self, (uint64_t)id);
  return 0;
}

static int l_core_send_all(lua_State *L) { return lstate_send_all(L, 1, 2); }

/* core.set_send_wait(extras): the function that returns the runtime's
 * extras, whose send_wait waits for ref:send with wait_s. Kept as an
 * upvalue of the send method: no closure, no registry entry per state. */
static int l_core_set_send_wait(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_getmetatable(L, LREF_MT);
  lua_getfield(L, -1, "methods");
  lua_getfield(L, -1, "send");
  lua_pushvalue(L, 1);
  if (!lua_setupvalue(L, -2, 2)) return luaL_error(L, "set_send_wait: no send method");
  return 0;
}

/* core.post_pending(pending, ref) -> true | false, why: the waiter's next
 * look for room. */
static int l_core_post_pending(lua_State *L) {
  pending_send *p = lua_touserdata(L, 1);
  int ok = p && lua_getmetatable(L, 1);
  if (ok) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &PENDING_MT_KEY);
    ok = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
  }
  if (!ok) return luaL_typeerror(L, 1, "pending message");
  lref *r = lref_check(L, 2);
  if (!r->iso) return push_send_result(L, "isolate down");
  return push_send_result(L, pending_post(p, r->iso, self_of(L)->worker));
}

static int l_core_spawn(lua_State *L) {
  ic_isolate *self = self_of(L);
  return lstate_spawn(L, self->cluster, 1, self, 0);
}

static int l_core_lookup(lua_State *L) { return lstate_lookup(L, self_of(L)->cluster, 1, 0); }
static int l_core_lookup_prefix(lua_State *L) { return lstate_lookup_prefix(L, self_of(L)->cluster, 1); }

static int l_core_subscribe(lua_State *L) {
  ic_isolate *self = self_of(L);
  int existing = lua_toboolean(L, 1);
  guard *g = existing ? guard_push(L, release_isolates) : NULL;
  size_t n;
  ic_isolate **up = cluster_subscribe(self->cluster, self, existing, &n);
  if (!existing) return 0;
  if (!up) return luaL_error(L, "out of memory");
  g->p = up;
  g->n = n;
  push_ref_list(L, g);
  ic_cluster *c = self->cluster;
  if (c->net) push_remote_refs(L, c, NULL, -1, (lua_Integer)n); /* the other nodes' too */
  return 1;
}

static void free_events(void *p, size_t n) { cluster_free_events(p, n); }

/* core.events() -> { kind, ref, reason, kind, ref, reason, ... } */
static int l_core_events(lua_State *L) {
  ic_isolate *self = self_of(L);
  guard *g = guard_push(L, free_events);
  size_t n;
  cluster_event *ev = cluster_read_events(self->cluster, self, &n);
  g->p = ev;
  g->n = n;
  lua_createtable(L, (int)(n * 3), 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushinteger(L, ev[i].kind);
    lua_rawseti(L, -2, (lua_Integer)(3 * i + 1));
    if (ev[i].iso) lref_push(L, ev[i].iso);
    else if (ev[i].rnode) lref_push_wire(L, self->cluster, ev[i].rnode, ev[i].rid);
    else lua_pushstring(L, ev[i].node ? ev[i].node : "?"); /* a node event: its name */
    lua_rawseti(L, -2, (lua_Integer)(3 * i + 2));
    if (ev[i].reason) lua_pushstring(L, ev[i].reason);
    else lua_pushboolean(L, 0);
    lua_rawseti(L, -2, (lua_Integer)(3 * i + 3));
  }
  guard_drop(g);
  return 1;
}

/* core.monitor(ref, id): ref's monitor set gets (this isolate, id) (for
 * another node's isolate, the cluster's set for it: it fires with that
 * isolate's down reason or "node down"); a ref already down, or of no live
 * node, is answered "noproc" through the same kind of notice, so the
 * function runs later as any other event. */
static int l_core_monitor(lua_State *L) {
  ic_isolate *self = self_of(L);
  lref *r = lref_check_ctx(L, 1, self->lctx);
  uint64_t id = (uint64_t)luaL_checkinteger(L, 2);
  int rc = r->iso      ? monitor_add(&r->iso->monitors, self, id)
           : r->remote ? cluster_remote_monitor(r->remote, r->node, r->id, self, id)
                       : ESRCH;
  if (rc == ENOMEM) return luaL_error(L, "monitor: out of memory");
  if (rc) monitor_notify(self, id, "noproc");
  return 0;
}

/* core.demonitor(ref, id): takes the entry out of ref's set, if there. */
static int l_core_demonitor(lua_State *L) {
  ic_isolate *self = self_of(L);
  lref *r = lref_check_ctx(L, 1, self->lctx);
  uint64_t id = (uint64_t)luaL_checkinteger(L, 2);
  if (r->iso) monitor_remove(&r->iso->monitors, self, id);
  else if (r->remote) cluster_remote_demonitor(r->remote, r->node, r->id, self, id);
  return 0;
}

/* core.children() -> true while a linked child of this isolate is up. */
static int l_core_children(lua_State *L) {
  lua_pushboolean(L, self_of(L)->live_children > 0);
  return 1;
}

static int l_core_up(lua_State *L) {
  ic_isolate *self = self_of(L);
  cluster_announce_up(self->cluster, self); /* once: it looks under the lock */
  return 0;
}

static const char *interrupt_reason(ic_isolate *iso) {
  switch (atomic_load(&iso->interrupt)) {
  case INTERRUPT_KILL: return "killed";
  case INTERRUPT_SHUTDOWN: return "shutdown";
  default: return NULL;
  }
}

/* core.stop(reason): this isolate goes down once the current dispatch ends. */
static int l_core_stop(lua_State *L) {
  ic_isolate *self = self_of(L);
  const char *why = interrupt_reason(self);
  isolate_set_ending(self, why ? why : luaL_optstring(L, 1, "normal"));
  return 0;
}

static int l_core_shutdown_cluster(lua_State *L) {
  ic_isolate *self = self_of(L);
  double t = lua_isnoneornil(L, 1) ? 5.0 : lstate_check_seconds(L, 1, "shutdown_cluster", "timeout", 0);
  cluster_request_shutdown(self->cluster, t);
  return 0;
}

static int l_core_log(lua_State *L) {
  cluster_log(self_of(L)->cluster, "%s", luaL_checkstring(L, 1));
  return 0;
}

static int l_core_set_jobs(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &JOBS_KEY);
  return 0;
}

static int l_core_set_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_getmetatable(L, LREF_MT);
  lua_getfield(L, -1, "methods");
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "request");
  return 0;
}

static int l_core_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)plat_now_ns() / 1e9);
  return 1;
}

/* ---- interrupts and preemption ------------------------------------------------ */

/*
 * Lua traces every instruction while any hook is set on a thread, which
 * roughly halves the speed of the interpreter. So no hook is set while all
 * is well: the monitor (slice over) or a killer installs a one-shot count
 * hook on the Lua thread the isolate runs right now (running_L, kept up to
 * date by the runtime through core.running), the same asynchronous use of
 * lua_sethook that lua.c makes from its SIGINT handler.
 *
 * ThreadSanitizer rightly sees that asynchronous store as a race, so the
 * TSan build (IC_SYNC_HOOK) keeps a permanent count hook instead and
 * installs nothing from other threads.
 */
/* Is L a coroutine running a handler (a job, or the pump inside a handler)? */
static int running_job(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &JOBS_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  lua_pushthread(L);
  int is_job = 0;
  if (lua_rawget(L, -2) == LUA_TTABLE) {
    lua_getfield(L, -1, "pump");
    lua_getfield(L, -2, "active");
    is_job = !lua_toboolean(L, -2) || lua_toboolean(L, -1);
    lua_pop(L, 2);
  }
  lua_pop(L, 2);
  return is_job;
}

/* Is the function the hook interrupted part of the runtime? Its own code
 * (waiting, request, dispatch) must never be cut in the middle: a wait
 * half-recorded would miss its reply or timer. */
static int in_runtime(lua_State *L, lua_Debug *ar) {
  if (!lua_getinfo(L, "S", ar)) return 0;
  return strncmp(ar->source, "=isolate_cluster.runtime", 24) == 0;
}

/* Removes the hook from L (the thread running it), unless a newer arming
 * aimed at L since. O(1): lua_sethook walks the call stack only to set a
 * hook, never to clear one. */
static void hook_disarm(ic_isolate *iso, lua_State *L) {
  plat_mutex_lock(&iso->hook_lock);
  lua_sethook(L, NULL, 0, 0);
  if (iso->armed_L == L) iso->armed_L = NULL;
  plat_mutex_unlock(&iso->hook_lock);
}

/*
 * Setting a hook costs time proportional to the depth of the thread's call
 * stack (lua_sethook marks every Lua frame so that it traces), so the hook
 * is set once per ask (a preemption, an interrupt) and never re-set while
 * the ask waits: it is armed with
 * a count of HOOK_LOOK_COUNT instructions and, when it cannot act yet (a
 * preemption inside a C call such as string.gsub's callback, or inside the
 * runtime's own code), it just returns and Lua calls it again that many
 * instructions later. A handler recursing a million frames deep inside a C
 * call would otherwise pay a walk of its whole stack every few instructions.
 */
static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  ic_isolate *iso = self_of(L);
  int irq = atomic_load(&iso->interrupt);
  if (irq) {
    /* Stays armed, at every instruction: user code that catches the error
     * (a pcall in a loop) meets it again at once, until the isolate is down.
     * Set once: the count reads back as 1 from then on. */
    if (lua_gethookcount(L) != 1) lua_sethook(L, interrupt_hook, LUA_MASKCOUNT, 1);
    luaL_error(L, "%s", irq == INTERRUPT_KILL ? "killed" : "interrupted by shutdown");
  }
#ifdef IC_SYNC_HOOK
  if (plat_now_ns() > iso->slice_deadline) atomic_store(&iso->preempt, 1);
#endif
  if (atomic_load(&iso->preempt)) {
    /* Out of time: a handler's coroutine yields back to the runtime, which
     * resumes it on the isolate's next turn (like Erlang's reductions). */
    if (lua_isyieldable(L) && !in_runtime(L, ar) && running_job(L)) {
      atomic_store(&iso->preempt, 0);
#ifndef IC_SYNC_HOOK
      hook_disarm(iso, L);
#endif
      lua_yield(L, 0);
    }
    /* Not at a point where it can yield (inside a C call, or in the
     * runtime's own code): the hook stays, and looks again
     * HOOK_LOOK_COUNT instructions later. */
    return;
  }
#ifndef IC_SYNC_HOOK
  hook_disarm(iso, L); /* one shot: nothing asked any more */
#endif
}

void lstate_arm_hook(ic_isolate *iso) {
#ifndef IC_SYNC_HOOK
  /* Armed already (the monitor asks again at every tick of a long turn):
   * setting it again would walk the stack again for nothing. */
  if (iso->running_L && iso->armed_L != iso->running_L) {
    /* An interrupt acts at the next instruction; a preemption may wait. */
    int count = atomic_load(&iso->interrupt) ? 1 : HOOK_LOOK_COUNT;
    lua_sethook(iso->running_L, interrupt_hook, LUA_MASKCOUNT, count);
    iso->armed_L = iso->running_L;
  }
#else
  (void)iso;
#endif
}

/* Makes T the Lua thread iso runs now. Caller holds iso->hook_lock. An
 * armed_L left from another thread is forgotten: that thread may be
 * collected and its address reused by a thread that has no hook. */
static void track_running(ic_isolate *iso, lua_State *T) {
  if (iso->running_L != T) iso->armed_L = NULL;
  iso->running_L = T;
  /* An interrupt or preemption asked for while another Lua thread ran (or
   * nothing was tracked): aim at this one too. */
  if (T && (atomic_load_explicit(&iso->interrupt, memory_order_relaxed) ||
            atomic_load_explicit(&iso->preempt, memory_order_relaxed)))
    lstate_arm_hook(iso);
}

/* core.running([co]): the runtime says which Lua thread runs now: co, or
 * the caller itself. */
static int l_core_running(lua_State *L) {
  ic_isolate *iso = self_of(L);
  lua_State *co = lua_tothread(L, 1);
  plat_mutex_lock(&iso->hook_lock);
  track_running(iso, co ? co : L);
  plat_mutex_unlock(&iso->hook_lock);
  return 0;
}

/* ---- boot, dispatch, close ---------------------------------------------------- */

/* Where a block of Lua's of `size` bytes lives: small ones in the
 * isolate's pool (src/pool.h), the others with malloc. A block moves when a
 * resize crosses POOL_MAX, so that rule always holds and a free needs no
 * lookup. Under ASan the pool poisons what it has not handed out, so the
 * sanitizer builds check this allocator as it ships. */
#define IN_POOL(size) ((size) <= POOL_MAX)

static void *isolate_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  ic_isolate *iso = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    if (ptr && IN_POOL(osize)) pool_free(&iso->pool, ptr, osize);
    else free(ptr);
    iso->mem_used -= old;
    return NULL;
  }
  if (iso->mem_limit && nsize > old && iso->mem_used + (nsize - old) > iso->mem_limit) return NULL;
  void *p;
  if (!ptr) {
    p = IN_POOL(nsize) ? pool_alloc(&iso->pool, nsize) : malloc(nsize);
  } else if (IN_POOL(osize) && IN_POOL(nsize) && pool_same_class(osize, nsize)) {
    pool_resize(ptr, osize, nsize);
    p = ptr;
  } else if (!IN_POOL(osize) && !IN_POOL(nsize)) {
    p = realloc(ptr, nsize);
  } else {
    /* Into or out of the pool, or to another class: copy. A failure leaves
     * the old block as it was, which Lua expects. */
    p = IN_POOL(nsize) ? pool_alloc(&iso->pool, nsize) : malloc(nsize);
    if (!p) return NULL;
    memcpy(p, ptr, osize < nsize ? osize : nsize);
    if (IN_POOL(osize)) pool_free(&iso->pool, ptr, osize);
    else free(ptr);
  }
  if (!p) return NULL;
  iso->mem_used = iso->mem_used - old + nsize;
  return p;
}

/* core.take(m) -> value, sender, corr: decodes a message handed to the pump
 * as a light userdata. Runs inside the pump: a malformed message (or no
 * memory for it) raises there and takes the isolate down. */
static int l_core_take(lua_State *L) {
  const ic_msg *m = lua_touserdata(L, 1);
  if (!m) return luaL_error(L, "take: no message");
  ic_isolate *self = self_of(L);
  lstate_ctx *ctx = self->lctx;
  if (m->len) {
    codec_hooks h = lstate_hooks(self->cluster);
    codec_decode(L, m->data, m->len, &h, &ctx->lim);
  } else {
    lua_pushnil(L);
  }
  if (m->sender == ctx->last_sender && m->sender) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->last_sender_ref);
  } else if (m->sender) {
    lref_push_ctx(L, ctx, m->sender);
    if (((lref *)lua_touserdata(L, -1))->iso == m->sender) {
      lua_pushvalue(L, -1);
      lua_rawseti(L, LUA_REGISTRYINDEX, ctx->last_sender_ref);
      ctx->last_sender = m->sender;
    }
  } else if (m->from_node) {
    lref_push_wire(L, self->cluster, m->from_node, m->from_id);
  } else {
    lua_pushnil(L);
  }
  lua_pushinteger(L, (lua_Integer)m->corr);
  return 3;
}

/* core.traceback(msg, level): debug.traceback without loading the debug
 * library into every isolate. */
static int l_core_traceback(lua_State *L) {
  const char *msg = luaL_optstring(L, 1, NULL);
  int level = (int)luaL_optinteger(L, 2, 1);
  luaL_traceback(L, L, msg, level);
  return 1;
}

/* core.load_extras() -> chunk: the second part of the runtime. */
static int l_core_load_extras(lua_State *L) {
  ic_cluster *c = self_of(L)->cluster;
  if (luaL_loadbufferx(L, c->runtime_extras->data, c->runtime_extras->len, "=isolate_cluster.runtime_extras",
                       "b") != LUA_OK)
    return lua_error(L);
  return 1;
}

/*
 * Standard libraries. Every isolate gets all of them, but only these are
 * opened at once; the others are opened the first time a global of that name
 * is read (an __index on _G; `require` opens package) or they are required
 * (package.preload). They are about half of what a fresh Lua state costs, and
 * most isolates never touch package, table, io, os, math, utf8 or debug. The
 * difference shows only to code that inspects _G's metatable or uses rawget.
 */
static const luaL_Reg eager_libs[] = {
    {LUA_GNAME, luaopen_base}, {LUA_COLIBNAME, luaopen_coroutine}, {LUA_STRLIBNAME, luaopen_string},
    {NULL, NULL}};
static const luaL_Reg lazy_libs[] = {
    {LUA_LOADLIBNAME, luaopen_package}, {LUA_TABLIBNAME, luaopen_table}, {LUA_IOLIBNAME, luaopen_io},
    {LUA_OSLIBNAME, luaopen_os},        {LUA_MATHLIBNAME, luaopen_math}, {LUA_UTF8LIBNAME, luaopen_utf8},
    {LUA_DBLIBNAME, luaopen_debug},     {NULL, NULL}};

/* package.path and cpath as the isolate was given them (see spawn). The
 * package library is on the top of the stack. */
static void set_paths(lua_State *L, const ic_isolate *iso) {
  if (iso->lua_path) {
    lua_pushstring(L, iso->lua_path);
    lua_setfield(L, -2, "path");
  }
  if (iso->lua_cpath) {
    lua_pushstring(L, iso->lua_cpath);
    lua_setfield(L, -2, "cpath");
  }
}

/* A lean isolate (opts.lean) opens the string library on first use too:
 * on a read of the global `string`, on require("string"), or on the first
 * string method call (through this __index of the strings' metatable,
 * which luaopen_string replaces with its own). */
static void open_string(lua_State *L) {
  luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
  codec_forget_names(L); /* new standard functions to name */
}

static int lazy_string_index(lua_State *L) {
  open_string(L);
  lua_pushvalue(L, 2);
  lua_gettable(L, -2);
  return 1;
}

static int lazy_global(lua_State *L) {
  const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
  if (k && strcmp(k, LUA_STRLIBNAME) == 0 && self_of(L)->lean) {
    open_string(L);
    return 1;
  }
  if (k) {
    /* require is the package library's only global function. */
    int req = strcmp(k, "require") == 0;
    for (const luaL_Reg *lib = lazy_libs; lib->func; lib++) {
      if (strcmp(k, lib->name) == 0 || (req && lib->func == luaopen_package)) {
        luaL_requiref(L, lib->name, lib->func, 1);
        if (lib->func == luaopen_package) set_paths(L, self_of(L));
        codec_forget_names(L); /* new standard functions to name */
        if (req) {
          lua_pop(L, 1);
          lua_pushvalue(L, 2);
          lua_rawget(L, 1);
        }
        return 1;
      }
    }
  }
  return 0;
}

static void open_libs(lua_State *L, int lean) {
  for (const luaL_Reg *lib = eager_libs; lib->func; lib++) {
    if (lean && lib->func == luaopen_string) continue;
    luaL_requiref(L, lib->name, lib->func, 1);
    lua_pop(L, 1);
  }
  if (lean) {
    lua_pushliteral(L, "");
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, lazy_string_index);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_pop(L, 1);
  }
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  if (lean) {
    lua_pushcfunction(L, luaopen_string);
    lua_setfield(L, -2, LUA_STRLIBNAME);
  }
  for (const luaL_Reg *lib = lazy_libs; lib->func; lib++) {
    lua_pushcfunction(L, lib->func);
    lua_setfield(L, -2, lib->name);
  }
  lua_pop(L, 1);
  lua_pushglobaltable(L);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, lazy_global);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
}

static int l_boot(lua_State *L) {
  ic_isolate *iso = lua_touserdata(L, 1);
  ic_cluster *c = iso->cluster;
  open_libs(L, iso->lean); /* package, opened on first use, takes iso's paths then */
  /* The application's own C functions, before anything of the isolate's
   * runs (a raise in it fails the boot like a bad entry). */
  if (c->state_hook && c->state_hook(L, c->state_hook_ud) != 0)
    return luaL_error(L, "the application's state hook failed");
  lstate_ctx *ctx = lstate_open(L);
  ctx->self = iso;
  iso->lctx = ctx;
  /* Under a memory limit the key cache would hold memory the isolate's own
   * values may need. */
  if (iso->mem_limit) ctx->lim.key_cache = 0;

  static const luaL_Reg core[] = {
      {"self", l_core_self}, {"main", l_core_main}, {"request", l_core_request},
      {"reply", l_core_reply}, {"timer", l_core_timer}, {"cancel_timer", l_core_cancel_timer}, {"spawn", l_core_spawn},
      {"lookup", l_core_lookup}, {"lookup_prefix", l_core_lookup_prefix},
      {"subscribe", l_core_subscribe}, {"events", l_core_events}, {"up", l_core_up},
      {"children", l_core_children},
      {"stop", l_core_stop}, {"shutdown_cluster", l_core_shutdown_cluster},
      {"log", l_core_log}, {"set_jobs", l_core_set_jobs}, {"set_request", l_core_set_request},
      {"now", l_core_now}, {"running", l_core_running}, {"take", l_core_take},
      {"traceback", l_core_traceback}, {"load_extras", l_core_load_extras},
      {"send_all", l_core_send_all}, {"check_seconds", l_core_check_seconds},
      {"check_options", lstate_core_check_options}, {"monitor", l_core_monitor},
      {"demonitor", l_core_demonitor}, {"set_send_wait", l_core_set_send_wait},
      {"post_pending", l_core_post_pending}, {NULL, NULL}};
  if (luaL_loadbufferx(L, c->runtime_code->data, c->runtime_code->len, RUNTIME_SOURCE, "b") != LUA_OK)
    return lua_error(L);
  luaL_newlib(L, core);
  lua_call(L, 1, 2); /* -> spawn_pump, adopt */

  /* The entry: a function, or a module name whose module returns one. */
  codec_hooks h = lstate_hooks(c);
  codec_decode(L, iso->boot->data, iso->boot->len, &h, &ctx->lim);
  if (lua_type(L, -1) == LUA_TSTRING) {
    const char *name = lua_tostring(L, -1);
    lua_getglobal(L, "require");
    lua_pushvalue(L, -2);
    lua_call(L, 1, 1);
    if (lua_type(L, -1) != LUA_TFUNCTION)
      return luaL_error(L, "module '%s' must return the entry function (it returned a %s)", name,
                        luaL_typename(L, -1));
    lua_remove(L, -2);
  } else if (lua_type(L, -1) == LUA_TTABLE) {
    /* { source = chunk, name = chunkname }: from ic_spawn_lua. */
    size_t len;
    lua_getfield(L, -1, "source");
    lua_getfield(L, -2, "name");
    const char *src = lua_tolstring(L, -2, &len);
    const char *name = lua_tostring(L, -1);
    if (!src) return luaL_error(L, "the entry chunk is missing");
    if (luaL_loadbufferx(L, src, len, name ? name : "=entry", "t") != LUA_OK) return lua_error(L);
    lua_call(L, 0, 1);
    if (lua_type(L, -1) != LUA_TFUNCTION)
      return luaL_error(L, "the entry chunk must return the entry function (it returned a %s)",
                        luaL_typename(L, -1));
    lua_replace(L, -4);
    lua_pop(L, 2);
  }
  if (lua_type(L, -1) != LUA_TFUNCTION) return luaL_error(L, "the entry is not a function");
  blob_release(iso->boot);
  iso->boot = NULL;
  return 3; /* spawn_pump, adopt, entry */
}

static void fail_from_status(ic_isolate *iso, lua_State *L) {
  const char *why = interrupt_reason(iso);
  if (why) {
    isolate_set_ending(iso, why);
    return;
  }
  const char *msg = lua_tostring(L, -1);
  size_t n = strlen(msg ? msg : "") + 8;
  char *r = malloc(n);
  if (r) snprintf(r, n, "error: %s", msg ? msg : "(error object is not a string)");
  isolate_set_ending(iso, r ? r : "error: not enough memory");
  free(r);
}

static void set_running(ic_isolate *iso, lua_State *T) {
  plat_mutex_lock(&iso->hook_lock);
  track_running(iso, T);
  plat_mutex_unlock(&iso->hook_lock);
}

/* Stack of the isolate's main thread: [1] spawn_pump, [2] adopt. */
#define SPAWN_PUMP_IDX 1
#define ADOPT_IDX 2

/* Pops a new pump coroutine from L's top and makes it the isolate's pump. */
static void set_pump(ic_isolate *iso, lua_State *L) {
  lua_State *P = lua_tothread(L, -1);
  if (iso->pump_ref) luaL_unref(L, LUA_REGISTRYINDEX, iso->pump_ref);
  iso->pump_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  iso->pump = P;
}

/* Resumes the pump with nargs values already pushed on it. */
static void pump_resume(ic_isolate *iso, int nargs) {
  lua_State *L = iso->L, *P = iso->pump;
  int nres = 0;
  set_running(iso, P);
  int st = lua_resume(P, L, nargs, &nres);
  set_running(iso, L);
  if (st == LUA_YIELD) {
    if (nres == 1 && lua_isinteger(P, -1)) {
      iso->wait = (int)lua_tointeger(P, -1);
      lua_pop(P, 1);
      return;
    }
    /* A handler running in the pump waits (it yielded a marker) or was
     * preempted (the hook yielded nothing): the pump becomes a job and the
     * runtime hands over a new pump. */
    lua_pop(P, nres);
    lua_pushvalue(L, ADOPT_IDX);
    lua_pushboolean(L, nres == 0);
    if (lua_pcall(L, 1, 2, 0) != LUA_OK) {
      fail_from_status(iso, L);
      lua_settop(L, ADOPT_IDX);
      return;
    }
    iso->wait = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    set_pump(iso, L);
    return;
  }
  if (st == LUA_OK) {
    lua_settop(P, 0);
    isolate_set_ending(iso, "error: the isolate's pump ended");
    return;
  }
  fail_from_status(iso, P);
}

void lstate_boot(ic_isolate *iso) {
  lua_State *L = lua_newstate(isolate_alloc, iso);
  if (!L) {
    isolate_set_ending(iso, "error: not enough memory to create the isolate's Lua state");
    return;
  }
  iso->L = L;
  *(ic_isolate **)lua_getextraspace(L) = iso;
#ifdef IC_SYNC_HOOK
  lua_sethook(L, interrupt_hook, LUA_MASKCOUNT, HOOK_COUNT);
#endif
  set_running(iso, L);
  lua_pushcfunction(L, l_boot);
  lua_pushlightuserdata(L, iso);
  if (lua_pcall(L, 1, 3, 0) != LUA_OK) {
    fail_from_status(iso, L);
    lua_settop(L, 0);
    return;
  }
  /* [spawn_pump, adopt, entry] */
  lua_pushvalue(L, SPAWN_PUMP_IDX);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fail_from_status(iso, L);
    lua_settop(L, 0);
    return;
  }
  set_pump(iso, L);
  lua_xmove(L, iso->pump, 1); /* the entry */
  lua_pushinteger(iso->pump, LSTATE_START);
  pump_resume(iso, 2);
}

void lstate_dispatch(ic_isolate *iso, int kind, ic_msg *m) {
  /* From here the request is this isolate's to answer; if it goes down
   * first, the requester hears so at once (isolate_finish). Without memory
   * to track it, it can still be answered, or it times out. */
  if (m && m->kind == MSG_REQUEST && m->sender) isolate_open_request(iso, m->sender, m->corr);
  else if (m && m->kind == MSG_REQUEST && m->from_node)
    isolate_open_remote_request(iso, m->from_node, m->from_id, m->corr);
  lua_State *P = iso->pump;
  if (!P) {
    isolate_set_ending(iso, "error: isolate state unavailable");
    return;
  }
  if (!lua_checkstack(P, 2)) {
    isolate_set_ending(iso, "error: not enough memory");
    return;
  }
  if (m) lua_pushlightuserdata(P, m);
  else lua_pushnil(P);
  lua_pushinteger(P, kind);
  pump_resume(iso, 2);
}

void lstate_close(ic_isolate *iso) {
  lua_State *L = iso->L;
  plat_mutex_lock(&iso->hook_lock);
  iso->running_L = NULL;
  iso->armed_L = NULL;
  plat_mutex_unlock(&iso->hook_lock);
  iso->L = NULL;
  iso->pump = NULL;
  iso->lctx = NULL;
  if (L) lua_close(L);
  pool_release(&iso->pool); /* after lua_close: its last frees go to the pool */
}
