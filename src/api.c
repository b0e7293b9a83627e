/*
 * api — the public C interface (include/isolate_cluster.h) over the cluster
 * core. No Lua here: entries are handed to the new isolate as MessagePack
 * and compiled there.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpuck.h>

#include "cluster.h"
#include "mainq.h"
#include "native.h"
#include "stats.h"
#include "isolate_cluster.h"
#include "net/net.h"

static int to_ic_error(int e) {
  switch (e) {
  case 0: return IC_OK;
  case EINVAL: return IC_EINVAL;
  case ENOMEM: return IC_ENOMEM;
  case EEXIST: return IC_EEXIST;
  case ECANCELED: return IC_ESHUTDOWN;
  case ETIMEDOUT: return IC_ETIMEDOUT;
  default: return IC_ESYSTEM;
  }
}

const char *ic_strerror(int err) {
  switch (err) {
  case IC_OK: return "ok";
  case IC_EINVAL: return "invalid argument";
  case IC_ENOMEM: return "out of memory";
  case IC_EDOWN: return "isolate down";
  case IC_EFULL: return "mailbox full";
  case IC_EEXIST: return "path already in use";
  case IC_ETIMEDOUT: return "timeout";
  case IC_ESHUTDOWN: return "cluster shut down";
  case IC_ESYSTEM: return "system error";
  case IC_EREMOTE: return "the handler raised an error";
  case IC_ENET: return "cannot join the cluster over NATS";
  case IC_EUNREACHABLE: return "node unreachable";
  case IC_ETOOBIG: return "message too large for the NATS server's max_payload";
  case IC_EBUSY: return "another thread is taking from the program's queues";
  default: return "unknown error";
  }
}

int ic_cluster_create(const ic_cluster_options *opts, ic_cluster **out) {
  if (!out) return IC_EINVAL;
  cluster_opts o = {0, 0, 0, NULL, NULL};
  if (opts) {
    if (opts->workers < 0 || !(opts->time_slice >= 0)) return IC_EINVAL;
    o.workers = opts->workers;
    o.mailbox = opts->mailbox;
    o.slice_seconds = opts->time_slice;
    o.state_hook = opts->state_hook;
    o.state_hook_ud = opts->state_hook_ud;
  }
  const char *err = NULL;
  *out = cluster_new(&o, &err);
  return *out ? IC_OK : IC_ENOMEM;
}

int ic_node_create(const ic_cluster_options *opts, const ic_node_options *node, ic_cluster **out, char *errbuf,
                   size_t errlen) {
  char scratch[8];
  if (!errbuf || !errlen) {
    errbuf = scratch;
    errlen = sizeof scratch;
  }
  errbuf[0] = 0;
  if (!out || !node || !node->nats || node->nats_count < 1 || (opts && (opts->workers < 0 || !(opts->time_slice >= 0)))) {
    snprintf(errbuf, errlen, "invalid argument");
    return IC_EINVAL;
  }
  *out = NULL;
  for (int i = 0; i < node->nats_count; i++) {
    if (!node->nats[i]) {
      snprintf(errbuf, errlen, "invalid argument: nats[%d] is NULL", i);
      return IC_EINVAL;
    }
  }
  if (!(node->connect_timeout >= 0)) { /* also NaN */
    snprintf(errbuf, errlen, "invalid argument: connect_timeout must be a number of seconds >= 0");
    return IC_EINVAL;
  }
  cluster_opts o = {0, 0, 0, NULL, NULL};
  if (opts) {
    o.workers = opts->workers;
    o.mailbox = opts->mailbox;
    o.slice_seconds = opts->time_slice;
    o.state_hook = opts->state_hook;
    o.state_hook_ud = opts->state_hook_ud;
  }
  net_opts no;
  memset(&no, 0, sizeof no);
  no.urls = (const char **)node->nats;
  no.nurls = node->nats_count;
  no.cluster = node->cluster;
  no.name = node->name;
  no.user = node->user;
  no.password = node->password;
  no.token = node->token;
  no.secret = node->secret;
  no.secret_len = node->secret ? (node->secret_len ? node->secret_len : strlen(node->secret)) : 0;
  no.allow_code = node->allow_code;
  no.connect_timeout = node->connect_timeout;
  no.lua_path = node->lua_path;
  no.lua_cpath = node->lua_cpath;
  *out = cluster_new_node(&o, &no, errbuf, errlen);
  if (*out) return IC_OK;
  if (strstr(errbuf, "out of memory")) return IC_ENOMEM;
  if (strncmp(errbuf, "opts.", 5) == 0) return IC_EINVAL;
  return IC_ENET;
}

int ic_cluster_shutdown(ic_cluster *c, double timeout_s) {
  if (!c || !(timeout_s >= 0)) return IC_EINVAL; /* also NaN */
  int in_time = cluster_shutdown(c, timeout_s);
  cluster_join_stopper(c);
  return in_time;
}

void ic_cluster_destroy(ic_cluster *c) {
  if (!c) return;
  cluster_shutdown(c, 5.0);
  if (!cluster_join_stopper(c)) cluster_detach_stopper(c); /* still stopping: it holds the cluster */
  cluster_close(c);
  cluster_release(c);
}

ic_ref ic_cluster_main(ic_cluster *c) {
  ic_ref r = {0, 0}; /* for NULL: a ref of no isolate, which every call refuses */
  if (c) {
    r.node = c->node_id;
    r.id = c->main->id;
  }
  return r;
}

/* Big-endian reads of n bytes at p (the caller checked they are there). */
static uint64_t load_be(const char *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = (v << 8) | (unsigned char)p[i];
  return v;
}

/* Checks one value at p, every length against end, without msgpuck's
 * checkers (which assert on some truncated inputs); returns the byte after
 * it, or NULL. Refuses 0xc1 (never used) and nesting deeper than the
 * decoder takes. */
static const char *check_value(const char *p, const char *end, int depth) {
  if (depth > 512 || p >= end) return NULL;
  unsigned char c = (unsigned char)*p++;
  size_t left = (size_t)(end - p);
  uint64_t n = 0, skip = 0, children = 0;
  if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) return p;
  if ((c & 0xe0) == 0xa0) skip = c & 0x1f;                 /* fixstr */
  else if ((c & 0xf0) == 0x90) children = c & 0x0f;        /* fixarray */
  else if ((c & 0xf0) == 0x80) children = 2u * (c & 0x0f); /* fixmap */
  else {
    static const signed char lenbytes[] = {
        /* c4 bin8 */ 1, 2, 4, /* c7 ext8 */ 1, 2, 4, /* ca float */ -4, -8,
        /* cc uint8 */ -1, -2, -4, -8, /* d0 int8 */ -1, -2, -4, -8,
        /* d4 fixext */ -2, -3, -5, -9, -17, /* d9 str8 */ 1, 2, 4,
        /* dc array16 */ 2, 4, /* de map16 */ 2, 4};
    if (c < 0xc4 || c > 0xdf) return NULL; /* 0xc1 */
    int lb = lenbytes[c - 0xc4];
    if (lb < 0) { /* fixed size */
      if (left < (size_t)-lb) return NULL;
      return p + -lb;
    }
    if (left < (size_t)lb) return NULL;
    n = load_be(p, lb);
    p += lb;
    left -= (size_t)lb;
    if (c >= 0xdc) children = c >= 0xde ? 2 * n : n;
    else if (c >= 0xc7 && c <= 0xc9) skip = n + 1; /* ext: type byte + data */
    else skip = n;
  }
  if (skip) {
    if (skip > left) return NULL;
    return p + skip;
  }
  if (children > left) return NULL; /* every child takes at least one byte */
  for (uint64_t i = 0; i < children && p; i++) p = check_value(p, end, depth + 1);
  return p;
}

/* Exactly one well-formed MessagePack value of the given type (or any type
 * when type is -1). */
int api_one_value(const char *data, size_t len, int type) {
  if (!data || len == 0) return 0;
  const char *end = data + len;
  if (check_value(data, end, 0) != end) return 0;
  return type < 0 || mp_typeof(*data) == (enum mp_type)type;
}

/* A reason from the net layer (src/net/net.h) as an error code. */
static int net_error(const char *why) {
  if (strcmp(why, "node unreachable") == 0 || strcmp(why, "no such node") == 0 || strcmp(why, "no answer") == 0)
    return IC_EUNREACHABLE;
  if (strstr(why, "max_payload")) return IC_ETOOBIG;
  if (strcmp(why, "out of memory") == 0) return IC_ENOMEM;
  if (strcmp(why, "path in use") == 0) return IC_EEXIST;
  if (strcmp(why, "path too long") == 0) return IC_EINVAL;
  return IC_EDOWN;
}

/* code: the entry is Lua source, which another node runs only when the
 * nodes allow code (as spawn_isolate with a function entry). */
static int spawn_boot(ic_cluster *c, const char *boot, size_t boot_len, int code, const char *props,
                      size_t props_len, const ic_spawn_options *opts, ic_ref *out) {
  if (props && !api_one_value(props, props_len, MP_MAP)) return IC_EINVAL;
  spawn_args a = {ISO_POOL, 0, 0, props, props_len, boot, boot_len, NULL, NULL, NULL, 0, NULL, 1, NULL, 0, 0};
  const char *node = NULL;
  if (opts) {
    a.kind = opts->dedicated ? ISO_DEDICATED : ISO_POOL;
    a.mailbox = opts->mailbox;
    a.memory_limit = opts->memory_limit;
    a.path = opts->path;
    node = opts->node;
  }
  if (node) {
    if (!c->net) return IC_EINVAL;
    if (strcmp(node, net_self_name(c->net)) == 0) node = NULL; /* this node */
  }
  if (node && code && !net_code_ok(c->net)) return IC_EINVAL;
  if (node && atomic_load(&c->state) != CLUSTER_RUNNING) return IC_ESHUTDOWN;
  /* Claimed across nodes first, as spawn_isolate does (src/lspawn.c). */
  int claimed = 0;
  const char *why = spawn_claim(c, a.path, node != NULL, NULL, &claimed);
  if (why) return net_error(why);
  if (node) {
    uint32_t rnode;
    uint64_t rid;
    why = spawn_remote(c, node, &a, c->main->id, 0, claimed, &rnode, &rid);
    if (why && strcmp(why, "isolate down") == 0) return IC_EUNREACHABLE; /* the node is going down */
    if (why) return net_error(why);
    if (out) {
      out->node = rnode;
      out->id = rid;
    }
    return IC_OK;
  }
  /* The program has no package.path of its own: a node's isolates find
   * modules as those other nodes spawn here do (ic_node_options.lua_path). */
  if (c->net) {
    a.lua_path = net_lua_path(c->net);
    a.lua_cpath = net_lua_cpath(c->net);
  }
  ic_isolate *iso;
  char err[256];
  int rc = cluster_spawn(c, &a, &iso, err, sizeof err);
  if (claimed) net_claim_done(c->net, a.path);
  if (rc) return to_ic_error(rc);
  if (out) {
    out->node = c->node_id;
    out->id = iso->id;
  }
  isolate_release(iso);
  return IC_OK;
}

int ic_spawn_lua(ic_cluster *c, const char *source, size_t len, const char *chunkname, const char *props,
                 size_t props_len, const ic_spawn_options *opts, ic_ref *out) {
  if (!c || !source || len > UINT32_MAX) return IC_EINVAL;
  const char *name = chunkname ? chunkname : "=entry";
  size_t nlen = strlen(name);
  /* { source = <chunk>, name = <chunkname> }, as lstate_boot expects */
  size_t cap = 64 + len + nlen;
  char *boot = malloc(cap);
  if (!boot) return IC_ENOMEM;
  char *w = mp_encode_map(boot, 2);
  w = mp_encode_str(w, "source", 6);
  w = mp_encode_str(w, source, (uint32_t)len);
  w = mp_encode_str(w, "name", 4);
  w = mp_encode_str(w, name, (uint32_t)nlen);
  int rc = spawn_boot(c, boot, (size_t)(w - boot), 1, props, props_len, opts, out);
  free(boot);
  return rc;
}

int ic_spawn_module(ic_cluster *c, const char *module, const char *props, size_t props_len,
                    const ic_spawn_options *opts, ic_ref *out) {
  if (!c || !module || !*module) return IC_EINVAL;
  size_t n = strlen(module);
  char *boot = malloc(n + 8);
  if (!boot) return IC_ENOMEM;
  char *w = mp_encode_str(boot, module, (uint32_t)n);
  int rc = spawn_boot(c, boot, (size_t)(w - boot), 0, props, props_len, opts, out);
  free(boot);
  return rc;
}

int api_send_from(ic_cluster *c, ic_isolate *from, uint64_t to_node, uint64_t to_id, const void *msgpack,
                  size_t len, int kind, uint64_t corr, const char **why_out) {
  if (why_out) *why_out = NULL;
  if (to_node != c->node_id) {
    if (!c->net) return IC_EDOWN;
    const char *why = net_send(c->net, (uint32_t)to_node, to_id, kind, corr, from->id, msgpack, len);
    if (why_out) *why_out = why;
    return why ? net_error(why) : IC_OK;
  }
  ic_isolate *iso = cluster_find_id(c, to_id);
  if (!iso) return IC_EDOWN;
  ic_msg *m = msg_new(kind, msgpack, len);
  /* A request carries its own failure (mailbox.h): it can always be failed. */
  if (m && kind == MSG_REQUEST && msg_add_spare(m)) {
    msg_free(m);
    m = NULL;
  }
  if (!m) {
    isolate_release(iso);
    return IC_ENOMEM;
  }
  isolate_retain(from);
  m->sender = from;
  m->corr = corr;
  const char *why = isolate_post(iso, m, from->worker);
  isolate_release(iso);
  if (!why) return IC_OK;
  if (why_out) *why_out = why;
  return strcmp(why, "mailbox full") == 0 ? IC_EFULL : IC_EDOWN;
}

int ic_send(ic_cluster *c, ic_ref to, const void *msgpack, size_t len) {
  if (!c || !api_one_value(msgpack, len, -1)) return IC_EINVAL;
  return api_send_from(c, c->main, to.node, to.id, msgpack, len, MSG_USER, 0, NULL);
}

static uint64_t deadline_of(double timeout_s) {
  return timeout_s < 0 ? UINT64_MAX : plat_now_ns() + plat_seconds_to_ns(timeout_s);
}

/* The program's queues have one taker at a time: ic_receive_msg,
 * ic_request and ic_next_event share the main isolate's wake-up (one
 * semaphore, so a second waiter could take the first one's wake-up and
 * leave it asleep until its deadline), its system queue (a request drops
 * the replies that are not its own) and the fd's arming. A second thread
 * is refused at once (IC_EBUSY) instead of racing: no wait behind a
 * receive that may never return. */
static int take_begin(ic_cluster *c) {
  int idle = 0;
  return atomic_compare_exchange_strong(&c->api_taking, &idle, 1) ? IC_OK : IC_EBUSY;
}

static void take_end(ic_cluster *c) { atomic_store(&c->api_taking, 0); }

static char *copy_bytes(const char *data, size_t len) {
  char *copy = malloc(len + 1);
  if (!copy) return NULL;
  memcpy(copy, data, len);
  copy[len] = 0;
  return copy;
}

int ic_receive_msg(ic_cluster *c, double timeout_s, ic_message *msg) {
  if (msg) memset(msg, 0, sizeof *msg);
  if (!c || !msg || timeout_s != timeout_s) return IC_EINVAL;
  if (take_begin(c)) return IC_EBUSY;
  ic_msg *m = NULL;
  int got = mainq_receive(c, deadline_of(timeout_s), 0, &m);
  take_end(c);
  switch (got) {
  case MAINQ_OK: break;
  case MAINQ_TIMEOUT: return IC_ETIMEDOUT;
  default: return IC_ESHUTDOWN;
  }
  msg->data = copy_bytes(m->data, m->len);
  if (!msg->data) {
    msg_free(m); /* cannot hand it out: lost, like a message to a full mailbox */
    return IC_ENOMEM;
  }
  msg->len = m->len;
  /* A message from another node has no local sender: its (node, id). */
  msg->sender.node = m->from_node ? m->from_node : c->node_id;
  msg->sender.id = m->sender ? m->sender->id : m->from_id;
  msg->is_request = m->kind == MSG_REQUEST && (m->sender || m->from_node);
  msg->request_id = m->corr;
  msg_free(m);
  return IC_OK;
}

void ic_message_free(ic_message *msg) {
  if (!msg) return;
  free(msg->data);
  memset(msg, 0, sizeof *msg);
}

int ic_receive(ic_cluster *c, double timeout_s, char **data, size_t *len, ic_ref *sender) {
  if (!c || !data || !len || timeout_s != timeout_s) return IC_EINVAL;
  ic_message msg;
  int rc = ic_receive_msg(c, timeout_s, &msg);
  if (rc) return rc;
  *data = msg.data;
  *len = msg.len;
  if (sender) *sender = msg.sender;
  return IC_OK;
}

/* Posts a reply of `kind` (value: MessagePack, already checked) to the
 * requester of msg. */
static int post_reply(ic_cluster *c, ic_message *msg, int kind, const char *value, size_t len) {
  ic_msg *r = msg_new(kind, value, len);
  if (!r) return IC_ENOMEM;
  r->corr = msg->request_id;
  msg->is_request = 0;
  if (msg->sender.node != c->node_id) {
    /* The requester is on another node: the reply goes over the net. */
    const char *why = c->net ? net_send(c->net, msg->sender.node, msg->sender.id, kind, msg->request_id, c->main->id,
                                        r->data, r->len)
                             : "isolate down";
    msg_free(r);
    return why ? IC_EDOWN : IC_OK;
  }
  ic_isolate *to = cluster_find_id(c, msg->sender.id);
  if (!to) {
    msg_free(r);
    return IC_EDOWN;
  }
  const char *why = isolate_post_sys(to, r, NULL);
  isolate_release(to);
  return why ? IC_EDOWN : IC_OK;
}

int ic_reply(ic_cluster *c, ic_message *msg, const void *msgpack, size_t len) {
  if (!c || !msg || !msg->is_request || !api_one_value(msgpack, len, -1)) return IC_EINVAL;
  return post_reply(c, msg, MSG_REPLY, msgpack, len);
}

int ic_reply_error(ic_cluster *c, ic_message *msg, const char *text) {
  if (!c || !msg || !msg->is_request || !text) return IC_EINVAL;
  size_t n = strlen(text);
  if (n > UINT32_MAX) return IC_EINVAL;
  char *buf = malloc(n + 5);
  if (!buf) return IC_ENOMEM;
  char *w = mp_encode_str(buf, text, (uint32_t)n);
  int rc = post_reply(c, msg, MSG_REPLY_ERROR, buf, (size_t)(w - buf));
  free(buf);
  return rc;
}

/* The text of an error reply's value: a string as it is, anything else
 * named by its type (as lua.c reports a non-string error object). */
char *api_error_text(const char *data, size_t len) {
  const char *p = data;
  if (len > 0 && mp_typeof(*p) == MP_STR && api_one_value(data, len, MP_STR)) {
    uint32_t n;
    const char *s = mp_decode_str(&p, &n);
    return copy_bytes(s, n);
  }
  static const char *const names[] = {"nil", "integer", "integer", "string", "binary", "array",
                                      "map", "boolean", "number", "number", "extension"};
  int t = len > 0 ? (int)mp_typeof(*p) : 0;
  char buf[64];
  snprintf(buf, sizeof buf, "(error object is a %s value)", t >= 0 && t <= 10 ? names[t] : "?");
  return copy_bytes(buf, strlen(buf));
}

int ic_request(ic_cluster *c, ic_ref to, const void *msgpack, size_t len, double timeout_s, char **reply,
               size_t *reply_len) {
  if (reply) *reply = NULL;
  if (reply_len) *reply_len = 0;
  if (!c || !reply || !reply_len || timeout_s != timeout_s || !api_one_value(msgpack, len, -1)) return IC_EINVAL;
  if (to.node == c->node_id && to.id == c->main->id) return IC_EINVAL; /* would wait for itself */
  if (atomic_load(&c->state) == CLUSTER_DOWN) return IC_ESHUTDOWN;
  ic_isolate *iso = NULL;
  if (to.node == c->node_id) {
    iso = cluster_find_id(c, to.id);
    if (!iso) return IC_EDOWN;
  } else if (!c->net) {
    return IC_EDOWN;
  }
  ic_msg *m = msg_new(MSG_REQUEST, msgpack, len);
  if (!m) {
    if (iso) isolate_release(iso);
    return IC_ENOMEM;
  }
  ic_msg *x = NULL;
  const char *why = NULL;
  uint64_t timeout_ns = timeout_s < 0 ? UINT64_MAX / 2 : plat_seconds_to_ns(timeout_s);
  if (take_begin(c)) {
    msg_free(m);
    if (iso) isolate_release(iso);
    return IC_EBUSY;
  }
  int rc = mainq_request(c, iso, to.node, to.id, m, timeout_ns, 0, &x, &why);
  take_end(c);
  if (iso) isolate_release(iso);
  switch (rc) {
  case MAINQ_OK: break;
  case MAINQ_REFUSED:
    if (strcmp(why, "mailbox full") == 0) return IC_EFULL;
    if (strcmp(why, "out of memory") == 0) return IC_ENOMEM;
    if (strcmp(why, "node unreachable") == 0) return IC_EUNREACHABLE;
    if (strstr(why, "max_payload")) return IC_ETOOBIG;
    return IC_EDOWN;
  case MAINQ_TIMEOUT: return IC_ETIMEDOUT;
  default: return IC_ESHUTDOWN;
  }
  int err = IC_OK;
  char *out;
  if (x->kind == MSG_REPLY) {
    out = copy_bytes(x->data, x->len);
  } else {
    out = api_error_text(x->data, x->len);
    /* The refusal of an isolate that went down before answering. */
    err = out && strncmp(out, "isolate down", 12) == 0 ? IC_EDOWN : IC_EREMOTE;
  }
  size_t n = x->kind == MSG_REPLY ? x->len : (out ? strlen(out) : 0);
  msg_free(x);
  if (!out) return IC_ENOMEM;
  *reply = out;
  *reply_len = n;
  return err;
}

int ic_lookup(ic_cluster *c, const char *path, double wait_s, ic_ref *out) {
  if (!c || !path || !out || !(wait_s >= 0)) return IC_EINVAL;
  if (atomic_load(&c->state) != CLUSTER_RUNNING) return IC_ESHUTDOWN;
  /* "/", "/dir/", "a": no isolate can hold it, so not worth a wait (as
   * lookup_isolate in Lua) */
  if (!cluster_path_is_name(path)) return IC_ETIMEDOUT;
  uint64_t deadline = wait_s > 0 ? plat_now_ns() + plat_seconds_to_ns(wait_s) : 0;
  /* A wait ends too when another node's isolate holds the path. */
  ic_isolate *iso = deadline ? cluster_wait_path(c, path, deadline) : cluster_find_path(c, path);
  if (!iso) {
    if (c->net && net_find_path(c->net, path, &out->node, &out->id)) return IC_OK; /* another node's */
    return IC_ETIMEDOUT;
  }
  out->node = c->node_id;
  out->id = iso->id;
  isolate_release(iso);
  return IC_OK;
}

int ic_lookup_prefix(ic_cluster *c, const char *prefix, ic_ref **refs, size_t *n) {
  if (!c || !prefix || !refs || !n) return IC_EINVAL;
  if (atomic_load(&c->state) != CLUSTER_RUNNING) return IC_ESHUTDOWN;
  size_t count = 0, rn = 0;
  /* This node's isolates, then (multi-node) the other nodes' from the replica. */
  uint32_t *rnodes = NULL;
  uint64_t *rids = NULL;
  if (c->net && net_prefix(c->net, prefix, &rnodes, &rids, &rn)) return IC_ENOMEM;
  ic_isolate **all = cluster_find_prefix(c, prefix, &count);
  ic_ref *out = NULL;
  if (all && count + rn) {
    out = malloc((count + rn) * sizeof *out);
    if (!out) {
      for (size_t i = 0; i < count; i++) isolate_release(all[i]);
    }
  }
  if (!all || (count + rn && !out)) {
    free(all);
    free(rnodes);
    free(rids);
    return IC_ENOMEM;
  }
  for (size_t i = 0; i < count; i++) {
    out[i].node = c->node_id;
    out[i].id = all[i]->id;
    isolate_release(all[i]);
  }
  for (size_t i = 0; i < rn; i++) {
    out[count + i].node = rnodes[i];
    out[count + i].id = rids[i];
  }
  free(all);
  free(rnodes);
  free(rids);
  *refs = out;
  *n = count + rn;
  return IC_OK;
}

int ic_kill(ic_cluster *c, ic_ref r) {
  if (!c) return IC_EINVAL;
  if (r.node == c->node_id && r.id == c->main->id) return IC_EINVAL;
  if (r.node != c->node_id) {
    /* Another node's isolate: killed there, through the link. */
    if (!c->net || atomic_load(&c->state) == CLUSTER_DOWN) return IC_EDOWN;
    return net_kill(c->net, r.node, r.id) ? IC_EDOWN : IC_OK;
  }
  ic_isolate *iso = cluster_find_id(c, r.id);
  if (!iso) return IC_EDOWN;
  int rc = isolate_kill(iso) == 0 ? IC_OK : IC_EDOWN;
  isolate_release(iso);
  return rc;
}

int ic_subscribe_events(ic_cluster *c) {
  if (!c) return IC_EINVAL;
  if (atomic_load(&c->state) != CLUSTER_RUNNING) return IC_ESHUTDOWN;
  ic_isolate *main = c->main;
  /* From now on: the log's earlier entries are not the program's. */
  plat_mutex_lock(&c->lock);
  int first = !main->subscribed;
  if (first) main->event_cursor = c->log_base + c->log_len;
  plat_mutex_unlock(&c->lock);
  if (!first) return IC_OK;
  size_t n;
  cluster_subscribe(c, main, 0, &n);
  if (!main->subscribed) return IC_ENOMEM;
  atomic_store(&c->api_subscribed, 1);
  return IC_OK;
}

/* Moves what the log has for the program into c->api_events. 0 or ENOMEM. */
static int refill_events(ic_cluster *c) {
  size_t n = 0;
  atomic_store(&c->main->events_pending, 0);
  cluster_event *ev = cluster_read_events(c, c->main, &n);
  if (!ev) return n ? ENOMEM : 0;
  if (!n) {
    free(ev);
    return 0;
  }
  free(c->api_events); /* every earlier one was handed out */
  c->api_events = ev;
  c->api_nev = n;
  c->api_evpos = 0;
  return 0;
}

/* Fills *ev from e and lets go of what e holds (its texts are handed over),
 * or, out of memory, leaves e as it was and returns IC_ENOMEM (the event
 * stays first in line). Three kinds of entries: an isolate of this node
 * (e->iso), an isolate of another node (e->rnode, e->rid: its path is read
 * from the replica, which no longer has it once it is down), a node
 * (e->node: its name). */
static int hand_out_event(ic_cluster *c, cluster_event *e, ic_event *ev) {
  char *path = NULL, *node = NULL;
  if (e->kind == EVENT_NODE_UP || e->kind == EVENT_NODE_DOWN) {
    node = e->node; /* handed over below */
  } else {
    uint32_t where = e->iso ? atomic_load(&c->node_id) : e->rnode;
    if (e->iso && e->iso->path) {
      if (!(path = strdup(e->iso->path))) return IC_ENOMEM;
    } else if (!e->iso && c->net) {
      path = net_path_of(c->net, e->rnode, e->rid); /* NULL: none, or gone */
    }
    char name[128];
    if (c->net && net_node_name(c->net, where, name, sizeof name) == 0 && !(node = strdup(name))) {
      free(path);
      return IC_ENOMEM;
    }
  }
  switch (e->kind) {
  case EVENT_UP: ev->kind = IC_EVENT_UP; break;
  case EVENT_DOWN: ev->kind = IC_EVENT_DOWN; break;
  case EVENT_NODE_UP: ev->kind = IC_EVENT_NODE_UP; break;
  default: ev->kind = IC_EVENT_NODE_DOWN; break;
  }
  if (e->iso) {
    ev->ref.node = atomic_load(&c->node_id);
    ev->ref.id = e->iso->id;
    isolate_release(e->iso);
  } else if (e->kind == EVENT_UP || e->kind == EVENT_DOWN) {
    ev->ref.node = e->rnode;
    ev->ref.id = e->rid;
  }
  ev->path = path;
  ev->node = node;
  ev->reason = e->reason; /* handed over */
  if (node != e->node) free(e->node);
  memset(e, 0, sizeof *e);
  return IC_OK;
}

static int next_event(ic_cluster *c, uint64_t deadline, ic_event *ev);

int ic_next_event(ic_cluster *c, double timeout_s, ic_event *ev) {
  if (ev) memset(ev, 0, sizeof *ev);
  if (!c || !ev || timeout_s != timeout_s || !atomic_load(&c->api_subscribed)) return IC_EINVAL;
  if (take_begin(c)) return IC_EBUSY;
  int rc = next_event(c, deadline_of(timeout_s), ev);
  take_end(c);
  return rc;
}

/* ic_next_event's loop: the caller is the queues' taker (take_begin). */
static int next_event(ic_cluster *c, uint64_t deadline, ic_event *ev) {
  for (;;) {
    if (c->api_evpos < c->api_nev) {
      int rc = hand_out_event(c, &c->api_events[c->api_evpos], ev);
      if (rc == IC_OK) c->api_evpos++;
      return rc;
    }
    if (refill_events(c)) return IC_ENOMEM;
    if (c->api_evpos < c->api_nev) continue;
    if (mainq_rearm(c)) continue;
    if (atomic_load(&c->state) == CLUSTER_DOWN) {
      /* What shutdown saved of the log (its own down events too). */
      size_t ntail;
      cluster_event *tail = cluster_take_api_tail(c, &ntail);
      if (!tail) return IC_ESHUTDOWN;
      free(c->api_events);
      c->api_events = tail;
      c->api_nev = ntail;
      c->api_evpos = 0;
      continue;
    }
    if (!mainq_wait_events(c, deadline)) {
      if (refill_events(c)) return IC_ENOMEM;
      if (c->api_evpos < c->api_nev) continue;
      return IC_ETIMEDOUT;
    }
  }
}

void ic_event_free(ic_event *ev) {
  if (!ev) return;
  free(ev->path);
  free(ev->reason);
  free(ev->node);
  memset(ev, 0, sizeof *ev);
}

int ic_cluster_set_log(ic_cluster *c, ic_log_callback fn, void *ud) {
  if (!c) return IC_EINVAL;
  cluster_set_log_fn(c, fn, ud);
  return IC_OK;
}

int ic_cluster_fd(ic_cluster *c) {
  if (!c) return IC_EINVAL;
  return mainq_fd(c) >= 0 ? atomic_load(&c->main_fd) : IC_ESYSTEM;
}

int ic_cluster_stats(ic_cluster *c, ic_stats *out) {
  if (!c || !out) return IC_EINVAL;
  plat_mutex_lock(&c->lock);
  out->isolates = c->live;
  plat_mutex_unlock(&c->lock);
  out->spawned = atomic_load(&c->spawned);
  out->dead_letters = atomic_load(&c->dead_letters);
  out->workers = c->nworkers;
  return IC_OK;
}

int ic_cluster_isolate_stats(ic_cluster *c, ic_isolate_stats **rows, size_t *n) {
  if (!c || !rows || !n) return IC_EINVAL;
  stats_rows r;
  if (stats_rows_take(c, &r)) return IC_ENOMEM;
  ic_isolate_stats *out = r.n ? calloc(r.n, sizeof *out) : NULL;
  int rc = r.n && !out ? IC_ENOMEM : IC_OK;
  for (size_t i = 0; out && i < r.n; i++) {
    const stats_row *row = &r.rows[i];
    ic_isolate_stats *o = &out[i];
    o->ref.node = c->node_id;
    o->ref.id = row->id;
    o->state = row->state; /* static texts */
    o->kind = row->kind;
    o->mailbox = row->mailbox;
    o->messages_in = row->in;
    o->messages_out = row->out;
    o->memory = row->memory;
    o->run_seconds = row->run_seconds;
    if (row->path && !(o->path = strdup(row->path))) {
      ic_isolate_stats_free(out, i);
      out = NULL;
      rc = IC_ENOMEM;
    }
  }
  size_t count = r.n;
  stats_rows_free(&r);
  if (rc) return rc;
  *rows = out;
  *n = count;
  return IC_OK;
}

void ic_isolate_stats_free(ic_isolate_stats *rows, size_t n) {
  if (!rows) return;
  for (size_t i = 0; i < n; i++) free((char *)rows[i].path);
  free(rows);
}

size_t ic_ref_encode(char *buf, ic_ref r) {
  if (!buf) return 0;
  /* ext 8 (0xc7), 12 bytes, type 1: the node and the id, big endian (the
   * wire format of docs/wire-format.md; msgpuck's mp_encode_ext is not in
   * every packaged version). */
  char *w = mp_store_u8(buf, 0xc7);
  w = mp_store_u8(w, 12);
  w = mp_store_u8(w, 1);
  w = mp_store_u32(w, r.node);
  w = mp_store_u64(w, r.id);
  return (size_t)(w - buf);
}

size_t ic_ref_decode(const char *data, size_t len, ic_ref *out) {
  if (!data || !out || len < 1) return 0;
  size_t hdr; /* bytes before the type byte */
  switch ((unsigned char)data[0]) {
  case 0xc7: hdr = 2; break; /* ext 8 */
  case 0xc8: hdr = 3; break; /* ext 16 */
  case 0xc9: hdr = 5; break; /* ext 32 */
  default: return 0;         /* fixext has no 12-byte size */
  }
  if (len < hdr + 1 + 12 || load_be(data + 1, (int)hdr - 1) != 12 || data[hdr] != 1) return 0;
  out->node = (uint32_t)load_be(data + hdr + 1, 4);
  out->id = load_be(data + hdr + 5, 8);
  return hdr + 1 + 12;
}

void ic_free(void *p) { free(p); }
