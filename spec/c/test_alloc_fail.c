/* Allocation-failure injection over the whole runtime: every malloc, calloc,
 * realloc and strdup made by the library (the C core and every Lua state's
 * allocator: isolates through the pool and malloc, the main state through
 * main_alloc below) is counted, and the Nth one fails.
 *
 * How: this test is linked with -Wl,--wrap=malloc,... (CMakeLists.txt), so
 * the library's calls reach the __wrap_ functions below; the library's
 * sources are untouched and nothing of this is in the shipped binaries.
 *
 * Each scenario (spawn, send, request, encode/decode, timers, events,
 * shutdown) is a Lua script run by a main state of this process with the
 * isolate_cluster module. For N = 1, 2, ... a child process (fork) runs the
 * scenario with allocation N failing (and the next IC_ALLOC_FAIL_BURST - 1,
 * so that Lua's emergency collection and retry cannot always hide it), and
 * must:
 *   - finish: the scenario completes, or raises an error that says memory
 *     ran out ("not enough memory" / "out of memory") or that the isolate
 *     concerned went down ("isolate down..."); a request that times out (a
 *     reply, an event or a monitor notice lost to the failure, so that a
 *     waiter would wait out its timeout), a shutdown that missed its
 *     deadline, or any other error (a message that does not say what
 *     happened) fails the test (IC_ALLOC_FAIL_STRICT=0: only counted). The
 *     requests' timeout R is long (IC_ALLOC_FAIL_REQUEST, default half the
 *     alarm): no failure may leave a requester waiting that long, so a
 *     loss shows as a timeout, not as a slow run;
 *   - not crash, and not hang (alarm: IC_ALLOC_FAIL_ALARM seconds);
 *   - leak nothing (LeakSanitizer in the ASan build fails the child).
 * The sweep of a scenario ends at the first N the scenario completes without
 * reaching (all allocations fewer than N).
 *
 * Knobs: IC_ALLOC_FAIL_FULL=1 tries every N (the full sweep); otherwise
 * about IC_ALLOC_FAIL_POINTS (default 40; 25 when IC_SANITIZE is set, 8 with
 * IC_TEST_QUICK, as under valgrind) points per scenario, spread evenly over its
 * allocations with a seeded offset (IC_ALLOC_FAIL_SEED), so that different
 * runs try different points. IC_ALLOC_FAIL_ONLY=name runs one scenario;
 * IC_ALLOC_FAIL_TRACE=1 prints a backtrace where each failure is injected;
 * IC_ALLOC_FAIL_AT=N tries allocation N only.
 * Prints the points tried per scenario. Exit status 0 when all passed. */
#define _GNU_SOURCE
#include <execinfo.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <malloc.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int luaopen_isolate_cluster_core(lua_State *L);

/* ---- the counting allocator ------------------------------------------------
 * Process-wide by nature (it stands in for malloc); set up in each child
 * before any thread starts. */
static atomic_long alloc_count;  /* allocations since arm() */
static atomic_long fail_from;    /* first failing allocation (1-based); 0 = off */
static atomic_long fail_burst;   /* how many in a row fail from there */
static atomic_long failures;     /* allocations refused so far */
static int trace_failures;       /* IC_ALLOC_FAIL_TRACE=1: print a backtrace at each */

void *__real_malloc(size_t n);
void *__real_calloc(size_t k, size_t n);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t k, size_t n);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);

static int should_fail(void) {
  long from = atomic_load(&fail_from);
  long k = atomic_fetch_add(&alloc_count, 1) + 1;
  if (from > 0 && k >= from && k < from + atomic_load(&fail_burst)) {
    atomic_fetch_add(&failures, 1);
    if (trace_failures) { /* where each injected failure strikes */
      void *frames[24];
      backtrace_symbols_fd(frames, backtrace(frames, 24), 2);
      ssize_t w = write(2, "--\n", 3);
      (void)w;
    }
    return 1;
  }
  return 0;
}

void *__wrap_malloc(size_t n) { return should_fail() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t k, size_t n) { return should_fail() ? NULL : __real_calloc(k, n); }
void *__wrap_realloc(void *p, size_t n) {
  /* Shrinking never fails: Lua relies on it (and C code may). */
  if (n > (p ? malloc_usable_size(p) : 0) && should_fail()) return NULL;
  return __real_realloc(p, n);
}
char *__wrap_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = __wrap_malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* The main state's allocator: through the (wrapped) realloc, so the main
 * state's allocations are counted like everything else. */
static void *main_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}

/* ---- scenarios ---------------------------------------------------------------
 * Each is the body of a function(ic) that must run to its end; it raises on
 * any failure. Every cluster is shut down by the scenario; one left behind
 * by an error is closed by lua_close. T is the time a shutdown or a lookup
 * gets (IC_ALLOC_FAIL_WAIT), R a request's (long: see above). */
typedef struct scenario {
  const char *name;
  const char *src;
} scenario;

#define ECHO "function(ctx) ctx:on_message(function(m) return m end) end"

static const scenario SCENARIOS[] = {
    {"create",
     "local c = ic.single_node{workers = 1, logger = false}\n"
     "assert(c:shutdown(T), 'shutdown in time')\n"},
    {"spawn",
     "local c = ic.single_node{workers = 1, logger = false}\n"
     "local a = c:spawn_isolate(" ECHO ", {p = {1, 2, 3}, s = 'x'}, {path = '/a'})\n"
     "local b = c:spawn_isolate(" ECHO ", nil, {path = '/pool/'})\n"
     "assert(a:request('x', R) == 'x')\n"
     "assert(c:lookup_isolate('/a', T) == a, 'lookup')\n"
     "assert(b:property('p') == nil and a:property('s') == 'x')\n"
     "assert(c:shutdown(T), 'shutdown in time')\n"},
    {"send",
     "local c = ic.single_node{workers = 1, logger = false}\n"
     "local f = c:spawn_isolate(function(ctx)\n"
     "  ctx:on_message(function(m, s) if m ~= 'sync' then assert(s:send(m)) end return 'ok' end)\n"
     "end)\n"
     "for i = 1, 5 do local ok, why = f:send({i, 's' .. i, {n = i}}) assert(ok, why) end\n"
     "assert(f:request('sync', R) == 'ok')\n"
     "for i = 1, 5 do\n"
     "  local m = c:receive(0)\n"
     "  assert(m and m[1] == i and m[3].n == i, 'a message sent before the reply was lost')\n"
     "end\n"
     "assert(c:shutdown(T), 'shutdown in time')\n"},
    {"request",
     "local c = ic.single_node{workers = 1, logger = false}\n"
     "local r = c:spawn_isolate(function(ctx)\n"
     "  ctx:on_message(function(m)\n"
     "    if m.op == 'err' then error('handler failed', 0) end\n"
     "    if m.op == 'fwd' then return m.to:request({op = 'add', a = m.a, b = 1}, m.r) end\n"
     "    return m.a + m.b\n"
     "  end)\n"
     "end)\n"
     "local r2 = c:spawn_isolate(function(ctx) ctx:on_message(function(m) return m.a + m.b end) end)\n"
     "assert(r:request({op = 'add', a = 1, b = 2}, R) == 3)\n"
     "local ok, err = pcall(r.request, r, {op = 'err'}, R)\n"
     "if not ok and not tostring(err):find('handler failed', 1, true) then error(err, 0) end\n"
     "assert(not ok, 'the handler error was raised')\n"
     "assert(r:request({op = 'fwd', to = r2, a = 4, r = R}, R) == 5)\n"
     "assert(c:shutdown(T), 'shutdown in time')\n"},
    {"codec",
     "local shared = {1, 2, 3}\n"
     "local t = {a = shared, b = shared, s = string.rep('x', 300), f = 1.5, i = math.mininteger,\n"
     "  fn = function(x) return shared[x] end, ins = table.insert, list = {}}\n"
     "for i = 1, 40 do t.list[i] = {i, tostring(i), {k = i}} end\n"
     "t.self = t\n"
     "local bytes = ic.encode(t)\n"
     "local u = ic.decode(bytes, {functions = true})\n"
     "assert(u.a == u.b and u.self == u and u.fn(2) == 2 and #u.list == 40)\n"
     "local c = ic.single_node{workers = 1, logger = false}\n"
     "local e = c:spawn_isolate(" ECHO ")\n"
     "local back = e:request(t, R)\n"
     "assert(back.a == back.b and back.self == back and back.fn(3) == 3 and back.list[40][3].k == 40)\n"
     "assert(e:request({ref = e}, R).ref == e)\n"
     "assert(c:shutdown(T), 'shutdown in time')\n"},
    {"timers",
     "local c = ic.single_node{workers = 1, logger = false}\n"
     "local r = c:spawn_isolate(function(ctx)\n"
     "  ctx:on_message(function(m)\n"
     "    if m == 'sleep' then ctx:sleep(0.01) return 'slept' end\n"
     "    local reply, n = ctx:reply_later(), 0\n"
     "    local dropped = ctx:after(30, function() error('a cancelled timer ran') end)\n"
     "    dropped:cancel()\n"
     "    local t t = ctx:every(0.005, function()\n"
     "      n = n + 1\n"
     "      if n == 3 then t:cancel() ctx:after(0.005, function() reply(n) end) end\n"
     "    end)\n"
     "  end)\n"
     "end)\n"
     "assert(r:request('sleep', R) == 'slept')\n"
     "assert(r:request('timers', R) == 3)\n"
     "assert(c:shutdown(T), 'shutdown in time')\n"},
    {"events",
     "local c = ic.single_node{workers = 1, logger = false}\n"
     "local w = c:spawn_isolate(function(ctx)\n"
     "  local seen, waiting = {}, nil\n"
     "  local function check()\n"
     "    -- b may fail before it comes up (its state cannot be made): down only\n"
     "    if waiting and seen.down and (seen.mon or not seen.up) then waiting(seen) waiting = nil end\n"
     "  end\n"
     "  ctx:on_isolate_up(function(ref) if ref.path == '/b' then seen.up = true\n"
     "    ctx:monitor(ref, function(_, why) seen.mon = why check() end) check() end end)\n"
     "  ctx:on_isolate_down(function(ref, why) if ref.path == '/b' then seen.down = why check() end end)\n"
     "  ctx:on_message(function(m)\n"
     "    if m == 'ready' then return true end\n"
     "    waiting = ctx:reply_later() check()\n"
     "  end)\n"
     "end)\n"
     "assert(w:request('ready', R))\n"
     "local b = c:spawn_isolate(function(ctx) ctx:on_message(function() ctx:stop('done') end) end,\n"
     "  nil, {path = '/b'})\n"
     "assert(b:send('stop'))\n"
     "local seen = w:request('wait', R)\n"
     "assert(seen.down == 'done' and (seen.mon == 'done' or seen.mon == 'noproc') or injected(),\n"
     "  'events: down ' .. tostring(seen.down) .. ', monitor ' .. tostring(seen.mon))\n"
     "assert(c:shutdown(T), 'shutdown in time')\n"},
    {"shutdown",
     "local c = ic.single_node{workers = 1, logger = false}\n"
     "local main = c.main\n"
     "for i = 1, 3 do\n"
     "  local r = c:spawn_isolate(function(ctx)\n"
     "    ctx:on_shutdown(function() main:send({'bye', ctx:property('i')}) end)\n"
     "    ctx:on_message(function(m) return m end)\n"
     "  end, {i = i})\n"
     "  assert(r:request('up', R) == 'up')\n"
     "end\n"
     "local d = c:spawn_isolate(function(ctx) ctx:on_message(function() end) end, nil, {dedicated = true})\n"
     "assert(d:send('x'))\n"
     "assert(c:shutdown(T), 'shutdown in time')\n"
     "local byes = 0\n"
     "while c:receive(0) do byes = byes + 1 end\n"
     "-- Short of memory, a shutdown interrupts an isolate it cannot message.\n"
     "assert(byes == 3 or injected(), 'every on_shutdown handler ran')\n"},
};
#define NSCENARIOS (sizeof SCENARIOS / sizeof SCENARIOS[0])

/* Child exit codes. */
enum {
  R_COMPLETE = 0, R_RECOVERED = 10, R_OOM = 11, R_TIMEOUT = 12, R_OTHER = 13, R_SETUP = 14,
  R_DOWN = 15,    /* a call failed because the isolate concerned went down */
  R_LATE = 16,    /* shutdown returned false (did not finish by its deadline) */
  R_UNCLEAR = 17, /* an error that does not say memory ran out */
};

static long env_long(const char *name, long dflt) {
  const char *v = getenv(name);
  return v && *v ? strtol(v, NULL, 10) : dflt;
}

/* injected() -> true once an allocation has been refused. */
static int l_injected(lua_State *L) {
  lua_pushboolean(L, atomic_load(&failures) > 0);
  return 1;
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Runs scenario s in this (child) process, failing allocation `from` (0:
 * none) and the burst after it; returns an exit code; with allocs, reports
 * how many allocations the run made. */
static int run_scenario(const scenario *s, long from, long burst, double wait_s, double request_s, long *allocs) {
  lua_State *L = lua_newstate(main_alloc, NULL);
  if (!L) return R_SETUP;
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_isolate_cluster_core);
  lua_setfield(L, -2, "isolate_cluster.core");
  lua_pop(L, 1);
  const char *setup =
      "package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path\n"
      "return (require('isolate_cluster'))";
  if (luaL_dostring(L, setup) != LUA_OK) {
    fprintf(stderr, "setup: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return R_SETUP;
  }
  lua_setglobal(L, "ic");
  lua_pushcfunction(L, l_injected);
  lua_setglobal(L, "injected");
  lua_pushnumber(L, wait_s);
  lua_setglobal(L, "T");
  lua_pushnumber(L, request_s);
  lua_setglobal(L, "R");
  lua_pushcfunction(L, traceback);
  if (luaL_loadbuffer(L, s->src, strlen(s->src), s->name) != LUA_OK) {
    fprintf(stderr, "%s: %s\n", s->name, lua_tostring(L, -1));
    lua_close(L);
    return R_SETUP;
  }
  atomic_store(&fail_burst, burst);
  atomic_store(&alloc_count, 0);
  atomic_store(&fail_from, from);
  int status = lua_pcall(L, 0, 0, -2);
  int rc;
  if (status == LUA_OK) {
    rc = atomic_load(&failures) ? R_RECOVERED : R_COMPLETE;
  } else {
    const char *err = lua_tostring(L, -1);
    if (!err) err = "(error object is not a string)";
    if (!atomic_load(&failures)) {
      fprintf(stderr, "%s: failed with no allocation failure injected: %s\n", s->name, err);
      rc = R_OTHER;
    } else if (strstr(err, "not enough memory") || strstr(err, "out of memory") ||
               strstr(err, "Cannot allocate memory") /* strerror(ENOMEM) */) {
      rc = R_OOM;
    } else if (strstr(err, "isolate down")) {
      rc = R_DOWN;
    } else if (strstr(err, "timeout") || strstr(err, "timed out")) {
      rc = R_TIMEOUT;
    } else if (strstr(err, "shutdown in time")) {
      rc = R_LATE;
    } else {
      rc = R_UNCLEAR;
    }
    if (rc != R_OOM && rc != R_DOWN && rc != R_OTHER) {
      /* One line: what a user would see. */
      const char *nl = strchr(err, '\n');
      fprintf(stderr, "%s, allocation %ld failing: %.*s\n", s->name, from,
              (int)(nl ? nl - err : (ptrdiff_t)strlen(err)), err);
    }
  }
  if (allocs) *allocs = atomic_load(&alloc_count);
  lua_close(L);
  return rc;
}

typedef struct tally {
  long tried, complete, recovered, oom, down, timeout, late, unclear, bad;
} tally;

/* Forks a child that runs s with allocation `from` failing; returns the
 * child's code, or -1 after printing what went wrong (signal, hang, leak). */
static int run_child(const scenario *s, long from, long burst, double wait_s, double request_s, unsigned alarm_s,
                     int count_fd) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    return -1;
  }
  if (pid == 0) {
    alarm(alarm_s); /* default action: the child dies of SIGALRM = a hang */
    long allocs = 0;
    int rc = run_scenario(s, from, burst, wait_s, request_s, &allocs);
    if (count_fd >= 0) {
      ssize_t w = write(count_fd, &allocs, sizeof allocs);
      (void)w;
    }
    exit(rc); /* exit, not _exit: LeakSanitizer runs at exit */
  }
  int st;
  while (waitpid(pid, &st, 0) < 0) {
  }
  if (WIFSIGNALED(st)) {
    fprintf(stderr, "%s, allocation %ld failing: child %s (signal %d)\n", s->name, from,
            WTERMSIG(st) == SIGALRM ? "hung" : "crashed", WTERMSIG(st));
    return -1;
  }
  int code = WEXITSTATUS(st);
  if (code != R_COMPLETE && code != R_RECOVERED && code != R_OOM && code != R_TIMEOUT &&
      code != R_DOWN && code != R_LATE && code != R_UNCLEAR) {
    fprintf(stderr, "%s, allocation %ld failing: child exit %d%s\n", s->name, from, code,
            code == 23 ? " (LeakSanitizer: a leak)" : code == R_OTHER ? " (unexpected error)" : "");
    return -1;
  }
  return code;
}

int main(void) {
  int full = env_long("IC_ALLOC_FAIL_FULL", 0) != 0;
  int quick = getenv("IC_TEST_QUICK") != NULL; /* e.g. under valgrind */
  int slow = (getenv("IC_SANITIZE") && *getenv("IC_SANITIZE")) || quick;
  long points = env_long("IC_ALLOC_FAIL_POINTS", quick ? 8 : slow ? 25 : 40);
  long burst = env_long("IC_ALLOC_FAIL_BURST", 2);
  /* T in the scenarios: shutdown deadlines and lookups; it must hold on a
   * loaded machine. R: request timeouts, long enough that a request that
   * times out is one whose reply was lost, yet within the alarm. */
  double wait_s = (double)env_long("IC_ALLOC_FAIL_WAIT", slow ? 5 : 2);
  unsigned alarm_s = (unsigned)env_long("IC_ALLOC_FAIL_ALARM", slow ? 90 : 30);
  double request_s = (double)env_long("IC_ALLOC_FAIL_REQUEST", (long)alarm_s / 2);
  unsigned seed = (unsigned)env_long("IC_ALLOC_FAIL_SEED", (long)time(NULL));
  const char *only = getenv("IC_ALLOC_FAIL_ONLY");
  int strict = env_long("IC_ALLOC_FAIL_STRICT", 1) != 0;
  trace_failures = env_long("IC_ALLOC_FAIL_TRACE", 0) != 0;
  srand(seed);
  printf("allocation-failure sweep: %s, burst %ld, seed %u, requests wait up to %.0f s\n",
         full ? "every point" : "sampled", burst, seed, request_s);
  long total_tried = 0, total_bad = 0, t_bad_points = 0;
  for (size_t i = 0; i < NSCENARIOS; i++) {
    const scenario *s = &SCENARIOS[i];
    if (only && strcmp(only, s->name) != 0) continue;
    /* A clean run first: it must complete, and tells how many allocations
     * the scenario makes (a guide for the stride; runs vary with timing). */
    int fds[2];
    if (pipe(fds) != 0) {
      perror("pipe");
      return 1;
    }
    int rc = run_child(s, 0, burst, wait_s, request_s, alarm_s, fds[1]);
    close(fds[1]);
    long allocs = 0;
    if (read(fds[0], &allocs, sizeof allocs) != (ssize_t)sizeof allocs) allocs = 0;
    close(fds[0]);
    if (rc != R_COMPLETE) {
      fprintf(stderr, "%s: the scenario fails with no allocation failure (code %d)\n", s->name, rc);
      total_bad++;
      continue;
    }
    long stride = full || points <= 0 ? 1 : allocs / points;
    if (stride < 1) stride = 1;
    tally t = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    long at = env_long("IC_ALLOC_FAIL_AT", 0); /* one point only (to look into it) */
    /* Until a run completes without reaching its failing allocation. */
    for (long n = at > 0 ? at : 1 + rand() % stride;; n += stride) {
      rc = run_child(s, n, burst, wait_s, request_s, alarm_s, -1);
      t.tried++;
      if (rc < 0) t.bad++;
      else if (rc == R_COMPLETE) t.complete++;
      else if (rc == R_RECOVERED) t.recovered++;
      else if (rc == R_OOM) t.oom++;
      else if (rc == R_TIMEOUT) t.timeout++;
      else if (rc == R_DOWN) t.down++;
      else if (rc == R_LATE) t.late++;
      else if (rc == R_UNCLEAR) t.unclear++;
      if (strict && (rc == R_LATE || rc == R_UNCLEAR || rc == R_TIMEOUT)) t.bad++;
      if (rc == R_COMPLETE || at > 0) break;
      if (n > 4 * allocs + 1000) {
        fprintf(stderr, "%s: still reaching allocation %ld (clean run: %ld)\n", s->name, n, allocs);
        t.bad++;
        break;
      }
    }
    printf("%-9s %6ld allocations, %4ld points tried (stride %ld): %ld out of memory, "
           "%ld isolate down, %ld recovered, %ld timed out, %ld late shutdown, %ld unclear error, "
           "%ld not reached; %ld FAILED\n",
           s->name, allocs, t.tried, stride, t.oom, t.down, t.recovered, t.timeout, t.late,
           t.unclear, t.complete, t.bad);
    total_tried += t.tried;
    total_bad += t.bad;
    t_bad_points += t.bad;
  }
  printf("%ld allocation-failure points tried, %ld failed\n", total_tried, total_bad);
  printf("%ld passed, %ld failed\n", total_tried - t_bad_points, total_bad);
  return total_bad ? 1 : 0;
}
