/*
 * lspawn — spawn_isolate, lookup_isolate(s) and stats as the main state and
 * the isolates share them: argument checks, the path claim across nodes,
 * and the lists of refs they push.
 *
 * Threads: the thread that owns the lua_State. The registry is read and
 * changed under c->lock inside the cluster_* calls (src/cluster.h), never
 * held here across a Lua call.
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

#include "native.h"
#include "net/net.h"
#include "sigint.h"

/* ---- spawn and lookup ------------------------------------------------------ */


int lstate_spawn(lua_State *L, ic_cluster *c, int arg, ic_isolate *creator, int hidden) {
  if (atomic_load(&c->state) != CLUSTER_RUNNING) return luaL_error(L, "spawn_isolate after shutdown");
  int et = lua_type(L, arg);
  /* Named here, not by luaL_argerror: inside an isolate the C function
   * behind context:spawn_isolate is core.spawn, a name the user never wrote. */
  /* { native = "kind" }: a native isolate of a kind the C program
   * registered (ic_register_native). The name stays on the stack. */
  const char *native = NULL;
  size_t native_len = 0;
  if (et == LUA_TTABLE) {
    lua_settop(L, arg + 2); /* properties and opts keep their slots below the name */
    if (lua_getfield(L, arg, "native") != LUA_TSTRING)
      return luaL_error(L, "spawn_isolate: a table entry must be { native = \"kind\" } (a native isolate kind's name)");
    native = lua_tolstring(L, -1, &native_len);
  } else if (et != LUA_TFUNCTION && et != LUA_TSTRING) {
    return luaL_error(L, "spawn_isolate: the entry must be a function, a module name or { native = \"kind\" }, got %s",
                      luaL_typename(L, arg));
  }
  if (et == LUA_TSTRING) lstate_check_module(L, arg, "spawn_isolate");
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
      if (lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "spawn_isolate: opts.path must be a string, got %s", luaL_typename(L, -1));
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
      size_t nlen;
      node = lua_tolstring(L, -1, &nlen);
      if (strlen(node) != nlen) return luaL_error(L, "spawn_isolate: opts.node cannot contain a NUL byte");
      if (!c->net) return luaL_error(L, "spawn_isolate: opts.node needs a multi-node cluster (ic.node)");
      if (strcmp(node, net_self_name(c->net)) == 0) node = NULL; /* this node */
    } else {
      lua_pop(L, 1);
    }
  }
  if (native && (memlimit || lean || node))
    return luaL_error(L, "spawn_isolate: opts.%s does not apply to a native isolate (it runs on this node, with no "
                      "Lua heap)", memlimit ? "memory_limit" : lean ? "lean" : "node");
  /* The caller's hold on the new isolate, while its ref is made; made
   * before the encodes, whose bytes no allocation may come between. */
  guard *g = guard_push(L, release_isolate);
  if (node && et == LUA_TFUNCTION && !net_code_ok(c->net))
    return luaL_error(L, "a Lua function entry cannot be spawned on another node (node \"%s\") unless the "
                      "nodes have allow_code and a secret: give a module name", node);
  /* Encode everything first: the encodes may raise, and nothing is
   * allocated outside Lua until they have succeeded. The bytes go to a
   * buffer of the spawn's own: the reads below and the encodes themselves
   * can run finalizers, which may send (and so use the state's scratch
   * buffer) in between. */
  lstate_ctx *ctx = ctx_of(L);
  codec_hooks h = lstate_hooks(NULL);
  codec_buf *buf = private_buf_push(L);
  size_t props_len = 0;
  if (has_props) {
    codec_encode(L, arg + 1, "properties", &h, &ctx->lim, buf);
    props_len = buf->len;
  }
  if (!native) codec_encode(L, arg, "entry", &h, &ctx->lim, buf);
  /* Multi-node: an exact path is claimed from the other nodes first (one
   * round trip); the claim is held until the isolate is registered. A
   * hidden runtime isolate (the logger) is this node's own business. From
   * here on nothing raises before net_claim_done. */
  int claimed = 0;
  if (c->net && !hidden && path && *path && path[strlen(path) - 1] != '/') {
    /* The main state's wait is Ctrl-C's to interrupt (SPEC §3.10), as its
     * other waits are; an isolate's blocks its worker for the round trip. */
    int token = 0, in_main = creator == NULL;
    if (in_main) token = sigint_begin(c->main);
    const char *why = spawn_claim(c, path, node != NULL, in_main ? &c->main->sigint : NULL, &claimed);
    if (in_main && sigint_end(c->main, token) && !why) {
      if (claimed) net_claim_done(c->net, path);
      why = "interrupted";
    }
    if (why && strcmp(why, "interrupted") == 0) return luaL_error(L, "interrupted!");
    if (why && strcmp(why, "path in use") == 0) return luaL_error(L, "path \"%s\" is already in use", path);
    if (why) return luaL_error(L, "path \"%s\" could not be claimed: %s", path, why);
  }
  if (node) {
    /* Another node spawns it (module name: with its own package.path) and
     * the ref is known at once: this node chose the new isolate's id. */
    uint32_t rnode;
    uint64_t rid;
    /* An isolate's child there, as here (unless detached): shut down with
     * its creator, and counted among the creator's live children until its
     * down comes back (CONTROL_CHILD_DOWN, src/net/net.h). */
    int linked = creator && !detached;
    spawn_args ra = {dedicated ? ISO_DEDICATED : ISO_POOL, (size_t)mbox, (size_t)memlimit,
                     has_props ? buf->data : NULL, props_len, buf->data + props_len, buf->len - props_len,
                     NULL, NULL, path, 0, creator, detached, NULL, 0, lean};
    const char *why = spawn_remote(c, node, &ra, creator ? creator->id : c->main->id, linked, claimed, &rnode, &rid);
    codec_buf_free(buf);
    if (why) return luaL_error(L, "spawn_isolate on node \"%s\" failed: %s", node, why);
    if (linked) creator->live_children++; /* this is the creator's thread */
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
  int failed = native ? native_spawn_kind(c, native, native_len, &a, &iso, err, sizeof err) : cluster_spawn(c, &a, &iso, err, sizeof err);
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
void push_ref_list(lua_State *L, guard *g) {
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
void push_remote_refs(lua_State *L, ic_cluster *c, const char *prefix, int idx, lua_Integer n) {
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
