#include "net.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <msgpuck.h>
#include <nats/nats.h>

#include "cluster.h"
#include "codec.h"
#include "envelope.h"
#include "inbound.h"
#include "isolate.h"
#include "kin.h"
#include "mailbox.h"
#include "membership.h"
#include "paths.h"
#include "transport.h"
#include "wirecheck.h"

#include "node.h"

/* A node's data subject is named after the node, not its incarnation: it
 * stays the same when the node rejoins as a new incarnation, so the one
 * subscription made at start serves for the node's whole life. Frames name
 * the incarnation they are for (to_inc) and others are dropped. */
void net__peer_subject(const struct net *n, const char *name, char *out) {
  snprintf(out, SUBJECT_MAX, "ic.%s.node.%s", n->cluster_name, name);
}

/* ---- options ------------------------------------------------------------ */

static int valid_token(const char *s) {
  if (!s || !*s || strlen(s) > 64) return 0;
  for (const char *p = s; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
          *p == '-'))
      return 0;
  return 1;
}

/* Node names are subject tokens too (the node's data subject ends with it). */
static int valid_token_len(const char *s, size_t len) {
  if (!s || len == 0 || len > ENVELOPE_NAME_MAX) return 0;
  for (size_t i = 0; i < len; i++) {
    char ch = s[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
      return 0;
  }
  return 1;
}

static int valid_name(const char *s) { return s && valid_token_len(s, strlen(s)); }

static uint32_t new_incarnation(void) {
  uint32_t v = 0;
  while (v == 0 || v == INTEROP_NODE) {
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) v = (uint32_t)(plat_now_ns() * 0x9E3779B97F4A7C15ull >> 32);
  }
  return v;
}

/* ---- the payload checker ------------------------------------------------------ */

static void check_ref(lua_State *L, uint32_t node, uint64_t id, void *ud) {
  (void)node;
  (void)id;
  (void)ud;
  lua_pushboolean(L, 1);
}

static int check_protected(lua_State *L) {
  const char *data = lua_touserdata(L, 1);
  size_t len = (size_t)lua_tointeger(L, 2);
  int code_ok = lua_toboolean(L, 3);
  codec_limits lim;
  codec_limits_default(&lim);
  lim.allow_functions = code_ok;
  lim.key_cache = 0;
  codec_hooks h = {NULL, check_ref, NULL, NULL};
  codec_decode(L, data, len, &h, &lim);
  return 0;
}

/* Does the payload decode under the limits, with functions refused unless
 * the traffic is trusted with code? The bytes go to an isolate only then,
 * so a malformed or hostile message never reaches (nor takes down) one. */
int net__payload_ok(struct net *n, const char *data, size_t len, int code_ok) {
  if (len == 0) return 1;
  lua_State *L = n->vL;
  lua_settop(L, 0);
  lua_pushcfunction(L, check_protected);
  lua_pushlightuserdata(L, (void *)data);
  lua_pushinteger(L, (lua_Integer)len);
  lua_pushboolean(L, code_ok);
  int ok = lua_pcall(L, 3, 0, 0) == LUA_OK;
  lua_settop(L, 0);
  return ok;
}

/* ---- sending -------------------------------------------------------------- */

/* Publishes a small control frame (heartbeat, bye, ack). */
static void send_control(struct net *n, const char *subject, int type, uint32_t to_inc, const void *body,
                         size_t blen) {
  unsigned char frame[ENVELOPE_HEADER + 8 + ENVELOPE_NAME_MAX + 1 + ENVELOPE_MAC + ENVELOPE_SUM];
  if (blen > 8 + ENVELOPE_NAME_MAX + 1) return;
  envelope_put_header(frame, type, n->inc, to_inc);
  if (blen) memcpy(frame + ENVELOPE_HEADER, body, blen);
  if (envelope_seal(frame, ENVELOPE_HEADER + blen, &n->key)) return;
  transport_publish(n->t, subject, frame, envelope_size(blen, &n->key));
}

static void send_named(struct net *n, int type) {
  unsigned char body[1 + ENVELOPE_NAME_MAX];
  size_t len = strlen(n->name);
  body[0] = (unsigned char)len;
  memcpy(body + 1, n->name, len);
  send_control(n, n->hb_subject, type, 0, body, 1 + len);
}

/* Appends a frame to m's batch; 0, or -1 when out of memory. net->lock held. */
static int batch_append(member *m, const unsigned char *frame, size_t flen) {
  if (m->out_len == 0) m->out_frames = 0;
  size_t need = (m->out_len ? m->out_len : 2) + 4 + flen;
  if (need > m->out_cap) {
    size_t cap = m->out_cap ? m->out_cap : 4096;
    while (cap < need) cap *= 2;
    unsigned char *b = realloc(m->outbox, cap);
    if (!b) return -1;
    m->outbox = b;
    m->out_cap = cap;
  }
  if (m->out_len == 0) {
    m->outbox[0] = BATCH_MAGIC0;
    m->outbox[1] = BATCH_MAGIC1;
    m->out_len = 2;
  }
  unsigned char *w = m->outbox + m->out_len;
  w[0] = (unsigned char)(flen >> 24);
  w[1] = (unsigned char)(flen >> 16);
  w[2] = (unsigned char)(flen >> 8);
  w[3] = (unsigned char)flen;
  memcpy(w + 4, frame, flen);
  m->out_len += 4 + flen;
  m->out_frames++;
  return 0;
}

/* Publishes m's batch (a lone frame as itself). net->lock held. */
static void batch_flush(struct net *n, member *m) {
  if (!m->out_len) return;
  char subject[SUBJECT_MAX];
  net__peer_subject(n, m->name, subject);
  if (m->out_frames == 1) transport_publish(n->t, subject, m->outbox + 6, m->out_len - 6);
  else transport_publish(n->t, subject, m->outbox, m->out_len);
  m->out_len = 0;
  m->out_frames = 0;
}

/* Publishes every waiting batch. Net thread. */
static void flush_batches(struct net *n) {
  if (!atomic_exchange(&n->flush_wanted, 0)) return;
  plat_mutex_lock(&n->lock);
  for (size_t i = 0; i < n->ms.n; i++)
    if (n->ms.v[i]->up && n->t) batch_flush(n, n->ms.v[i]);
  plat_mutex_unlock(&n->lock);
}

/* Frames and queues one data frame to m (net->lock held). Takes frame
 * (room for the whole sealed frame) on success only. */
const char *net__send_locked(struct net *n, member *m, unsigned char *frame, int kind, uint64_t to_id,
                               uint64_t corr, uint64_t from_id, const char *data, size_t len) {
  size_t body = ENVELOPE_DATA_BODY + len;
  size_t flen = envelope_size(body, &n->key);
  if (!n->t) return "isolate down";
  if (!m->up) return "isolate down";
  envelope_put_header(frame, ENV_DATA, n->inc, m->inc);
  envelope_put_data(frame + ENVELOPE_HEADER, link_next_seq(&m->link), kind, to_id, from_id, corr);
  if (len) memcpy(frame + ENVELOPE_HEADER + ENVELOPE_DATA_BODY, data, len);
  if (envelope_seal(frame, ENVELOPE_HEADER + body, &n->key)) return "cannot authenticate the message";
  if (link_push(&m->link, frame, flen, kind, from_id, corr, plat_now_ns())) return "node unreachable";
  if (kind == MSG_REQUEST) inbound_add_pending(&n->in, m->inc, from_id, corr);
  /* Into the peer's batch, under the lock: frames leave in sequence order.
   * A frame that cannot be batched (no memory) or a publish that fails (no
   * connection now) is resent by the net thread: the link still holds it.
   * A batch stays within max_payload: what is batched leaves first when
   * this frame would take it over (a lone frame is published as itself). */
  if (m->out_len && n->max_payload > 0 && m->out_len + 4 + flen > (size_t)n->max_payload) batch_flush(n, m);
  if (batch_append(m, frame, flen)) {
    char subject[SUBJECT_MAX];
    batch_flush(n, m);
    net__peer_subject(n, m->name, subject);
    transport_publish(n->t, subject, frame, flen);
  } else if (m->out_len >= BATCH_MAX || kind == MSG_REQUEST || kind == MSG_REPLY || kind == MSG_REPLY_ERROR) {
    /* Requests and replies leave at once (with what was batched before
     * them): someone waits for each; plain messages wait for the net
     * thread, a context switch away, to leave together. */
    batch_flush(n, m);
  } else if (!atomic_exchange(&n->flush_wanted, 1)) {
    transport_wake(n->t);
  }
  return NULL;
}

const char *net__too_large(struct net *n, size_t len) {
  size_t flen = envelope_size(ENVELOPE_DATA_BODY + len, &n->key);
  if (n->max_payload > 0 && flen > (size_t)n->max_payload)
    return "message too large for the NATS server's max_payload";
  return NULL;
}

const char *net_send(struct net *n, uint32_t node, uint64_t to_id, int kind, uint64_t corr,
                     uint64_t from_id, const char *data, size_t len) {
  if (node == INTEROP_NODE) return net__interop_reply(n, to_id, kind, data, len);
  /* Known down (its down event came, or its node's): refused like a local one. */
  if (paths_state(&n->replica, node, to_id) < 0) return "isolate down";
  const char *why;
  if (net__chunked(n, len)) {
    plat_mutex_lock(&n->lock);
    member *m = membership_find(&n->ms, node);
    why = !n->t ? "isolate down" : !m ? "node unreachable" : net__send_chunked(n, m, kind, to_id, corr, from_id, data, len);
    plat_mutex_unlock(&n->lock);
    return why;
  }
  unsigned char *frame = malloc(envelope_size(ENVELOPE_DATA_BODY + len, &n->key));
  if (!frame) return "out of memory";
  plat_mutex_lock(&n->lock);
  member *m = membership_find(&n->ms, node);
  why = !n->t ? "isolate down" : !m ? "node unreachable" : net__send_locked(n, m, frame, kind, to_id, corr, from_id, data, len);
  plat_mutex_unlock(&n->lock);
  if (why) free(frame);
  return why;
}

/* ---- replication of this node's isolates -------------------------------------- */

/* The payload of NET_ISO_UP: the MessagePack array [path | nil, props | nil]
 * (props inline), so the checker validates it like any message. */
static char *iso_up_payload(ic_isolate *iso, size_t *len) {
  size_t plen = iso->path ? strlen(iso->path) : 0;
  size_t props = iso->props ? iso->props->len : 0;
  char *buf = malloc(1 + mp_sizeof_str((uint32_t)plen) + (props ? props : 1));
  if (!buf) return NULL;
  char *w = mp_encode_array(buf, 2);
  w = iso->path ? mp_encode_str(w, iso->path, (uint32_t)plen) : mp_encode_nil(w);
  if (props) {
    memcpy(w, iso->props->data, props);
    w += props;
  } else {
    w = mp_encode_nil(w);
  }
  *len = (size_t)(w - buf);
  return buf;
}

/* Sends kind with payload to one member (inc), or to every live one (0). */
void net__send_to_members(struct net *n, uint32_t inc, int kind, uint64_t id, const char *data, size_t len) {
  if (net__too_large(n, len)) {
    cluster_log(n->c, "isolate_cluster: the properties of isolate %llu are too large to announce to other nodes",
                (unsigned long long)id);
    return;
  }
  size_t flen = envelope_size(ENVELOPE_DATA_BODY + len, &n->key);
  plat_mutex_lock(&n->lock);
  for (size_t i = 0; i < n->ms.n; i++) {
    member *m = n->ms.v[i];
    if (!m->up || (inc && m->inc != inc)) continue;
    unsigned char *frame = malloc(flen);
    if (!frame || net__send_locked(n, m, frame, kind, 0, 0, id, data, len)) {
      free(frame);
      cluster_log(n->c, "isolate_cluster: node %s missed an isolate event (window full or out of memory)", m->name);
    }
  }
  plat_mutex_unlock(&n->lock);
}

static void announce_up_to(struct net *n, uint32_t inc, ic_isolate *iso) {
  size_t len;
  char *payload = iso_up_payload(iso, &len);
  if (!payload) return;
  net__send_to_members(n, inc, NET_ISO_UP, iso->id, payload, len);
  free(payload);
}

void net_announce_up(struct net *n, ic_isolate *iso) { announce_up_to(n, 0, iso); }

void net_announce_down(struct net *n, ic_isolate *iso, const char *reason) {
  plat_mutex_lock(&n->lock);
  kin_remove_local(&n->kids_in, iso->id); /* a child of another node's isolate: no longer to shut down */
  plat_mutex_unlock(&n->lock);
  char buf[512];
  size_t len = strlen(reason ? reason : "normal");
  if (len > sizeof buf - 5) len = sizeof buf - 5;
  net__send_to_members(n, 0, NET_ISO_DOWN, iso->id, buf, codec_put_str(buf, reason ? reason : "normal", (uint32_t)len));
}

typedef struct snapshot_ctx {
  struct net *n;
  uint32_t inc;
} snapshot_ctx;

static void snapshot_one(ic_isolate *iso, void *ud) {
  snapshot_ctx *s = ud;
  announce_up_to(s->n, s->inc, iso);
}

/* A peer that joins gets every isolate of this node that is up. */
static void send_snapshot(struct net *n, uint32_t inc) {
  snapshot_ctx s = {n, inc};
  cluster_each_up(n->c, snapshot_one, &s);
}

/* Posts control code to each local isolate of ids (freeing ids). */
static void post_control(struct net *n, uint64_t *ids, size_t count, int code) {
  for (size_t i = 0; i < count; i++) {
    ic_isolate *iso = cluster_find_id(n->c, ids[i]);
    if (!iso) continue;
    ic_msg *m = msg_new(MSG_CONTROL, NULL, 0);
    if (m) {
      m->corr = (uint64_t)code;
      isolate_post_sys(iso, m, NULL);
    }
    isolate_release(iso);
  }
  free(ids);
}

/* Isolate `remote` of node inc went down (all: every isolate of inc; inc
 * 0: of every node): its creator here hears of its child's end, and its
 * children here are shut down with it, as local children are
 * (src/isolate.c). Net thread; net->lock not held. */
static void kin_gone(struct net *n, uint32_t inc, uint64_t remote, int all) {
  size_t nparents, nchildren;
  plat_mutex_lock(&n->lock);
  uint64_t *parents = kin_take(&n->kids_out, inc, remote, all, &nparents);
  uint64_t *children = kin_take(&n->kids_in, inc, remote, all, &nchildren);
  plat_mutex_unlock(&n->lock);
  post_control(n, parents, nparents, CONTROL_CHILD_DOWN);
  post_control(n, children, nchildren, CONTROL_SHUTDOWN);
}

/* A NET_ISO_UP / NET_ISO_DOWN from a peer (payload already checked). */
static void apply_replica(struct net *n, const envelope *e) {
  const char *p = e->payload, *end = e->payload + e->payload_len;
  if (e->kind == NET_ISO_UP) {
    if (e->payload_len == 0 || mp_typeof(*p) != MP_ARRAY || mp_decode_array(&p) != 2 || p >= end) return;
    const char *path = NULL;
    uint32_t plen = 0;
    if (mp_typeof(*p) == MP_STR) path = mp_decode_str(&p, &plen);
    else if (mp_typeof(*p) == MP_NIL) mp_decode_nil(&p);
    else return;
    if (p >= end) return;
    const char *props = p;
    size_t props_len = (size_t)(end - p);
    if (mp_typeof(*p) == MP_NIL) props_len = 0;
    else if (mp_typeof(*p) != MP_MAP) return;
    if (path && (plen == 0 || memchr(path, 0, plen))) return;
    if (paths_add(&n->replica, e->from_inc, e->from_id, path, plen, props, props_len) == 1)
      cluster_remote_event(n->c, EVENT_UP, e->from_inc, e->from_id, NULL);
    return;
  }
  const char *reason = "normal";
  char rbuf[512];
  if (e->payload_len && mp_typeof(*p) == MP_STR) {
    uint32_t rl;
    const char *r = mp_decode_str(&p, &rl);
    if (rl >= sizeof rbuf) rl = sizeof rbuf - 1;
    memcpy(rbuf, r, rl);
    rbuf[rl] = 0;
    reason = rbuf;
  }
  /* Unknown: one that never came up (its start failed); published as
   * locally. Already down (with its node): not twice. */
  if (paths_remove(&n->replica, e->from_inc, e->from_id) >= 0)
    cluster_remote_event(n->c, EVENT_DOWN, e->from_inc, e->from_id, reason);
  kin_gone(n, e->from_inc, e->from_id, 0);
}

int net_code_ok(const struct net *n) { return n->code_ok; }

const char *net_lua_path(const struct net *n) { return n->lua_path; }

const char *net_lua_cpath(const struct net *n) { return n->lua_cpath; }

/* Ids chosen for isolates spawned on another node: random, with bit 62 set
 * (and 63 clear, so they stay positive Lua integers), which keeps them out
 * of the range of the counter every node numbers its own isolates with. */
static uint64_t remote_spawn_id(void) {
  uint64_t v = 0;
  if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) v = plat_now_ns() * 0x9E3779B97F4A7C15ull;
  return (v & ~(1ull << 63)) | (1ull << 62);
}

const char *net_spawn(struct net *n, const char *name, uint64_t creator_id, int linked, const char *boot,
                      size_t boot_len, const char *props, size_t props_len, const char *path, size_t mailbox_cap,
                      size_t memory_limit, int dedicated, uint32_t *node, uint64_t *id) {
  /* A "/dir/" path gets its unique segment here (from this node's
   * incarnation and a counter, apart from the node's own "/dir/" segments),
   * so that the ref's path is known at once. */
  char full[600];
  if (path && path[0] && path[strlen(path) - 1] == '/') {
    if (strlen(path) > 500) return "path too long";
    snprintf(full, sizeof full, "%s%08x-r%llu", path, (unsigned)n->inc,
             (unsigned long long)atomic_fetch_add(&n->spawn_seq, 1) + 1);
    path = full;
  }
  /* [entry, props | nil, path | nil, mailbox, memory_limit, dedicated, linked] */
  size_t plen = path ? strlen(path) : 0;
  size_t cap = 1 + boot_len + (props_len ? props_len : 1) + mp_sizeof_str((uint32_t)plen) + 9 + 9 + 1 + 1;
  char *payload = malloc(cap);
  if (!payload) return "out of memory";
  char *w = mp_encode_array(payload, 7);
  memcpy(w, boot, boot_len);
  w += boot_len;
  if (props_len) {
    memcpy(w, props, props_len);
    w += props_len;
  } else {
    w = mp_encode_nil(w);
  }
  w = path ? mp_encode_str(w, path, (uint32_t)plen) : mp_encode_nil(w);
  w = mp_encode_uint(w, mailbox_cap);
  w = mp_encode_uint(w, memory_limit);
  w = mp_encode_bool(w, dedicated != 0);
  w = mp_encode_bool(w, linked != 0);
  size_t len = (size_t)(w - payload);
  const char *why = net__too_large(n, len);
  unsigned char *frame = why ? NULL : malloc(envelope_size(ENVELOPE_DATA_BODY + len, &n->key));
  if (!why && !frame) why = "out of memory";
  uint64_t new_id = remote_spawn_id();
  if (!why) {
    plat_mutex_lock(&n->lock);
    member *m = membership_find_name(&n->ms, name, strlen(name));
    if (!m) why = "no such node";
    if (!why && linked && kin_add(&n->kids_out, m->inc, new_id, creator_id)) {
      /* Cannot be told of its end: the creator would wait for it for ever. */
      why = "out of memory";
    }
    if (!why) why = net__send_locked(n, m, frame, NET_SPAWN, new_id, 0, creator_id, payload, len);
    if (why && linked && m) {
      size_t k;
      free(kin_take(&n->kids_out, m->inc, new_id, 0, &k));
    }
    if (!why) {
      *node = m->inc;
      *id = new_id;
      frame = NULL;
      /* Known at once, pending until it is up there (or its down says why not). */
      paths_add_pending(&n->replica, m->inc, new_id, path, props, props_len);
    }
    plat_mutex_unlock(&n->lock);
  }
  free(frame);
  free(payload);
  return why;
}

/* Tells node inc that isolate id never came up (its spawn failed here). */
static void spawn_failed(struct net *n, uint32_t inc, uint64_t id, const char *err) {
  char reason[600];
  snprintf(reason, sizeof reason, "error: %s", err);
  char buf[sizeof reason + 5];
  size_t len = strlen(reason);
  net__send_to_members(n, inc, NET_ISO_DOWN, id, buf, codec_put_str(buf, reason, (uint32_t)len));
}

/* A NET_SPAWN from a peer (payload already checked by the decoder). */
static void apply_spawn(struct net *n, const envelope *e) {
  const char *p = e->payload, *end = e->payload + e->payload_len;
  uint32_t fields;
  if (!e->payload_len || mp_typeof(*p) != MP_ARRAY || ((fields = mp_decode_array(&p)) != 6 && fields != 7)) return;
  const char *boot = p;
  mp_next(&p);
  size_t boot_len = (size_t)(p - boot);
  const char *props = NULL;
  size_t props_len = 0;
  if (p >= end) return;
  if (mp_typeof(*p) == MP_NIL) mp_decode_nil(&p);
  else {
    props = p;
    mp_next(&p);
    props_len = (size_t)(p - props);
  }
  char path[512];
  int has_path = 0;
  if (p >= end) return;
  if (mp_typeof(*p) == MP_STR) {
    uint32_t l;
    const char *s = mp_decode_str(&p, &l);
    if (l >= sizeof path) {
      spawn_failed(n, e->from_inc, e->to_id, "path too long");
      return;
    }
    memcpy(path, s, l);
    path[l] = 0;
    has_path = 1;
  } else if (mp_typeof(*p) == MP_NIL) {
    mp_decode_nil(&p);
  } else return;
  if (p >= end || mp_typeof(*p) != MP_UINT) return;
  uint64_t mailbox_cap = mp_decode_uint(&p);
  if (p >= end || mp_typeof(*p) != MP_UINT) return;
  uint64_t memory_limit = mp_decode_uint(&p);
  if (p >= end || mp_typeof(*p) != MP_BOOL) return;
  int dedicated = mp_decode_bool(&p), linked = 0;
  if (fields == 7) {
    if (p >= end || mp_typeof(*p) != MP_BOOL) return;
    linked = mp_decode_bool(&p);
  }
  if (!(e->to_id & (1ull << 62))) return; /* not an id chosen for a remote spawn */
  /* An entry other than a module name is code ({ source = ... } from
   * ic_spawn_lua, as a function is): only where code is allowed. */
  if (!n->code_ok && mp_typeof(*boot) != MP_STR) {
    spawn_failed(n, e->from_inc, e->to_id, "malformed or untrusted spawn refused");
    return;
  }
  /* A child of its creator there: linked before it starts, so that its own
   * end (net_announce_down) finds the link to undo. */
  if (linked) {
    plat_mutex_lock(&n->lock);
    int failed = kin_add(&n->kids_in, e->from_inc, e->from_id, e->to_id);
    plat_mutex_unlock(&n->lock);
    if (failed) {
      spawn_failed(n, e->from_inc, e->to_id, "out of memory");
      return;
    }
  }
  spawn_args a = {dedicated ? ISO_DEDICATED : ISO_POOL, (size_t)mailbox_cap, (size_t)memory_limit, props, props_len,
                  boot, boot_len, n->lua_path, n->lua_cpath, has_path ? path : NULL, 0, NULL, 1, NULL, e->to_id, 0};
  ic_isolate *iso;
  char err[256];
  if (cluster_spawn(n->c, &a, &iso, err, sizeof err)) {
    if (linked) {
      plat_mutex_lock(&n->lock);
      kin_remove_local(&n->kids_in, e->to_id);
      plat_mutex_unlock(&n->lock);
    }
    spawn_failed(n, e->from_inc, e->to_id, err);
    return;
  }
  isolate_release(iso);
}

const char *net_kill(struct net *n, uint32_t node, uint64_t id) {
  if (node == INTEROP_NODE || paths_state(&n->replica, node, id) < 0) return "isolate down";
  unsigned char *frame = malloc(envelope_size(ENVELOPE_DATA_BODY, &n->key));
  if (!frame) return "out of memory";
  plat_mutex_lock(&n->lock);
  member *m = membership_find(&n->ms, node);
  const char *why = !n->t || !m || !m->up ? "isolate down" : net__send_locked(n, m, frame, NET_KILL, id, 0, 0, NULL, 0);
  plat_mutex_unlock(&n->lock);
  if (why) free(frame);
  return why;
}

/* A NET_KILL from a peer: its isolate to_id here is killed, as ref:kill()
 * does locally (not the main state's, nor the runtime's hidden ones). */
static void apply_kill(struct net *n, const envelope *e) {
  ic_isolate *iso = cluster_find_id(n->c, e->to_id);
  if (!iso) return;
  if (iso->kind != ISO_MAIN && !iso->hidden) isolate_kill(iso);
  isolate_release(iso);
}

int net_remote_alive(struct net *n, uint32_t node, uint64_t id) {
  if (paths_state(&n->replica, node, id) < 0) return 0;
  plat_mutex_lock(&n->lock);
  member *m = membership_find(&n->ms, node);
  int up = m && m->up;
  plat_mutex_unlock(&n->lock);
  return up;
}

int net_find_path(struct net *n, const char *path, uint32_t *node, uint64_t *id) {
  remote_id r;
  if (!paths_find(&n->replica, path, &r)) return 0;
  *node = r.node;
  *id = r.id;
  return 1;
}

int net_path_taken(struct net *n, const char *path) {
  remote_id r;
  return paths_find(&n->replica, path, &r);
}

char *net_path_of(struct net *n, uint32_t node, uint64_t id) { return paths_path_of(&n->replica, node, id); }

ic_blob *net_props_of(struct net *n, uint32_t node, uint64_t id) { return paths_props_of(&n->replica, node, id); }

int net_prefix(struct net *n, const char *prefix, uint32_t **nodes, uint64_t **ids, size_t *count) {
  size_t k;
  remote_id *r = paths_prefix(&n->replica, prefix, &k);
  *nodes = NULL;
  *ids = NULL;
  *count = 0;
  if (!r) return -1;
  *nodes = malloc((k + 1) * sizeof **nodes);
  *ids = malloc((k + 1) * sizeof **ids);
  if (!*nodes || !*ids) {
    free(*nodes);
    free(*ids);
    free(r);
    *nodes = NULL;
    *ids = NULL;
    return -1;
  }
  for (size_t i = 0; i < k; i++) {
    (*nodes)[i] = r[i].node;
    (*ids)[i] = r[i].id;
  }
  free(r);
  *count = k;
  return 0;
}

/* ---- delivery (net thread) --------------------------------------------------- */

/* An error reply as the core makes them: a MessagePack string. */
void net__reply_error_to_local(ic_cluster *c, uint64_t requester, uint64_t corr, const char *why) {
  ic_isolate *iso = cluster_find_id(c, requester);
  if (!iso) return;
  char bytes[128];
  size_t len = strlen(why);
  if (len > sizeof bytes - 5) len = sizeof bytes - 5;
  ic_msg *r = msg_new(MSG_REPLY_ERROR, bytes, codec_put_str(bytes, why, (uint32_t)len));
  if (r) {
    r->corr = corr;
    isolate_post_sys(iso, r, NULL);
  }
  isolate_release(iso);
}

void net__reply_error_to_remote(struct net *n, uint32_t node, uint64_t requester, uint64_t corr, uint64_t from_id,
                                const char *why) {
  char bytes[128];
  size_t len = strlen(why);
  if (len > sizeof bytes - 5) len = sizeof bytes - 5;
  net_send(n, node, requester, MSG_REPLY_ERROR, corr, from_id, bytes,
           codec_put_str(bytes, why, (uint32_t)len));
}

/* The data callback's release of an isolate it looked up: the last
 * reference is never let go there (freeing an isolate refuses its open
 * requests across nodes under net->lock, may close its state and let go of
 * the cluster), but handed to the net thread, which lets go of it
 * (release_late). An isolate on that list has no other holder, so its
 * late_next is the callback's to set. */
static void release_from_callback(struct net *n, transport *t, ic_isolate *iso) {
  if (isolate_release_unless_last(iso)) return;
  ic_isolate *head = atomic_load_explicit(&n->late_release, memory_order_relaxed);
  do {
    iso->late_next = head;
  } while (!atomic_compare_exchange_weak_explicit(&n->late_release, &head, iso, memory_order_release,
                                                  memory_order_relaxed));
  transport_wake(t);
}

/* Lets go of the isolates the data callback handed over. Net thread, or
 * after it and the callback have stopped. */
static void release_late(struct net *n) {
  ic_isolate *iso = atomic_exchange_explicit(&n->late_release, NULL, memory_order_acquire);
  while (iso) {
    ic_isolate *next = iso->late_next;
    isolate_release(iso);
    iso = next;
  }
}

/* Posts a checked message, request or reply to its local receiver: NULL, or
 * why not (nothing was posted). Takes c->lock and the receiver's mailbox
 * lock briefly, never blocks, and when called by the data callback (cb:
 * its transport) never takes net->lock. */
static const char *post_local(struct net *n, const envelope *e, transport *cb) {
  int kind = e->kind;
  ic_isolate *iso = cluster_find_id(n->c, e->to_id);
  if (!iso) return "isolate down";
  const char *why;
  ic_msg *m = msg_new(kind, e->payload, e->payload_len);
  if (!m) {
    why = "out of memory";
  } else {
    m->corr = e->corr;
    m->from_node = e->from_inc;
    m->from_id = e->from_id;
    why = kind == MSG_USER || kind == MSG_REQUEST ? isolate_post(iso, m, NULL) : isolate_post_sys(iso, m, NULL);
  }
  if (cb) release_from_callback(n, cb, iso);
  else isolate_release(iso);
  return why;
}

void net__deliver(struct net *n, const envelope *e) {
  ic_cluster *c = n->c;
  int kind = e->kind;
  const char *why = post_local(n, e, NULL);
  if (!why) return;
  if (kind == MSG_REQUEST) net__reply_error_to_remote(n, e->from_inc, e->from_id, e->corr, e->to_id, why);
  else if (kind == MSG_USER) atomic_fetch_add(&c->dead_letters, 1);
}

/* Takes m down (net->lock held on entry, released on return) and tells the
 * cluster: its unacked frames are dead letters, its pending requests fail. */
static void member_down_unlock(struct net *n, member *m, const char *reason) {
  size_t lost, npend;
  char name[ENVELOPE_NAME_MAX + 1];
  memcpy(name, m->name, sizeof name);
  uint32_t inc = m->inc;
  pending_req *pend = inbound_remove(&n->in, inc, &npend);
  net__claims_forget(n, inc);
  net__chunks_forget(n, inc);
  membership_set_down(&n->ms, m, plat_now_ns(), &lost); /* m may be freed from here on */
  plat_mutex_unlock(&n->lock);
  /* A frame of the peer that the data callback accepted before the peer
   * was removed reaches its receiver before the down events below. */
  inbound_quiesce(&n->in);
  if (lost) atomic_fetch_add(&n->c->dead_letters, lost);
  for (size_t i = 0; i < npend; i++) net__reply_error_to_local(n->c, pend[i].from_id, pend[i].corr, "isolate down: node down");
  free(pend);
  cluster_log(n->c, "isolate_cluster: node %s is down (%s)", name, reason);
  /* Its isolates first: a handler of the node's down sees them gone. */
  size_t nrem = 0;
  remote_id *gone = paths_remove_node(&n->replica, inc, &nrem);
  for (size_t i = 0; i < nrem; i++) cluster_remote_event(n->c, EVENT_DOWN, gone[i].node, gone[i].id, "node down");
  free(gone);
  cluster_remote_node_gone(n->c, inc); /* monitors of its isolates the replica did not list */
  kin_gone(n, inc, 0, 1);
  cluster_node_event(n->c, EVENT_NODE_DOWN, name, reason);
}

static void handle_named(struct net *n, const envelope *e, uint64_t now) {
  char name[ENVELOPE_NAME_MAX + 1];
  memcpy(name, e->name, e->name_len);
  name[e->name_len] = 0;
  plat_mutex_lock(&n->lock);
  member *m = membership_find(&n->ms, e->from_inc);
  if (e->type == ENV_BYE) {
    if (m && m->up) member_down_unlock(n, m, "left");
    else plat_mutex_unlock(&n->lock);
    return;
  }
  if (m) {
    /* A live one is refreshed. A down incarnation stays down (fencing),
     * and is told so: it rejoins as a new incarnation. */
    int fenced = !m->up;
    if (m->up) {
      m->last_seen_ns = now;
      m->suspect_ns = 0;
    }
    plat_mutex_unlock(&n->lock);
    if (fenced) {
      char subject[SUBJECT_MAX];
      net__peer_subject(n, name, subject);
      send_control(n, subject, ENV_FENCED, e->from_inc, NULL, 0);
    }
    return;
  }
  if (!valid_token_len(e->name, e->name_len)) {
    plat_mutex_unlock(&n->lock);
    return;
  }
  if (strcmp(name, n->name) == 0) {
    plat_mutex_unlock(&n->lock);
    /* Another process has this node's name: while joining, ic.node fails;
     * later it is ignored (the others ignore the newcomer as well). */
    atomic_store(&n->name_taken, 1);
    /* And tell it at once, so that a joining one sees this name taken
     * within its join window (at most every 100 ms: two holders of one
     * name must not echo each other for ever). */
    if (now - n->last_name_reply_ns > 100000000ull) {
      n->last_name_reply_ns = now;
      send_named(n, ENV_HEARTBEAT);
    }
    return;
  }
  if (membership_find_name(&n->ms, e->name, e->name_len)) {
    /* The name of a live incarnation: a restarted process is admitted once
     * the old one has gone silent (a forged heartbeat must not take a live
     * node down). */
    plat_mutex_unlock(&n->lock);
    return;
  }
  m = membership_add(&n->ms, e->from_inc, e->name, e->name_len, now, WINDOW_FRAMES, WINDOW_BYTES);
  if (m && inbound_add(&n->in, e->from_inc)) {
    size_t lost;
    membership_set_down(&n->ms, m, now, &lost); /* out of memory: met again by its next heartbeat */
    m = NULL;
  }
  plat_mutex_unlock(&n->lock);
  if (!m) return;
  /* Answer at once, so the newcomer need not wait a heartbeat period; and
   * ack nothing yet, so it resends at once what it sent before we knew it. */
  send_named(n, ENV_HEARTBEAT);
  {
    unsigned char body[8];
    char subject[SUBJECT_MAX];
    envelope_put_u64(body, 0);
    net__peer_subject(n, name, subject);
    send_control(n, subject, ENV_ACK, e->from_inc, body, sizeof body);
  }
  send_snapshot(n, e->from_inc);
  cluster_node_event(n->c, EVENT_NODE_UP, name, NULL);
}

/* ---- the faster path for a killed peer -------------------------------------- */

/* Probes the peers silent for MEMBERSHIP_PROBE_NS: an empty request to
 * their data subject (a live peer ignores it, and nobody answers), with a
 * reply subject naming the peer, so NATS's "no responders" says whose
 * subscription is gone. Net thread; net->lock held. */
static void probe_silent(struct net *n, uint64_t now) {
  for (size_t i = 0; i < n->ms.n; i++) {
    member *m = n->ms.v[i];
    if (!m->up || now - m->last_seen_ns < MEMBERSHIP_PROBE_NS || now - m->probed_ns < MEMBERSHIP_PROBE_NS / 2)
      continue;
    m->probed_ns = now;
    char to[SUBJECT_MAX], reply[SUBJECT_MAX];
    net__peer_subject(n, m->name, to);
    snprintf(reply, SUBJECT_MAX, "%.*s%08x", (int)n->probe_prefix_len, n->probe_subject, (unsigned)m->inc);
    transport_publish_reply(n->t, to, reply, NULL, 0);
  }
}

static void handle_probe_answer(struct net *n, natsMsg *msg, const char *suffix, uint64_t now) {
  if (!natsMsg_IsNoResponders(msg) || !n->connected_since) return;
  char *end;
  unsigned long inc = strtoul(suffix, &end, 16);
  if (*end || end == suffix) return;
  plat_mutex_lock(&n->lock);
  member *m = membership_find(&n->ms, (uint32_t)inc);
  if (!m || !m->up || now - m->last_seen_ns < MEMBERSHIP_PROBE_NS) {
    plat_mutex_unlock(&n->lock);
    return;
  }
  if (!m->suspect_ns) m->suspect_ns = now;
  if (now - m->suspect_ns >= MEMBERSHIP_CONFIRM_NS) {
    member_down_unlock(n, m, "killed");
    return;
  }
  plat_mutex_unlock(&n->lock);
}

typedef struct gone_member {
  uint32_t inc;
  char name[ENVELOPE_NAME_MAX + 1];
  size_t lost, npend;
  pending_req *pend;
} gone_member;

typedef struct gone_list {
  gone_member *v;
  size_t n, cap;
  inbound *in;
} gone_list;

static void collect_gone(member *m, void *ud) {
  gone_list *g = ud;
  if (!m->up || g->n == g->cap) return;
  gone_member *x = &g->v[g->n++];
  x->inc = m->inc;
  memcpy(x->name, m->name, sizeof x->name);
  x->pend = inbound_remove(g->in, m->inc, &x->npend);
  x->lost = m->link.count;
}

/* Fencing, seen from the fenced side: this incarnation was declared down
 * (by node `by`). Every peer is forgotten (its isolates and requests as on a
 * node down), the node takes a new incarnation, and the peers meet it again
 * as a new node through its next heartbeat. Net thread. */
static void rejoin(struct net *n, uint32_t by) {
  (void)by;
  gone_list g = {NULL, 0, 0, &n->in};
  plat_mutex_lock(&n->lock);
  g.cap = n->ms.n;
  g.v = calloc(g.cap ? g.cap : 1, sizeof *g.v);
  if (!g.v) g.cap = 0;
  membership_reset(&n->ms, collect_gone, &g);
  for (claim *k = n->claims; k; k = k->next) k->nwaiting = 0;
  plat_cond_broadcast(&n->claims_cond);
  uint32_t old = n->inc;
  n->inc = new_incarnation();
  inbound_set_self(&n->in, n->inc);
  atomic_store(&n->c->node_id, n->inc);
  plat_mutex_unlock(&n->lock);
  inbound_quiesce(&n->in); /* as in member_down_unlock */
  cluster_log(n->c, "isolate_cluster: node %s (incarnation %08x) was declared down by the others; it rejoins as "
              "incarnation %08x (refs of the old one stay down)", n->name, (unsigned)old, (unsigned)n->inc);
  for (size_t i = 0; i < g.n; i++) {
    gone_member *x = &g.v[i];
    net__chunks_forget(n, x->inc);
    if (x->lost) atomic_fetch_add(&n->c->dead_letters, x->lost);
    for (size_t k = 0; k < x->npend; k++)
      net__reply_error_to_local(n->c, x->pend[k].from_id, x->pend[k].corr, "isolate down: node down");
    free(x->pend);
    size_t nrem = 0;
    remote_id *gone = paths_remove_node(&n->replica, x->inc, &nrem);
    for (size_t k = 0; k < nrem; k++) cluster_remote_event(n->c, EVENT_DOWN, gone[k].node, gone[k].id, "node down");
    free(gone);
    cluster_remote_node_gone(n->c, x->inc);
    kin_gone(n, x->inc, 0, 1);
    cluster_node_event(n->c, EVENT_NODE_DOWN, x->name, "unreachable");
  }
  free(g.v);
  send_named(n, ENV_HEARTBEAT);
}

static void handle_bytes(struct net *n, const unsigned char *data, size_t dlen, uint64_t now);
static void handle_data(struct net *n, const envelope *ep, uint64_t now);

/* Go-back-N: publishes again every frame m has not acked, oldest first
 * (stops at the first failed publish: no connection now). net->lock held. */
static void resend_unacked(struct net *n, member *m, uint64_t now) {
  uint64_t rto = m->rto_ns ? m->rto_ns : RETRANSMIT_NS;
  m->rto_ns = rto * 2 < RETRANSMIT_MAX_NS ? rto * 2 : RETRANSMIT_MAX_NS;
  m->resent_ns = now;
  char subject[SUBJECT_MAX];
  net__peer_subject(n, m->name, subject);
  link_frame *f;
  for (size_t k = 0; (f = link_unacked(&m->link, k)) != NULL; k++) {
    if (transport_publish(n->t, subject, f->data, f->len)) break;
    f->sent_ns = now;
  }
}

static void handle_frame(struct net *n, natsMsg *msg, uint64_t now) {
  const char *subject = natsMsg_GetSubject(msg);
  if (subject && strncmp(subject, n->path_subject, n->path_prefix_len) == 0) {
    net__handle_interop(n, msg, subject);
    return;
  }
  if (subject && strncmp(subject, n->probe_subject, n->probe_prefix_len) == 0) {
    handle_probe_answer(n, msg, subject + n->probe_prefix_len, now);
    return;
  }
  const unsigned char *data = (const unsigned char *)natsMsg_GetData(msg);
  int dlen = natsMsg_GetDataLength(msg);
  if (!data || dlen <= 0) return;
  if (dlen >= 2 && data[0] == BATCH_MAGIC0 && data[1] == BATCH_MAGIC1) {
    /* A batch: [u32 length][frame], ...; a length past the end ends it. */
    size_t pos = 2, len = (size_t)dlen;
    while (len - pos >= 4) {
      size_t flen = (size_t)data[pos] << 24 | (size_t)data[pos + 1] << 16 | (size_t)data[pos + 2] << 8 | data[pos + 3];
      pos += 4;
      if (flen > len - pos) break;
      handle_bytes(n, data + pos, flen, now);
      pos += flen;
    }
    return;
  }
  handle_bytes(n, data, (size_t)dlen, now);
}

/* One frame, from a NATS message or a batch. Net thread. */
static void handle_bytes(struct net *n, const unsigned char *data, size_t dlen, uint64_t now) {
  envelope e;
  if (envelope_parse(data, dlen, &n->key, &e)) return;
  if (e.from_inc == n->inc) return; /* our own heartbeat */
  if (e.type == ENV_HEARTBEAT || e.type == ENV_BYE) {
    handle_named(n, &e, now);
    return;
  }
  if (e.type == ENV_DATA) {
    /* Only from the data subject, handed over by its callback: while the
     * net thread handles those, the callback delivers nothing. */
    if (n->handing_over) handle_data(n, &e, now);
    return;
  }
  if (e.to_inc != n->inc) return;
  plat_mutex_lock(&n->lock);
  member *m = membership_find(&n->ms, e.from_inc);
  if (!m || !m->up) {
    plat_mutex_unlock(&n->lock);
    return; /* a stranger's or a fenced incarnation's frame */
  }
  m->last_seen_ns = now;
  m->suspect_ns = 0;
  if (e.type == ENV_FENCED) {
    /* A live peer declared this incarnation down (it was hung, or cut off
     * while the others were not). */
    plat_mutex_unlock(&n->lock);
    rejoin(n, m->inc);
    return;
  }
  if (e.type == ENV_ACK) {
    link_frame *f;
    size_t freed = link_ack(&m->link, e.seq);
    if (freed) m->rto_ns = 0; /* progress: back to the base wait */
    if (freed == 0 && e.seq == m->link.acked && (f = link_unacked(&m->link, 0)) != NULL &&
        now - f->sent_ns > FAST_RETRANSMIT_NS && now - m->resent_ns >= (m->rto_ns ? m->rto_ns : RETRANSMIT_NS) / 2) {
      resend_unacked(n, m, now);
    }
  }
  plat_mutex_unlock(&n->lock);
}

static int plain_kind(int k) { return k == MSG_USER || k == MSG_REQUEST || k == MSG_REPLY || k == MSG_REPLY_ERROR; }

static int is_reply(int k) { return k == MSG_REPLY || k == MSG_REPLY_ERROR; }

/* A data frame the net thread handles: one the data callback handed it
 * (TAG_DEFERRED). Net thread. */
static void handle_data(struct net *n, const envelope *ep, uint64_t now) {
  envelope e = *ep;
  int k = e.kind;
  if (!plain_kind(k) && k != NET_ISO_UP && k != NET_ISO_DOWN && k != NET_SPAWN && k != NET_CLAIM &&
      k != NET_CLAIM_REPLY && k != NET_CHUNK && k != NET_KILL)
    return;
  if (inbound_peek(&n->in, e.to_inc, e.from_inc, e.seq, now) != LINK_DELIVER) return;
  if (k == NET_CHUNK) {
    /* Checked as a whole once complete (chunks.c). */
    int whole = net__chunk_arrived(n, &e);
    inbound_advance(&n->in, e.from_inc, e.seq, is_reply(whole), e.to_id, e.corr);
    return;
  }
  /* Sequence accepted: delivered or counted, never asked for again. */
  if (!net__payload_ok(n, e.payload, e.payload_len, n->code_ok)) {
    if (k == NET_SPAWN) spawn_failed(n, e.from_inc, e.to_id, "malformed or untrusted spawn refused");
    if (k < NET_ISO_UP) {
      cluster_log(n->c, "isolate_cluster: refused a malformed or untrusted message from node %08x",
                  (unsigned)e.from_inc);
      if (k == MSG_REQUEST)
        net__reply_error_to_remote(n, e.from_inc, e.from_id, e.corr, e.to_id, "malformed or untrusted message refused");
      else atomic_fetch_add(&n->c->dead_letters, 1);
    }
  } else if (k == NET_ISO_UP || k == NET_ISO_DOWN) apply_replica(n, &e);
  else if (k == NET_SPAWN) apply_spawn(n, &e);
  else if (k == NET_KILL) apply_kill(n, &e);
  else if (k == NET_CLAIM) net__answer_claim(n, &e);
  else if (k == NET_CLAIM_REPLY) net__claim_answered(n, &e);
  else net__deliver(n, &e);
  inbound_advance(&n->in, e.from_inc, e.seq, is_reply(k), e.to_id, e.corr);
}

/* ---- the data subscription's callback (a cnats thread) ------------------------ */

/* One frame of a data subject message, delivered here if it can be: 1 when
 * done with (delivered, or dropped as the net thread would drop it), 0 when
 * the net thread must take it. *since: the most frames accepted from a
 * peer since its last ack. */
static int fast_frame(struct net *n, transport *t, const unsigned char *data, size_t len, uint64_t now,
                      size_t *since) {
  envelope e;
  if (envelope_parse(data, len, &n->key, &e)) return 1;
  if (e.type != ENV_DATA || !plain_kind(e.kind) || wirecheck_plain(e.payload, e.payload_len) != WIRECHECK_OK)
    return 0;
  /* Claimed: a net thread taking the peer down waits for this delivery
   * before its down events (inbound_quiesce). */
  int verdict = inbound_claim(&n->in, e.to_inc, e.from_inc, e.seq, now);
  if (verdict != LINK_DELIVER) return 1; /* a duplicate, a gap, or not ours: never delivered */
  /* Not posted (no receiver, a full mailbox, no memory): the net thread
   * tries again and refuses it as it must (dead letter, error reply). */
  int posted = post_local(n, &e, t) == NULL;
  if (posted) {
    size_t s = inbound_advance(&n->in, e.from_inc, e.seq, is_reply(e.kind), e.to_id, e.corr);
    if (s > *since) *since = s;
  }
  inbound_unclaim(&n->in);
  return posted;
}

/* Every message on this node's data subject, on its subscription's cnats
 * thread (one at a time). Never blocks and never touches a lua_State
 * (transport.h): it takes the inbound lock and, to post, c->lock and a
 * mailbox's lock, each for a moment. What it cannot finish goes to the net
 * thread (see `deferred` in node.h); a single frame of another type (an
 * ack, a fenced notice) goes there as any other subject's message does. */
static void on_data(void *ud, transport *t, natsMsg *msg) {
  struct net *n = ud;
  const unsigned char *data = (const unsigned char *)natsMsg_GetData(msg);
  int dlen = natsMsg_GetDataLength(msg);
  const char *subject = natsMsg_GetSubject(msg);
  if (subject && strcmp(subject, n->hb_subject) == 0) {
    /* A heartbeat: the net thread handles it, and here the peer is marked
     * heard at once (inbound_heard), so that a net thread slow to get to
     * it (a loaded machine) does not take a live peer for a silent one. */
    envelope e;
    if (data && dlen > 0 && envelope_parse(data, (size_t)dlen, &n->key, &e) == NULL && e.type == ENV_HEARTBEAT)
      inbound_heard(&n->in, e.from_inc, plat_now_ns());
    if (transport_enqueue(t, msg, 0)) natsMsg_Destroy(msg);
    return;
  }
  if (!data || dlen <= 0 || atomic_load(&n->rx_closed)) {
    natsMsg_Destroy(msg); /* a probe (empty), or too late */
    return;
  }
  size_t len = (size_t)dlen, since = 0;
  int batch = len >= 2 && data[0] == BATCH_MAGIC0 && data[1] == BATCH_MAGIC1;
  int done = 1;
  if (!batch) {
    envelope e;
    if (envelope_parse(data, len, &n->key, &e) == NULL && e.type != ENV_DATA) {
      if (transport_enqueue(t, msg, 0)) natsMsg_Destroy(msg);
      return;
    }
  }
  uint64_t now = plat_now_ns();
  if (atomic_load_explicit(&n->deferred, memory_order_acquire) > 0) {
    done = 0;
  } else if (!batch) {
    done = fast_frame(n, t, data, len, now, &since);
  } else {
    /* A batch: [u32 length][frame], ...; a length past the end ends it. */
    size_t pos = 2;
    while (done && len - pos >= 4) {
      size_t flen = (size_t)data[pos] << 24 | (size_t)data[pos + 1] << 16 | (size_t)data[pos + 2] << 8 | data[pos + 3];
      pos += 4;
      if (flen > len - pos) break;
      done = fast_frame(n, t, data + pos, flen, now, &since);
      pos += flen;
    }
  }
  if (since >= ACK_EVERY && !atomic_exchange(&n->ack_wanted, 1)) transport_wake(t);
  if (done) {
    natsMsg_Destroy(msg);
    return;
  }
  /* The whole message goes: what was delivered of it is a duplicate there. */
  atomic_fetch_add_explicit(&n->deferred, 1, memory_order_acq_rel);
  if (transport_enqueue(t, msg, TAG_DEFERRED)) {
    atomic_fetch_sub_explicit(&n->deferred, 1, memory_order_acq_rel);
    natsMsg_Destroy(msg); /* the queue is full: the link resends */
  }
}

/* ---- timers (net thread) -------------------------------------------------------- */

static void send_acks(struct net *n) {
  atomic_store(&n->ack_wanted, 0);
  n->last_acks_ns = plat_now_ns();
  plat_mutex_lock(&n->lock);
  for (size_t i = 0; i < n->ms.n; i++) {
    member *m = n->ms.v[i];
    uint64_t cum;
    if (!m->up || !inbound_take_ack(&n->in, m->inc, &cum)) continue;
    unsigned char body[8];
    envelope_put_u64(body, cum);
    char subject[SUBJECT_MAX];
    net__peer_subject(n, m->name, subject);
    send_control(n, subject, ENV_ACK, m->inc, body, sizeof body);
  }
  plat_mutex_unlock(&n->lock);
}

/* Go-back-N: once the oldest unacked frame is overdue, everything unacked
 * goes again, in order. all != 0: at once (after a reconnection). */
static void retransmit(struct net *n, uint64_t now, int all) {
  plat_mutex_lock(&n->lock);
  for (size_t i = 0; i < n->ms.n; i++) {
    member *m = n->ms.v[i];
    if (!m->up) continue;
    link_frame *f = link_unacked(&m->link, 0);
    if (!f || (!all && now - f->sent_ns < (m->rto_ns ? m->rto_ns : RETRANSMIT_NS))) continue;
    resend_unacked(n, m, now);
  }
  plat_mutex_unlock(&n->lock);
}

/* No heartbeat for MEMBERSHIP_DOWN_NS: down, but only if this node itself
 * has been connected all that time (else the silence may be ours). */
static void expire(struct net *n, uint64_t now) {
  if (!n->connected_since || now - n->connected_since < MEMBERSHIP_DOWN_NS) return;
  for (;;) {
    plat_mutex_lock(&n->lock);
    member *late = NULL;
    for (size_t i = 0; i < n->ms.n && !late; i++) {
      member *m = n->ms.v[i];
      if (m->up && now - m->last_seen_ns > MEMBERSHIP_DOWN_NS) late = m;
    }
    if (!late) {
      plat_mutex_unlock(&n->lock);
      return;
    }
    member_down_unlock(n, late, "unreachable");
  }
}

static void track_connection(struct net *n, uint64_t now) {
  uint64_t rc = transport_reconnects(n->t);
  int up = transport_connected(n->t);
  if (rc != n->seen_reconnects || (up && !n->connected_since)) {
    n->seen_reconnects = rc;
    if (up) {
      /* Back: the peers' silence was ours; everything unacked goes again. */
      n->connected_since = now;
      plat_mutex_lock(&n->lock);
      for (size_t i = 0; i < n->ms.n; i++) {
        n->ms.v[i]->last_seen_ns = now;
        n->ms.v[i]->suspect_ns = 0;
      }
      plat_mutex_unlock(&n->lock);
      send_named(n, ENV_HEARTBEAT);
      retransmit(n, now, 1);
    }
  }
  if (!up) n->connected_since = 0;
}

/* A peer the callbacks heard (data, heartbeats) counts as heard. now: the
 * time the timers below compare with; a callback may have stamped a later
 * one meanwhile, which counts as now (a time past it would make the
 * silence `now - last_seen` wrap around to years). */
static void sync_seen(struct net *n, uint64_t now) {
  plat_mutex_lock(&n->lock);
  for (size_t i = 0; i < n->ms.n; i++) {
    member *m = n->ms.v[i];
    if (!m->up) continue;
    uint64_t seen = inbound_last_seen(&n->in, m->inc, now);
    if (seen > m->last_seen_ns) {
      m->last_seen_ns = seen;
      m->suspect_ns = 0;
    }
  }
  plat_mutex_unlock(&n->lock);
}

/* Handles one message from the transport's queue, and destroys it. */
static void handle_queued(struct net *n, natsMsg *msg, int tag) {
  n->handing_over = tag == TAG_DEFERRED;
  handle_frame(n, msg, plat_now_ns());
  n->handing_over = 0;
  natsMsg_Destroy(msg);
  /* Its frames are delivered: the data callback may deliver the next ones
   * (the release orders them after these). */
  if (tag == TAG_DEFERRED) atomic_fetch_sub_explicit(&n->deferred, 1, memory_order_acq_rel);
}

static void *net_main(void *arg) {
  struct net *n = arg;
  uint64_t next_hb = 0, last_tick = plat_now_ns();
  while (!atomic_load(&n->stop)) {
    uint64_t now = plat_now_ns();
    uint64_t deadline = now + TICK_NS;
    if (next_hb && next_hb < deadline) deadline = next_hb;
    flush_batches(n);
    int tag = 0;
    /* With batches or acks to send, only what is queued already: no wait. */
    int busy = atomic_load(&n->flush_wanted) || atomic_load(&n->ack_wanted);
    natsMsg *msg = transport_next(n->t, busy ? 0 : deadline, &tag);
    for (int i = 0; msg && i < BATCH; i++) {
      handle_queued(n, msg, tag);
      /* A long queue (large chunks, a backlog) does not hold the acks back. */
      if (plat_now_ns() - n->last_acks_ns > ACK_INTERVAL_NS) send_acks(n);
      msg = i + 1 < BATCH ? transport_next(n->t, 0, &tag) : NULL;
    }
    if (msg) handle_queued(n, msg, tag);
    release_late(n);
    flush_batches(n);
    send_acks(n);
    now = plat_now_ns();
    track_connection(n, now);
    if (now >= next_hb) {
      send_named(n, ENV_HEARTBEAT);
      next_hb = now + MEMBERSHIP_HEARTBEAT_NS;
    }
    retransmit(n, now, 0);
    if (now - last_tick > MEMBERSHIP_DOWN_NS / 2) {
      /* This process was stopped or starved (a tick normally takes
       * TICK_NS): the silence was ours, not the peers'. */
      plat_mutex_lock(&n->lock);
      for (size_t i = 0; i < n->ms.n; i++) {
        n->ms.v[i]->last_seen_ns = now;
        n->ms.v[i]->suspect_ns = 0;
      }
      plat_mutex_unlock(&n->lock);
    }
    last_tick = now;
    sync_seen(n, now);
    if (n->connected_since) {
      plat_mutex_lock(&n->lock);
      probe_silent(n, now);
      plat_mutex_unlock(&n->lock);
    }
    expire(n, now);
    net__chunks_expire(n, now);
  }
  return NULL;
}

/* ---- lifecycle ------------------------------------------------------------- */

void net_free(struct net *n) {
  if (!n) return;
  net_stop(n, plat_now_ns() + plat_seconds_to_ns(2.0)); /* normally stopped already */
  /* cnats may still call on_data, which names n: n stays (a bounded leak of
   * a connection that would not close). */
  if (n->transport_leaked) return;
  membership_fini(&n->ms);
  kin_fini(&n->kids_out);
  kin_fini(&n->kids_in);
  inbound_fini(&n->in);
  reasm_fini(&n->reasm);
  paths_fini(&n->replica);
  if (n->vL) lua_close(n->vL);
  free(n->cluster_name);
  free(n->name);
  free(n->secret);
  free(n->lua_path);
  free(n->lua_cpath);
  if (n->interop)
    for (size_t i = 0; i < INTEROP_MAX; i++) free(n->interop[i]);
  free(n->interop);
  while (n->claims) {
    claim *k = n->claims;
    n->claims = k->next;
    free(k->path);
    free(k->waiting);
    free(k);
  }
  plat_cond_destroy(&n->claims_cond);
  plat_mutex_destroy(&n->lock);
  free(n);
}

struct net *net_start(ic_cluster *c, const net_opts *o, char *err, size_t errlen) {
  if (!o->nurls) {
    snprintf(err, errlen, "opts.nats: at least one NATS server URL is needed");
    return NULL;
  }
  if (!valid_token(o->cluster)) {
    snprintf(err, errlen, "opts.cluster must be 1 to 64 letters, digits, '_' or '-'");
    return NULL;
  }
  if (!valid_name(o->name)) {
    snprintf(err, errlen, "opts.name must be 1 to %d letters, digits, '_' or '-'", ENVELOPE_NAME_MAX);
    return NULL;
  }
  if (o->allow_code && !o->secret) {
    snprintf(err, errlen, "opts.allow_code needs opts.secret: code is accepted only from authenticated nodes");
    return NULL;
  }
  struct net *n = calloc(1, sizeof *n);
  if (!n) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  plat_mutex_init(&n->lock);
  plat_cond_init(&n->claims_cond);
  membership_init(&n->ms);
  kin_init(&n->kids_out);
  kin_init(&n->kids_in);
  inbound_init(&n->in);
  reasm_init(&n->reasm, CHUNKED_MAX, REASSEMBLY_MAX);
  paths_init(&n->replica);
  n->c = c;
  n->cluster_name = strdup(o->cluster);
  n->name = strdup(o->name);
  if (o->secret) {
    n->secret = malloc(o->secret_len ? o->secret_len : 1);
    if (n->secret) memcpy(n->secret, o->secret, o->secret_len);
    n->key.key = n->secret;
    n->key.len = o->secret_len;
  }
  n->code_ok = o->allow_code && o->secret;
  n->vL = luaL_newstate();
  n->interop = calloc(INTEROP_MAX, sizeof *n->interop);
  if (!n->interop) {
    snprintf(err, errlen, "out of memory");
    net_free(n);
    return NULL;
  }
  if (o->lua_path) n->lua_path = strdup(o->lua_path);
  if (o->lua_cpath) n->lua_cpath = strdup(o->lua_cpath);
  if (!n->cluster_name || !n->name || (o->secret && !n->secret) || !n->vL || (o->lua_path && !n->lua_path) ||
      (o->lua_cpath && !n->lua_cpath)) {
    snprintf(err, errlen, "out of memory");
    net_free(n);
    return NULL;
  }
  /* Functions in a trusted message may name standard functions. */
  if (n->code_ok) luaL_openlibs(n->vL);
  n->inc = new_incarnation();
  inbound_set_self(&n->in, n->inc);
  snprintf(n->hb_subject, SUBJECT_MAX, "ic.%s.hb", n->cluster_name);
  net__peer_subject(n, n->name, n->data_subject);
  /* path_subject is the wildcard subscribed to; its first path_prefix_len
   * bytes ("ic.<cluster>.path.") are what interop subjects start with. */
  n->path_prefix_len = (size_t)snprintf(n->path_subject, SUBJECT_MAX, "ic.%s.path.", n->cluster_name);
  snprintf(n->path_subject + n->path_prefix_len, SUBJECT_MAX - n->path_prefix_len, ">");
  n->probe_prefix_len =
      (size_t)snprintf(n->probe_subject, SUBJECT_MAX, "ic.%s.probe.%s.", n->cluster_name, n->name);
  snprintf(n->probe_subject + n->probe_prefix_len, SUBJECT_MAX - n->probe_prefix_len, ">");
  const char *subjects[] = {n->hb_subject, n->data_subject, n->path_subject, n->probe_subject};
  transport_opts to = {o->urls, o->nurls, o->user, o->password, o->token, o->tls_ca, o->tls_cert, o->tls_key,
                       n->name, o->connect_timeout > 0 ? o->connect_timeout : DEFAULT_CONNECT_TIMEOUT,
                       subjects, 4, 0, on_data, n, 1u << 0 | 1u << 1};
  n->t = transport_open(&to, err, errlen);
  if (!n->t) {
    net_free(n);
    return NULL;
  }
  n->max_payload = transport_max_payload(n->t);
  n->connected_since = plat_now_ns();
  n->claims_from_ns = n->connected_since + CLAIM_SETTLE_NS;
  n->seen_reconnects = transport_reconnects(n->t);
  c->node_id = n->inc;
  if (plat_thread_start(&n->thread, net_main, n, 0) != 0) {
    snprintf(err, errlen, "cannot start the net thread");
    net_free(n);
    return NULL;
  }
  n->has_thread = 1;
  /* Meet the live nodes before returning (see JOIN_WINDOW_NS). */
  uint64_t until = plat_now_ns() + JOIN_WINDOW_NS;
  while (plat_now_ns() < until && !atomic_load(&n->name_taken)) {
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
  if (atomic_load(&n->name_taken)) {
    snprintf(err, errlen, "node name \"%s\" is already in use by a live node of cluster \"%s\"", n->name,
             n->cluster_name);
    /* Leave without a bye: the name's owner must not be taken for gone. */
    atomic_store(&n->stop, 1);
    transport_wake(n->t);
    plat_thread_join(n->thread);
    n->has_thread = 0;
    transport *t = n->t;
    n->t = NULL;
    atomic_store(&n->rx_closed, 1);
    if (transport_close(t, 1.0)) n->transport_leaked = 1;
    net_free(n);
    return NULL;
  }
  return n;
}

/* Waits (bounded) until every peer has acked everything sent to it, while
 * the net thread still runs: a message sent just before a clean shutdown is
 * delivered, not lost to the bye overtaking it (they travel on different
 * subjects, so nothing orders them at the receiver). */
static void drain_links(struct net *n, uint64_t deadline) {
  for (;;) {
    size_t unacked = 0;
    plat_mutex_lock(&n->lock);
    for (size_t i = 0; i < n->ms.n; i++)
      if (n->ms.v[i]->up) unacked += n->ms.v[i]->link.count;
    plat_mutex_unlock(&n->lock);
    if (!unacked || plat_now_ns() >= deadline || !transport_connected(n->t)) return;
    atomic_store(&n->flush_wanted, 1);
    transport_wake(n->t);
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
}

void net_stop(struct net *n, uint64_t until) {
  if (!n) return;
  uint64_t now = plat_now_ns(), drain_by = now + plat_seconds_to_ns(STOP_DRAIN_SECONDS);
  if (until < drain_by) drain_by = until;
  if (n->has_thread) {
    drain_links(n, drain_by);
    atomic_store(&n->rx_closed, 1);
    atomic_store(&n->stop, 1);
    transport_wake(n->t);
    plat_thread_join(n->thread);
    n->has_thread = 0;
  }
  release_late(n);
  plat_mutex_lock(&n->lock);
  transport *t = n->t;
  for (size_t i = 0; t && i < n->ms.n; i++)
    if (n->ms.v[i]->up) batch_flush(n, n->ms.v[i]);
  if (t) send_named(n, ENV_BYE);
  n->t = NULL;
  plat_cond_broadcast(&n->claims_cond); /* a claim round ends with the node */
  plat_mutex_unlock(&n->lock);
  /* The final flush gets what is left of the bound (at least a moment, so
   * that the bye goes out), at most 2 s. */
  now = plat_now_ns();
  double flush_s = until > now ? (double)(until - now) / 1e9 : 0.0;
  if (flush_s > 2.0) flush_s = 2.0;
  if (flush_s < 0.05) flush_s = 0.05;
  atomic_store(&n->rx_closed, 1);
  if (t && transport_close(t, flush_s)) n->transport_leaked = 1;
  /* What the callback handed over up to its end (after a leaked transport,
   * a callback that is still running may add more: left to the process). */
  release_late(n);
}

/* ---- names ------------------------------------------------------------------ */

const char *net_self_name(const struct net *n) { return n->name; }

int net_node_name(struct net *n, uint32_t node, char *buf, size_t len) {
  if (node == n->inc) {
    snprintf(buf, len, "%s", n->name);
    return 0;
  }
  plat_mutex_lock(&n->lock);
  member *m = membership_find(&n->ms, node);
  if (m) snprintf(buf, len, "%s", m->name);
  plat_mutex_unlock(&n->lock);
  return m ? 0 : -1;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

char **net_nodes(struct net *n, size_t *count) {
  plat_mutex_lock(&n->lock);
  char **out = malloc((n->ms.n + 1) * sizeof *out);
  size_t k = 0;
  if (out) {
    out[k++] = strdup(n->name);
    for (size_t i = 0; i < n->ms.n; i++)
      if (n->ms.v[i]->up) out[k++] = strdup(n->ms.v[i]->name);
  }
  plat_mutex_unlock(&n->lock);
  if (!out) return NULL;
  for (size_t i = 0; i < k; i++) {
    if (!out[i]) {
      for (size_t j = 0; j < k; j++) free(out[j]);
      free(out);
      return NULL;
    }
  }
  qsort(out, k, sizeof *out, by_name);
  *count = k;
  return out;
}
