/*
 * lmodule — the Lua module isolate_cluster.core, loaded into a main state
 * (a plain lua5.4 interpreter, busted, or any host). It creates clusters and
 * gives the main state its blocking operations: receive, request, waiting
 * lookup, run, shutdown.
 *
 * Threads: every function here runs on the thread of the main state.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "cluster.h"
#include "lstate.h"
#include "mainq.h"
#include "stats.h"
#include "sigint.h"
#include "net/net.h"

#define LCLUSTER_MT "isolate_cluster.cluster"
#define DEFAULT_REQUEST_TIMEOUT 5.0
#define CLOSE_DRAIN_SECONDS 5.0
#define CLOSE_SHUTDOWN_SECONDS 5.0

typedef struct lcluster {
  ic_cluster *c; /* NULL once closed */
} lcluster;

ic_cluster *lmodule_cluster(lua_State *L, int idx);

/* The cluster behind a cluster userdata (for a host program), or NULL. */
ic_cluster *lmodule_cluster(lua_State *L, int idx) {
  lcluster *lc = luaL_testudata(L, idx, LCLUSTER_MT);
  return lc ? lc->c : NULL;
}

static ic_cluster *check_cluster(lua_State *L, int idx) {
  lcluster *lc = luaL_checkudata(L, idx, LCLUSTER_MT);
  if (!lc->c) luaL_error(L, "the cluster is closed");
  return lc->c;
}

/* The cluster, or NULL once closed: for the calls a closed cluster answers
 * as a shut-down one does (shutdown, run, receive, spawn, lookup). */
static ic_cluster *cluster_or_closed(lua_State *L, int idx) {
  return ((lcluster *)luaL_checkudata(L, idx, LCLUSTER_MT))->c;
}

/* The deadline of a wait of the seconds at idx (nil: none), checked as the
 * isolates check theirs. */
static uint64_t deadline_from(lua_State *L, int idx, const char *fname, const char *what) {
  if (lua_isnoneornil(L, idx)) return UINT64_MAX;
  double t = lstate_check_seconds(L, idx, fname, what, 0);
  if (t == HUGE_VAL) return UINT64_MAX;
  return plat_now_ns() + plat_seconds_to_ns(t);
}

/* ---- Ctrl-C ------------------------------------------------------------------ */

/* Every blocking call here is interruptible (mainq.h's window). */
/* What lua.c raises in a script that Ctrl-C interrupts. */
static int raise_interrupted(lua_State *L) { return luaL_error(L, "interrupted!"); }

/* ---- replies from the main state ----------------------------------------- */

static int l_main_reply(lua_State *L) {
  if (lua_toboolean(L, lua_upvalueindex(3))) return luaL_error(L, "this request has already been answered");
  lref *r = lref_check(L, lua_upvalueindex(1));
  uint64_t corr = (uint64_t)lua_tointeger(L, lua_upvalueindex(2));
  lua_settop(L, 1);
  ic_msg *m = lstate_encode_msg(L, 1, "reply", MSG_REPLY);
  lua_pushboolean(L, 1);
  lua_replace(L, lua_upvalueindex(3));
  if (!r->iso && !r->remote) {
    msg_free(m);
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "isolate down");
    return 2;
  }
  if (!m) return luaL_error(L, "out of memory");
  const char *why;
  if (r->iso) {
    m->corr = corr;
    why = isolate_post_sys(r->iso, m, NULL);
  } else {
    /* to another node's requester, over the net (which copies the bytes) */
    why = net_send(r->remote->net, r->node, r->id, MSG_REPLY, corr, r->remote->main->id, m->data, m->len);
    msg_free(m);
  }
  if (why) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, why);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Protected: pushes msg, sender and (for a request) a reply function. */
static int push_received(lua_State *L) {
  const ic_msg *m = lua_touserdata(L, 1);
  ic_cluster *c = lua_touserdata(L, 2);
  if (lstate_decode_msg(L, c, m) != LUA_OK) return lua_error(L);
  if (m->sender) lref_push(L, m->sender);
  else if (m->from_node) lref_push_wire(L, c, m->from_node, m->from_id);
  else lua_pushnil(L);
  if (m->kind != MSG_REQUEST || lua_isnil(L, -1)) return 2;
  lua_pushvalue(L, -1);
  lua_pushinteger(L, (lua_Integer)m->corr);
  lua_pushboolean(L, 0);
  lua_pushcclosure(L, l_main_reply, 3);
  return 3;
}

static int l_receive(lua_State *L) {
  ic_cluster *c = cluster_or_closed(L, 1);
  uint64_t deadline = deadline_from(L, 2, "receive", "timeout");
  if (!c) {
    lua_pushnil(L);
    return 1;
  }
  ic_msg *m = NULL;
  int rc = mainq_receive(c, deadline, 1, &m);
  if (rc == MAINQ_INTERRUPTED) return raise_interrupted(L);
  if (rc != MAINQ_OK) {
    lua_pushnil(L);
    return 1;
  }
  int top = lua_gettop(L);
  lua_pushcfunction(L, push_received);
  lua_pushlightuserdata(L, m);
  lua_pushlightuserdata(L, c);
  int st = lua_pcall(L, 2, LUA_MULTRET, 0);
  msg_free(m);
  if (st != LUA_OK) return lua_error(L);
  return lua_gettop(L) - top;
}

/* ref:request in the main state: blocks this thread until the reply. */
static int l_main_request(lua_State *L) {
  lref *r = lref_check(L, 1);
  luaL_checkany(L, 2);
  double t = lua_isnoneornil(L, 3) ? DEFAULT_REQUEST_TIMEOUT : lstate_check_seconds(L, 3, "request", "timeout", 1);
  if (!r->remote && (!r->iso || !atomic_load(&r->iso->alive))) {
    lua_settop(L, 1);
    return luaL_error(L, "request to %s failed: isolate down", luaL_tolstring(L, 1, NULL));
  }
  ic_cluster *c = r->iso ? r->iso->cluster : r->remote;
  if (r->iso == c->main) {
    /* This thread blocks until the reply, so nothing could answer it. */
    lua_settop(L, 1);
    return luaL_error(L, "request to %s failed: the main state cannot request itself (nothing answers while it waits)",
                      luaL_tolstring(L, 1, NULL));
  }
  ic_msg *m = lstate_encode_msg(L, 2, "msg", MSG_REQUEST);
  if (!m) return luaL_error(L, "out of memory");
  ic_msg *x = NULL;
  const char *why = NULL;
  int rc = mainq_request(c, r->iso, r->node, r->id, m, plat_seconds_to_ns(t), 1, &x, &why);
  if (rc == MAINQ_OK) {
    int is_error = x->kind == MSG_REPLY_ERROR;
    int st = lstate_decode_msg(L, c, x);
    msg_free(x);
    if (st != LUA_OK || is_error) return lua_error(L);
    return 1;
  }
  if (rc == MAINQ_INTERRUPTED) return raise_interrupted(L);
  lua_settop(L, 1);
  const char *to = luaL_tolstring(L, 1, NULL);
  if (rc == MAINQ_REFUSED) return luaL_error(L, "request to %s failed: %s", to, why);
  if (rc == MAINQ_STOPPED) return luaL_error(L, "request to %s failed: the cluster has shut down", to);
  char secs[32]; /* "%g", as the isolates write it: "3 s", "0.5 s" */
  snprintf(secs, sizeof secs, "%g", t);
  return luaL_error(L, "timeout: no reply from %s within %s s", to, secs);
}

/* ---- cluster methods ------------------------------------------------------- */

static int l_spawn(lua_State *L) {
  ic_cluster *c = cluster_or_closed(L, 1);
  if (!c) return luaL_error(L, "spawn_isolate after shutdown");
  return lstate_spawn(L, c, 2, NULL, 0);
}

/* core.set_logger(cluster, entry | false | nil): entry runs in a hidden
 * isolate of its own that receives every log line as a message. */
static int l_set_logger(lua_State *L) {
  ic_cluster *c = check_cluster(L, 1);
  if (lua_isfunction(L, 2)) {
    lua_settop(L, 2);
    lua_pushnil(L); /* properties */
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, "/isolate_cluster/logger");
    lua_setfield(L, -2, "path");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "dedicated");
    lstate_spawn(L, c, 2, NULL, 1);
    lref *r = lref_check(L, -1);
    cluster_set_logger(c, r->iso, 0);
    return 1;
  }
  cluster_set_logger(c, NULL, lua_isboolean(L, 2) && !lua_toboolean(L, 2));
  return 0;
}

/* A waiting lookup in the main state, interruptible by Ctrl-C. */
typedef struct main_wait_path {
  uint64_t deadline;
  int interrupted;
} main_wait_path;

static ic_isolate *main_find_waiting(void *ud, ic_cluster *c, const char *path) {
  main_wait_path *w = ud;
  mainq_block b = MAINQ_BLOCK(c);
  mainq_block_begin(&b);
  ic_isolate *iso = cluster_main_wait_path(c, path, w->deadline);
  if (mainq_block_end(&b)) {
    w->interrupted = 1;
    if (iso) isolate_release(iso);
    return NULL;
  }
  return iso;
}

static int l_lookup(lua_State *L) {
  ic_cluster *c = cluster_or_closed(L, 1);
  lstate_check_path(L, 2, "lookup_isolate");
  uint64_t deadline = lua_isnoneornil(L, 3) ? 0 : deadline_from(L, 3, "lookup_isolate", "wait");
  if (!c || atomic_load(&c->state) != CLUSTER_RUNNING) return luaL_error(L, "lookup_isolate after shutdown");
  if (!deadline) {
    if (lstate_lookup(L, c, 2, 0) == 2) lua_pop(L, 1); /* the ref or nil only */
    return 1;
  }
  main_wait_path w = {deadline, 0};
  if (lstate_lookup_with(L, c, 2, main_find_waiting, &w) == 2) lua_pop(L, 1);
  if (w.interrupted) return raise_interrupted(L);
  return 1;
}

static int l_lookup_prefix(lua_State *L) {
  ic_cluster *c = cluster_or_closed(L, 1);
  if (!c || atomic_load(&c->state) != CLUSTER_RUNNING) return luaL_error(L, "lookup_isolates after shutdown");
  return lstate_lookup_prefix(L, c, 2);
}

static int l_run(lua_State *L) {
  ic_cluster *c = cluster_or_closed(L, 1);
  uint64_t deadline = deadline_from(L, 2, "run", "timeout");
  if (!c) {
    lua_pushboolean(L, 1); /* closed: shut down long ago */
    return 1;
  }
  mainq_block b = MAINQ_BLOCK(c);
  mainq_block_begin(&b);
  /* Woken by each message to the main state too: they stay queued. */
  while (atomic_load(&c->state) == CLUSTER_RUNNING && !atomic_load(&c->main->sigint)) {
    if (!cluster_main_wait(c, NULL, deadline)) break;
  }
  if (mainq_block_end(&b)) return raise_interrupted(L);
  /* A shutdown under way (asked for by an isolate, run by the stopper) is
   * waited for within this deadline only. */
  if (atomic_load(&c->state) == CLUSTER_STOPPING) cluster_wait_down(c, deadline);
  int stopped = atomic_load(&c->state) == CLUSTER_DOWN;
  if (stopped) cluster_join_stopper(c);
  lua_pushboolean(L, stopped);
  return 1;
}

static int l_shutdown(lua_State *L) {
  ic_cluster *c = cluster_or_closed(L, 1);
  double t = lua_isnoneornil(L, 2) ? CLOSE_SHUTDOWN_SECONDS : lstate_check_seconds(L, 2, "shutdown", "timeout", 0);
  if (!c) {
    lua_pushboolean(L, 1); /* idempotent: close shut it down */
    return 1;
  }
  /* Bounded, and it runs the on_shutdown handlers: a Ctrl-C meanwhile
   * must not kill the process half-way, so it is held until the shutdown
   * is over and then handed to the handler that was there before (lua.c
   * then raises "interrupted!" at the next instruction). */
  mainq_block b = MAINQ_BLOCK(c);
  mainq_block_begin(&b);
  int in_time = cluster_shutdown(c, t);
  cluster_join_stopper(c);
  if (mainq_block_end(&b)) raise(SIGINT);
  lua_pushboolean(L, in_time);
  return 1;
}

static int l_drain(lua_State *L) {
  ic_cluster *c = check_cluster(L, 1);
  double t = lua_isnoneornil(L, 2) ? CLOSE_DRAIN_SECONDS : lstate_check_seconds(L, 2, "drain", "timeout", 0);
  mainq_block b = MAINQ_BLOCK(c);
  mainq_block_begin(&b);
  int quiet = cluster_drain(c, t);
  if (mainq_block_end(&b)) return raise_interrupted(L);
  lua_pushboolean(L, quiet);
  return 1;
}

/* cluster:fd() -> an fd readable when cluster:receive may have something
 * (mainq.h): for an event loop (luv's uv.new_poll). */
static int l_fd(lua_State *L) {
  ic_cluster *c = check_cluster(L, 1);
  int fd = mainq_fd(c);
  if (fd < 0) return luaL_error(L, "cannot make the cluster's file descriptor: %s", strerror(errno));
  lua_pushinteger(L, fd);
  return 1;
}

/* Protected: sets t.rows (t at 1) from the stats_rows at 2, with each
 * isolate's ref when 4 is true (a ref costs about as much as the rest of
 * the row). */
static int push_stat_rows(lua_State *L) {
  const stats_rows *r = lua_touserdata(L, 2);
  ic_cluster *c = lua_touserdata(L, 3);
  int refs = lua_toboolean(L, 4);
  lua_createtable(L, (int)(r->n > INT32_MAX ? INT32_MAX : r->n), 0);
  for (size_t i = 0; i < r->n; i++) {
    const stats_row *row = &r->rows[i];
    lua_createtable(L, 0, refs ? 11 : 10);
    if (refs) {
      lref_push(L, row->iso);
      lua_setfield(L, -2, "ref");
    }
    lua_pushinteger(L, (lua_Integer)row->id);
    lua_setfield(L, -2, "id");
    if (row->path) {
      lua_pushstring(L, row->path);
      lua_setfield(L, -2, "path");
    }
    lua_pushinteger(L, (lua_Integer)c->node_id);
    lua_setfield(L, -2, "node");
    lua_pushstring(L, row->state);
    lua_setfield(L, -2, "state");
    lua_pushstring(L, row->kind);
    lua_setfield(L, -2, "kind");
    lua_pushinteger(L, (lua_Integer)row->mailbox);
    lua_setfield(L, -2, "mailbox");
    lua_pushinteger(L, (lua_Integer)row->in);
    lua_setfield(L, -2, "messages_in");
    lua_pushinteger(L, (lua_Integer)row->out);
    lua_setfield(L, -2, "messages_out");
    lua_pushinteger(L, (lua_Integer)row->memory);
    lua_setfield(L, -2, "memory");
    lua_pushnumber(L, row->run_seconds);
    lua_setfield(L, -2, "run_time");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, 1, "rows");
  return 0;
}

/* cluster:stats([opts]): the counters, and (unless opts.rows == false) one
 * row per isolate, with its ref if opts.refs. */
static int l_stats(lua_State *L) {
  ic_cluster *c = check_cluster(L, 1);
  int rows = 1, refs = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    static const char *const known[] = {"rows", "refs", NULL};
    lstate_check_options(L, 2, "stats", known);
    rows = lua_getfield(L, 2, "rows") == LUA_TNIL || lua_toboolean(L, -1);
    refs = lua_getfield(L, 2, "refs") != LUA_TNIL && lua_toboolean(L, -1);
    lua_pop(L, 2);
  }
  lstate_stats(L, c);
  if (!rows) return 1;
  stats_rows r;
  if (stats_rows_take(c, &r)) return luaL_error(L, "out of memory");
  lua_pushcfunction(L, push_stat_rows);
  lua_pushvalue(L, -2);
  lua_pushlightuserdata(L, &r);
  lua_pushlightuserdata(L, c);
  lua_pushboolean(L, refs);
  int st = lua_pcall(L, 4, 0, 0);
  stats_rows_free(&r);
  if (st != LUA_OK) return lua_error(L);
  return 1;
}

/* cluster:nodes() -> sorted names of the live nodes, this one included. */
static int l_nodes(lua_State *L) {
  ic_cluster *c = check_cluster(L, 1);
  lua_newtable(L);
  if (!c->net) return 1;
  size_t n = 0;
  char **names = net_nodes(c->net, &n);
  if (!names) return luaL_error(L, "out of memory");
  /* Copy into Lua before freeing: lua_pushstring may raise only for memory,
   * and then the names are lost to a bounded leak rather than to a crash. */
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, names[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  return 1;
}

static int l_send_all(lua_State *L) {
  check_cluster(L, 1);
  return lstate_send_all(L, 2, 3);
}

/* __gc and __close: a cluster left running at the end of a script delivers
 * what was already sent (bounded), then shuts down, so the process exits. */
static int l_close(lua_State *L) {
  lcluster *lc = luaL_checkudata(L, 1, LCLUSTER_MT);
  ic_cluster *c = lc->c;
  if (!c) return 0;
  lc->c = NULL;
  /* At the end of a script (often one that Ctrl-C just interrupted, when
   * lua.c has put SIGINT back to its default): a Ctrl-C now ends the drain
   * and is held until the shutdown, with its on_shutdown handlers, is over;
   * then it takes its usual course. */
  mainq_block b = MAINQ_BLOCK(c);
  mainq_block_begin(&b);
  if (atomic_load(&c->state) == CLUSTER_RUNNING) cluster_drain(c, CLOSE_DRAIN_SECONDS);
  cluster_shutdown(c, CLOSE_SHUTDOWN_SECONDS);
  if (!cluster_join_stopper(c)) cluster_detach_stopper(c); /* still stopping: it holds the cluster */
  int interrupted = mainq_block_end(&b);
  cluster_close(c);
  cluster_release(c);
  if (interrupted) raise(SIGINT);
  return 0;
}

static int l_cluster_index(lua_State *L) {
  lcluster *lc = luaL_checkudata(L, 1, LCLUSTER_MT);
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "main") == 0) {
    if (!lc->c) return luaL_error(L, "the cluster is closed");
    lref_push(L, lc->c->main);
    return 1;
  }
  if (k && strcmp(k, "node") == 0) {
    if (!lc->c) return luaL_error(L, "the cluster is closed");
    if (lc->c->net) lua_pushstring(L, net_self_name(lc->c->net));
    else lua_pushnil(L);
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

static int l_cluster_tostring(lua_State *L) {
  lcluster *lc = luaL_checkudata(L, 1, LCLUSTER_MT);
  if (!lc->c) lua_pushliteral(L, "isolate_cluster(closed)");
  else lua_pushfstring(L, "isolate_cluster(node %I, %d workers)", (LUAI_UACINT)lc->c->node_id, lc->c->nworkers);
  return 1;
}

/* More workers than this is a mistake (each is an OS thread), and the count
 * must fit the int the pool keeps it in. */
#define MAX_WORKERS 1024 /* as the host's --workers */

#define NODE_MAX_URLS 16

/* A string field of table t, or NULL; the string stays referenced by t. */
/* Leaves the field on the stack (see read_node_opts). */
static const char *opt_str_field(lua_State *L, int t, const char *k, const char *where) {
  const char *v = NULL;
  int ty = lua_getfield(L, t, k);
  if (ty == LUA_TSTRING) v = lua_tostring(L, -1);
  else if (ty != LUA_TNIL) luaL_error(L, "%s.%s must be a string", where, k);
  return v;
}

/* The options of ic.node (SPEC §5) from table t. Raises on a wrong type.
 * Every value read stays on the stack until the caller returns (t need not
 * hold it: an __index may have made it, and a later read may run the
 * collector), so the strings in *no live while the node is created. */
static void read_node_opts(lua_State *L, int t, net_opts *no, const char **urls) {
  memset(no, 0, sizeof *no);
  no->urls = urls;
  luaL_checkstack(L, 20, "node options");
  int ty = lua_getfield(L, t, "nats");
  if (ty == LUA_TSTRING) {
    urls[no->nurls++] = lua_tostring(L, -1);
  } else if (ty == LUA_TTABLE) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    if (n < 1 || n > NODE_MAX_URLS) luaL_error(L, "opts.nats must list 1 to %d server URLs", NODE_MAX_URLS);
    for (lua_Integer i = 1; i <= n; i++) {
      /* Raw: held by the list, which stays on the stack. */
      if (lua_rawgeti(L, -1, i) != LUA_TSTRING) luaL_error(L, "opts.nats[%d] must be a URL string", (int)i);
      urls[no->nurls++] = lua_tostring(L, -1);
      lua_pop(L, 1);
    }
  } else {
    luaL_error(L, "opts.nats must be a server URL or a list of them");
  }
  no->cluster = opt_str_field(L, t, "cluster", "opts");
  no->name = opt_str_field(L, t, "name", "opts");
  if (!no->cluster) luaL_error(L, "opts.cluster (the cluster's name) is required");
  if (!no->name) luaL_error(L, "opts.name (this node's name) is required");
  no->user = opt_str_field(L, t, "user", "opts");
  no->password = opt_str_field(L, t, "password", "opts");
  no->token = opt_str_field(L, t, "token", "opts");
  if (lua_getfield(L, t, "secret") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0) luaL_error(L, "opts.secret must be a non-empty string");
    no->secret = lua_tolstring(L, -1, &no->secret_len);
  }
  lua_getfield(L, t, "allow_code");
  no->allow_code = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (lua_getfield(L, t, "connect_timeout") != LUA_TNIL)
    no->connect_timeout = lstate_check_seconds(L, -1, "node", "opts.connect_timeout", 1);
  lua_pop(L, 1);
  ty = lua_getfield(L, t, "tls");
  if (ty == LUA_TTABLE) {
    int tt = lua_gettop(L);
    static const char *const tls_known[] = {"ca", "cert", "key", NULL};
    lstate_check_options(L, tt, "node (opts.tls)", tls_known);
    no->tls_ca = opt_str_field(L, tt, "ca", "opts.tls");
    no->tls_cert = opt_str_field(L, tt, "cert", "opts.tls");
    no->tls_key = opt_str_field(L, tt, "key", "opts.tls");
    if (!no->tls_ca && !no->tls_cert) luaL_error(L, "opts.tls needs ca, or cert and key");
  } else if (ty != LUA_TNIL) {
    luaL_error(L, "opts.tls must be a table {ca =, cert =, key =}");
  }
}

static int l_new(lua_State *L) {
  cluster_opts o = {0, 0, 0, NULL, NULL};
  /* core.new(opts, node): ic.node's options, or single_node's. */
  int is_node = lua_toboolean(L, 2);
  if (is_node) luaL_checktype(L, 1, LUA_TTABLE);
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    static const char *const known[] = {"workers", "mailbox", "time_slice", "logger", NULL};
    static const char *const node_known[] = {"nats",   "cluster",    "name",       "user",    "password",
                                             "token",  "tls",        "secret",     "allow_code",
                                             "connect_timeout", "workers", "mailbox", "time_slice",
                                             "logger", NULL};
    const char *fname = is_node ? "node" : "single_node";
    lstate_check_options(L, 1, fname, is_node ? node_known : known);
    o.workers = (int)lstate_opt_integer(L, 1, fname, "workers", 0, 1, MAX_WORKERS);
    o.mailbox = (size_t)lstate_opt_integer(L, 1, fname, "mailbox", 0, 1, LUA_MAXINTEGER);
    if (lua_getfield(L, 1, "time_slice") != LUA_TNIL) {
      o.slice_seconds = lstate_check_seconds(L, -1, is_node ? "node" : "single_node", "opts.time_slice", 1);
    }
    lua_pop(L, 1);
  }
  net_opts no;
  const char *urls[NODE_MAX_URLS];
  if (is_node) {
    read_node_opts(L, 1, &no, urls);
    /* Isolates other nodes spawn here by module name find it with this
     * state's package.path (stays on the stack while the node is created). */
    lua_getglobal(L, "package");
    if (lua_type(L, -1) == LUA_TTABLE) {
      if (lua_getfield(L, -1, "path") == LUA_TSTRING) no.lua_path = lua_tostring(L, -1);
      if (lua_getfield(L, -2, "cpath") == LUA_TSTRING) no.lua_cpath = lua_tostring(L, -1);
    }
  }
  lstate_open(L);
  lcluster *lc = lua_newuserdatauv(L, sizeof *lc, 0);
  lc->c = NULL; /* safe to collect before the cluster exists */
  luaL_setmetatable(L, LCLUSTER_MT);
  if (is_node) {
    char err[512];
    lc->c = cluster_new_node(&o, &no, err, sizeof err);
    if (!lc->c) return luaL_error(L, "cannot create the node: %s", err);
    return 1;
  }
  const char *err = "unknown error";
  lc->c = cluster_new(&o, &err);
  if (!lc->c) return luaL_error(L, "cannot create the cluster: %s", err);
  return 1;
}

/* core.encode(value) -> MessagePack bytes, as messages are encoded. */
static int l_encode(lua_State *L) {
  luaL_checkany(L, 1);
  lstate_encode_push(L, 1, "value");
  return 1;
}

/* core.decode(bytes [, allow_functions]) -> value. Bytes from outside are
 * not trusted: functions (bytecode) are refused unless asked for; refs come
 * back as refs that no isolate of this process answers to. */
static int l_decode(lua_State *L) {
  size_t len;
  /* Bytes only: luaL_checklstring would decode 5 as the string "5". */
  luaL_checktype(L, 1, LUA_TSTRING);
  const char *data = lua_tolstring(L, 1, &len);
  lstate_ctx *ctx = lstate_open(L);
  codec_limits lim = ctx->lim;
  lim.allow_functions = lua_toboolean(L, 2);
  codec_hooks h = lstate_hooks(NULL);
  codec_decode(L, data, len, &h, &lim);
  return 1;
}

/* core.now(): monotonic seconds, for measuring intervals in the main state. */
static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)plat_now_ns() / 1e9);
  return 1;
}

int luaopen_isolate_cluster_core(lua_State *L);

__attribute__((visibility("default"))) int luaopen_isolate_cluster_core(lua_State *L) {
  lstate_open(L);
  /* The main state's own request and kill. */
  luaL_getmetatable(L, LREF_MT);
  lua_getfield(L, -1, "methods");
  lua_pushcfunction(L, l_main_request);
  lua_setfield(L, -2, "request");
  lua_pop(L, 2);

  if (luaL_newmetatable(L, LCLUSTER_MT)) {
    static const luaL_Reg methods[] = {
        {"spawn_isolate", l_spawn}, {"lookup_isolate", l_lookup}, {"lookup_isolates", l_lookup_prefix},
        {"receive", l_receive},     {"run", l_run},               {"shutdown", l_shutdown},
        {"drain", l_drain},         {"stats", l_stats},           {"close", l_close},
        {"send_all", l_send_all},   {"fd", l_fd},                 {"nodes", l_nodes},
        {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_pushcclosure(L, l_cluster_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, l_cluster_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "isolate_cluster");
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);

  static const luaL_Reg funcs[] = {{"new", l_new}, {"set_logger", l_set_logger}, {"now", l_now},
                                   {"encode", l_encode}, {"decode", l_decode},
                                   {"check_options", lstate_core_check_options}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_pushliteral(L, "0.1.0");
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
