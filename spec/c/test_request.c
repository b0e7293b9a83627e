/* Request/reply between a C program and Lua isolates, both ways. */
#define _GNU_SOURCE
#include <math.h>
#include <msgpuck.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "isolate_cluster.h"

#include "check.h"

/* Doubles numbers; raises on "boom"; sleeps on "slow" (without holding its
 * worker); on "hold" takes the path /holding and sleeps. */
static const char SERVER[] =
    "return function(context)\n"
    "  context:on_message(function(m)\n"
    "    if m == 'boom' then error('boom!', 0) end\n"
    "    if m == 'table' then error({ code = 1 }) end\n"
    "    if m == 'slow' then context:sleep(0.5) return 0 end\n"
    "    if m == 'hold' then\n"
    "      context:spawn_isolate(function(ctx) ctx:on_message(function() end) end, nil, { path = '/holding' })\n"
    "      context:sleep(30)\n"
    "    end\n"
    "    return m * 2\n"
    "  end)\n"
    "end\n";

/* Asks the ref in msg.to (the program) with request(msg.q) and sends the
 * outcome back as a plain message { ok = ..., value = ... }. */
static const char ASKER[] =
    "return function(context)\n"
    "  context:on_message(function(m)\n"
    "    local ok, v = pcall(m.to.request, m.to, m.q, 10)\n"
    "    m.to:send({ ok = ok, value = v })\n"
    "  end)\n"
    "end\n";

static size_t enc_int(char *buf, int64_t v) {
  return (size_t)((v < 0 ? mp_encode_int(buf, v) : mp_encode_uint(buf, (uint64_t)v)) - buf);
}

static size_t enc_str(char *buf, const char *s) { return (size_t)(mp_encode_str(buf, s, (uint32_t)strlen(s)) - buf); }

static void test_request(ic_cluster *c, ic_ref srv) {
  char buf[64], *reply = (char *)1;
  size_t rlen = 99;
  CHECK(ic_request(c, srv, buf, enc_int(buf, 21), 10, &reply, &rlen) == IC_OK);
  CHECK(reply && rlen == 1 && (unsigned char)reply[0] == 42);
  ic_free(reply);

  /* the handler raised: IC_EREMOTE and its text */
  CHECK(ic_request(c, srv, buf, enc_str(buf, "boom"), 10, &reply, &rlen) == IC_EREMOTE);
  CHECK(reply && strcmp(reply, "boom!") == 0 && rlen == 5);
  ic_free(reply);
  CHECK(ic_request(c, srv, buf, enc_str(buf, "table"), 10, &reply, &rlen) == IC_EREMOTE);
  CHECK(reply && strstr(reply, "map value") != NULL);
  ic_free(reply);

  /* a timeout; the late reply (0) is not taken for the next one's (10) */
  CHECK(ic_request(c, srv, buf, enc_str(buf, "slow"), 0.05, &reply, &rlen) == IC_ETIMEDOUT);
  CHECK(reply == NULL && rlen == 0);
  CHECK(ic_request(c, srv, buf, enc_int(buf, 5), 10, &reply, &rlen) == IC_OK);
  CHECK(reply && rlen == 1 && reply[0] == 10);
  ic_free(reply);

  /* bad arguments */
  CHECK(ic_request(NULL, srv, buf, 1, 1, &reply, &rlen) == IC_EINVAL);
  CHECK(ic_request(c, srv, NULL, 0, 1, &reply, &rlen) == IC_EINVAL);
  CHECK(ic_request(c, srv, "\x92\x01", 2, 1, &reply, &rlen) == IC_EINVAL); /* truncated */
  CHECK(ic_request(c, srv, buf, enc_int(buf, 1), NAN, &reply, &rlen) == IC_EINVAL);
  CHECK(ic_request(c, srv, buf, enc_int(buf, 1), 1, NULL, &rlen) == IC_EINVAL);
  CHECK(ic_request(c, ic_cluster_main(c), buf, enc_int(buf, 1), 1, &reply, &rlen) == IC_EINVAL);
  ic_ref nobody = {srv.node, 987654321};
  CHECK(ic_request(c, nobody, buf, enc_int(buf, 1), 1, &reply, &rlen) == IC_EDOWN);
  ic_ref other_node = {srv.node + 1, srv.id};
  CHECK(ic_request(c, other_node, buf, enc_int(buf, 1), 1, &reply, &rlen) == IC_EDOWN);
}

typedef struct killer {
  ic_cluster *c;
  ic_ref victim;
  int rc;
} killer;

/* Kills the victim once it holds the request (it took /holding). */
static void *kill_when_holding(void *arg) {
  killer *k = arg;
  ic_ref r;
  k->rc = ic_lookup(k->c, "/holding", 30, &r);
  if (k->rc == IC_OK) k->rc = ic_kill(k->c, k->victim);
  return NULL;
}

/* An isolate that goes down with the request open: the request fails at
 * once with its reason, not at its timeout. */
static void test_down_while_open(ic_cluster *c) {
  ic_ref srv;
  CHECK(ic_spawn_lua(c, SERVER, strlen(SERVER), "=server", NULL, 0, NULL, &srv) == IC_OK);
  killer k = {c, srv, -100};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, kill_when_holding, &k) == 0);
  char buf[16], *reply = NULL;
  size_t rlen = 0;
  CHECK(ic_request(c, srv, buf, enc_str(buf, "hold"), 600, &reply, &rlen) == IC_EDOWN);
  CHECK(reply && strcmp(reply, "isolate down: killed") == 0);
  ic_free(reply);
  pthread_join(t, NULL);
  CHECK(k.rc == IC_OK);
  /* down now: refused when sent */
  reply = (char *)1;
  CHECK(ic_request(c, srv, buf, enc_int(buf, 1), 1, &reply, &rlen) == IC_EDOWN);
  CHECK(reply == NULL);
}

/* Has the asker request q of the program: { to = <the program>, q = q }. */
static int send_ask(ic_cluster *c, ic_ref asker, unsigned q) {
  char buf[64];
  char *w = mp_encode_map(buf, 2);
  w = mp_encode_str(w, "to", 2);
  w += ic_ref_encode(w, ic_cluster_main(c));
  w = mp_encode_str(w, "q", 1);
  w = mp_encode_uint(w, q);
  return ic_send(c, asker, buf, (size_t)(w - buf));
}

/* An isolate's request to the program is answered from C. */
static void test_answering(ic_cluster *c) {
  ic_ref asker;
  CHECK(ic_spawn_lua(c, ASKER, strlen(ASKER), "=asker", NULL, 0, NULL, &asker) == IC_OK);
  CHECK(send_ask(c, asker, 7) == IC_OK);

  ic_message msg;
  CHECK(ic_receive_msg(c, 10, &msg) == IC_OK);
  CHECK(msg.is_request);
  CHECK(msg.sender.id == asker.id);
  CHECK(msg.len == 1 && msg.data[0] == 7);
  char r[8];
  CHECK(ic_reply(c, &msg, r, enc_int(r, 700)) == IC_OK);
  CHECK(!msg.is_request);
  CHECK(ic_reply(c, &msg, r, enc_int(r, 1)) == IC_EINVAL); /* answered already */
  ic_message_free(&msg);
  CHECK(msg.data == NULL);

  /* the outcome, sent back as a plain message: { ok = true, value = 700 } */
  CHECK(ic_receive_msg(c, 10, &msg) == IC_OK);
  CHECK(!msg.is_request);
  CHECK(ic_reply(c, &msg, r, enc_int(r, 1)) == IC_EINVAL); /* not a request */
  int ok = 0;
  int64_t value = 0;
  if (msg.data) {
    const char *p = msg.data;
    uint32_t n = mp_typeof(*p) == MP_MAP ? mp_decode_map(&p) : 0;
    for (uint32_t i = 0; i < n; i++) {
      uint32_t kl;
      const char *key = mp_decode_str(&p, &kl);
      if (kl == 2 && memcmp(key, "ok", 2) == 0) ok = mp_decode_bool(&p);
      else if (kl == 5 && mp_typeof(*p) == MP_UINT) value = (int64_t)mp_decode_uint(&p);
      else mp_next(&p);
    }
  }
  CHECK(ok && value == 700);
  ic_message_free(&msg);

  /* an error answer: the isolate's request raises the text */
  CHECK(send_ask(c, asker, 7) == IC_OK);
  CHECK(ic_receive_msg(c, 10, &msg) == IC_OK);
  CHECK(msg.is_request);
  CHECK(ic_reply_error(c, &msg, NULL) == IC_EINVAL);
  CHECK(ic_reply_error(c, &msg, "no such thing") == IC_OK);
  CHECK(ic_reply_error(c, &msg, "twice") == IC_EINVAL);
  ic_message_free(&msg);
  CHECK(ic_receive_msg(c, 10, &msg) == IC_OK);
  CHECK(msg.data && memmem(msg.data, msg.len, "no such thing", 13) != NULL);
  CHECK(msg.data && memmem(msg.data, msg.len, "\xc2", 1) != NULL); /* ok = false */
  ic_message_free(&msg);

  /* bad arguments; nothing left: a timeout, *msg zeroed */
  CHECK(ic_receive_msg(NULL, 1, &msg) == IC_EINVAL);
  CHECK(ic_receive_msg(c, NAN, &msg) == IC_EINVAL);
  CHECK(ic_receive_msg(c, 0, NULL) == IC_EINVAL);
  CHECK(ic_receive_msg(c, 0.05, &msg) == IC_ETIMEDOUT);
  CHECK(msg.data == NULL && !msg.is_request);
  ic_message_free(NULL);
}

/* A request whose requester went down before the answer: IC_EDOWN. */
static void test_reply_to_gone(ic_cluster *c) {
  ic_ref asker;
  CHECK(ic_spawn_lua(c, ASKER, strlen(ASKER), "=asker", NULL, 0, NULL, &asker) == IC_OK);
  CHECK(send_ask(c, asker, 1) == IC_OK);
  ic_message msg;
  CHECK(ic_receive_msg(c, 10, &msg) == IC_OK);
  CHECK(msg.is_request);
  CHECK(ic_kill(c, asker) == IC_OK);
  /* ic_kill returns before the isolate is down: wait (bounded) for that */
  int down = 0;
  for (int i = 0; i < 2000 && !down; i++) {
    char one[4];
    down = ic_send(c, asker, one, enc_int(one, 1)) == IC_EDOWN;
    if (!down) {
      ic_message tmp;
      (void)ic_receive_msg(c, 0.005, &tmp); /* a bounded pause; nothing is expected */
      ic_message_free(&tmp);
    }
  }
  CHECK(down);
  char a[4];
  CHECK(ic_reply(c, &msg, a, enc_int(a, 1)) == IC_EDOWN);
  CHECK(!msg.is_request);
  ic_message_free(&msg);
}

/* A thread that takes the program's messages until "stop" comes. */
typedef struct taker {
  ic_cluster *c;
  int stopped;
} taker;

static void *take_until_stop(void *arg) {
  taker *t = arg;
  for (;;) {
    ic_message m;
    int rc = ic_receive_msg(t->c, 30, &m);
    if (rc == IC_EBUSY) continue; /* the other thread's call, for a moment */
    if (rc != IC_OK) break;
    int stop = m.len == 5 && memcmp(m.data, "\xa4stop", 5) == 0;
    ic_message_free(&m);
    if (stop) {
      t->stopped = 1;
      break;
    }
  }
  return NULL;
}

/* One taker of the program's queues at a time: while a thread waits in
 * ic_receive_msg, another thread's ic_request, ic_receive_msg, ic_receive
 * and ic_next_event return IC_EBUSY at once, and work again after it. */
static void test_one_taker(ic_cluster *c, ic_ref srv) {
  static const char RELAY[] =
      "return function(context) context:on_message(function(m, sender) sender:send(m) end) end";
  ic_ref relay;
  CHECK(ic_spawn_lua(c, RELAY, strlen(RELAY), "=relay", NULL, 0, NULL, &relay) == IC_OK);
  CHECK(ic_subscribe_events(c) == IC_OK);
  taker t = {c, 0};
  pthread_t th;
  CHECK(pthread_create(&th, NULL, take_until_stop, &t) == 0);
  /* Until the taker is in its wait (a deadline, not a timing). */
  char buf[16], *reply = NULL;
  size_t rlen = 0;
  int rc = IC_OK;
  for (int i = 0; i < 20000 && rc != IC_EBUSY; i++) {
    rc = ic_request(c, srv, buf, enc_int(buf, 1), 10, &reply, &rlen);
    ic_free(reply);
    reply = NULL;
    if (rc != IC_EBUSY) {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
  }
  CHECK(rc == IC_EBUSY);
  CHECK(reply == NULL && rlen == 0);
  ic_message m;
  CHECK(ic_receive_msg(c, 5, &m) == IC_EBUSY);
  CHECK(m.data == NULL && m.len == 0);
  char *data = NULL;
  size_t len = 0;
  CHECK(ic_receive(c, 5, &data, &len, NULL) == IC_EBUSY);
  ic_event ev;
  CHECK(ic_next_event(c, 5, &ev) == IC_EBUSY);
  CHECK(ev.kind == 0 && ev.reason == NULL);
  CHECK(strcmp(ic_strerror(IC_EBUSY), "unknown error") != 0);
  CHECK(ic_send(c, relay, "\xa4stop", 5) == IC_OK);
  pthread_join(th, NULL);
  CHECK(t.stopped);
  CHECK(ic_request(c, srv, buf, enc_int(buf, 21), 10, &reply, &rlen) == IC_OK);
  CHECK(reply && rlen == 1 && (unsigned char)reply[0] == 42);
  ic_free(reply);
  while (ic_next_event(c, 0, &ev) == IC_OK) ic_event_free(&ev);
  CHECK(ic_kill(c, relay) == IC_OK);
}

int main(void) {
  ic_cluster *c = NULL;
  ic_cluster_options o = {.workers = 2};
  CHECK(ic_cluster_create(&o, &c) == IC_OK);
  ic_ref srv;
  CHECK(ic_spawn_lua(c, SERVER, strlen(SERVER), "=server", NULL, 0, NULL, &srv) == IC_OK);
  test_request(c, srv);
  test_down_while_open(c);
  test_answering(c);
  test_reply_to_gone(c);
  test_one_taker(c, srv);
  CHECK(strcmp(ic_strerror(IC_EREMOTE), "unknown error") != 0);
  CHECK(ic_cluster_shutdown(c, 10) == 1);
  char buf[8], *reply = (char *)1;
  size_t rlen = 1;
  CHECK(ic_request(c, srv, buf, enc_int(buf, 1), 1, &reply, &rlen) == IC_ESHUTDOWN);
  CHECK(reply == NULL && rlen == 0);
  ic_message msg;
  CHECK(ic_receive_msg(c, 1, &msg) == IC_ESHUTDOWN);
  ic_cluster_destroy(c);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
