/* The public C interface, used the way a C program would use it. */
#include <math.h>
#include <msgpuck.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isolate_cluster.h"

#include "check.h"

static const char ECHO[] =
    "return function(context)\n"
    "  context:on_message(function(msg, sender)\n"
    "    sender:send({ echo = msg, prefix = context:property('prefix') })\n"
    "  end)\n"
    "end\n";

/* Isolate that sends back whatever ref it is given as msg.to, with msg.n. */
static const char FORWARD[] =
    "return function(context)\n"
    "  context:on_message(function(msg) msg.to:send({ n = msg.n, via = context.isolate_ref }) end)\n"
    "end\n";

/* A ref written with ic_ref_encode is a ref in Lua (the isolate sends to it),
 * and the ref Lua puts in a message reads back with ic_ref_decode. */
static void test_refs_in_messages(ic_cluster *c, ic_ref echo) {
  (void)echo;
  ic_ref fwd;
  CHECK(ic_spawn_lua(c, FORWARD, strlen(FORWARD), "=forward", NULL, 0, NULL, &fwd) == IC_OK);
  char msg[64];
  char *w = mp_encode_map(msg, 2);
  w = mp_encode_str(w, "to", 2);
  size_t rl = ic_ref_encode(w, ic_cluster_main(c));
  CHECK(rl == IC_REF_MSGPACK_SIZE);
  w += rl;
  w = mp_encode_str(w, "n", 1);
  w = mp_encode_uint(w, 7);
  CHECK(ic_send(c, fwd, msg, (size_t)(w - msg)) == IC_OK);
  char *data = NULL;
  size_t len = 0;
  ic_ref from;
  CHECK(ic_receive(c, 10, &data, &len, &from) == IC_OK);
  int got_n = 0, got_via = 0;
  if (data) {
    const char *p = data, *end = data + len;
    uint32_t n = mp_typeof(*p) == MP_MAP ? mp_decode_map(&p) : 0;
    for (uint32_t k = 0; k < n; k++) {
      uint32_t klen;
      const char *key = mp_decode_str(&p, &klen);
      if (klen == 1 && key[0] == 'n') {
        got_n = mp_decode_uint(&p) == 7;
      } else if (klen == 3 && memcmp(key, "via", 3) == 0) {
        ic_ref via;
        size_t used = ic_ref_decode(p, (size_t)(end - p), &via);
        got_via = used == IC_REF_MSGPACK_SIZE && via.node == fwd.node && via.id == fwd.id;
        p += used ? used : 1;
        if (!used) break;
      } else {
        mp_next(&p);
      }
    }
  }
  CHECK(got_n);
  CHECK(got_via);
  CHECK(from.id == fwd.id);
  ic_free(data);
  /* not a ref */
  ic_ref r;
  CHECK(ic_ref_decode("\xc0", 1, &r) == 0);
  CHECK(ic_ref_decode("\xc7\x0c\x02" "123456789012", 15, &r) == 0); /* another ext type */
  CHECK(ic_ref_decode("\xc7\x0c\x01" "1234", 7, &r) == 0);         /* truncated */
  CHECK(ic_ref_decode(NULL, 15, &r) == 0);
  CHECK(ic_kill(c, fwd) == IC_OK);
}

static const char IDLE[] =
    "return function(context) context:on_message(function() end) end\n";

static void test_prefix_kill_stats(ic_cluster *c) {
  ic_spawn_options so = {"/workers/", 0, 0, 0, NULL};
  ic_ref w[3];
  for (int i = 0; i < 3; i++) CHECK(ic_spawn_lua(c, IDLE, strlen(IDLE), "=idle", NULL, 0, &so, &w[i]) == IC_OK);
  ic_ref *refs = NULL;
  size_t n = 99;
  CHECK(ic_lookup_prefix(c, "/workers/", &refs, &n) == IC_OK);
  CHECK(n == 3);
  for (size_t i = 0; i < n && i < 3; i++) CHECK(refs[i].id == w[i].id);
  ic_free(refs);
  CHECK(ic_lookup_prefix(c, "/nobody/", &refs, &n) == IC_OK && n == 0 && refs == NULL);
  CHECK(ic_lookup_prefix(c, NULL, &refs, &n) == IC_EINVAL);
  CHECK(ic_lookup_prefix(c, "/", NULL, &n) == IC_EINVAL);

  ic_stats st;
  CHECK(ic_cluster_stats(c, &st) == IC_OK);
  CHECK(st.isolates >= 3 && st.spawned >= 3 && st.workers == 2);
  CHECK(ic_cluster_stats(c, NULL) == IC_EINVAL);

  /* kill: the isolate goes down and leaves the path list */
  CHECK(ic_kill(c, w[1]) == IC_OK);
  int gone = 0;
  for (int i = 0; i < 4000 && !gone; i++) {
    gone = ic_send(c, w[1], "\xc0", 1) == IC_EDOWN;
    if (!gone) {
      char *data;
      size_t len;
      if (ic_receive(c, 0.005, &data, &len, NULL) == IC_OK) ic_free(data);
    }
  }
  CHECK(gone);
  CHECK(ic_kill(c, w[1]) == IC_EDOWN);
  CHECK(ic_kill(c, ic_cluster_main(c)) == IC_EINVAL);
  ic_ref elsewhere = {w[0].node + 1, w[0].id};
  CHECK(ic_kill(c, elsewhere) == IC_EDOWN);
  CHECK(ic_kill(NULL, w[0]) == IC_EINVAL);
  CHECK(ic_lookup_prefix(c, "/workers/", &refs, &n) == IC_OK && n == 2);
  ic_free(refs);
}

int main(void) {
  ic_cluster *c = NULL;
  ic_cluster_options o = {.workers = 2};
  CHECK(ic_cluster_create(&o, &c) == IC_OK && c != NULL);

  /* properties: { prefix = "p" } */
  char props[32];
  char *w = mp_encode_map(props, 1);
  w = mp_encode_str(w, "prefix", 6);
  w = mp_encode_str(w, "p", 1);
  ic_spawn_options so = {"/echo", 0, 0, 0, NULL};
  ic_ref echo;
  CHECK(ic_spawn_lua(c, ECHO, strlen(ECHO), "=echo", props, (size_t)(w - props), &so, &echo) == IC_OK);
  CHECK(ic_spawn_lua(c, ECHO, strlen(ECHO), "=echo", NULL, 0, &so, NULL) == IC_EEXIST);
  CHECK(ic_spawn_lua(c, ECHO, strlen(ECHO), "=echo", "\x01", 1, NULL, NULL) == IC_EINVAL);
  ic_spawn_options bad = {"no-slash", 0, 0, 0, NULL};
  CHECK(ic_spawn_lua(c, ECHO, strlen(ECHO), "=echo", NULL, 0, &bad, NULL) == IC_EINVAL);

  ic_ref found;
  CHECK(ic_lookup(c, "/echo", 0, &found) == IC_OK && found.id == echo.id && found.node == echo.node);
  CHECK(ic_lookup(c, "/nobody", 0.01, &found) == IC_ETIMEDOUT);

  /* 100 messages, in order */
  for (int i = 0; i < 100; i++) {
    char msg[16];
    char *e = mp_encode_uint(msg, (uint64_t)i);
    CHECK(ic_send(c, echo, msg, (size_t)(e - msg)) == IC_OK);
  }
  CHECK(ic_send(c, echo, "\xc1", 1) == IC_EINVAL); /* never used byte */
  CHECK(ic_send(c, echo, "\x92\x01", 2) == IC_EINVAL); /* truncated */
  int in_order = 1;
  for (int i = 0; i < 100; i++) {
    char *data = NULL;
    size_t len = 0;
    ic_ref from;
    int rc = ic_receive(c, 10, &data, &len, &from);
    CHECK(rc == IC_OK);
    if (rc != IC_OK) break;
    const char *p = data;
    CHECK(mp_typeof(*p) == MP_MAP);
    uint32_t n = mp_decode_map(&p);
    int64_t echoed = -1;
    for (uint32_t k = 0; k < n; k++) {
      uint32_t klen;
      const char *key = mp_decode_str(&p, &klen);
      if (klen == 4 && memcmp(key, "echo", 4) == 0) echoed = (int64_t)mp_decode_uint(&p);
      else mp_next(&p);
    }
    if (echoed != i) in_order = 0;
    if (i == 0) CHECK(from.id == echo.id);
    ic_free(data);
  }
  CHECK(in_order);

  char *data;
  size_t len;
  CHECK(ic_receive(c, 0.05, &data, &len, NULL) == IC_ETIMEDOUT);
  /* NaN and negative times are refused, not read as "no wait" or "forever"
   * (ic_receive's documented negative = forever stays). */
  CHECK(ic_receive(c, nan(""), &data, &len, NULL) == IC_EINVAL);
  CHECK(ic_lookup(c, "/echo", nan(""), &found) == IC_EINVAL);
  CHECK(ic_lookup(c, "/echo", -1, &found) == IC_EINVAL);
  CHECK(ic_cluster_shutdown(c, nan("")) == IC_EINVAL);
  CHECK(ic_cluster_shutdown(c, -1) == IC_EINVAL);

  /* a module entry that does not exist: the isolate goes down, sends fail */
  ic_ref ghost;
  CHECK(ic_spawn_module(c, "no.such.module", NULL, 0, NULL, &ghost) == IC_OK);
  int down = 0;
  for (int i = 0; i < 2000 && !down; i++) {
    char msg[1] = {(char)0xc0};
    down = ic_send(c, ghost, msg, 1) == IC_EDOWN;
    if (!down) ic_receive(c, 0.005, &data, &len, NULL);
  }
  CHECK(down);

  ic_ref main_ref = ic_cluster_main(c);
  CHECK(main_ref.node == echo.node && main_ref.id != echo.id);

  test_refs_in_messages(c, echo);
  test_prefix_kill_stats(c);
  CHECK(ic_cluster_shutdown(c, 5) == 1);
  CHECK(ic_spawn_module(c, "x", NULL, 0, NULL, NULL) == IC_ESHUTDOWN);
  CHECK(ic_receive(c, 1, &data, &len, NULL) == IC_ESHUTDOWN);
  ic_cluster_destroy(c);
  CHECK(strcmp(ic_strerror(IC_EDOWN), "isolate down") == 0);

  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
