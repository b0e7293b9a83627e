/* Native isolates that Lua code spawns by kind (ic_register_native): a Lua
 * supervisor whose child spec names a native kind starts it with the
 * child's properties and, when it is killed, starts a new one at the same
 * path, exactly as a Lua child; the entry { native = name } spawns one from
 * any Lua code; unknown kinds and refusing factories raise clear errors;
 * every incarnation's on_down runs once. */
#define _GNU_SOURCE
#include <msgpuck.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "isolate_cluster.h"

typedef struct kind_state {
  atomic_int made, downs, killed;
} kind_state;

typedef struct counter {
  int64_t start;
  kind_state *k;
} counter;

static void counter_msg(ic_native *self, ic_message *msg, void *ud) {
  counter *ctr = ud;
  if (!msg->is_request) return;
  char buf[16];
  char *w = ctr->start < 0 ? mp_encode_int(buf, ctr->start) : mp_encode_uint(buf, (uint64_t)ctr->start);
  ic_reply(ic_native_cluster(self), msg, buf, (size_t)(w - buf));
}

static void counter_down(void *ud, const char *reason) {
  counter *ctr = ud;
  atomic_fetch_add(&ctr->k->downs, 1);
  if (strcmp(reason, "killed") == 0) atomic_fetch_add(&ctr->k->killed, 1);
  free(ctr);
}

/* props["start"] as an integer, or -1. */
static int64_t prop_start(const char *props, size_t len) {
  if (!props || !len || mp_typeof(*props) != MP_MAP) return -1;
  const char *p = props;
  uint32_t n = mp_decode_map(&p);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t klen = 0;
    const char *key = mp_typeof(*p) == MP_STR ? mp_decode_str(&p, &klen) : NULL;
    if (!key) mp_next(&p);
    if (key && klen == 5 && memcmp(key, "start", 5) == 0) {
      if (mp_typeof(*p) == MP_UINT) return (int64_t)mp_decode_uint(&p);
      if (mp_typeof(*p) == MP_INT) return mp_decode_int(&p);
    }
    mp_next(&p);
  }
  return -1;
}

static int make_counter(void *fud, const char *props, size_t len, ic_native_options *out) {
  counter *ctr = malloc(sizeof *ctr);
  if (!ctr) return -1;
  ctr->start = prop_start(props, len);
  ctr->k = fud;
  atomic_fetch_add(&ctr->k->made, 1);
  out->on_message = counter_msg;
  out->on_down = counter_down;
  out->ud = ctr;
  return 0;
}

static int refuse(void *fud, const char *props, size_t len, ic_native_options *out) {
  (void)fud, (void)props, (void)len, (void)out;
  return 42;
}

/* Starts a supervisor of one native child at /counter (properties
 * start = 7); answers a request (a kind name) with the error that spawning
 * that kind raises, or "spawned". */
static const char LAUNCHER[] =
    "package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path\n"
    "local supervisor = require('isolate_cluster.supervisor')\n"
    "return function(ctx)\n"
    "  supervisor.spawn(ctx, { intensity = 5, period = 10, children = {\n"
    "    { native = 'counter', path = '/counter', properties = { start = 7 } },\n"
    "  } }, { path = '/sup' })\n"
    "  ctx:on_message(function(kind)\n"
    "    local ok, err = pcall(ctx.spawn_isolate, ctx, { native = kind }, { start = 1 })\n"
    "    return ok and 'spawned' or tostring(err)\n"
    "  end)\n"
    "end\n";

static void pause_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int64_t ask_start(ic_cluster *c, ic_ref r) {
  char q[4], *reply = NULL;
  size_t rlen = 0;
  char *w = mp_encode_str(q, "get", 3);
  int64_t v = -100;
  if (ic_request(c, r, q, (size_t)(w - q), 10, &reply, &rlen) == IC_OK) {
    const char *p = reply;
    if (mp_typeof(*p) == MP_UINT) v = (int64_t)mp_decode_uint(&p);
  }
  ic_free(reply);
  return v;
}

/* The launcher's answer for kind (a string), the caller's; or NULL. */
static char *try_kind_len(ic_cluster *c, ic_ref launcher, const char *kind, size_t len) {
  char q[80], *reply = NULL;
  size_t rlen = 0;
  char *w = mp_encode_str(q, kind, (uint32_t)len);
  if (ic_request(c, launcher, q, (size_t)(w - q), 10, &reply, &rlen) != IC_OK) return NULL;
  const char *p = reply;
  uint32_t n = 0;
  const char *s = mp_typeof(*p) == MP_STR ? mp_decode_str(&p, &n) : NULL;
  char *out = s ? strndup(s, n) : NULL;
  ic_free(reply);
  return out;
}

static char *try_kind(ic_cluster *c, ic_ref launcher, const char *kind) {
  return try_kind_len(c, launcher, kind, strlen(kind));
}

int main(void) {
  ic_cluster *c = NULL;
  ic_cluster_options o = {.workers = 2};
  CHECK(ic_cluster_create(&o, &c) == IC_OK);
  kind_state k;
  atomic_init(&k.made, 0);
  atomic_init(&k.downs, 0);
  atomic_init(&k.killed, 0);
  CHECK(ic_register_native(c, "counter", make_counter, &k) == IC_OK);
  CHECK(ic_register_native(c, "counter", make_counter, &k) == IC_EEXIST);
  CHECK(ic_register_native(c, "", make_counter, &k) == IC_EINVAL);
  CHECK(ic_register_native(c, NULL, make_counter, &k) == IC_EINVAL);
  CHECK(ic_register_native(c, "x", NULL, &k) == IC_EINVAL);
  CHECK(ic_register_native(c, "refuser", refuse, NULL) == IC_OK);

  ic_ref launcher;
  CHECK(ic_spawn_lua(c, LAUNCHER, strlen(LAUNCHER), "=launcher", NULL, 0, NULL, &launcher) == IC_OK);
  ic_ref first;
  CHECK(ic_lookup(c, "/counter", 20, &first) == IC_OK);
  CHECK(ask_start(c, first) == 7); /* the child's properties reached its factory */
  CHECK(atomic_load(&k.made) == 1);

  /* Killed: the supervisor starts a new one at the same path. */
  CHECK(ic_kill(c, first) == IC_OK);
  ic_ref second = first;
  for (int i = 0; i < 20000 && second.id == first.id; i++) {
    if (ic_lookup(c, "/counter", 0, &second) != IC_OK) second = first;
    if (second.id == first.id) pause_ms(1);
  }
  CHECK(second.id != first.id);
  CHECK(ask_start(c, second) == 7);
  CHECK(atomic_load(&k.made) == 2);
  CHECK(atomic_load(&k.killed) == 1);

  /* From any Lua code; unknown kinds and refusals raise, naming the kind. */
  char *ans = try_kind(c, launcher, "counter");
  CHECK(ans && strcmp(ans, "spawned") == 0);
  free(ans);
  ans = try_kind(c, launcher, "nope");
  CHECK(ans && strstr(ans, "no native isolate kind \"nope\"") != NULL);
  free(ans);
  ans = try_kind(c, launcher, "refuser");
  CHECK(ans && strstr(ans, "\"refuser\" refused") != NULL);
  free(ans);
  /* A name is the whole string: "counter" and a NUL byte after it is not
   * "counter" (nothing is made). */
  ans = try_kind_len(c, launcher, "counter\0x", 9);
  CHECK(ans && strstr(ans, "cannot contain a NUL byte") != NULL);
  free(ans);

  CHECK(ic_cluster_shutdown(c, 10) == 1);
  CHECK(atomic_load(&k.made) == 3);
  CHECK(atomic_load(&k.downs) == 3); /* each incarnation's on_down, once */
  CHECK(ic_register_native(c, "late", make_counter, &k) == IC_ESHUTDOWN);
  ic_cluster_destroy(c);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
