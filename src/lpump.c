/*
 * lpump — the pump: the coroutine an isolate's messages and events are
 * resumed into, and the context its entry function gets, in C.
 *
 * Contract. The pump is a Lua thread whose body is a C function
 * (pump_dispatch). C resumes it (src/lboot.c) with what to dispatch in the
 * pump's struct: kind, and m, a message decoded here (or NULL); the entry
 * function, for LSTATE_START, is the first resume's argument. The pump
 * dispatches it and yields, leaving the isolate's wait mode (WAIT_*) in
 * the struct (settled).
 * The fast path needs no Lua code of the runtime at all: a message or
 * request for an isolate with no waiting or queued handler is decoded and
 * its handler called from here, in a protected call with continuation
 * (lua_pcallk), so the handler may wait or be preempted: its yield passes
 * through this function and reaches C (src/lboot.c, pump_resume), which
 * calls lpump_adopt. Adopting turns the pump into a waiting job of the
 * extras (lua/isolate_cluster/runtime_extras.lua, loaded on first use) and
 * makes a new pump; the old one, resumed by the extras when its wait is
 * over, finishes its handler (the reply of a request, "up" after the entry
 * function) and ends, returning the extras' DONE marker. Everything else
 * (replies, timers, events, a preempted handler to resume, shutdown, and
 * any message while a handler waits or was preempted) is the extras'
 * dispatch, which exists only once they are loaded.
 *
 * The run of a handler in the current pump is described by the lpump
 * struct (active, entry, request, corr, and the requester in a user value):
 * no table per run. The extras see it as a job record (a table) only when
 * they ask (core.pump_job: a wait, reply_later, an adoption); such a record
 * lives in their jobs table for the rest of that run, and its fields then
 * say how the run ends (a deferred reply).
 *
 * Ending (SPEC §3.7): once the entry function has returned, an isolate
 * with nothing left to run goes down with reason "normal": no message
 * handler, no handler or timer of the extras, no waiting or queued handler
 * run, and no linked child still up. Checked after every dispatch (C
 * dispatches LSTATE_CHECK when the last child goes down).
 *
 * Error texts and reasons (SPEC §3): a handler's error takes the isolate
 * down with "error: <message>\n<traceback>", the traceback taken where the
 * error was raised (pump_on_error, also the extras' message handler); a
 * request handler's error is raised at the requester instead.
 *
 * Threads: the isolate's worker, which owns its lua_State.
 */
#include "lstate_int.h"

#include <string.h>

#include <lauxlib.h>

/* Registry key of the pump's userdata (its struct, and the user values). */
static const char PUMP_KEY = 'P';

/* The pump's user values. */
enum {
  UV_HANDLER = 1, /* the message handler, or nil */
  UV_CONTEXT,     /* the context the entry function got */
  UV_EXTRAS,      /* the extras' table, once loaded */
  UV_REPLY_TO,    /* the requester of the request the current pump's handler answers */
  UV_COUNT = UV_REPLY_TO
};

/* Stack of a pump's body: [1] the pump's userdata; on its first resume
 * [2] the entry function too, later perhaps the message handler's cache
 * (PUMP_MSGH). What it dispatches (m, kind) is in the
 * struct (lstate_dispatch): a resume passes no values, and the pump's own
 * yield none either. */
#define PUMP_UD 1
#define PUMP_ENTRY 2
/* Between dispatches of messages, a pump that has run the message handler
 * keeps [2] pump_on_error and [3] the handler (p->cached): a message then
 * costs no look-up of either. */
#define PUMP_MSGH 2
#define PUMP_HANDLER 3

static inline lpump *pump_of(lua_State *L) { return self_of(L)->lctx->pump; }

/* Pushes user value uv of the pump (from anywhere in the state). */
static int push_uv(lua_State *L, int uv) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &PUMP_KEY);
  int t = lua_getiuservalue(L, -1, uv);
  lua_remove(L, -2);
  return t;
}

static void set_uv(lua_State *L, int uv) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &PUMP_KEY);
  lua_insert(L, -2);
  lua_setiuservalue(L, -2, uv);
  lua_pop(L, 1);
}

/* ---- errors --------------------------------------------------------------------- */

static int tostring_protected(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/* Pushes the value at idx as text, also when its __tostring raises or
 * returns no string: then the text names its type. */
static const char *push_error_text(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_pushcfunction(L, tostring_protected);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    lua_pushfstring(L, "(error object is a %s value; its __tostring failed)", luaL_typename(L, idx));
  }
  return lua_tostring(L, -1);
}

/* core.error_text(e) */
static int l_core_error_text(lua_State *L) {
  lua_settop(L, 1);
  push_error_text(L, 1);
  return 1;
}

/* The message handler of every handler's protected call: { err = e, trace
 * = the text and the traceback from where it was raised }. The traceback
 * stops at a NUL byte: written \0, the reason keeps all of it. */
static int pump_on_error(lua_State *L) {
  lua_settop(L, 1);
  push_error_text(L, 1);
  const char *s = lstate_tocstring(L, 2); /* pushes an escaped copy if it has a NUL */
  luaL_traceback(L, L, s, 1);
  lua_replace(L, 2);
  lua_settop(L, 2);
  lua_createtable(L, 0, 2);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "err");
  lua_insert(L, -2);
  lua_setfield(L, -2, "trace");
  return 1;
}

/* Going down with reason (the string at idx): once; an interrupt's reason
 * comes first (core.stop). */
static void pump_fail(lua_State *L, lpump *p, int idx) {
  if (p->failed) return;
  p->failed = 1;
  idx = lua_absindex(L, idx);
  lua_pushcfunction(L, l_core_stop);
  lua_pushvalue(L, idx);
  lua_call(L, 1, 0);
}

static void pump_fail_literal(lua_State *L, lpump *p, const char *reason) {
  lua_pushstring(L, reason);
  pump_fail(L, p, -1);
  lua_pop(L, 1);
}

/* A handler's error (at idx: pump_on_error's record, or a value raised
 * past it, such as a memory error) takes the isolate down. */
static void pump_fail_with(lua_State *L, lpump *p, int idx) {
  idx = lua_absindex(L, idx);
  lua_pushliteral(L, "error: ");
  if (lua_type(L, idx) == LUA_TTABLE) lua_getfield(L, idx, "trace");
  else push_error_text(L, idx);
  lua_concat(L, 2);
  pump_fail(L, p, -1);
  lua_pop(L, 1);
}

/* core.fail(reason) */
static int l_core_fail(lua_State *L) {
  luaL_checkany(L, 1);
  pump_fail(L, pump_of(L), 1);
  return 0;
}

/* core.fail_with(r) */
static int l_core_fail_with(lua_State *L) {
  luaL_checkany(L, 1);
  pump_fail_with(L, pump_of(L), 1);
  return 0;
}

/* core.failed() -> whether the isolate is going down */
static int l_core_failed(lua_State *L) {
  lua_pushboolean(L, pump_of(L)->failed);
  return 1;
}

/* ---- the end of a request -------------------------------------------------------- */

/* Calls core.reply(sender, corr, ok, value at v) protected: 1 when it
 * sent. On failure leaves why (its second result or its error) pushed. */
static int reply_protected(lua_State *L, int sender, lua_Integer corr, int ok, int v) {
  lua_pushcfunction(L, l_core_reply);
  lua_pushvalue(L, sender);
  lua_pushinteger(L, corr);
  lua_pushboolean(L, ok);
  lua_pushvalue(L, v);
  if (lua_pcall(L, 4, 2, 0) != LUA_OK) return 0;
  if (lua_toboolean(L, -2)) {
    lua_pop(L, 2);
    return 1;
  }
  lua_remove(L, -2);
  return 0;
}

/* core.reply(sender, corr, false, the value on the top), which it pops. */
static void reply_error(lua_State *L, int sender, lua_Integer corr) {
  lua_pushcfunction(L, l_core_reply);
  lua_pushvalue(L, sender);
  lua_pushinteger(L, corr);
  lua_pushboolean(L, 0);
  lua_pushvalue(L, -5);
  lua_call(L, 4, 0);
  lua_pop(L, 1);
}

/*
 * The end of a request handler (sender, corr; deferred: the index of the
 * run's deferred record, a table once reply_later was called, or 0): its
 * result at r is the reply, its error is raised at the requester. With
 * reply_later the answer comes from elsewhere, unless the handler failed
 * before giving it; then the reply function raises as after any answer.
 * An error that is not pump_on_error's record was never captured (the
 * handler ran out of memory): the isolate goes down with it, and C fails
 * the request with that reason, as every request still open when an
 * isolate goes down. core.reply raises for a value it cannot copy, and
 * returns false, why when the message cannot be sent (out of memory):
 * either way the requester gets an error rather than waiting.
 */
static void done_reply(lua_State *L, lpump *p, int sender, lua_Integer corr, int deferred, int ok, int r) {
  if (!ok && lua_type(L, r) != LUA_TTABLE) {
    pump_fail_with(L, p, r);
    return;
  }
  if (deferred && lua_type(L, deferred) == LUA_TTABLE) {
    if (ok) return;
    lua_getfield(L, deferred, "used");
    int used = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (used) return;
    lua_pushboolean(L, 1);
    lua_setfield(L, deferred, "used");
  }
  if (ok) {
    if (reply_protected(L, sender, corr, 1, r)) return;
    lua_pushliteral(L, "cannot send the reply: ");
    luaL_tolstring(L, -2, NULL);
    lua_concat(L, 2);
    lua_remove(L, -2);
    reply_error(L, sender, corr);
    return;
  }
  /* r is pump_on_error's record (a table raised past it, if any, as it is) */
  lua_getfield(L, r, "trace");
  int traced = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (traced) lua_getfield(L, r, "err");
  else lua_pushvalue(L, r);
  int e = lua_gettop(L);
  if (!reply_protected(L, sender, corr, 0, e)) {
    lua_pop(L, 1);
    push_error_text(L, e);
    reply_error(L, sender, corr);
  }
  lua_pop(L, 1);
}

/* core.done_reply(job, ok, r): the end of a request handler the extras ran
 * as a job (its reply_to, corr and deferred). */
static int l_core_done_reply(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 3);
  lua_getfield(L, 1, "reply_to"); /* 4 */
  lua_getfield(L, 1, "corr");
  lua_Integer corr = lua_tointeger(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "deferred"); /* 5 */
  done_reply(L, pump_of(L), 4, corr, 5, lua_toboolean(L, 2), 3);
  return 0;
}

/* ---- the extras ------------------------------------------------------------------- */

static int l_core_set_current(lua_State *L);
static int l_core_set_queued(lua_State *L);

static const luaL_Reg extras_core[] = {
    {"self", l_core_self}, {"reply", l_core_reply}, {"up", l_core_up}, {"children", l_core_children},
    {"stop", l_core_stop}, {"set_jobs", l_core_set_jobs}, {"set_request", l_core_set_request},
    {"take", l_core_take}, {"cocreate", l_core_cocreate}, {"coyield", l_core_coyield},
    {"main", l_core_main}, {"request", l_core_request}, {"timer", l_core_timer},
    {"cancel_timer", l_core_cancel_timer}, {"spawn", l_core_spawn}, {"lookup", l_core_lookup},
    {"lookup_prefix", l_core_lookup_prefix}, {"subscribe", l_core_subscribe}, {"events", l_core_events},
    {"shutdown_cluster", l_core_shutdown_cluster}, {"log", l_core_log}, {"now", l_core_now},
    {"send_all", l_core_send_all}, {"check_seconds", l_core_check_seconds},
    {"check_options", lstate_core_check_options}, {"monitor", l_core_monitor},
    {"demonitor", l_core_demonitor}, {"post_pending", l_core_post_pending},
    {"running", l_core_running}, {"coresume", l_core_coresume}, {"corunning", l_core_corunning},
    {"coisyieldable", l_core_coisyieldable}, {"on_error", pump_on_error}, {"error_text", l_core_error_text},
    {"fail", l_core_fail}, {"fail_with", l_core_fail_with}, {"failed", l_core_failed},
    {"done_reply", l_core_done_reply}, {"set_current", l_core_set_current}, {"set_queued", l_core_set_queued},
    {NULL, NULL}};

static int l_core_pump_job(lua_State *L);
static int l_core_message_handler(lua_State *L);

/* Pushes the extras' table, loading them the first time: the chunk gets
 * the full core table, the isolate's ref, the context and its metatable. */
static void push_extras(lua_State *L) {
  if (push_uv(L, UV_EXTRAS) == LUA_TTABLE) return;
  lua_pop(L, 1);
  ic_cluster *c = self_of(L)->cluster;
  if (luaL_loadbufferx(L, c->runtime_extras->data, c->runtime_extras->len, "=isolate_cluster.runtime_extras",
                       "b") != LUA_OK)
    lua_error(L);
  lua_createtable(L, 0, (int)(sizeof extras_core / sizeof *extras_core - 1));
  luaL_setfuncs(L, extras_core, 0);
  lua_pushcfunction(L, l_core_pump_job);
  lua_setfield(L, -2, "pump_job");
  lua_pushcfunction(L, l_core_message_handler);
  lua_setfield(L, -2, "message_handler");
  l_core_self(L);
  push_uv(L, UV_CONTEXT);
  lua_getmetatable(L, -1);
  lua_call(L, 4, 1);
  lua_pushvalue(L, -1);
  set_uv(L, UV_EXTRAS);
  pump_of(L)->extras = 1;
}

/* core.extras() -> the extras' table (the send method's loader). */
static int l_core_extras(lua_State *L) {
  push_extras(L);
  return 1;
}

/* core.set_current(b), core.set_queued(b): the extras say whether a job
 * waits (or was preempted), and whether handler runs are queued behind one. */
static int l_core_set_current(lua_State *L) {
  pump_of(L)->current = lua_toboolean(L, 1);
  return 0;
}

static int l_core_set_queued(lua_State *L) {
  pump_of(L)->queued = lua_toboolean(L, 1);
  return 0;
}

/* Calls the extras' function name with nargs arguments on the top; nres results. */
static void call_extras(lua_State *L, const char *name, int nargs, int nres) {
  push_extras(L);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  lua_insert(L, -(nargs + 1));
  lua_call(L, nargs, nres);
}

/* ---- the job record --------------------------------------------------------------- */

/* Pushes jobs[co] (the extras' jobs table), or nil. */
static int push_job(lua_State *L, int co) {
  co = lua_absindex(L, co);
  if (lstate_push_jobs(L) != LUA_TTABLE) return LUA_TNIL;
  lua_pushvalue(L, co);
  int t = lua_rawget(L, -2);
  lua_remove(L, -2);
  return t;
}

/* Pushes the record of the run in the current pump, made the first time
 * the extras ask (the jobs table exists then). */
static void push_record(lua_State *L, lpump *p) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, self_of(L)->pump_ref); /* the current pump */
  int co = lua_gettop(L);
  if (p->has_record) {
    push_job(L, co);
    lua_remove(L, co);
    return;
  }
  lua_createtable(L, 0, 16);
  lua_pushvalue(L, co);
  lua_setfield(L, -2, "co");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "pump");
  lua_pushboolean(L, p->active);
  lua_setfield(L, -2, "active");
  lua_pushboolean(L, p->entry);
  lua_setfield(L, -2, "entry");
  if (p->request) push_uv(L, UV_REPLY_TO);
  else lua_pushboolean(L, 0);
  lua_setfield(L, -2, "reply_to");
  if (p->request) lua_pushinteger(L, p->corr);
  else lua_pushboolean(L, 0);
  lua_setfield(L, -2, "corr");
  static const char *const unset[] = {"adopted", "deferred", "kind", "token", "timer", "done", "on_shutdown", NULL};
  for (const char *const *f = unset; *f; f++) {
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, *f);
  }
  if (lstate_push_jobs(L) != LUA_TTABLE) luaL_error(L, "the runtime's jobs are not set");
  lua_pushvalue(L, co);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_remove(L, co);
  p->has_record = 1;
}

/* core.pump_job(co) -> the record of the handler that runs in co when co
 * is the current pump running one; else nothing. */
static int l_core_pump_job(lua_State *L) {
  lpump *p = pump_of(L);
  lua_State *co = lua_tothread(L, 1);
  if (!co || co != self_of(L)->pump || !p->active) return 0;
  push_record(L, p);
  return 1;
}

/* core.message_handler() -> the message handler, or nil */
static int l_core_message_handler(lua_State *L) {
  push_uv(L, UV_HANDLER);
  return 1;
}

/* Forgets the run of the current pump: its record, if the extras made one,
 * leaves their jobs. */
static void end_run(lua_State *L, lpump *p) {
  p->active = p->entry = 0;
  if (p->request) {
    p->request = 0;
    lua_pushnil(L);
    lua_setiuservalue(L, PUMP_UD, UV_REPLY_TO);
  }
  if (p->has_record) {
    p->has_record = 0;
    if (lstate_push_jobs(L) == LUA_TTABLE) {
      lua_pushthread(L);
      lua_pushnil(L);
      lua_rawset(L, -3);
    }
    lua_pop(L, 1);
  }
}

/* ---- the pump ------------------------------------------------------------------- */

static int pump_dispatch_k(lua_State *L, int status, lua_KContext k);
static int pump_dispatch(lua_State *L);

/* After each dispatch: run what the extras deferred, check the ending,
 * and yield the wait mode; resumed with the next (m, kind). */
static int pump_settle(lua_State *L, lpump *p) {
  int mode = WAIT_NONE;
  if (p->failed) mode = WAIT_BLOCKED;
  else if (p->current || p->queued) {
    call_extras(L, "settle", 0, 1);
    mode = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  /* (an isolate with a message handler has something left: looked at
   * first, as it answers after almost every message) */
  if (mode == WAIT_NONE && !p->failed && p->entry_done &&
      !p->handler && !self_of(L)->live_children) {
    int idle = 1;
    if (p->extras) {
      call_extras(L, "idle", 0, 1);
      idle = lua_toboolean(L, -1);
      lua_pop(L, 1);
    }
    if (idle) {
      pump_fail_literal(L, p, "normal");
      mode = WAIT_BLOCKED;
    }
  }
  lua_settop(L, p->cached == L ? PUMP_HANDLER : PUMP_UD);
  ic_isolate *iso = self_of(L);
  if (iso->batching && mode == WAIT_NONE && mailbox_count(&iso->mbox) > 0) {
    /* A message from the mailbox left the isolate idle: the next one of
     * the turn runs in this resume (isolate_next_message says whether
     * there is one and the turn may take it). A direct call, so a batch
     * nests that many C frames (TURN_BATCH at most) and no Lua call
     * levels; a handler's wait or error leaves them all (longjmp), and the
     * continuation that then runs starts from the resume again. */
    ic_msg *next = isolate_next_message(iso);
    if (next) {
      p->kind = next->kind;
      p->m = next;
      return pump_dispatch(L);
    }
  }
  p->mode = mode;
  p->settled = 1;
  return lua_yieldk(L, 0, 0, pump_dispatch_k);
}

/* The end of a handler's run, also the continuation of its protected call
 * once it has waited (or was preempted) and was resumed: by then its pump
 * was adopted, and the run's record (in the extras' jobs) says how it
 * ends. k: the kind of what ran. */
static int run_done(lua_State *L, int status, lua_KContext k) {
  int kind = (int)k;
  lpump *p = pump_of(L);
  /* Killed or shut down past its time: nothing more of the isolate runs
   * (an error a handler caught from the hook must not be answered as
   * its own); the isolate goes down with the interrupt's reason. */
  if (interrupt_reason(self_of(L))) return luaL_error(L, "%s", interrupt_reason(self_of(L)));
  int ok = status == LUA_OK || status == LUA_YIELD;
  int adopted = L != self_of(L)->pump;
  int r = lua_gettop(L); /* the result, or the error */
  int rec = 0;
  if (adopted || p->has_record) {
    lua_pushthread(L);
    if (push_job(L, -1) == LUA_TTABLE) {
      rec = lua_gettop(L);
      lua_pushboolean(L, 0);
      lua_setfield(L, rec, "active");
    }
    lua_remove(L, -2);
    if (!rec) lua_pop(L, 1);
    else rec--;
  }
  if (!adopted) p->active = 0;
  if (kind == MSG_REQUEST) {
    if (rec) {
      lua_getfield(L, rec, "reply_to");
      lua_getfield(L, rec, "corr");
      lua_Integer corr = lua_tointeger(L, -1);
      lua_pop(L, 1);
      lua_getfield(L, rec, "deferred");
      done_reply(L, p, lua_gettop(L) - 1, corr, lua_gettop(L), ok, r);
    } else {
      lua_getiuservalue(L, PUMP_UD, UV_REPLY_TO);
      done_reply(L, p, lua_gettop(L), p->corr, 0, ok, r);
    }
  } else if (kind == LSTATE_START) {
    p->entry_done = 1;
    if (!ok) {
      pump_fail_with(L, p, r);
    } else {
      int entry = p->entry;
      if (rec) {
        lua_getfield(L, rec, "entry");
        entry = lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_pushboolean(L, 0);
        lua_setfield(L, rec, "entry");
      }
      p->entry = 0;
      if (entry) {
        /* "up": the entry function has returned */
        lua_pushcfunction(L, l_core_up);
        lua_call(L, 0, 0);
      }
    }
  } else if (!ok) {
    pump_fail_with(L, p, r);
  }
  if (adopted) {
    /* This coroutine waited as a job and has now finished: whoever resumed
     * it (the extras) sees DONE. */
    push_extras(L);
    lua_getfield(L, -1, "DONE");
    lua_pushboolean(L, 1);
    return 2;
  }
  end_run(L, p);
  return pump_settle(L, p);
}

/* A message or request for an isolate where no handler waits: its handler
 * runs here. */
static int run_message(lua_State *L, lpump *p, int kind) {
  const ic_msg *m = p->m;
  if (!m) return luaL_error(L, "the pump got no message");
  if (p->cached != L && p->handler) {
    /* (the stack is [1] here: pump_settle leaves no more without a cache) */
    lua_settop(L, PUMP_UD);
    lua_pushcfunction(L, pump_on_error);
    if (lua_getiuservalue(L, PUMP_UD, UV_HANDLER) == LUA_TFUNCTION) p->cached = L;
    else lua_settop(L, PUMP_UD);
  }
  if (p->cached != L) {
    /* Without a handler a plain message is dropped (as an emitter without
     * listeners drops it), and a request answered with an error. */
    lstate_push_taken(L, m); /* value, sender */
    if (kind == MSG_REQUEST) {
      int sender = lua_gettop(L);
      l_core_self(L);
      lua_pushfstring(L, "isolate %s has no message handler", luaL_tolstring(L, -1, NULL));
      reply_error(L, sender, (lua_Integer)m->corr);
    }
    return pump_settle(L, p);
  }
  lua_pushvalue(L, PUMP_HANDLER);
  lstate_push_taken(L, m); /* value, sender */
  if (kind == MSG_REQUEST) {
    p->request = 1;
    p->corr = (lua_Integer)m->corr;
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, PUMP_UD, UV_REPLY_TO);
  }
  p->active = 1;
  return run_done(L, lua_pcallk(L, 2, 1, PUMP_MSGH, kind, run_done), kind);
}

/* Pushes what the extras' dispatch gets: kind, m (or nil). */
static void push_dispatched(lua_State *L, lpump *p) {
  lua_pushinteger(L, p->kind);
  if (p->m) lua_pushlightuserdata(L, p->m);
  else lua_pushnil(L);
}

/* The pump's body, resumed for each dispatch (p->m, p->kind); then
 * pump_settle yields until the next. */
static int pump_dispatch(lua_State *L) {
  lpump *p = pump_of(L); /* (the struct of the userdata at PUMP_UD, without an API call) */
  int kind = p->kind;
  if (p->failed) {
    /* going down: nothing more runs */
  } else if (kind == MSG_USER || kind == MSG_REQUEST) {
    if (!p->current) return run_message(L, p, kind);
    push_dispatched(L, p);
    call_extras(L, "dispatch", 2, 0);
  } else if (kind == LSTATE_START) {
    p->active = p->entry = 1;
    int msgh = lua_gettop(L) + 1;
    lua_pushcfunction(L, pump_on_error);
    lua_pushvalue(L, PUMP_ENTRY);
    lua_getiuservalue(L, PUMP_UD, UV_CONTEXT);
    return run_done(L, lua_pcallk(L, 1, 1, msgh, kind, run_done), kind);
  } else if (p->extras) {
    /* Replies, timers, events, a preempted handler to resume, shutdown:
     * each comes only after the extras were loaded; without them a
     * shutdown has no handler to run. */
    push_dispatched(L, p);
    call_extras(L, "dispatch", 2, 0);
  }
  return pump_settle(L, p);
}

static int pump_dispatch_k(lua_State *L, int status, lua_KContext k) {
  (void)status;
  (void)k;
  return pump_dispatch(L);
}

void lpump_push_new(lua_State *L) {
  lua_State *P = lua_newthread(L);
  lua_pushcfunction(P, pump_dispatch);
  lua_rawgetp(P, LUA_REGISTRYINDEX, &PUMP_KEY);
}

int lpump_adopt(lua_State *L) {
  lpump *p = pump_of(L);
  int preempted = lua_toboolean(L, 1);
  push_extras(L);
  lua_getfield(L, -1, "adopt");
  push_record(L, p);
  lua_pushboolean(L, preempted);
  lua_call(L, 2, 1);
  int mode = (int)lua_tointeger(L, -1);
  /* The old pump's run belongs to its record now. */
  p->active = p->entry = p->request = p->has_record = 0;
  p->cached = NULL; /* the new pump has none */
  lua_pushnil(L);
  set_uv(L, UV_REPLY_TO);
  lpump_push_new(L);
  lua_pushinteger(L, mode);
  return 2;
}

int lpump_running(ic_isolate *iso, lua_State *L) {
  return L == iso->pump && iso->lctx && iso->lctx->pump && iso->lctx->pump->active;
}

/* ---- the context ------------------------------------------------------------------ */

/*
 * The context an isolate's entry function gets: a table with isolate_ref
 * and a metatable whose __index serves on_message, property and
 * properties, and loads the extras for any other method (they then put a
 * table of all methods in __index). All C functions without upvalues: they
 * cost a state nothing.
 */
static void ctx_check(lua_State *L, const char *name) {
  int same = 0;
  if (lua_gettop(L) >= 1) {
    push_uv(L, UV_CONTEXT);
    same = lua_rawequal(L, 1, -1);
    lua_pop(L, 1);
  }
  if (!same) luaL_error(L, "context:%s must be called with ':'", name);
}

/* A handler is removed with nil (an isolate left with no handler and
 * nothing else to run ends). */
static int ctx_on_message(lua_State *L) {
  ctx_check(L, "on_message");
  int t = lua_type(L, 2);
  if (t != LUA_TNONE && t != LUA_TNIL && t != LUA_TFUNCTION)
    return luaL_error(L, "on_message expects a function or nil, got %s", lua_typename(L, t));
  lua_settop(L, 2);
  lpump *p = pump_of(L);
  p->handler = t == LUA_TFUNCTION;
  p->cached = NULL; /* the pump's copy is stale */
  set_uv(L, UV_HANDLER);
  return 0;
}

static int ctx_property(lua_State *L) {
  ctx_check(L, "property");
  lua_settop(L, 2);
  l_core_self(L);
  lua_replace(L, 1);
  return l_ref_property(L);
}

static int ctx_properties(lua_State *L) {
  ctx_check(L, "properties");
  lua_settop(L, 0);
  l_core_self(L);
  return l_ref_properties(L);
}

static int ctx_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    lua_CFunction f = strcmp(k, "on_message") == 0   ? ctx_on_message
                      : strcmp(k, "property") == 0   ? ctx_property
                      : strcmp(k, "properties") == 0 ? ctx_properties
                                                     : NULL;
    if (f) {
      lua_pushcfunction(L, f);
      return 1;
    }
  }
  push_extras(L);
  lua_getfield(L, -1, "methods");
  lua_pushvalue(L, 2);
  lua_gettable(L, -2);
  return 1;
}

/* ref:request before the extras are loaded: loads them (which puts their
 * request in the ref methods) and makes this first request with theirs,
 * whose errors name the caller one level further up. */
static int request_first_k(lua_State *L, int status, lua_KContext k) {
  (void)status;
  (void)k;
  return lua_gettop(L);
}

static int ref_request_first(lua_State *L) {
  lua_settop(L, 3);
  push_extras(L);
  lua_getfield(L, -1, "request_first");
  lua_remove(L, -2);
  lua_insert(L, 1);
  lua_callk(L, 3, LUA_MULTRET, 0, request_first_k);
  return request_first_k(L, LUA_OK, 0);
}

void lpump_open(lua_State *L) {
  lstate_ctx *ctx = self_of(L)->lctx;
  lpump *p = lua_newuserdatauv(L, sizeof *p, UV_COUNT);
  memset(p, 0, sizeof *p);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &PUMP_KEY);
  ctx->pump = p;
  lua_createtable(L, 0, 1); /* the context */
  l_core_self(L);
  lua_setfield(L, -2, "isolate_ref");
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, ctx_index);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  set_uv(L, UV_CONTEXT);
  /* ref:request and the waiter of ref:send with wait_s load the extras. */
  lua_pushcfunction(L, l_core_set_request);
  lua_pushcfunction(L, ref_request_first);
  lua_call(L, 1, 0);
  lua_pushcfunction(L, l_core_set_send_wait);
  lua_pushcfunction(L, l_core_extras);
  lua_call(L, 1, 0);
}
