/*
 * lsend — messages in and out of a lua_State: the codec hooks that carry
 * refs across the wire, the encode buffers, posting to an isolate of this
 * node or through the net to another node's, ref:send (with and without a
 * wait for room), send_all, and the isolate's core.request, core.reply,
 * core.post_pending and core.take (the decode of a message handed to the
 * pump). This is the per-message path: its helpers stay static here so the
 * compiler keeps them inline.
 *
 * Threads: the thread that owns the lua_State; a main state's waits block
 * that thread (cluster_main_wait). No lock of its own: isolate_post and
 * net_send take theirs.
 */
#include "lstate_int.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "net/net.h"

/* ---- wire hooks: refs inside messages ---------------------------------- */

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

codec_hooks lstate_hooks(ic_cluster *c) {
  codec_hooks h = {ref_to_wire, ref_from_wire, c, RUNTIME_SOURCE};
  return h;
}

/* ---- encoding, decoding, posting ------------------------------------------ */

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

/* The message blocks of the thread this state runs on (mailbox.h): a pool
 * worker's while an isolate runs there, else none. */
static inline msg_cache *state_cache(lstate_ctx *ctx) {
  worker *w = state_worker(ctx);
  return w ? &w->mcache : NULL;
}

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

codec_buf *private_buf_push(lua_State *L) {
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

/* The message of the value at idx (absolute), or NULL when out of memory;
 * raises on an uncopyable value. A scalar, a short string or a small table
 * of those (the commonest messages) is encoded on the C stack, without the
 * encoder's set-up, straight into the message. Needs 2 free stack slots. */
static inline ic_msg *encode_msg_ctx(lua_State *L, lstate_ctx *ctx, int idx, const char *root, int kind) {
  char small[CODEC_SMALL_MAX];
  size_t len = codec_encode_small(L, idx, small);
  if (len && len <= ctx->lim.max_bytes) return msg_new_in(state_cache(ctx), kind, small, len);
  codec_buf *b = encode_begin(L, ctx, idx, root, 0);
  ic_msg *m = msg_new_in(state_cache(ctx), kind, b->data, b->len);
  encode_end(L, ctx, b, 0);
  return m;
}

ic_msg *lstate_encode_msg(lua_State *L, int idx, const char *root, int kind) {
  idx = lua_absindex(L, idx);
  if (!lua_checkstack(L, 2)) luaL_error(L, "not enough memory to copy %s", root);
  return encode_msg_ctx(L, ctx_of(L), idx, root, kind);
}

void lstate_encode_push(lua_State *L, int idx, const char *root) {
  lstate_ctx *ctx = ctx_of(L);
  idx = lua_absindex(L, idx);
  char small[CODEC_SMALL_MAX];
  size_t len = lua_checkstack(L, 2) ? codec_encode_small(L, idx, small) : 0;
  if (len && len <= ctx->lim.max_bytes) {
    lua_pushlstring(L, small, len);
    return;
  }
  /* A private buffer: lua_pushlstring may raise (memory) before it copies. */
  codec_buf *b = encode_begin(L, ctx, idx, root, 1);
  lua_pushlstring(L, b->data, b->len);
  encode_end(L, ctx, b, 1);
}

static int decode_protected(lua_State *L) {
  const ic_msg *m = lua_touserdata(L, 1);
  ic_cluster *c = lua_touserdata(L, 2);
  lstate_ctx *ctx = ctx_of(L);
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

int push_send_result(lua_State *L, const char *why) {
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
    char small[CODEC_SMALL_MAX];
    size_t len = codec_encode_small(L, idx, small);
    if (len && len <= ctx->lim.max_bytes) return post_remote(ctx, r, kind, small, len, corr);
    codec_buf *b = encode_begin(L, ctx, idx, "msg", 0);
    const char *why = post_remote(ctx, r, kind, b->data, b->len, corr); /* runs no Lua code */
    encode_end(L, ctx, b, 0);
    return why;
  }
  if (!r->iso) return "isolate down";
  if (!atomic_load_explicit(&r->iso->alive, memory_order_acquire)) return "isolate down";
  ic_msg *m = encode_msg_ctx(L, ctx, idx, "msg", kind);
  /* A request carries its own failure (mailbox.h): it can always be failed. */
  if (m && kind == MSG_REQUEST && msg_add_spare(m)) {
    msg_free_in(state_cache(ctx), m);
    m = NULL;
  }
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
  lstate_ctx *ctx = ctx_of(L);
  lua_Integer n = (lua_Integer)lua_rawlen(L, refs_idx), bad = first_non_ref(L, refs_idx, n, ctx);
  if (bad) return luaL_error(L, "send_all: refs[%d] is not a ref", (int)bad);
  /* Each receiver's outcome, in memory Lua owns: nothing may raise while the
   * shared bytes exist. */
  lua_Integer room = n;
  const char **whys = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof *whys, 0);
  char small[CODEC_SMALL_MAX];
  size_t len = codec_encode_small(L, msg_idx, small);
  ic_blob *blob;
  if (len && len <= ctx->lim.max_bytes) {
    blob = blob_new(small, len);
  } else {
    codec_buf *b = encode_begin(L, ctx, msg_idx, "msg", 0);
    blob = blob_new(b->data, b->len);
    encode_end(L, ctx, b, 0);
  }
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
int l_ref_send(lua_State *L) {
  lstate_ctx *ctx = lua_touserdata(L, lua_upvalueindex(1));
  lref *r = lref_check_ctx(L, 1, ctx);
  if (r != ctx->sender_ud && r != ctx->hot_ud) {
    /* Most sends go to the ref of the send before (or to the last
     * sender): that one is then known without its metatable. */
    lua_pushvalue(L, 1);
    if (ctx->hot_ref_ref) lua_rawseti(L, LUA_REGISTRYINDEX, ctx->hot_ref_ref);
    else ctx->hot_ref_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* the state's first send */
    ctx->hot_ud = r;
  }
  int top = lua_gettop(L);
  if (top < 2) luaL_checkany(L, 2); /* raises */
  if (top > 2 && !lua_isnil(L, 3)) return send_waiting(L, ctx, r, check_wait_s(L, 3));
  return push_send_result(L, post_value(L, ctx, r, MSG_USER, 2, 0));
}

/* ---- the isolate's core functions that send and take ------------------------ */

/* core.request(ref, msg, corr) -> true | false, why */
int l_core_request(lua_State *L) {
  lstate_ctx *ctx = self_of(L)->lctx;
  lref *r = lref_check_ctx(L, 1, ctx);
  lua_Integer corr = luaL_checkinteger(L, 3);
  /* The runtime refuses its own ref (rawequal, before it checks that the
   * caller may wait); another userdata for this isolate is refused here,
   * by identity, without the cost of __eq on every request. */
  const ic_isolate *self = ctx->self;
  if (r->iso == self || (!r->remote && r->id == self->id && r->node == self->cluster->node_id))
    return push_send_result(L, "an isolate cannot request itself (nothing answers while it waits)");
  return push_send_result(L, post_value(L, ctx, r, MSG_REQUEST, 2, (uint64_t)corr));
}

/* core.reply(ref, corr, ok, value) -> true | false, why. The value is
 * encoded before anything is allocated, so an uncopyable reply raises. */
int l_core_reply(lua_State *L) {
  ic_isolate *self = self_of(L);
  lref *r = lref_check_ctx(L, 1, self->lctx); /* the ctx from the isolate: no registry lookup */
  lua_Integer corr = luaL_checkinteger(L, 2);
  int ok = lua_toboolean(L, 3);
  if (!r->iso && !r->remote) return push_send_result(L, "isolate down");
  ic_msg *m = encode_msg_ctx(L, self->lctx, 4, ok ? "reply" : "error", ok ? MSG_REPLY : MSG_REPLY_ERROR);
  if (m && !r->iso) {
    /* to another node's requester: the net copies the bytes */
    const char *why = post_remote(self->lctx, r, m->kind, m->data, m->len, (uint64_t)corr);
    msg_free(m);
    isolate_close_remote_request(self, r->node, r->id, (uint64_t)corr);
    return push_send_result(L, why);
  }
  ic_isolate *to = r->iso;
  if (!m) {
    /* No memory for the answer: the request's spare carries the failure, so
     * the requester does not wait for its timeout. */
    ic_msg *spare = to ? isolate_take_request(self, to, (uint64_t)corr, "not enough memory for the reply") : NULL;
    if (!spare) return push_send_result(L, "out of memory");
    return push_send_result(L, isolate_post_sys(to, spare, self->worker));
  }
  m->corr = (uint64_t)corr;
  const char *why = isolate_post_sys(to, m, self->worker);
  /* Answered (or its requester is gone): no longer refused at the end. */
  isolate_close_request(self, to, (uint64_t)corr);
  return push_send_result(L, why);
}

int l_core_send_all(lua_State *L) { return lstate_send_all(L, 1, 2); }

/* core.set_send_wait(extras): the function that returns the runtime's
 * extras, whose send_wait waits for ref:send with wait_s. Kept as an
 * upvalue of the send method: no closure, no registry entry per state. */
int l_core_set_send_wait(lua_State *L) {
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
int l_core_post_pending(lua_State *L) {
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

/* core.take(m) -> value, sender, corr: decodes a message handed to the pump
 * as a light userdata. Runs inside the pump: a malformed message (or no
 * memory for it) raises there and takes the isolate down. */
int l_core_take(lua_State *L) {
  const ic_msg *m = lua_touserdata(L, 1);
  if (!m) return luaL_error(L, "take: no message");
  lstate_push_taken(L, m);
  lua_pushinteger(L, (lua_Integer)m->corr);
  return 3;
}

void lstate_push_taken(lua_State *L, const ic_msg *m) {
  ic_isolate *self = self_of(L);
  lstate_ctx *ctx = self->lctx;
  /* (a small message needs no more than the stack a C function starts with) */
  if (m->len <= CODEC_SMALL_MAX && m->len <= ctx->lim.max_bytes && codec_decode_small(L, m->data, m->len)) {
    /* pushed */
  } else if (m->len) {
    codec_hooks h = lstate_hooks(self->cluster);
    codec_decode(L, m->data, m->len, &h, &ctx->lim);
  } else {
    lua_pushnil(L);
  }
  if (m->sender == ctx->last_sender && m->sender) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->last_sender_ref);
  } else if (m->sender) {
    lref_push_ctx(L, ctx, m->sender);
    lref *r = lua_touserdata(L, -1);
    if (r->iso == m->sender) {
      lua_pushvalue(L, -1);
      lua_rawseti(L, LUA_REGISTRYINDEX, ctx->last_sender_ref);
      ctx->last_sender = m->sender;
      ctx->sender_ud = r;
    }
  } else if (m->from_node) {
    lref_push_wire(L, self->cluster, m->from_node, m->from_id);
  } else {
    lua_pushnil(L);
  }
}
