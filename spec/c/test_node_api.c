/* The C interface to multi-node clusters (include/isolate_cluster.h):
 * ic_node_create, and ic_lookup / ic_send / ic_receive across two nodes of
 * one cluster in this process, on a real nats-server started here on a free
 * loopback port and stopped by its pid. Exit status 77 (skipped) when
 * nats-server is not installed, or under ThreadSanitizer unless
 * IC_TSAN_NATS is set (see .ci/run). */
#include <stdio.h>
#include <string.h>

#include "isolate_cluster.h"
#include "nats_server.h"

static int failures;
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                              \
    }                                                                          \
  } while (0)

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
  ic_node_options oa = {urls, 1, cname, "a", NULL, NULL, NULL, NULL, 0, 0, 0, NULL, NULL};
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

  ic_spawn_options so = {"/echo", 0, 0, 0};
  ic_ref echo_b;
  CHECK(ic_spawn_lua(b, ECHO, strlen(ECHO), "=echo", NULL, 0, &so, &echo_b) == IC_OK);
  ic_ref echo;
  CHECK(ic_lookup(a, "/echo", 10, &echo) == IC_OK);
  CHECK(echo.node == echo_b.node && echo.id == echo_b.id);
  CHECK(echo.node != ic_cluster_main(a).node);
  /* Prefix lookups list the other nodes' isolates too, after this node's. */
  ic_spawn_options sl = {"/echo-local", 0, 0, 0};
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

  ic_cluster_destroy(b);
  ic_cluster_destroy(a);
  stop_server(srv);
  if (failures) {
    fprintf(stderr, "test_node_api: %d failures\n", failures);
    return 1;
  }
  printf("test_node_api: ok\n");
  return 0;
}
