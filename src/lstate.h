/*
 * lstate — everything that touches a lua_State: the ref userdata shared by
 * the main state and the isolates, the `core` functions the isolate runtime
 * calls, and booting, dispatching into and closing an isolate's state.
 * The code is split by concept: src/lstate.c (per-state data, guards,
 * lstate_open), lref.c (refs), lsend.c (encode, decode, posting, send),
 * lcheck.c (argument checks), lspawn.c (spawn, lookup, stats), lcore.c
 * (the core functions), lhook.c (interrupts, preemption), lpump.c (the
 * pump, a handler's run, the context), lboot.c (allocator, libraries,
 * boot, resuming the pump, close); src/lstate_int.h is what they share.
 *
 * Threads: each function runs on the thread that owns the lua_State it is
 * given (an isolate's worker, or the thread of the main state).
 */
#ifndef IC_LSTATE_H
#define IC_LSTATE_H

#include <lua.h>

#include "cluster.h"
#include "codec.h"
#include "isolate.h"

#define LREF_MT "isolate_cluster.ref"

/* Kinds passed to the runtime's dispatch beyond the MSG_* message kinds. */
enum { LSTATE_EVENTS = 10, LSTATE_RESUME = 11, LSTATE_SHUTDOWN = 12, LSTATE_START = 13,
       LSTATE_CHECK = 14 /* something that kept the isolate up has gone: may it end? */ };

/* Installs the one-shot interrupt/preemption hook on iso's running Lua
 * thread, if any. Caller holds iso->hook_lock. Any thread: this is the
 * asynchronous use lua_sethook is made for (lua.c does it from SIGINT). */
void lstate_arm_hook(ic_isolate *iso);

typedef struct lref {
  ic_isolate *iso;   /* strong reference, or NULL for an isolate not of this node */
  ic_cluster *remote; /* an isolate of another node of this multi-node cluster:
                         the cluster (retained) whose net reaches it; else NULL */
  uint32_t node;
  uint64_t id;
} lref;

/* Per-state data, kept in a userdata in the registry. */
typedef struct lstate_ctx {
  ic_isolate *self;  /* the isolate this state is, or NULL in a main state */
  codec_buf buf;     /* scratch for encoding, empty (len 0) while no encode
                        into it is in flight; freed by the userdata's __gc */
  codec_limits lim;
  /* For the hot paths, which get the ctx as an upvalue (ref methods) or
   * from their isolate rather than by a registry lookup: */
  const void *ref_mt; /* the ref metatable (anchored in the registry) */
  int cache_ref;      /* registry index of the ref cache table */
  /* The sender of the last message this isolate took, and the registry
   * index of its ref (held strongly there, so the ref, which retains the
   * sender, keeps the pointer from being reused): most messages come from
   * the same sender as the one before, and its ref is then pushed without
   * a cache lookup. NULL until a message whose ref retains its sender. */
  const ic_isolate *last_sender;
  int last_sender_ref;
  /* Ref userdata known to be refs without a metatable check (ref_test_ctx):
   * the last sender's (above), and the last receiver of a ref:send, held
   * strongly at registry index hot_ref_ref (0 until the first send) so
   * neither address can be reused while it is here. */
  const void *sender_ud, *hot_ud;
  int hot_ref_ref;
  struct lpump *pump; /* an isolate's pump (src/lpump.c), or NULL */
} lstate_ctx;

/* Sets up refs and the per-state data in L (idempotent). May raise. */
lstate_ctx *lstate_open(lua_State *L);
lstate_ctx *lstate_ctx_of(lua_State *L);

void lref_push(lua_State *L, ic_isolate *iso);
void lref_push_wire(lua_State *L, ic_cluster *c, uint32_t node, uint64_t id);
lref *lref_check(lua_State *L, int idx);   /* raises unless a ref */
lref *lref_test(lua_State *L, int idx);    /* the ref, or NULL */
codec_hooks lstate_hooks(ic_cluster *c);

/* Encodes the value at idx into a new message of kind (sender and corr
 * unset): NULL when out of memory. Raises on an uncopyable value, naming the
 * path inside it from root. Safe to call from a __gc finalizer while another
 * encode of this state is in flight (see src/lsend.c, "Encode buffers"). */
ic_msg *lstate_encode_msg(lua_State *L, int idx, const char *root, int kind);
/* Encodes the value at idx and pushes its bytes as a string. Raises on an
 * uncopyable value. */
void lstate_encode_push(lua_State *L, int idx, const char *root);

/* Decodes m's payload and pushes it, in protected mode; on failure pushes
 * the error message and returns the Lua status. m stays owned by the caller. */
int lstate_decode_msg(lua_State *L, ic_cluster *c, const ic_msg *m);

/* The spawn_isolate behind both cluster:spawn_isolate and
 * context:spawn_isolate: arguments entry, properties, opts at arg..arg+2.
 * Pushes the new ref. Raises on misuse. */
int lstate_spawn(lua_State *L, ic_cluster *c, int arg, ic_isolate *creator, int hidden);
/* lookup_isolate(path): pushes the ref at the path (of this node or, in a
 * multi-node cluster, of another) or nil, waiting until deadline (monotonic
 * ns; 0 = no wait), and returns 1; for a path no isolate can hold
 * (cluster_path_is_name) pushes nil, true at once and returns 2. */
int lstate_lookup(lua_State *L, ic_cluster *c, int arg, uint64_t deadline);
/* lookup_isolate with the finding done by find(ud, c, path), which returns
 * a retained isolate or NULL (e.g. a wait the caller can interrupt; a wait
 * ends too when another node's isolate holds the path); the hold is
 * released even when pushing the ref raises. Pushes and returns as
 * lstate_lookup. */
typedef ic_isolate *(*lstate_find_fn)(void *ud, ic_cluster *c, const char *path);
int lstate_lookup_with(lua_State *L, ic_cluster *c, int arg, lstate_find_fn find, void *ud);
/* Pushes the ref of another node's isolate at path and returns 1, or
 * pushes nothing and returns 0. */
int lstate_push_remote_path(lua_State *L, ic_cluster *c, const char *path);
/* The path at idx, a string without NUL bytes; raises naming fname. */
const char *lstate_check_path(lua_State *L, int idx, const char *fname);
/* The string (or number) at idx as a C string: when it holds NUL bytes, a
 * copy with each written "\0" is pushed and returned, so that C, which
 * stops at the first NUL, keeps all of it (a down reason, a log line).
 * NULL for other values. May raise for memory. */
const char *lstate_tocstring(lua_State *L, int idx);
/* The module name at idx (a string): not empty and without NUL bytes, or
 * raises naming fname. */
const char *lstate_check_module(lua_State *L, int idx, const char *fname);
/* Raises `<fname>: unknown option "KEY"` for a key of the options table at
 * idx that is not in allowed (NULL-terminated), or that is not a string. */
void lstate_check_options(lua_State *L, int idx, const char *fname, const char *const *allowed);
/* core.check_options(opts, fname, name...), in the main module and in
 * every isolate's core. */
int lstate_core_check_options(lua_State *L);
/* The time in seconds at idx: a number, not NaN, >= 0 (> 0 with positive).
 * Raises "<fname>: <what> must be ..." otherwise; the main state and the
 * isolates' runtime check every time they take with it. */
double lstate_check_seconds(lua_State *L, int idx, const char *fname, const char *what, int positive);
/* Option field `what` of the table at t, when set: an integer-valued number
 * (not a string that converts) within [min, max]; nil leaves dflt. Raises
 * "<fname>: opts.<what> must be ..." otherwise. */
lua_Integer lstate_opt_integer(lua_State *L, int t, const char *fname, const char *what, lua_Integer dflt,
                               lua_Integer min, lua_Integer max);
/* Option field `what` of the table at t: nil or false is 0, true is 1,
 * anything else raises "<fname>: opts.<what> must be a boolean, got ...". */
int lstate_opt_flag(lua_State *L, int t, const char *fname, const char *what);
/* send_all(refs, msg): pushes the number accepted and a table of reasons by
 * index (or nil). Encodes msg once. */
int lstate_send_all(lua_State *L, int refs_idx, int msg_idx);
int lstate_lookup_prefix(lua_State *L, ic_cluster *c, int arg);
/* Pushes a table with the cluster's counters. */
int lstate_stats(lua_State *L, ic_cluster *c);

/* Isolate side. */
void lstate_boot(ic_isolate *iso);
void lstate_dispatch(ic_isolate *iso, int kind, ic_msg *m);
void lstate_close(ic_isolate *iso);

#endif
