/*
 * isolate-cluster — runs a Lua script as the main state of a cluster.
 *
 *   isolate-cluster [--workers N] [--shutdown-timeout S] [--stats S]
 *                   [--nats URL --cluster NAME --node NAME
 *                   [--user U --password P | --token T] [--secret S [--allow-code]]]
 *                   script.lua [args...]
 *
 * The script finds a global `cluster` (a single-node cluster, or with --nats
 * this process's node of a multi-node cluster, already running) and `arg` (arg[0] = script, arg[1..] = args), as lua5.4 gives it.
 * After the script has run, the host serves until the cluster shuts down (an
 * isolate calls context:shutdown_cluster(), or the script called
 * cluster:shutdown()); SIGINT and SIGTERM shut it down gracefully. The Lua
 * module is built in: no LUA_PATH is needed for require("isolate_cluster").
 *
 * Exit status: 0 when the script ran and every isolate stopped in time; 1
 * when the script raised (the cluster is then shut down at once, without
 * draining); 2 on bad usage; 3 when the shutdown did not finish within
 * --shutdown-timeout (an isolate was still computing or stuck in C).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "cluster.h"
#include "stats.h"

extern const char ic_host_init_lua[];
extern const size_t ic_host_init_lua_len;
extern const char ic_host_supervisor_lua[];
extern const size_t ic_host_supervisor_lua_len;

int luaopen_isolate_cluster_core(lua_State *L);
ic_cluster *lmodule_cluster(lua_State *L, int idx);

#define SHUTDOWN_SECONDS 5.0
#define EXIT_SCRIPT_ERROR 1
#define EXIT_USAGE 2
#define EXIT_SHUTDOWN_LATE 3

#ifndef IC_VERSION
#define IC_VERSION "unknown"
#endif

static void usage(FILE *f) {
  fprintf(f,
          "usage: isolate-cluster [options] script.lua [args...]\n"
          "  Runs script.lua as the main state of a cluster (global `cluster`), then serves\n"
          "  until the cluster shuts down. SIGINT/SIGTERM shut it down gracefully.\n"
          "  --workers N            worker threads (default: number of cores)\n"
          "  --shutdown-timeout S   seconds the final shutdown may take (default 5)\n"
          "  --stats S              print a table of the isolates to stderr every S seconds\n"
          "  --nats URL --cluster NAME --node NAME\n"
          "                         be a node of a multi-node cluster (docs/multinode.md); --nats\n"
          "                         may be repeated or a comma-separated list (servers of one NATS\n"
          "                         cluster)\n"
          "  --user U --password P | --token T\n"
          "                         NATS credentials (or IC_NATS_USER, IC_NATS_PASSWORD,\n"
          "                         IC_NATS_TOKEN, which keep them out of the process list)\n"
          "  --secret S             the cluster secret that authenticates node traffic (or IC_SECRET)\n"
          "  --allow-code           accept Lua functions from other nodes (needs the secret)\n"
          "  --version              print the version and exit\n"
          "  --help                 print this text and exit\n"
          "Exit status: 0; 1 the script raised (or does not compile); 2 bad usage (also a\n"
          "script that cannot be read); 3 the shutdown timed out.\n");
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
  double shutdown_seconds;
  /* multi-node (all NULL for a single node); the URLs are argv strings */
  const char *urls[16];
  int nurls;
  const char *cluster_name, *node, *user, *password, *token, *secret;
  int allow_code;
  sigset_t signals;
  ic_cluster *cluster;
  double stats_seconds; /* 0: no --stats */
  plat_mutex stats_lock; /* guards stats_stop */
  plat_cond stats_cond;
  int stats_stop;
  pthread_t stats_thread;
  int has_stats_thread;
  pthread_t sig_thread;  /* signal_main, started once the cluster exists */
  int has_sig_thread;
} host;

#define STATS_TOP_ROWS 20

static int by_run_time(const void *a, const void *b) {
  const stats_row *x = a, *y = b;
  if (x->run_seconds != y->run_seconds) return x->run_seconds < y->run_seconds ? 1 : -1;
  return x->in < y->in ? 1 : x->in > y->in ? -1 : 0;
}

/* One table, like top's: the totals, then the isolates that ran longest. */
static void print_stats(host *h, uint64_t start) {
  ic_cluster *c = h->cluster;
  stats_rows r;
  if (stats_rows_take(c, &r)) return;
  qsort(r.rows, r.n, sizeof *r.rows, by_run_time);
  uint64_t in = 0, out = 0, queued = 0, mem = 0;
  for (size_t i = 0; i < r.n; i++) {
    in += r.rows[i].in;
    out += r.rows[i].out;
    queued += r.rows[i].mailbox;
    mem += r.rows[i].memory;
  }
  char buf[8192];
  FILE *f = fmemopen(buf, sizeof buf, "w");
  if (f) {
    fprintf(f, "isolate-cluster stats at %.1f s: %zu isolates, %llu spawned, %llu dead letters, %d workers\n",
            (double)(plat_now_ns() - start) / 1e9, r.n, (unsigned long long)atomic_load(&c->spawned),
            (unsigned long long)atomic_load(&c->dead_letters), c->nworkers);
    fprintf(f, "  totals: %llu queued, %llu in, %llu out, %.1f KiB of Lua heap\n", (unsigned long long)queued,
            (unsigned long long)in, (unsigned long long)out, (double)mem / 1024);
    fprintf(f, "  %8s %-24s %-9s %-7s %8s %10s %10s %10s %8s\n", "ID", "PATH", "KIND", "STATE", "MAILBOX", "IN",
            "OUT", "MEM KiB", "CPU s");
    for (size_t i = 0; i < r.n && i < STATS_TOP_ROWS; i++) {
      const stats_row *row = &r.rows[i];
      fprintf(f, "  %8llu %-24.24s %-9s %-7s %8llu %10llu %10llu %10.1f %8.3f\n", (unsigned long long)row->id,
              row->path ? row->path : "-", row->kind, row->state, (unsigned long long)row->mailbox,
              (unsigned long long)row->in, (unsigned long long)row->out, (double)row->memory / 1024,
              row->run_seconds);
    }
    if (r.n > STATS_TOP_ROWS) fprintf(f, "  ... and %zu more\n", r.n - STATS_TOP_ROWS);
    fputc('\n', f);
    long len = ftell(f);
    fclose(f);
    /* One write: the table is not cut by other lines to stderr. */
    if (len > 0) fwrite(buf, 1, (size_t)len < sizeof buf ? (size_t)len : sizeof buf - 1, stderr);
  }
  stats_rows_free(&r);
}

/* Ends the --stats thread, if there is one: before the cluster is closed,
 * also when the script's run ends with a Lua error (main() calls it then). */
static void stop_stats(host *h) {
  if (!h->has_stats_thread) return;
  h->has_stats_thread = 0;
  plat_mutex_lock(&h->stats_lock);
  h->stats_stop = 1;
  plat_cond_signal(&h->stats_cond);
  plat_mutex_unlock(&h->stats_lock);
  pthread_join(h->stats_thread, NULL);
}

/* --stats: prints a table every stats_seconds until told to stop. */
static void *stats_main(void *arg) {
  host *h = arg;
  uint64_t start = plat_now_ns(), next = start;
  plat_mutex_lock(&h->stats_lock);
  while (!h->stats_stop) {
    next += plat_seconds_to_ns(h->stats_seconds);
    while (!h->stats_stop && plat_cond_wait_until(&h->stats_cond, &h->stats_lock, next) != ETIMEDOUT) {
    }
    if (h->stats_stop) break;
    plat_mutex_unlock(&h->stats_lock);
    print_stats(h, start);
    plat_mutex_lock(&h->stats_lock);
  }
  plat_mutex_unlock(&h->stats_lock);
  return NULL;
}

/* Seconds a script may go on computing after a shutdown signal, beyond the
 * shutdown's own time, before the process ends without it: generous, so that
 * a host that does return (closing the cluster, freeing the states) is never
 * cut short on a loaded machine. */
#define SIGNAL_GRACE_SECONDS 5.0

/* The only thread that takes SIGINT/SIGTERM (they are blocked everywhere
 * else): it asks for a graceful shutdown, which cluster:run() sees. A
 * script that never gets back to the runtime (a loop in Lua or in C) would
 * keep the process alive for ever, since the signals reach only this
 * thread: once the shutdown's time and a grace time have passed without
 * the host being done (SIGUSR2), the process exits with the status of a
 * late shutdown. The cluster's shutdown has run by then. */
static void *signal_main(void *arg) {
  host *h = arg;
  int sig;
  int asked = 0;
  uint64_t deadline = 0;
  for (;;) {
    if (!asked) {
      if (sigwait(&h->signals, &sig) != 0) break;
    } else {
      /* from the first signal on: a later one does not put the end off */
      uint64_t now = plat_now_ns(), left = deadline > now ? deadline - now : 0;
      struct timespec grace = {(time_t)(left / 1000000000u), (long)(left % 1000000000u)};
      sig = sigtimedwait(&h->signals, NULL, &grace);
      if (sig < 0 && errno == EINTR) continue;
      if (sig < 0) { /* the time is up: the script still runs */
        fprintf(stderr, "isolate-cluster: the script did not return within %g s of the signal; exiting\n",
                h->shutdown_seconds + SIGNAL_GRACE_SECONDS);
        fflush(stdout);
        /* the shutdown's own thread has finished: joined, as at any end */
        if (!cluster_join_stopper(h->cluster)) cluster_detach_stopper(h->cluster);
        _exit(EXIT_SHUTDOWN_LATE);
      }
    }
    if (sig == SIGINT || sig == SIGTERM) {
      cluster_request_shutdown(h->cluster, h->shutdown_seconds);
      if (!asked) deadline = plat_now_ns() + plat_seconds_to_ns(h->shutdown_seconds + SIGNAL_GRACE_SECONDS);
      asked = 1;
    } else if (sig == SIGUSR2) {
      break; /* the host is done */
    }
  }
  return NULL;
}

/* Ends the signal thread, if there is one: on every way out of run(),
 * also when it raises (main() calls it then), and before lua_close frees
 * the cluster that thread would ask to shut down. */
static void stop_signals(host *h) {
  if (!h->has_sig_thread) return;
  h->has_sig_thread = 0;
  pthread_kill(h->sig_thread, SIGUSR2);
  pthread_join(h->sig_thread, NULL);
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

  /* The script first: one that cannot be read is bad usage, and then, as
   * for one that does not compile, no cluster starts (nor joins). */
  lua_pushcfunction(L, traceback);
  int tb = lua_gettop(L);
  int status = luaL_loadfile(L, h->argv[h->script]);
  if (status != LUA_OK) {
    fprintf(stderr, "isolate-cluster: %s\n", lua_tostring(L, -1));
    lua_pushinteger(L, status == LUA_ERRFILE ? EXIT_USAGE : EXIT_SCRIPT_ERROR);
    return 1;
  }
  int chunk = lua_gettop(L);

  /* cluster = require("isolate_cluster").single_node{ workers = N }, or
   * .node{ nats = ..., cluster = ..., name = ..., workers = N, ... } */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "isolate_cluster");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, h->nurls ? "node" : "single_node");
  lua_createtable(L, 0, 8);
  if (h->workers > 0) {
    lua_pushinteger(L, h->workers);
    lua_setfield(L, -2, "workers");
  }
  if (h->nurls) {
    lua_createtable(L, h->nurls, 0);
    for (int i = 0; i < h->nurls; i++) {
      lua_pushstring(L, h->urls[i]);
      lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "nats");
    const char *fields[][2] = {{"cluster", h->cluster_name}, {"name", h->node}, {"user", h->user},
                               {"password", h->password}, {"token", h->token}, {"secret", h->secret}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
      if (!fields[i][1]) continue;
      lua_pushstring(L, fields[i][1]);
      lua_setfield(L, -2, fields[i][0]);
    }
    if (h->allow_code) {
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, "allow_code");
    }
  }
  lua_call(L, 1, 1);
  h->cluster = lmodule_cluster(L, -1);
  lua_pushvalue(L, -1);
  lua_setglobal(L, "cluster");
  int cl = lua_gettop(L);

  h->has_sig_thread = pthread_create(&h->sig_thread, NULL, signal_main, h) == 0;
  h->has_stats_thread = h->stats_seconds > 0 && pthread_create(&h->stats_thread, NULL, stats_main, h) == 0;

  int nargs = h->argc - h->script - 1;
  luaL_checkstack(L, nargs + 1, "too many arguments");
  lua_pushvalue(L, chunk);
  for (int i = h->script + 1; i < h->argc; i++) lua_pushstring(L, h->argv[i]);
  status = lua_pcall(L, nargs, 0, tb);
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
  stop_stats(h);
  /* Shut down here, while the signal thread can still ask it to hurry. After
   * a script error nothing is drained: the script did not get to finish what
   * it meant to do, so waiting for its isolates' timers would only delay the
   * exit. A shutdown already done (by an isolate, a signal or the script)
   * reports its own result. */
  lua_getfield(L, cl, "shutdown");
  lua_pushvalue(L, cl);
  lua_pushnumber(L, h->shutdown_seconds);
  lua_call(L, 2, 1);
  int in_time = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, cl, "close");
  lua_pushvalue(L, cl);
  lua_call(L, 1, 0);
  stop_signals(h);
  lua_pushinteger(L, status != LUA_OK ? EXIT_SCRIPT_ERROR : in_time ? 0 : EXIT_SHUTDOWN_LATE);
  return 1;
}

int main(int argc, char **argv) {
  host h = {.argc = argc, .argv = argv, .shutdown_seconds = SHUTDOWN_SECONDS};
  if (plat_mutex_init(&h.stats_lock) || plat_cond_init(&h.stats_cond)) return 1;
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--version") == 0) {
      printf("isolate-cluster %s (Lua %s.%s)\n", IC_VERSION, LUA_VERSION_MAJOR, LUA_VERSION_MINOR);
      return 0;
    } else if (strcmp(argv[i], "--shutdown-timeout") == 0 && i + 1 < argc) {
      char *end;
      double t = strtod(argv[++i], &end);
      if (end == argv[i] || *end || !(t >= 0 && t <= 86400)) {
        fprintf(stderr, "isolate-cluster: --shutdown-timeout needs seconds from 0 to 86400\n");
        return EXIT_USAGE;
      }
      h.shutdown_seconds = t;
    } else if (strcmp(argv[i], "--stats") == 0 && i + 1 < argc) {
      char *end;
      double t = strtod(argv[++i], &end);
      if (end == argv[i] || *end || !(t >= 0.01 && t <= 86400)) {
        fprintf(stderr, "isolate-cluster: --stats needs seconds from 0.01 to 86400\n");
        return EXIT_USAGE;
      }
      h.stats_seconds = t;
    } else if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc) {
      char *end;
      long n = strtol(argv[++i], &end, 10);
      if (*end || n < 1 || n > 1024) {
        fprintf(stderr, "isolate-cluster: --workers needs a number from 1 to 1024\n");
        return EXIT_USAGE;
      }
      h.workers = (int)n;
    } else if (strcmp(argv[i], "--nats") == 0 && i + 1 < argc) {
      /* a comma-separated list is split in place: argv is ours */
      for (char *u = strtok(argv[++i], ","); u; u = strtok(NULL, ",")) {
        if (h.nurls == (int)(sizeof h.urls / sizeof h.urls[0])) {
          fprintf(stderr, "isolate-cluster: at most %d NATS server URLs\n", h.nurls);
          return EXIT_USAGE;
        }
        h.urls[h.nurls++] = u;
      }
    } else if (strcmp(argv[i], "--cluster") == 0 && i + 1 < argc) {
      h.cluster_name = argv[++i];
    } else if (strcmp(argv[i], "--node") == 0 && i + 1 < argc) {
      h.node = argv[++i];
    } else if (strcmp(argv[i], "--user") == 0 && i + 1 < argc) {
      h.user = argv[++i];
    } else if (strcmp(argv[i], "--password") == 0 && i + 1 < argc) {
      h.password = argv[++i];
    } else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc) {
      h.token = argv[++i];
    } else if (strcmp(argv[i], "--secret") == 0 && i + 1 < argc) {
      h.secret = argv[++i];
    } else if (strcmp(argv[i], "--allow-code") == 0) {
      h.allow_code = 1;
    } else if (strcmp(argv[i], "--") == 0) {
      i++;
      break;
    } else {
      fprintf(stderr, "isolate-cluster: unknown option %s\n", argv[i]);
      usage(stderr);
      return EXIT_USAGE;
    }
  }
  if (i >= argc) {
    usage(stderr);
    return EXIT_USAGE;
  }
  h.script = i;
  if (!h.user) h.user = getenv("IC_NATS_USER");
  if (!h.password) h.password = getenv("IC_NATS_PASSWORD");
  if (!h.token) h.token = getenv("IC_NATS_TOKEN");
  if (!h.secret) h.secret = getenv("IC_SECRET");
  if (h.nurls || h.cluster_name || h.node) {
    const char *missing = !h.nurls ? "--nats URL" : !h.cluster_name ? "--cluster NAME" : !h.node ? "--node NAME" : NULL;
    if (missing) {
      fprintf(stderr, "isolate-cluster: a multi-node cluster needs --nats URL, --cluster NAME and --node NAME "
                      "(%s is missing)\n", missing);
      return EXIT_USAGE;
    }
  } else if (h.user || h.password || h.token || h.secret || h.allow_code) {
    /* credentials from the environment alone do not make a node */
    if (h.allow_code) {
      fprintf(stderr, "isolate-cluster: --allow-code is for a multi-node cluster (--nats)\n");
      return EXIT_USAGE;
    }
    h.user = h.password = h.token = h.secret = NULL;
  }

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
  int code = EXIT_SCRIPT_ERROR;
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) fprintf(stderr, "isolate-cluster: %s\n", lua_tostring(L, -1));
  else code = (int)lua_tointeger(L, -1);
  /* A run() that raised left them running: before lua_close closes the
   * cluster they use. */
  stop_stats(&h);
  stop_signals(&h);
  lua_close(L);
  return code;
}
