/* The C interface to multi-node clusters (include/isolate_cluster.h):
 * ic_node_create, and ic_lookup / ic_send / ic_receive / ic_spawn_module
 * with opts.node across two nodes of one cluster in this process, on a
 * real nats-server started here on a free loopback port and stopped by its
 * pid. Exit status 77 (skipped) when
 * nats-server is not installed, or under ThreadSanitizer unless
 * IC_TSAN_NATS is set (see .ci/run). */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <string.h>

#include "isolate_cluster.h"
#include "nats_server.h"

#include "check.h"

static void ignore(ic_native *self, ic_message *msg, void *ud) {
  (void)self;
  (void)msg;
  (void)ud;
}

/* Whether ic_send to r comes to say it is down within about 10 s. */
static int becomes_down(ic_cluster *c, ic_ref r) {
  for (int i = 0; i < 400; i++) {
    if (ic_send(c, r, "\xc0", 1) == IC_EDOWN) return 1;
    pause_ms(25);
  }
  return 0;
}

static const char ECHO[] =
    "return function(context) context:on_message(function(m, sender) sender:send(m) end) end";

int main(void) {
  pid_t srv;
  char url[64];
  int skip = nats_test_start("test_node_api", &srv, url, sizeof url);
  if (skip) return skip;
  const char *urls[] = {url};
  char cname[32];
  snprintf(cname, sizeof cname, "capi-%d", (int)getpid());
  ic_cluster_options co = {2, 0, 0, NULL, NULL};
  char err[256];

  /* Bad options and no server: clear errors. */
  ic_node_options bad = {urls, 1, "not a token", "a", NULL, NULL, NULL, NULL, 0, 0, 0, NULL, NULL};
  ic_cluster *c = NULL;
  CHECK(ic_node_create(&co, &bad, &c, err, sizeof err) == IC_EINVAL && c == NULL);
  CHECK(strstr(err, "opts.cluster") != NULL);
  const char *nowhere[] = {"nats://127.0.0.1:1"};
  ic_node_options none = {nowhere, 1, cname, "a", NULL, NULL, NULL, NULL, 0, 0, 1.0, NULL, NULL};
  CHECK(ic_node_create(&co, &none, &c, err, sizeof err) == IC_ENET && c == NULL);
  CHECK(strstr(err, "cannot connect to NATS") != NULL);

  /* Two nodes of one cluster. */
  ic_node_options oa = {urls, 1, cname, "a", NULL, NULL, NULL, NULL, 0, 0, 0, "./spec/?.lua", "./spec/c/?.so"};
  ic_node_options ob = oa;
  ob.name = "b";
  ic_cluster *a = NULL, *b = NULL;
  CHECK(ic_node_create(&co, &oa, &a, err, sizeof err) == IC_OK);
  CHECK(ic_node_create(&co, &ob, &b, err, sizeof err) == IC_OK);
  if (!a || !b) {
    fprintf(stderr, "test_node_api: %s\n", err);
    stop_server(srv);
    return 1;
  }
  /* A live node's name is refused. */
  ic_cluster *dup = NULL;
  CHECK(ic_node_create(&co, &ob, &dup, err, sizeof err) == IC_ENET && dup == NULL);
  CHECK(strstr(err, "already in use") != NULL);

  ic_spawn_options so = {"/echo", 0, 0, 0, NULL};
  ic_ref echo_b;
  CHECK(ic_spawn_lua(b, ECHO, strlen(ECHO), "=echo", NULL, 0, &so, &echo_b) == IC_OK);
  ic_ref echo;
  CHECK(ic_lookup(a, "/echo", 10, &echo) == IC_OK);
  CHECK(echo.node == echo_b.node && echo.id == echo_b.id);
  CHECK(echo.node != ic_cluster_main(a).node);
  /* Prefix lookups list the other nodes' isolates too, after this node's. */
  ic_spawn_options sl = {"/echo-local", 0, 0, 0, NULL};
  ic_ref local;
  CHECK(ic_spawn_lua(a, ECHO, strlen(ECHO), "=echo", NULL, 0, &sl, &local) == IC_OK);
  ic_ref *found = NULL;
  size_t nfound = 0;
  CHECK(ic_lookup_prefix(a, "/echo", &found, &nfound) == IC_OK);
  CHECK(nfound == 2 && found);
  if (nfound == 2 && found) {
    CHECK(found[0].node == local.node && found[0].id == local.id);
    CHECK(found[1].node == echo.node && found[1].id == echo.id);
  }
  ic_free(found);
  const char hi[] = "\xa2hi";
  CHECK(ic_send(a, echo, hi, 3) == IC_OK);
  char *data = NULL;
  size_t len = 0;
  ic_ref from = {0, 0};
  CHECK(ic_receive(a, 10, &data, &len, &from) == IC_OK);
  CHECK(len == 3 && data && memcmp(data, hi, 3) == 0);
  CHECK(from.node == echo.node && from.id == echo.id);
  ic_free(data);
  /* Over the server's max_payload (1 MiB): chunked, there and back. */
  size_t big_len = (size_t)2 << 20;
  char *big = malloc(big_len + 5);
  if (big) {
    big[0] = (char)0xdb; /* str32 */
    big[1] = (char)(big_len >> 24);
    big[2] = (char)(big_len >> 16);
    big[3] = (char)(big_len >> 8);
    big[4] = (char)big_len;
    memset(big + 5, 'b', big_len);
    CHECK(ic_send(a, echo, big, big_len + 5) == IC_OK);
    CHECK(ic_receive(a, 30, &data, &len, &from) == IC_OK);
    CHECK(len == big_len + 5 && data && memcmp(data, big, len) == 0);
    ic_free(data);
    free(big);
  }
  /* Spawned on the other node by module name (found through that node's
   * lua_path): the ref is the other node's, and answers at once. */
  static const char MOD[] = "support.nodes.remote_worker";
  const char ping[] = "\xa4ping";
  char *reply = NULL;
  size_t reply_len = 0;
  ic_spawn_options on_b = {"/cmod", 0, 0, 0, "b"};
  ic_ref rw = {0, 0};
  CHECK(ic_spawn_module(a, MOD, NULL, 0, &on_b, &rw) == IC_OK);
  CHECK(rw.node == ic_cluster_main(b).node && rw.node != ic_cluster_main(a).node && rw.id != 0);
  CHECK(ic_request(a, rw, ping, 5, 30, &reply, &reply_len) == IC_OK);
  CHECK(reply_len == 5 && reply && memcmp(reply, ping, 5) == 0);
  ic_free(reply);
  ic_ref seen = {0, 0};
  CHECK(ic_lookup(a, "/cmod", 10, &seen) == IC_OK && seen.node == rw.node && seen.id == rw.id);
  CHECK(ic_lookup(b, "/cmod", 10, &seen) == IC_OK && seen.node == rw.node && seen.id == rw.id);
  /* Its path is held on every node now. */
  ic_ref again = {0, 0};
  CHECK(ic_spawn_module(a, MOD, NULL, 0, &on_b, &again) == IC_EEXIST);
  ic_spawn_options here_taken = {"/cmod", 0, 0, 0, NULL};
  CHECK(ic_spawn_module(a, MOD, NULL, 0, &here_taken, &again) == IC_EEXIST);
  ic_native_options nat = {ignore, NULL, NULL};
  CHECK(ic_spawn_native(a, &nat, &here_taken, &again) == IC_EEXIST);
  /* Properties go along; a "/dir/" path gets its unique segment. */
  ic_spawn_options dir_b = {"/cdir/", 0, 0, 0, "b"};
  ic_ref d1 = {0, 0};
  const char props[] = "\x81\xa6" "answer" "\x2a"; /* { answer = 42 } */
  CHECK(ic_spawn_module(a, MOD, props, sizeof props - 1, &dir_b, &d1) == IC_OK);
  CHECK(d1.node == rw.node);
  CHECK(ic_request(a, d1, "\xa4info", 5, 30, &reply, &reply_len) == IC_OK);
  CHECK(reply && memmem(reply, reply_len, "\xa6" "answer" "\x2a", 8) != NULL);
  CHECK(reply && memmem(reply, reply_len, "/cdir/", 6) != NULL);
  ic_free(reply);
  /* This node's own name: here (Lua source too, which needs no
   * allow_code here). */
  ic_spawn_options on_a = {NULL, 0, 0, 0, "a"};
  ic_ref ra = {0, 0};
  CHECK(ic_spawn_lua(a, ECHO, strlen(ECHO), "=echo", NULL, 0, &on_a, &ra) == IC_OK);
  CHECK(ra.node == ic_cluster_main(a).node);
  CHECK(ic_send(a, ra, ping, 5) == IC_OK);
  CHECK(ic_receive(a, 10, &data, &len, &from) == IC_OK);
  CHECK(len == 5 && data && memcmp(data, ping, 5) == 0 && from.node == ra.node && from.id == ra.id);
  ic_free(data);
  /* Spawned here by the program, a Lua isolate has the node's lua_path and
   * lua_cpath, as those other nodes spawn here have, and finds a module
   * through them. */
  static const char PATHS[] =
      "return function(context) context:on_message(function() return package.path .. ' ' .. package.cpath end) end";
  static const char WANT[] = "\xba./spec/?.lua ./spec/c/?.so"; /* fixstr of 26 bytes */
  ic_ref rp = {0, 0};
  CHECK(ic_spawn_lua(a, PATHS, strlen(PATHS), "=paths", NULL, 0, NULL, &rp) == IC_OK);
  CHECK(ic_request(a, rp, "\xc0", 1, 30, &reply, &reply_len) == IC_OK);
  CHECK(reply && reply_len == sizeof WANT - 1 && memcmp(reply, WANT, reply_len) == 0);
  ic_free(reply);
  ic_ref rm = {0, 0};
  CHECK(ic_spawn_module(a, MOD, NULL, 0, NULL, &rm) == IC_OK && rm.node == ic_cluster_main(a).node);
  CHECK(ic_request(a, rm, ping, 5, 30, &reply, &reply_len) == IC_OK);
  CHECK(reply_len == 5 && reply && memcmp(reply, ping, 5) == 0);
  ic_free(reply);
  /* No such node; Lua source needs nodes that allow code; a native
   * isolate runs here. */
  ic_spawn_options on_nope = {NULL, 0, 0, 0, "nope"};
  CHECK(ic_spawn_module(a, MOD, NULL, 0, &on_nope, &again) == IC_EUNREACHABLE);
  ic_spawn_options on_empty = {NULL, 0, 0, 0, ""};
  CHECK(ic_spawn_module(a, MOD, NULL, 0, &on_empty, &again) == IC_EUNREACHABLE);
  ic_spawn_options src_b = {NULL, 0, 0, 0, "b"};
  CHECK(ic_spawn_lua(a, ECHO, strlen(ECHO), "=echo", NULL, 0, &src_b, &again) == IC_EINVAL);
  CHECK(ic_spawn_native(a, &nat, &src_b, &again) == IC_EINVAL);
  /* Bad properties are refused before anything is sent. */
  CHECK(ic_spawn_module(a, MOD, "\x91\x01", 2, &src_b, &again) == IC_EINVAL);
  /* The remote isolate goes down there; its path is free again. */
  CHECK(ic_kill(a, rw) == IC_OK);
  CHECK(becomes_down(a, rw));
  CHECK(ic_request(a, rw, ping, 5, 5, &reply, &reply_len) == IC_EDOWN);
  ic_ref rw2 = {0, 0};
  int respawned = IC_EEXIST;
  for (int i = 0; i < 400 && respawned == IC_EEXIST; i++) {
    respawned = ic_spawn_module(a, MOD, NULL, 0, &on_b, &rw2);
    if (respawned == IC_EEXIST) pause_ms(25);
  }
  CHECK(respawned == IC_OK && rw2.node == rw.node && rw2.id != rw.id);
  CHECK(ic_request(a, rw2, ping, 5, 30, &reply, &reply_len) == IC_OK);
  ic_free(reply);

  /* A node that does not exist. */
  ic_ref nobody = {echo.node ^ 0x5a5a5a5au, 1};
  CHECK(ic_send(a, nobody, hi, 3) == IC_EUNREACHABLE);
  CHECK(ic_kill(a, nobody) == IC_EDOWN);
  /* Another node's isolate is killed there; its down comes back. */
  CHECK(ic_kill(a, echo) == IC_OK);
  int down = 0;
  for (int i = 0; i < 400 && !down; i++) {
    down = ic_send(a, echo, hi, 3) == IC_EDOWN;
    if (!down) pause_ms(25);
  }
  CHECK(down);
  CHECK(ic_kill(a, echo) == IC_EDOWN);

  /* Once node b is down, spawning there is refused: first it is known
   * going down (IC_EUNREACHABLE at once), or spawns still queue for it. */
  ic_cluster_destroy(b);
  int gone = IC_OK;
  for (int i = 0; i < 400 && gone == IC_OK; i++) {
    gone = ic_spawn_module(a, MOD, NULL, 0, &src_b, &again);
    if (gone == IC_OK) pause_ms(25);
  }
  CHECK(gone == IC_EUNREACHABLE);
  ic_cluster_destroy(a);

  /* Lua source to another node: run where the nodes allow code, refused
   * (a down event there, nothing run) where the receiving node does not. */
  char cname2[40];
  snprintf(cname2, sizeof cname2, "capi-code-%d", (int)getpid());
  ic_node_options ox = {urls, 1, cname2, "x", NULL, NULL, NULL, "shh", 3, 1, 0, NULL, NULL};
  ic_node_options oy = ox, oz = ox;
  oy.name = "y";
  oz.name = "z";
  oz.allow_code = 0;
  ic_cluster *x = NULL, *y = NULL, *z = NULL;
  CHECK(ic_node_create(&co, &ox, &x, err, sizeof err) == IC_OK);
  CHECK(ic_node_create(&co, &oy, &y, err, sizeof err) == IC_OK);
  CHECK(ic_node_create(&co, &oz, &z, err, sizeof err) == IC_OK);
  if (x && y && z) {
    CHECK(ic_subscribe_events(x) == IC_OK);
    ic_spawn_options on_y = {NULL, 0, 0, 0, "y"}, on_z = {NULL, 0, 0, 0, "z"};
    ic_ref ey = {0, 0}, ez = {0, 0};
    CHECK(ic_spawn_lua(x, ECHO, strlen(ECHO), "=echo", NULL, 0, &on_y, &ey) == IC_OK);
    CHECK(ey.node == ic_cluster_main(y).node);
    CHECK(ic_send(x, ey, ping, 5) == IC_OK);
    CHECK(ic_receive(x, 30, &data, &len, &from) == IC_OK);
    CHECK(len == 5 && data && memcmp(data, ping, 5) == 0 && from.node == ey.node && from.id == ey.id);
    ic_free(data);
    /* From z (no allow_code) it is refused here before anything is sent. */
    CHECK(ic_spawn_lua(z, ECHO, strlen(ECHO), "=echo", NULL, 0, &on_y, &again) == IC_EINVAL);
    CHECK(ic_spawn_lua(x, ECHO, strlen(ECHO), "=echo", NULL, 0, &on_z, &ez) == IC_OK);
    int refused = 0;
    ic_event ev;
    while (!refused && ic_next_event(x, 30, &ev) == IC_OK) {
      if (ev.kind == IC_EVENT_DOWN && ev.ref.node == ez.node && ev.ref.id == ez.id)
        refused = ev.reason && strstr(ev.reason, "untrusted spawn refused") != NULL ? 1 : -1;
      ic_event_free(&ev);
    }
    CHECK(refused == 1);
  }
  ic_cluster_destroy(z);
  ic_cluster_destroy(y);
  ic_cluster_destroy(x);
  stop_server(srv);

  /* A single-node cluster has no other node. */
  ic_cluster *single = NULL;
  CHECK(ic_cluster_create(&co, &single) == IC_OK);
  if (single) {
    CHECK(ic_spawn_module(single, MOD, NULL, 0, &src_b, &again) == IC_EINVAL);
    CHECK(ic_spawn_module(single, MOD, NULL, 0, &on_empty, &again) == IC_EINVAL);
    CHECK(ic_spawn_native(single, &nat, &src_b, &again) == IC_EINVAL);
    ic_cluster_destroy(single);
  }
  printf("test_node_api: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
