/*
 * lstate_int.h — what the files of the lstate core (src/lstate.c, lref.c,
 * lsend.c, lcheck.c, lspawn.c, lcore.c, lhook.c, lboot.c, lpump.c) share among
 * themselves and nothing else includes: guards, the hot ref checks (inline,
 * as they are on every send), and the functions l_boot puts in an isolate's
 * core table.
 *
 * Threads: as src/lstate.h — the thread that owns the lua_State given.
 */
#ifndef IC_LSTATE_INT_H
#define IC_LSTATE_INT_H

#include <lauxlib.h>

#include "lstate.h"

/* Instructions between two looks at the interrupt flag and the slice clock
 * when a hook stays set (TSan builds, or a handler not yet able to yield). */
#define HOOK_COUNT 1000

/* The chunk name the isolate runtime is loaded under (l_boot): a function
 * of it at a standard library name would copy as the standard function it
 * stands for (SPEC §2, §4), not as a closure over the runtime's state. */
#define RUNTIME_SOURCE "=isolate_cluster.runtime"

/* Registry key of the per-state data: its address (src/lstate.c). */
extern const char lstate_ctx_key;

/* lstate_ctx_of, inline for the files of the core: every ref check and
 * encode looks the ctx up. */
static inline lstate_ctx *ctx_of(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &lstate_ctx_key);
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
typedef void (*guard_free_fn)(void *p, size_t n);
typedef struct guard {
  guard_free_fn free;
  void *p;     /* NULL: holds nothing */
  size_t n;
} guard;

static inline void guard_drop(guard *g) {
  void *p = g->p;
  g->p = NULL;
  if (p) g->free(p, g->n);
}

/* Pushes an empty guard. May raise, before anything is acquired. */
guard *guard_push(lua_State *L, guard_free_fn fn);
/* guard_free_fn for an array of n retained isolates (malloc'ed). */
void release_isolates(void *p, size_t n);
/* guard_free_fn for one retained isolate. */
void release_isolate(void *p, size_t n);

/* Pushes a list of refs to the n isolates of the guarded array, then frees
 * the array (src/lspawn.c). */
void push_ref_list(lua_State *L, guard *g);
/* Appends to the list at idx, after its first `n` items, the refs of the
 * other nodes' isolates whose path starts with prefix (NULL: all that are
 * up), in the order they came up there. */
void push_remote_refs(lua_State *L, ic_cluster *c, const char *prefix, int idx, lua_Integer n);

/* ---- refs ---------------------------------------------------------------- */

/* A ref is a userdata whose metatable is this state's ref metatable, known
 * by identity (ctx->ref_mt): checking one (every send) costs no string
 * lookup, unlike luaL_testudata. */
static inline lref *ref_test_ctx(lua_State *L, int idx, const lstate_ctx *ctx) {
  lref *r = lua_touserdata(L, idx);
  if (!r || !ctx) return NULL;
  /* A ref this state holds on to (see lstate_ctx): its memory is a live
   * ref's, whatever the value at idx (only C could pass its address as a
   * light userdata). */
  if (r == ctx->sender_ud || r == ctx->hot_ud) return r;
  if (!lua_getmetatable(L, idx)) return NULL;
  int same = lua_topointer(L, -1) == ctx->ref_mt;
  lua_pop(L, 1);
  return same ? r : NULL;
}

static inline lref *lref_check_ctx(lua_State *L, int idx, const lstate_ctx *ctx) {
  lref *r = ref_test_ctx(L, idx, ctx);
  if (!r) luaL_typeerror(L, idx, "isolate_ref");
  return r;
}

/* Pushes the ref of iso (from the cache, or a new one). May raise. */
void lref_push_ctx(lua_State *L, const lstate_ctx *ctx, ic_isolate *iso);

/* The ref methods lstate_open installs (src/lref.c, src/lsend.c). */
/* Pushes true, or false and why (src/lsend.c): what send and kill return. */
int push_send_result(lua_State *L, const char *why);
int l_ref_send(lua_State *L);
int l_ref_kill(lua_State *L);
int l_ref_property(lua_State *L);
int l_ref_properties(lua_State *L);
int l_ref_index(lua_State *L);
int l_ref_eq(lua_State *L);
int l_ref_tostring(lua_State *L);
int l_ref_gc(lua_State *L);

/* Pushes a userdata holding an empty buffer freed by its __gc
 * (src/lsend.c). */
codec_buf *private_buf_push(lua_State *L);

/* ---- an isolate's state -------------------------------------------------- */

/* The pump's state (src/lpump.c): what the current pump runs. */
typedef struct lpump {
  int failed;      /* going down: nothing more runs */
  int entry_done;  /* the entry function has returned */
  int extras;      /* runtime_extras.lua is loaded */
  int handler;     /* a message handler is set */
  int current;     /* the extras have a job that waits or was preempted */
  int queued;      /* ... and handler runs queued behind it */
  /* What the pump is resumed to dispatch (lstate_dispatch): */
  int kind;        /* MSG_* or LSTATE_* */
  void *m;         /* the message (or NULL), owned by the caller */
  int settled;     /* the pump yielded after its dispatch ... */
  int mode;        /* ... leaving this wait mode (WAIT_*) */
  int nargs;       /* arguments of the pump's next resume: a new pump's, else 0 */
  /* The handler the current pump runs, if any: */
  int active;      /* one runs */
  int entry;       /* it is the entry function, not yet "up" */
  int request;     /* it answers the request corr */
  int has_record;  /* the extras hold a record of it (core.pump_job) */
  lua_Integer corr;
  /* The pump coroutine whose stack keeps [2] the message handler's error
   * handler and [3] the message handler between dispatches, or NULL: let
   * go when the handler changes or the pump is adopted. */
  lua_State *cached;
} lpump;

/* Sets up the pump's state and the context in an isolate's state L
 * (l_boot, after lstate_open). May raise. */
void lpump_open(lua_State *L);
/* Pushes a new pump coroutine, ready for its first (m, kind). May raise. */
void lpump_push_new(lua_State *L);
/* The current pump yielded from inside a handler: to wait, or preempted
 * ([1] true). Hands that pump to the extras as a waiting job and returns
 * the new pump and the wait mode. A lua_CFunction, called protected. */
int lpump_adopt(lua_State *L);
/* Is L the current pump of iso, running a handler? */
int lpump_running(ic_isolate *iso, lua_State *L);
/* Pushes the runtime's jobs table (coroutine -> job record) and returns
 * its type: LUA_TNIL before the extras were loaded (src/lhook.c). */
int lstate_push_jobs(lua_State *L);
/* Pushes m's value and its sender's ref (nil for none) (src/lsend.c). */
void lstate_push_taken(lua_State *L, const ic_msg *m);

/* The isolate whose state L (or a thread of it) is. */
static inline ic_isolate *self_of(lua_State *L) { return *(ic_isolate **)lua_getextraspace(L); }

static inline const char *interrupt_reason(ic_isolate *iso) {
  switch (atomic_load(&iso->interrupt)) {
  case INTERRUPT_KILL: return "killed";
  case INTERRUPT_SHUTDOWN: return "shutdown";
  default: return NULL;
  }
}

/* The hook (src/lhook.c): lstate_boot sets it for good in IC_SYNC_HOOK
 * builds. */
void interrupt_hook(lua_State *L, lua_Debug *ar);
/* Makes T the Lua thread iso runs now (the owner only; see src/lhook.c).
 * Mostly T runs already and nothing is asked: two loads (the owner is the
 * only writer of running_L). */
void set_running_slow(ic_isolate *iso, lua_State *T);
static inline void set_running(ic_isolate *iso, lua_State *T) {
  if (atomic_load_explicit(&iso->running_L, memory_order_relaxed) == T &&
      !atomic_load_explicit(&iso->interrupt, memory_order_relaxed) &&
      !atomic_load_explicit(&iso->preempt, memory_order_relaxed))
    return;
  set_running_slow(iso, T);
}

/* The functions of an isolate's core table (l_boot, src/lboot.c). */
int l_core_self(lua_State *L);          /* src/lcore.c */
int l_core_main(lua_State *L);
int l_core_timer(lua_State *L);
int l_core_cancel_timer(lua_State *L);
int l_core_spawn(lua_State *L);
int l_core_lookup(lua_State *L);
int l_core_lookup_prefix(lua_State *L);
int l_core_subscribe(lua_State *L);
int l_core_events(lua_State *L);
int l_core_monitor(lua_State *L);
int l_core_demonitor(lua_State *L);
int l_core_children(lua_State *L);
int l_core_up(lua_State *L);
int l_core_stop(lua_State *L);
int l_core_shutdown_cluster(lua_State *L);
int l_core_log(lua_State *L);
int l_core_set_request(lua_State *L);
int l_core_now(lua_State *L);
int l_core_request(lua_State *L);       /* src/lsend.c */
int l_core_reply(lua_State *L);
int l_core_send_all(lua_State *L);
int l_core_set_send_wait(lua_State *L);
int l_core_post_pending(lua_State *L);
int l_core_take(lua_State *L);
int l_core_set_jobs(lua_State *L);      /* src/lhook.c */
int l_core_running(lua_State *L);
int l_core_cocreate(lua_State *L);
int l_core_coresume(lua_State *L);
int l_core_coyield(lua_State *L);
int l_core_corunning(lua_State *L);
int l_core_coisyieldable(lua_State *L);
/* Opens an isolate's coroutine library: Lua's, with resume, wrap and yield
 * that follow the running thread (src/lhook.c). A lua_CFunction, like
 * luaopen_coroutine, for the libraries opened on first use. */
int lboot_open_coroutine(lua_State *L);
int l_core_check_seconds(lua_State *L); /* src/lcheck.c */

#endif
