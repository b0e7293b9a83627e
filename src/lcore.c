/*
 * lcore — the `core` functions an isolate's runtime calls (self, main,
 * timers, spawn and lookup, events and subscriptions, monitors, stop,
 * shutdown_cluster, log, now, request's hook). The ones on the message path
 * are in src/lsend.c, the ones of preemption in src/lhook.c, the pump's in
 * src/lpump.c, which puts them all in the core table of the extras.
 *
 * Threads: the isolate's worker, which owns its lua_State. No lock here;
 * the cluster_* and isolate_* calls take theirs.
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

/* ---- core functions of an isolate state ------------------------------------ */

int l_core_self(lua_State *L) {
  lref_push(L, self_of(L));
  return 1;
}

int l_core_main(lua_State *L) {
  lref_push(L, self_of(L)->cluster->main);
  return 1;
}

/* core.timer(id, seconds [, periodic]): arms this isolate's timer id. */
int l_core_timer(lua_State *L) {
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
int l_core_cancel_timer(lua_State *L) {
  lua_Integer id = luaL_checkinteger(L, 1);
  ic_isolate *self = self_of(L);
  timer_cancel(&self->cluster->timers, self, (uint64_t)id);
  return 0;
}

int l_core_spawn(lua_State *L) {
  ic_isolate *self = self_of(L);
  return lstate_spawn(L, self->cluster, 1, self, 0);
}

int l_core_lookup(lua_State *L) { return lstate_lookup(L, self_of(L)->cluster, 1, 0); }
int l_core_lookup_prefix(lua_State *L) { return lstate_lookup_prefix(L, self_of(L)->cluster, 1); }

int l_core_subscribe(lua_State *L) {
  ic_isolate *self = self_of(L);
  int existing = lua_toboolean(L, 1);
  guard *g = existing ? guard_push(L, release_isolates) : NULL;
  size_t n;
  ic_isolate **up = cluster_subscribe(self->cluster, self, existing, &n);
  /* Not subscribed (no room in the subscriber list): the handler being
   * registered would never hear an event, so its registration fails. */
  if (!self->subscribed) return luaL_error(L, "out of memory (subscribing to up/down events)");
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
int l_core_events(lua_State *L) {
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
int l_core_monitor(lua_State *L) {
  ic_isolate *self = self_of(L);
  lref *r = lref_check_ctx(L, 1, self->lctx);
  uint64_t id = (uint64_t)luaL_checkinteger(L, 2);
  int rc = r->iso      ? monitor_add(&r->iso->monitors, self, id)
           : r->remote ? cluster_remote_monitor(r->remote, r->node, r->id, self, id)
                       : ESRCH;
  if (rc == ENOMEM || (rc && monitor_notify(self, id, "noproc"))) return luaL_error(L, "monitor: out of memory");
  return 0;
}

/* core.demonitor(ref, id): takes the entry out of ref's set, if there. */
int l_core_demonitor(lua_State *L) {
  ic_isolate *self = self_of(L);
  lref *r = lref_check_ctx(L, 1, self->lctx);
  uint64_t id = (uint64_t)luaL_checkinteger(L, 2);
  if (r->iso) monitor_remove(&r->iso->monitors, self, id);
  else if (r->remote) cluster_remote_demonitor(r->remote, r->node, r->id, self, id);
  return 0;
}

/* core.children() -> true while a linked child of this isolate is up. */
int l_core_children(lua_State *L) {
  lua_pushboolean(L, self_of(L)->live_children > 0);
  return 1;
}

int l_core_up(lua_State *L) {
  ic_isolate *self = self_of(L);
  cluster_announce_up(self->cluster, self); /* once: it looks under the lock */
  return 0;
}

/* core.stop(reason): this isolate goes down once the current dispatch ends. */
int l_core_stop(lua_State *L) {
  ic_isolate *self = self_of(L);
  const char *why = interrupt_reason(self);
  if (!why && !lua_isnoneornil(L, 1)) {
    luaL_checkstring(L, 1);
    why = lstate_tocstring(L, 1); /* a reason with NUL bytes is not cut at the first */
  }
  isolate_set_ending(self, why ? why : "normal");
  return 0;
}

int l_core_shutdown_cluster(lua_State *L) {
  ic_isolate *self = self_of(L);
  double t = lua_isnoneornil(L, 1) ? 5.0 : lstate_check_seconds(L, 1, "shutdown_cluster", "timeout", 0);
  cluster_request_shutdown(self->cluster, t);
  return 0;
}

int l_core_log(lua_State *L) {
  luaL_checkstring(L, 1);
  cluster_log(self_of(L)->cluster, "%s", lstate_tocstring(L, 1));
  return 0;
}

int l_core_set_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_getmetatable(L, LREF_MT);
  lua_getfield(L, -1, "methods");
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "request");
  return 0;
}

int l_core_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)plat_now_ns() / 1e9);
  return 1;
}
