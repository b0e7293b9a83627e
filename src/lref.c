/*
 * lref — isolate refs in a lua_State: the ref cache (one userdata per
 * (node, id) in a state, held weakly), pushing refs of this node's isolates
 * and of refs read off the wire, and the ref methods other than send
 * (kill, property, properties, __index, __eq, __tostring, __gc).
 *
 * Threads: the thread that owns the lua_State. No lock; the isolates a ref
 * retains are reference-counted (src/isolate.h).
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

/* ---- refs ---------------------------------------------------------------- */

lref *lref_test(lua_State *L, int idx) { return ref_test_ctx(L, idx, ctx_of(L)); }

lref *lref_check(lua_State *L, int idx) { return lref_check_ctx(L, idx, ctx_of(L)); }

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

void lref_push_ctx(lua_State *L, const lstate_ctx *ctx, ic_isolate *iso) {
  uint32_t node = iso->cluster->node_id;
  if (ref_cache_get(L, ctx, node, iso->id)) return;
  ref_new(L, ctx, iso, node, iso->id);
}

void lref_push(lua_State *L, ic_isolate *iso) { lref_push_ctx(L, ctx_of(L), iso); }

void lref_push_wire(lua_State *L, ic_cluster *c, uint32_t node, uint64_t id) {
  const lstate_ctx *ctx = ctx_of(L);
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

static ic_cluster *ref_cluster(lua_State *L, lref *r) {
  (void)L;
  return r->iso ? r->iso->cluster : r->remote;
}

int l_ref_kill(lua_State *L) {
  lref *r = lref_check(L, 1);
  if (r->iso && r->iso->kind == ISO_MAIN) return luaL_error(L, "the main state's ref cannot be killed");
  const char *why;
  if (!r->iso && r->remote) {
    /* Another node's isolate: killed there, through the link; its down
     * event follows as for a local one. */
    why = atomic_load(&r->remote->state) == CLUSTER_DOWN ? "isolate down" : net_kill(r->remote->net, r->node, r->id);
  } else {
    why = !r->iso || isolate_kill(r->iso) != 0 ? "isolate down" : NULL;
  }
  return push_send_result(L, why);
}

/* Pushes the decoded property map of r, or nil. */
static int decode_blob_protected(lua_State *L) {
  ic_blob *b = lua_touserdata(L, 1);
  ic_cluster *c = lua_touserdata(L, 2);
  codec_hooks h = lstate_hooks(c);
  codec_decode(L, b->data, b->len, &h, &ctx_of(L)->lim);
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
  lstate_ctx *ctx = ctx_of(L);
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

int l_ref_property(lua_State *L) {
  lref *r = lref_check(L, 1);
  luaL_checkany(L, 2);
  push_props(L, r);
  if (lua_isnil(L, -1)) return 1;
  lua_pushvalue(L, 2);
  lua_gettable(L, -2);
  return 1;
}

int l_ref_properties(lua_State *L) {
  lref *r = lref_check(L, 1);
  push_props(L, r);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
  }
  return 1;
}

int l_ref_index(lua_State *L) {
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

int l_ref_eq(lua_State *L) {
  lref *a = lref_test(L, 1), *b = lref_test(L, 2);
  lua_pushboolean(L, a && b && a->node == b->node && a->id == b->id);
  return 1;
}

int l_ref_tostring(lua_State *L) {
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

int l_ref_gc(lua_State *L) {
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
