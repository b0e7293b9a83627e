/*
 * isolate-cluster — runs a Lua script as the main state of a cluster.
 *
 *   isolate-cluster [--workers N] script.lua [args...]
 *
 * The script finds a global `cluster` (a single-node cluster, already
 * running) and `arg` (arg[0] = script, arg[1..] = args), as lua5.4 gives it.
 * After the script has run, the host serves until the cluster shuts down (an
 * isolate calls context:shutdown_cluster(), or the script called
 * cluster:shutdown()); SIGINT and SIGTERM shut it down gracefully. The Lua
 * module is built in: no LUA_PATH is needed for require("isolate_cluster").
 *
 * Exit status: 0, 1 when the script raised an error, 2 on bad usage.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "cluster.h"

extern const char ic_host_init_lua[];
extern const size_t ic_host_init_lua_len;
extern const char ic_host_supervisor_lua[];
extern const size_t ic_host_supervisor_lua_len;

int luaopen_isolate_cluster_core(lua_State *L);
ic_cluster *lmodule_cluster(lua_State *L, int idx);

#define SHUTDOWN_SECONDS 5.0

static void usage(FILE *f) {
  fprintf(f,
          "usage: isolate-cluster [--workers N] script.lua [args...]\n"
          "  Runs script.lua as the main state of a cluster (global `cluster`), then serves\n"
          "  until the cluster shuts down. SIGINT/SIGTERM shut it down gracefully.\n"
          "  --workers N   worker threads (default: number of cores)\n"
          "  --nats URL --cluster NAME --node NAME\n"
          "                multi-node clusters (not part of this build)\n");
}

static int load_embedded(lua_State *L, const char *src, size_t len, const char *name) {
  if (luaL_loadbufferx(L, src, len, name, "t") != LUA_OK) return lua_error(L);
  lua_pushstring(L, name + 1);
  lua_call(L, 1, 1);
  return 1;
}

static int open_init(lua_State *L) {
  return load_embedded(L, ic_host_init_lua, ic_host_init_lua_len, "=isolate_cluster");
}

static int open_supervisor(lua_State *L) {
  return load_embedded(L, ic_host_supervisor_lua, ic_host_supervisor_lua_len, "=isolate_cluster.supervisor");
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

typedef struct host {
  int argc;
  char **argv;
  int script;    /* index of the script in argv */
  int workers;
  sigset_t signals;
  ic_cluster *cluster;
} host;

/* The only thread that takes SIGINT/SIGTERM (they are blocked everywhere
 * else): it asks for a graceful shutdown, which cluster:run() sees. */
static void *signal_main(void *arg) {
  host *h = arg;
  int sig;
  while (sigwait(&h->signals, &sig) == 0) {
    if (sig == SIGINT || sig == SIGTERM) {
      cluster_request_shutdown(h->cluster, SHUTDOWN_SECONDS);
    } else if (sig == SIGUSR2) {
      break; /* the host is done */
    }
  }
  return NULL;
}

/* Runs in protected mode: everything that touches the Lua state. */
static int run(lua_State *L) {
  host *h = lua_touserdata(L, 1);
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_isolate_cluster_core);
  lua_setfield(L, -2, "isolate_cluster.core");
  lua_pushcfunction(L, open_init);
  lua_setfield(L, -2, "isolate_cluster");
  lua_pushcfunction(L, open_supervisor);
  lua_setfield(L, -2, "isolate_cluster.supervisor");
  lua_pop(L, 1);

  /* arg, as lua5.4 sets it */
  lua_createtable(L, h->argc - h->script, h->script + 1);
  for (int i = 0; i < h->argc; i++) {
    lua_pushstring(L, h->argv[i]);
    lua_rawseti(L, -2, i - h->script);
  }
  lua_setglobal(L, "arg");

  /* cluster = require("isolate_cluster").single_node{ workers = N } */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "isolate_cluster");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "single_node");
  lua_createtable(L, 0, 1);
  if (h->workers > 0) {
    lua_pushinteger(L, h->workers);
    lua_setfield(L, -2, "workers");
  }
  lua_call(L, 1, 1);
  h->cluster = lmodule_cluster(L, -1);
  lua_pushvalue(L, -1);
  lua_setglobal(L, "cluster");
  int cl = lua_gettop(L);

  pthread_t sig_thread;
  int has_sig_thread = pthread_create(&sig_thread, NULL, signal_main, h) == 0;

  lua_pushcfunction(L, traceback);
  int tb = lua_gettop(L);
  int status = luaL_loadfile(L, h->argv[h->script]);
  if (status == LUA_OK) {
    int nargs = h->argc - h->script - 1;
    luaL_checkstack(L, nargs, "too many arguments");
    for (int i = h->script + 1; i < h->argc; i++) lua_pushstring(L, h->argv[i]);
    status = lua_pcall(L, nargs, 0, tb);
  }
  if (status != LUA_OK) {
    fprintf(stderr, "isolate-cluster: %s\n", lua_tostring(L, -1));
    lua_settop(L, cl);
  } else {
    /* Serve until the cluster shuts down. */
    lua_getfield(L, cl, "run");
    lua_pushvalue(L, cl);
    lua_call(L, 1, 1);
    lua_pop(L, 1);
  }
  /* Close the cluster here, while the signal thread can still ask it to
   * hurry, then let that thread go. */
  lua_getfield(L, cl, "close");
  lua_pushvalue(L, cl);
  lua_call(L, 1, 0);
  if (has_sig_thread) {
    pthread_kill(sig_thread, SIGUSR2);
    pthread_join(sig_thread, NULL);
  }
  lua_pushboolean(L, status == LUA_OK);
  return 1;
}

int main(int argc, char **argv) {
  host h = {argc, argv, 0, 0, {{0}}, NULL};
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc) {
      char *end;
      long n = strtol(argv[++i], &end, 10);
      if (*end || n < 1 || n > 1024) {
        fprintf(stderr, "isolate-cluster: --workers needs a number from 1 to 1024\n");
        return 2;
      }
      h.workers = (int)n;
    } else if (strcmp(argv[i], "--nats") == 0 || strcmp(argv[i], "--cluster") == 0 ||
               strcmp(argv[i], "--node") == 0) {
      fprintf(stderr, "isolate-cluster: %s: multi-node clusters need the NATS transport, "
                      "which is not part of this build\n", argv[i]);
      return 2;
    } else if (strcmp(argv[i], "--") == 0) {
      i++;
      break;
    } else {
      fprintf(stderr, "isolate-cluster: unknown option %s\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  if (i >= argc) {
    usage(stderr);
    return 2;
  }
  h.script = i;

  /* Block the shutdown signals before any thread starts, so every thread
   * inherits the mask and only the signal thread takes them. */
  sigemptyset(&h.signals);
  sigaddset(&h.signals, SIGINT);
  sigaddset(&h.signals, SIGTERM);
  sigaddset(&h.signals, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &h.signals, NULL);

  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "isolate-cluster: not enough memory\n");
    return 1;
  }
  lua_pushcfunction(L, run);
  lua_pushlightuserdata(L, &h);
  int ok = 0;
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) fprintf(stderr, "isolate-cluster: %s\n", lua_tostring(L, -1));
  else ok = lua_toboolean(L, -1);
  lua_close(L);
  return ok ? 0 : 1;
}
