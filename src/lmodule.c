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
#include "sigint.h"

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

/* A blocking call of the main state is interruptible from its first wait
 * to its return (sigint.h): begun lazily, so a call that never waits costs
 * nothing; ended on every way out, before anything may raise. */
typedef struct main_block {
  ic_isolate *main;
  int token, begun;
} main_block;

static void block_begin(main_block *b) {
  if (b->begun) return;
  b->begun = 1;
  b->token = sigint_begin(b->main);
}

/* 1 if a SIGINT came while it was installed. */
static int block_end(main_block *b) {
  if (!b->begun) return 0;
  b->begun = 0;
  return sigint_end(b->main, b->token);
}

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
  if (!r->iso) {
    msg_free(m);
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "isolate down");
    return 2;
  }
  if (!m) return luaL_error(L, "out of memory");
  m->corr = corr;
  const char *why = isolate_post_sys(r->iso, m, NULL);
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
  else lua_pushnil(L);
  if (m->kind != MSG_REQUEST || !m->sender) return 2;
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
  ic_isolate *main = c->main;
  main_block b = {main, -1, 0};
  for (;;) {
    /* Interrupted while waiting: a message that came meanwhile stays queued
     * for the next receive. */
    if (b.begun && atomic_load(&main->sigint)) {
      block_end(&b);
      return raise_interrupted(L);
    }
    ic_msg *m;
    while ((m = mailbox_pop(&main->sysq)) != NULL) msg_free(m); /* late replies */
    m = mailbox_pop(&main->mbox);
    if (m) {
      /* A Ctrl-C in the instant since the look above: handed on, to the
       * handler there was before (lua.c raises at the next instruction). */
      if (block_end(&b)) raise(SIGINT);
      int top = lua_gettop(L);
      lua_pushcfunction(L, push_received);
      lua_pushlightuserdata(L, m);
      lua_pushlightuserdata(L, c);
      int st = lua_pcall(L, 2, LUA_MULTRET, 0);
      msg_free(m);
      if (st != LUA_OK) return lua_error(L);
      return lua_gettop(L) - top;
    }
    if (mailbox_count(&main->mbox) > 0) continue; /* a push half done */
    if (atomic_load(&c->state) != CLUSTER_RUNNING) break;
    block_begin(&b);
    if (!cluster_main_wait(c, &main->mbox, deadline)) {
      if (mailbox_count(&main->mbox) > 0) continue;
      break;
    }
  }
  if (block_end(&b)) return raise_interrupted(L);
  lua_pushnil(L);
  return 1;
}

/* ref:request in the main state: blocks this thread until the reply. */
static int l_main_request(lua_State *L) {
  lref *r = lref_check(L, 1);
  luaL_checkany(L, 2);
  double t = lua_isnoneornil(L, 3) ? DEFAULT_REQUEST_TIMEOUT : lstate_check_seconds(L, 3, "request", "timeout", 1);
  if (!r->iso || !atomic_load(&r->iso->alive)) {
    lua_settop(L, 1);
    return luaL_error(L, "request to %s failed: isolate down", luaL_tolstring(L, 1, NULL));
  }
  ic_cluster *c = r->iso->cluster;
  ic_isolate *main = c->main;
  if (r->iso == main) {
    /* This thread blocks until the reply, so nothing could answer it. */
    lua_settop(L, 1);
    return luaL_error(L, "request to %s failed: the main state cannot request itself (nothing answers while it waits)",
                      luaL_tolstring(L, 1, NULL));
  }
  ic_msg *m = lstate_encode_msg(L, 2, "msg", MSG_REQUEST);
  if (!m) return luaL_error(L, "out of memory");
  uint64_t corr = ++main->next_corr;
  isolate_retain(main);
  m->sender = main;
  m->corr = corr;
  /* Replies to earlier requests that timed out are of no use now. */
  ic_msg *x;
  while ((x = mailbox_pop(&main->sysq)) != NULL) msg_free(x);
  const char *why = isolate_post(r->iso, m, NULL);
  if (why) {
    lua_settop(L, 1);
    return luaL_error(L, "request to %s failed: %s", luaL_tolstring(L, 1, NULL), why);
  }
  uint64_t deadline = plat_now_ns() + plat_seconds_to_ns(t);
  main_block b = {main, -1, 0};
  for (;;) {
    /* Interrupted while waiting: a reply, if one comes, is dropped later
     * as a late one. */
    if (b.begun && atomic_load(&main->sigint)) {
      block_end(&b);
      return raise_interrupted(L);
    }
    x = mailbox_pop(&main->sysq);
    if (x) {
      if ((x->kind == MSG_REPLY || x->kind == MSG_REPLY_ERROR) && x->corr == corr) {
        if (block_end(&b)) raise(SIGINT); /* as in l_receive */
        int is_error = x->kind == MSG_REPLY_ERROR;
        int st = lstate_decode_msg(L, c, x);
        msg_free(x);
        if (st != LUA_OK || is_error) return lua_error(L);
        return 1;
      }
      msg_free(x);
      continue;
    }
    if (mailbox_count(&main->sysq) > 0) continue;
    if (atomic_load(&c->state) == CLUSTER_DOWN) {
      block_end(&b);
      lua_settop(L, 1);
      return luaL_error(L, "request to %s failed: the cluster has shut down", luaL_tolstring(L, 1, NULL));
    }
    block_begin(&b);
    if (!cluster_main_wait(c, &main->sysq, deadline) && mailbox_count(&main->sysq) == 0 &&
        !atomic_load(&main->sigint)) {
      block_end(&b);
      lua_settop(L, 1);
      char secs[32]; /* "%g", as the isolates write it: "3 s", "0.5 s" */
      snprintf(secs, sizeof secs, "%g", t);
      return luaL_error(L, "timeout: no reply from %s within %s s", luaL_tolstring(L, 1, NULL), secs);
    }
  }
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
  main_block b = {c->main, -1, 0};
  block_begin(&b);
  ic_isolate *iso = cluster_main_wait_path(c, path, w->deadline);
  if (block_end(&b)) {
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
  main_block b = {c->main, -1, 0};
  block_begin(&b);
  /* Woken by each message to the main state too: they stay queued. */
  while (atomic_load(&c->state) == CLUSTER_RUNNING && !atomic_load(&c->main->sigint)) {
    if (!cluster_main_wait(c, NULL, deadline)) break;
  }
  if (block_end(&b)) return raise_interrupted(L);
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
  main_block b = {c->main, -1, 0};
  block_begin(&b);
  int in_time = cluster_shutdown(c, t);
  cluster_join_stopper(c);
  if (block_end(&b)) raise(SIGINT);
  lua_pushboolean(L, in_time);
  return 1;
}

static int l_drain(lua_State *L) {
  ic_cluster *c = check_cluster(L, 1);
  double t = lua_isnoneornil(L, 2) ? CLOSE_DRAIN_SECONDS : lstate_check_seconds(L, 2, "drain", "timeout", 0);
  main_block b = {c->main, -1, 0};
  block_begin(&b);
  int quiet = cluster_drain(c, t);
  if (block_end(&b)) return raise_interrupted(L);
  lua_pushboolean(L, quiet);
  return 1;
}

static int l_stats(lua_State *L) { return lstate_stats(L, check_cluster(L, 1)); }

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
  main_block b = {c->main, -1, 0};
  block_begin(&b);
  if (atomic_load(&c->state) == CLUSTER_RUNNING) cluster_drain(c, CLOSE_DRAIN_SECONDS);
  cluster_shutdown(c, CLOSE_SHUTDOWN_SECONDS);
  if (!cluster_join_stopper(c)) cluster_detach_stopper(c); /* still stopping: it holds the cluster */
  int interrupted = block_end(&b);
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

static int l_new(lua_State *L) {
  cluster_opts o = {0, 0, 0};
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    static const char *const known[] = {"workers", "mailbox", "time_slice", "logger", NULL};
    lstate_check_options(L, 1, "single_node", known);
    o.workers = (int)lstate_opt_integer(L, 1, "single_node", "workers", 0, 1, MAX_WORKERS);
    o.mailbox = (size_t)lstate_opt_integer(L, 1, "single_node", "mailbox", 0, 1, LUA_MAXINTEGER);
    if (lua_getfield(L, 1, "time_slice") != LUA_TNIL) {
      o.slice_seconds = lstate_check_seconds(L, -1, "single_node", "opts.time_slice", 1);
    }
    lua_pop(L, 1);
  }
  lstate_open(L);
  lcluster *lc = lua_newuserdatauv(L, sizeof *lc, 0);
  lc->c = NULL; /* safe to collect before the cluster exists */
  luaL_setmetatable(L, LCLUSTER_MT);
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
        {"send_all", l_send_all},
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
