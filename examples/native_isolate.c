/*
 * A native isolate: a C function handling messages inside the cluster.
 * Lua isolates request it, and it requests a Lua isolate in turn without
 * holding up a worker thread: its answer to the Lua client is sent from
 * the callback of its own request.
 *
 *   client (Lua) --request n--> /proxy (C) --request n--> /squarer (Lua)
 *   client <------ n * n ------ /proxy <------ n * n ---- /squarer
 *
 *   cc native_isolate.c $(pkg-config --cflags --libs isolate_cluster)
 */
#define MP_SOURCE 1 /* msgpuck is header-only: its implementation, in this file */
#include <msgpuck.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <isolate_cluster.h>

static const char SQUARER[] =
    "return function(context)\n"
    "  context:on_message(function(n) return n * n end)\n"
    "end\n";

/* Asked to go, requests /proxy with its number and tells the asker. */
static const char CLIENT[] =
    "return function(context)\n"
    "  local n = context:property('n')\n"
    "  context:on_message(function(_, asker)\n"
    "    local proxy = context:lookup_isolate('/proxy', 5)\n"
    "    asker:send({ n = n, square = proxy:request(n) })\n"
    "  end)\n"
    "end\n";

typedef struct proxy {
  ic_ref squarer;
  int served;
} proxy;

/* The squarer answered: answer the client's request kept in req_ud. */
static void squared(ic_native *self, int status, const char *data, size_t len, void *req_ud) {
  ic_message *client = req_ud;
  ic_cluster *c = ic_native_cluster(self);
  if (status == IC_OK) ic_reply(c, client, data, len);
  else ic_reply_error(c, client, data ? data : ic_strerror(status));
  ic_message_free(client);
  free(client);
}

static void on_message(ic_native *self, ic_message *msg, void *ud) {
  proxy *p = ud;
  if (!msg->is_request) return;
  /* The request is answered later, from the callback: keep a copy of it. */
  ic_message *keep = malloc(sizeof *keep);
  char *data = keep ? malloc(msg->len) : NULL;
  if (!data) {
    free(keep);
    ic_reply_error(ic_native_cluster(self), msg, "out of memory");
    return;
  }
  *keep = *msg;
  keep->data = memcpy(data, msg->data, msg->len);
  int rc = ic_native_request(self, p->squarer, msg->data, msg->len, 5.0, squared, keep);
  if (rc != IC_OK) {
    ic_reply_error(ic_native_cluster(self), msg, ic_strerror(rc));
    ic_message_free(keep);
    free(keep);
    return;
  }
  msg->is_request = 0; /* answered later */
  p->served++;
}

static void on_down(void *ud, const char *reason) {
  proxy *p = ud;
  printf("/proxy went down (%s) after serving %d requests\n", reason, p->served);
}

int main(void) {
  ic_cluster *c;
  if (ic_cluster_create(NULL, &c) != IC_OK) return 1;
  proxy p = {{0, 0}, 0};
  ic_spawn_options squarer_opts = {"/squarer", 0, 0, 0, NULL};
  ic_spawn_options proxy_opts = {"/proxy", 0, 0, 0, NULL};
  ic_native_options native = {on_message, on_down, &p};
  int ok = ic_spawn_lua(c, SQUARER, strlen(SQUARER), "=squarer", NULL, 0, &squarer_opts, &p.squarer) == IC_OK &&
           ic_spawn_native(c, &native, &proxy_opts, NULL) == IC_OK;
  enum { CLIENTS = 4 };
  for (int i = 1; ok && i <= CLIENTS; i++) {
    char props[16], go[4];
    char *w = mp_encode_map(props, 1);
    w = mp_encode_str(w, "n", 1);
    w = mp_encode_uint(w, (uint64_t)(10 * i));
    ic_ref client;
    ok = ic_spawn_lua(c, CLIENT, strlen(CLIENT), "=client", props, (size_t)(w - props), NULL, &client) == IC_OK &&
         ic_send(c, client, go, (size_t)(mp_encode_nil(go) - go)) == IC_OK;
  }
  for (int i = 0; ok && i < CLIENTS; i++) {
    ic_message m;
    ok = ic_receive_msg(c, 10.0, &m) == IC_OK;
    if (!ok) break;
    const char *q = m.data;
    uint64_t n = 0, square = 0;
    uint32_t pairs = mp_typeof(*q) == MP_MAP ? mp_decode_map(&q) : 0;
    for (uint32_t k = 0; k < pairs; k++) {
      uint32_t kl;
      const char *key = mp_decode_str(&q, &kl);
      uint64_t v = mp_typeof(*q) == MP_UINT ? mp_decode_uint(&q) : (mp_next(&q), 0);
      if (kl == 1 && key[0] == 'n') n = v;
      else square = v;
    }
    printf("client %llu: %llu squared is %llu\n", (unsigned long long)n, (unsigned long long)n,
           (unsigned long long)square);
    ok = n > 0 && square == n * n;
    ic_message_free(&m);
  }
  ok = ic_cluster_shutdown(c, 5.0) == 1 && ok;
  ic_cluster_destroy(c);
  puts(ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
