/*
 * lstate — the per-state data of every lua_State of the cluster (the main
 * state's and each isolate's): its ctx userdata in the registry, the ref
 * metatable lstate_open installs, and the guards that keep C resources safe
 * from Lua errors while a result is pushed.
 *
 * Threads: every function runs on the thread that owns the lua_State it is
 * given (an isolate's worker, or the thread of the main state). No lock.
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

/* Registry key of the per-state data (lstate_int.h). */
const char lstate_ctx_key = 'c';

/* ---- per-state data ------------------------------------------------------ */

static int ctx_gc(lua_State *L) {
  lstate_ctx *ctx = lua_touserdata(L, 1);
  codec_buf_free(&ctx->buf);
  return 0;
}

lstate_ctx *lstate_ctx_of(lua_State *L) { return ctx_of(L); }

/* ---- guards: C resources held across Lua allocations (see lstate_int.h) -- */

static const char GUARD_KEY = 'g';

static int guard_gc(lua_State *L) {
  guard_drop(lua_touserdata(L, 1));
  return 0;
}

guard *guard_push(lua_State *L, guard_free_fn fn) {
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

void release_isolates(void *p, size_t n) {
  ic_isolate **v = p;
  for (size_t i = 0; i < n; i++) isolate_release(v[i]);
  free(v);
}

void release_isolate(void *p, size_t n) {
  (void)n;
  isolate_release(p);
}

/* ---- opening a state ------------------------------------------------------ */

lstate_ctx *lstate_open(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &lstate_ctx_key);
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
  lua_rawsetp(L, LUA_REGISTRYINDEX, &lstate_ctx_key);


  lua_newtable(L);
  ctx->cache_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushboolean(L, 0);
  ctx->last_sender_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  if (luaL_getmetatable(L, LREF_MT) == LUA_TNIL) {
    /* Both tables made at their final sizes (luaL_newmetatable's would be
     * rehashed twice, each time leaving the old part behind in the state):
     * the metatable's seven fields, and the methods with `request`, which
     * the state sets (core.set_request). */
    static const luaL_Reg methods[] = {
        {"kill", l_ref_kill}, {"property", l_ref_property}, {"properties", l_ref_properties}, {NULL, NULL}};
    lua_pop(L, 1);
    lua_createtable(L, 0, 7);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, LREF_MT);
    lua_createtable(L, 0, 5);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &lstate_ctx_key);
    luaL_setfuncs(L, methods, 1);
    /* send: upvalues ctx and the runtime's extras loader (an isolate sets
     * it, see core.set_send_wait). */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &lstate_ctx_key);
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
