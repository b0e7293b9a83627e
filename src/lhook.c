/*
 * lhook — interrupts (kill, shutdown) and preemption of a running isolate:
 * the one-shot count hook, arming it from another thread, and tracking which
 * Lua thread of the isolate runs now.
 *
 * Threads: lstate_arm_hook runs on any thread with iso->hook_lock held;
 * the hook itself on the isolate's worker, inside its Lua code;
 * set_running and core.running on the worker, without the lock but when
 * an arming is under way or asked for.
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

/* Registry key of the runtime's jobs table: the address of this constant. */
static const char JOBS_KEY = 'j';

/* Instructions between two calls of the hook once it is armed (see
 * interrupt_hook): a kill or a preemption acts within that many. */
#define HOOK_LOOK_COUNT 100

/* ---- interrupts and preemption ------------------------------------------------ */

int l_core_set_jobs(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &JOBS_KEY);
  return 0;
}

int lstate_push_jobs(lua_State *L) { return lua_rawgetp(L, LUA_REGISTRYINDEX, &JOBS_KEY); }

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
  ic_isolate *iso = self_of(L);
  if (L == iso->pump) return lpump_running(iso, L);
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

#ifndef IC_SYNC_HOOK
/* Removes the hook from L (the thread running it), unless a newer arming
 * aimed at L since. O(1): lua_sethook walks the call stack only to set a
 * hook, never to clear one. (The TSan build's hook is permanent.) */
static void hook_disarm(ic_isolate *iso, lua_State *L) {
  plat_mutex_lock(&iso->hook_lock);
  lua_sethook(L, NULL, 0, 0);
  if (atomic_load(&iso->armed_L) == L) atomic_store(&iso->armed_L, NULL);
  plat_mutex_unlock(&iso->hook_lock);
}
#endif

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
void interrupt_hook(lua_State *L, lua_Debug *ar) {
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
  /* Raised before running_L is read (see set_running). */
  atomic_store(&iso->arming, 1);
  lua_State *T = atomic_load(&iso->running_L);
  /* Armed already (the monitor asks again at every tick of a long turn):
   * setting it again would walk the stack again for nothing. */
  if (T && atomic_load(&iso->armed_L) != T) {
    /* An interrupt acts at the next instruction; a preemption may wait. */
    int count = atomic_load(&iso->interrupt) ? 1 : HOOK_LOOK_COUNT;
    lua_sethook(T, interrupt_hook, LUA_MASKCOUNT, count);
    atomic_store(&iso->armed_L, T);
  }
  atomic_store(&iso->arming, 0);
#else
  (void)iso;
#endif
}

/*
 * lstate_arm_hook from the owner's thread, for T which it is about to run
 * (iso->hook_lock held). A hook still set on T from an earlier arming (T
 * ran before, and was left before the hook's count ran out), or inherited
 * by a new coroutine from the thread that made it, keeps its countdown:
 * setting it again would start the count over, and a handler that switches
 * to its own coroutines more often than every HOOK_LOOK_COUNT of its
 * instructions would never meet it. An interrupt needs a count of 1.
 */
static void arm_own(ic_isolate *iso, lua_State *T) {
#ifndef IC_SYNC_HOOK
  if (lua_gethook(T) == interrupt_hook && (lua_gethookmask(T) & LUA_MASKCOUNT) &&
      (!atomic_load(&iso->interrupt) || lua_gethookcount(T) == 1)) {
    atomic_store(&iso->armed_L, T);
    return;
  }
#else
  (void)T; /* the TSan build's hook is permanent */
#endif
  lstate_arm_hook(iso);
}

/*
 * Makes T the Lua thread iso runs now: on the owner's thread, around
 * every resume of a coroutine, so without the lock (which cost more than
 * the rest of a message's hand-off); set_running (lstate_int.h) comes here
 * only when T is not running_L already or something was asked. The store of running_L and the load of
 * `arming` are sequentially consistent, as are lstate_arm_hook's store of
 * `arming` and load of running_L: an arming either reads T, or began
 * before the store and is waited for here (hook_lock taken once), so no
 * hook is set on the old thread once it may be collected. armed_L is
 * forgotten after that wait: the old thread's address may be reused by a
 * thread that has no hook. An interrupt or a preemption asked for while
 * another Lua thread ran (or nothing was tracked) is aimed at T too.
 */
void set_running_slow(ic_isolate *iso, lua_State *T) {
  lua_State *was = atomic_load_explicit(&iso->running_L, memory_order_relaxed);
  if (was != T) {
    atomic_store(&iso->running_L, T);
    if (atomic_load(&iso->arming)) {
      plat_mutex_lock(&iso->hook_lock);
      plat_mutex_unlock(&iso->hook_lock);
    }
    atomic_store_explicit(&iso->armed_L, NULL, memory_order_relaxed);
  }
  if (T && (atomic_load_explicit(&iso->interrupt, memory_order_relaxed) ||
            atomic_load_explicit(&iso->preempt, memory_order_relaxed))) {
    plat_mutex_lock(&iso->hook_lock);
    arm_own(iso, T);
    plat_mutex_unlock(&iso->hook_lock);
  }
}

/* core.running([co]): the runtime says which Lua thread runs now: co, or
 * the caller itself. */
int l_core_running(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  set_running(self_of(L), co ? co : L);
  return 0;
}

/* ---- coroutines ------------------------------------------------------------------ */

/*
 * An isolate's runtime is built on coroutines (the pump, jobs), and the
 * user's coroutine.resume, wrap and yield must tell the hook which Lua
 * thread runs (so a kill reaches code inside the user's own coroutines) and
 * refuse a yield that would reach the runtime. All of it is C: functions
 * cost a state nothing, where the runtime's Lua closures for the same cost
 * each isolate about 1.6 KB. So the runtime takes its coroutine functions
 * from core (core.cocreate ...), and the coroutine library is opened on
 * first use like the others (lboot_open_coroutine), with these three in it.
 */

int l_core_cocreate(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  return 1;
}

int l_core_coyield(lua_State *L) { return lua_yield(L, lua_gettop(L)); }

int l_core_corunning(lua_State *L) {
  int main = lua_pushthread(L);
  lua_pushboolean(L, main);
  return 2;
}

int l_core_coisyieldable(lua_State *L) {
  lua_pushboolean(L, lua_isyieldable(L));
  return 1;
}

/* Resumes co with the narg values on L's top. Returns the number of values
 * it yielded or returned, now on L, or -1 with the error on L (as Lua's own
 * coroutine.resume does). tracked: tell the hook co runs meanwhile. */
static int resume_co(lua_State *L, lua_State *co, int narg, int tracked) {
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_xmove(L, co, narg);
  ic_isolate *iso = self_of(L);
  int nres;
  if (tracked) set_running(iso, co);
  int status = lua_resume(co, L, narg, &nres);
  if (tracked) set_running(iso, L);
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1);
  return -1;
}

static int resume_result(lua_State *L, int r) {
  if (r < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return r + 1;
}

static lua_State *check_co(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  return co;
}

/* core.coresume: the runtime's own resume of a job (it tells the hook
 * itself, core.running). */
int l_core_coresume(lua_State *L) {
  lua_State *co = check_co(L);
  return resume_result(L, resume_co(L, co, lua_gettop(L) - 1, 0));
}

/* coroutine.resume in an isolate. */
static int co_resume(lua_State *L) {
  lua_State *co = check_co(L);
  return resume_result(L, resume_co(L, co, lua_gettop(L) - 1, 1));
}

/* The function coroutine.wrap returns: an error inside the coroutine is
 * raised again as it is. */
static int co_wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int r = resume_co(L, co, lua_gettop(L), 1);
  if (r < 0) return lua_error(L);
  return r;
}

static int co_wrap(lua_State *L) {
  l_core_cocreate(L);
  lua_pushcclosure(L, co_wrapped, 1);
  return 1;
}

/* coroutine.yield in an isolate: a handler's own yield would reach the
 * runtime (the handler runs in one of its coroutines), which would take it
 * for a wait: refused. */
static int co_yield(lua_State *L) {
  int n = lua_gettop(L);
  int handler = L == self_of(L)->pump;
  if (!handler && lua_rawgetp(L, LUA_REGISTRYINDEX, &JOBS_KEY) == LUA_TTABLE) {
    lua_pushthread(L);
    handler = lua_rawget(L, -2) != LUA_TNIL;
  }
  if (handler)
    return luaL_error(L, "coroutine.yield cannot suspend a handler: use context:sleep, context:receive or "
                         "ref:request");
  lua_settop(L, n);
  return lua_yield(L, n);
}

int lboot_open_coroutine(lua_State *L) {
  luaopen_coroutine(L);
  static const luaL_Reg own[] = {{"resume", co_resume}, {"wrap", co_wrap}, {"yield", co_yield}, {NULL, NULL}};
  luaL_setfuncs(L, own, 0);
  return 1;
}
