/* Native isolates: C handlers that Lua isolates and the program request,
 * that request Lua isolates without waiting, and that go down like any
 * other isolate (stop, kill, shutdown) with their on_down called once. */
#include <msgpuck.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isolate_cluster.h"

#include "check.h"

typedef struct state {
  atomic_int downs;     /* on_down calls */
  char reason[64];      /* the last on_down reason */
  ic_ref lua;           /* the Lua isolate a "go" message requests */
} state;

/* msgpuck's mp_encode_int takes negative numbers only. */
static char *enc_code(char *w, int code) {
  return code < 0 ? mp_encode_int(w, code) : mp_encode_uint(w, (uint64_t)code);
}

static void on_down(void *ud, const char *reason) {
  state *s = ud;
  snprintf(s->reason, sizeof s->reason, "%s", reason);
  atomic_fetch_add(&s->downs, 1);
}

/* Sends the program { status, value } for the answer to a request. */
static void to_program(ic_native *self, int status, const char *data, size_t len, void *req_ud) {
  (void)req_ud;
  char buf[256];
  char *w = mp_encode_array(buf, 2);
  w = enc_code(w, status);
  if (status == IC_OK && len < 200) {
    memcpy(w, data, len);
    w += len;
  } else if (data) {
    w = mp_encode_str(w, data, (uint32_t)(strlen(data) > 200 ? 200 : strlen(data)));
  } else {
    w = mp_encode_nil(w);
  }
  ic_native_send(self, ic_cluster_main(ic_native_cluster(self)), buf, (size_t)(w - buf));
}

/* Integers: answers twice the number. Strings: "go" / "go-slow" / "go-boom"
 * request the Lua isolate (answer to the program), "stop" stops, "mute"
 * (a request) stops without answering, "hang" requests with no timeout. */
static void handler(ic_native *self, ic_message *msg, void *ud) {
  state *s = ud;
  ic_cluster *c = ic_native_cluster(self);
  const char *p = msg->data;
  if (mp_typeof(*p) == MP_UINT) {
    uint64_t v = mp_decode_uint(&p);
    char out[16];
    if (msg->is_request) ic_reply(c, msg, out, (size_t)(mp_encode_uint(out, 2 * v) - out));
    return;
  }
  if (mp_typeof(*p) != MP_STR) return;
  uint32_t n;
  const char *str = mp_decode_str(&p, &n);
  char req[32];
  if (n == 2 && memcmp(str, "go", 2) == 0) {
    ic_native_request(self, s->lua, req, (size_t)(mp_encode_uint(req, 21) - req), 10, to_program, NULL);
  } else if (n == 7 && memcmp(str, "go-slow", 7) == 0) {
    ic_native_request(self, s->lua, req, (size_t)(mp_encode_str(req, "slow", 4) - req), 0.05, to_program, NULL);
  } else if (n == 7 && memcmp(str, "go-boom", 7) == 0) {
    ic_native_request(self, s->lua, req, (size_t)(mp_encode_str(req, "boom", 4) - req), 10, to_program, NULL);
  } else if (n == 4 && memcmp(str, "hang", 4) == 0) {
    int rc = ic_native_request(self, s->lua, req, (size_t)(mp_encode_str(req, "slow", 4) - req), -1, to_program,
                               NULL);
    char out[8];
    ic_native_send(self, ic_cluster_main(c), out, (size_t)(enc_code(out, rc) - out));
  } else if (n == 4 && memcmp(str, "stop", 4) == 0) {
    ic_native_stop(self);
  } else if (n == 4 && memcmp(str, "mute", 4) == 0) {
    ic_native_stop(self); /* the request stays unanswered */
  } else if (n == 4 && memcmp(str, "self", 4) == 0) {
    int rc = ic_native_request(self, ic_native_ref(self), req, (size_t)(mp_encode_uint(req, 1) - req), 1,
                               to_program, NULL);
    int rc2 = ic_native_request(self, s->lua, req, (size_t)(mp_encode_uint(req, 1) - req), 1, NULL, NULL);
    int rc3 = ic_native_send(self, s->lua, "\xc1", 1);
    char out[16];
    char *w = mp_encode_array(out, 3);
    w = enc_code(w, rc);
    w = enc_code(w, rc2);
    w = enc_code(w, rc3);
    ic_native_send(self, ic_cluster_main(c), out, (size_t)(w - out));
  }
}

/* Doubles numbers, raises on "boom", answers "slow" after a while; "ask":
 * requests msg.to with 5 and sends the program the outcome. */
static const char LUA[] =
    "return function(context)\n"
    "  context:on_message(function(m)\n"
    "    if m == 'boom' then error('lua says no', 0) end\n"
    "    if m == 'slow' then context:sleep(0.5) return 'late' end\n"
    "    if type(m) == 'table' then\n"
    "      local ok, v = pcall(m.to.request, m.to, 5, 10)\n"
    "      m.main:send({ ok, v })\n"
    "      return\n"
    "    end\n"
    "    return m * 2\n"
    "  end)\n"
    "end\n";

/* The next message to the program: [status, value] decoded as status and
 * an integer or a string (in text). */
static int next_result(ic_cluster *c, int64_t *status, int64_t *num, char *text, size_t textlen) {
  ic_message m;
  if (ic_receive_msg(c, 10, &m) != IC_OK) return 0;
  const char *p = m.data;
  *num = 0;
  if (text) text[0] = 0;
  int ok = mp_typeof(*p) == MP_ARRAY && mp_decode_array(&p) == 2;
  if (ok) {
    *status = mp_typeof(*p) == MP_INT ? mp_decode_int(&p) : (mp_typeof(*p) == MP_UINT ? (int64_t)mp_decode_uint(&p) : 0);
    if (mp_typeof(*p) == MP_UINT) *num = (int64_t)mp_decode_uint(&p);
    else if (mp_typeof(*p) == MP_STR && text) {
      uint32_t n;
      const char *s = mp_decode_str(&p, &n);
      snprintf(text, textlen, "%.*s", (int)n, s);
    }
  }
  ic_message_free(&m);
  return ok;
}

static int send_str(ic_cluster *c, ic_ref to, const char *s) {
  char buf[64];
  return ic_send(c, to, buf, (size_t)(mp_encode_str(buf, s, (uint32_t)strlen(s)) - buf));
}

/* The next event about r within 10 s (kind 0 if none). */
static ic_event event_about(ic_cluster *c, ic_ref r, int kind) {
  ic_event ev;
  while (ic_next_event(c, 10, &ev) == IC_OK) {
    if (ev.ref.id == r.id && ev.kind == kind) return ev;
    ic_event_free(&ev);
  }
  memset(&ev, 0, sizeof ev);
  return ev;
}

int main(void) {
  ic_cluster *c = NULL;
  ic_cluster_options o = {.workers = 2};
  CHECK(ic_cluster_create(&o, &c) == IC_OK);
  CHECK(ic_subscribe_events(c) == IC_OK);
  state s = {0};
  CHECK(ic_spawn_lua(c, LUA, strlen(LUA), "=lua", NULL, 0, NULL, &s.lua) == IC_OK);

  ic_native_options no = {handler, on_down, &s};
  ic_spawn_options so = {"/native/doubler", 0, 0, 0, NULL};
  ic_ref nat;
  CHECK(ic_spawn_native(c, &no, &so, &nat) == IC_OK);
  ic_event ev = event_about(c, nat, IC_EVENT_UP);
  CHECK(ev.kind == IC_EVENT_UP && ev.path && strcmp(ev.path, "/native/doubler") == 0);
  ic_event_free(&ev);
  ic_ref found;
  CHECK(ic_lookup(c, "/native/doubler", 0, &found) == IC_OK && found.id == nat.id);

  /* the program requests it */
  char buf[128], *reply = NULL;
  size_t rlen = 0;
  CHECK(ic_request(c, nat, buf, (size_t)(mp_encode_uint(buf, 50) - buf), 10, &reply, &rlen) == IC_OK);
  CHECK(reply && rlen == 1 && (unsigned char)reply[0] == 100);
  ic_free(reply);

  /* a Lua isolate requests it: { to = native, main = program } */
  char *w = mp_encode_map(buf, 2);
  w = mp_encode_str(w, "to", 2);
  w += ic_ref_encode(w, nat);
  w = mp_encode_str(w, "main", 4);
  w += ic_ref_encode(w, ic_cluster_main(c));
  CHECK(ic_send(c, s.lua, buf, (size_t)(w - buf)) == IC_OK);
  ic_message m;
  CHECK(ic_receive_msg(c, 10, &m) == IC_OK);
  CHECK(m.len == 3 && memcmp(m.data, "\x92\xc3\x0a", 3) == 0); /* { true, 10 } */
  ic_message_free(&m);

  /* it requests the Lua isolate: the answer, a raise, a timeout */
  int64_t st, num;
  char text[128];
  CHECK(send_str(c, nat, "go") == IC_OK);
  CHECK(next_result(c, &st, &num, text, sizeof text) && st == IC_OK && num == 42);
  CHECK(send_str(c, nat, "go-boom") == IC_OK);
  CHECK(next_result(c, &st, &num, text, sizeof text) && st == IC_EREMOTE && strcmp(text, "lua says no") == 0);
  CHECK(send_str(c, nat, "go-slow") == IC_OK);
  CHECK(next_result(c, &st, &num, text, sizeof text) && st == IC_ETIMEDOUT);
  /* and the late answer is not taken for the next request's */
  CHECK(send_str(c, nat, "go") == IC_OK);
  CHECK(next_result(c, &st, &num, text, sizeof text) && st == IC_OK && num == 42);

  /* bad requests and sends from inside */
  CHECK(send_str(c, nat, "self") == IC_OK);
  CHECK(ic_receive_msg(c, 10, &m) == IC_OK);
  CHECK(m.len == 4 && (signed char)m.data[1] == IC_EINVAL && (signed char)m.data[2] == IC_EINVAL &&
        (signed char)m.data[3] == IC_EINVAL);
  ic_message_free(&m);

  /* stop: down "normal", on_down once */
  CHECK(send_str(c, nat, "stop") == IC_OK);
  ev = event_about(c, nat, IC_EVENT_DOWN);
  CHECK(ev.kind == IC_EVENT_DOWN && ev.reason && strcmp(ev.reason, "normal") == 0);
  ic_event_free(&ev);
  CHECK(atomic_load(&s.downs) == 1 && strcmp(s.reason, "normal") == 0);
  CHECK(send_str(c, nat, "go") == IC_EDOWN);

  /* a request it never answers before stopping: refused at once */
  state s2 = {0};
  s2.lua = s.lua;
  no.ud = &s2;
  so.dedicated = 1; /* on a thread of its own, the same otherwise */
  CHECK(ic_spawn_native(c, &no, &so, &nat) == IC_OK);
  CHECK(ic_request(c, nat, buf, (size_t)(mp_encode_str(buf, "mute", 4) - buf), 600, &reply, &rlen) == IC_EDOWN);
  CHECK(reply && strcmp(reply, "isolate down: normal") == 0);
  ic_free(reply);
  ev = event_about(c, nat, IC_EVENT_DOWN);
  ic_event_free(&ev);
  CHECK(atomic_load(&s2.downs) == 1);

  /* a Lua isolate's monitor hears of a native isolate going down */
  state s5 = {0};
  s5.lua = s.lua;
  no.ud = &s5;
  ic_ref watched, watcher;
  CHECK(ic_spawn_native(c, &no, NULL, &watched) == IC_OK);
  static const char WATCHER[] =
      "return function(context)\n"
      "  context:on_message(function(m, sender)\n"
      "    context:monitor(m, function(_, reason) sender:send(reason) end)\n"
      "    sender:send('watching')\n"
      "  end)\n"
      "end\n";
  CHECK(ic_spawn_lua(c, WATCHER, strlen(WATCHER), "=watcher", NULL, 0, NULL, &watcher) == IC_OK);
  char rb[IC_REF_MSGPACK_SIZE];
  CHECK(ic_send(c, watcher, rb, ic_ref_encode(rb, watched)) == IC_OK);
  CHECK(ic_receive_msg(c, 10, &m) == IC_OK);
  CHECK(m.len == 9 && memcmp(m.data, "\xa8watching", 9) == 0);
  ic_message_free(&m);
  CHECK(ic_kill(c, watched) == IC_OK);
  CHECK(ic_receive_msg(c, 10, &m) == IC_OK);
  CHECK(m.len == 7 && memcmp(m.data, "\xa6killed", 7) == 0);
  ic_message_free(&m);

  /* kill */
  state s3 = {0};
  s3.lua = s.lua;
  no.ud = &s3;
  so.dedicated = 0;
  CHECK(ic_spawn_native(c, &no, &so, &nat) == IC_OK);
  CHECK(ic_kill(c, nat) == IC_OK);
  ev = event_about(c, nat, IC_EVENT_DOWN);
  CHECK(ev.reason && strcmp(ev.reason, "killed") == 0);
  ic_event_free(&ev);
  CHECK(atomic_load(&s3.downs) == 1 && strcmp(s3.reason, "killed") == 0);

  /* bad spawns */
  CHECK(ic_spawn_native(NULL, &no, NULL, NULL) == IC_EINVAL);
  CHECK(ic_spawn_native(c, NULL, NULL, NULL) == IC_EINVAL);
  ic_native_options none = {NULL, on_down, &s3};
  CHECK(ic_spawn_native(c, &none, NULL, NULL) == IC_EINVAL);
  ic_spawn_options badpath = {"no-slash", 0, 0, 0, NULL};
  CHECK(ic_spawn_native(c, &no, &badpath, NULL) == IC_EINVAL);
  ic_spawn_options taken = {"/taken", 0, 0, 0, NULL};
  state s4 = {0};
  s4.lua = s.lua;
  no.ud = &s4;
  ic_ref hanger;
  CHECK(ic_spawn_native(c, &no, &taken, &hanger) == IC_OK);
  CHECK(ic_spawn_native(c, &no, &taken, NULL) == IC_EEXIST);

  /* shutdown with a request pending: its callback (IC_ESHUTDOWN), then on_down */
  CHECK(send_str(c, hanger, "hang") == IC_OK);
  CHECK(ic_receive_msg(c, 10, &m) == IC_OK);
  CHECK(m.len == 1 && m.data[0] == 0); /* IC_OK: accepted */
  ic_message_free(&m);
  CHECK(ic_cluster_shutdown(c, 10) == 1);
  CHECK(atomic_load(&s4.downs) == 1 && strcmp(s4.reason, "shutdown") == 0);
  CHECK(atomic_load(&s3.downs) == 1 && atomic_load(&s.downs) == 1);
  CHECK(ic_spawn_native(c, &no, NULL, NULL) == IC_ESHUTDOWN);
  ic_cluster_destroy(c);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
