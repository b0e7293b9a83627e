#include "transport.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "platform.h"

struct transport {
  natsConnection *nc;
  natsSubscription **subs;
  int nsubs;
  plat_mutex lock; /* guards the inbound ring and the done counters */
  plat_cond cond;
  struct inbound_item {
    natsMsg *msg;
    int tag;
  } *ring;
  size_t cap, head, count;
  void (*direct)(void *ud, transport *t, natsMsg *msg);
  void *direct_ud;
  int woken;
  /* Received messages let go of (transport_release), destroyed a batch at
   * a time: under spent_lock. */
  plat_mutex spent_lock;
  natsMsg *spent[TRANSPORT_SPENT_MAX];
  size_t nspent, spent_bytes;
  int subs_done;   /* subscriptions whose callbacks have ended for good */
  int closed;      /* the connection's closed callback ran */
  atomic_int connected;
  atomic_ullong reconnects;
  atomic_ullong dropped;
};

/* ---- received messages let go of ------------------------------------------ */

/* Held messages stay below this many bytes of payload; a larger one is
 * destroyed at once. */
#define SPENT_BYTES (256u << 10)

/* Takes every held message into out (room for TRANSPORT_SPENT_MAX). */
static size_t take_spent(transport *t, natsMsg **out) {
  size_t k = t->nspent;
  memcpy(out, t->spent, k * sizeof *out);
  t->nspent = 0;
  t->spent_bytes = 0;
  return k;
}

void transport_release(transport *t, natsMsg *msg) {
  size_t bytes = (size_t)natsMsg_GetDataLength(msg);
  if (bytes >= SPENT_BYTES) {
    natsMsg_Destroy(msg);
    return;
  }
  natsMsg *out[TRANSPORT_SPENT_MAX];
  size_t k = 0;
  plat_mutex_lock(&t->spent_lock);
  t->spent[t->nspent++] = msg;
  t->spent_bytes += bytes;
  if (t->nspent == TRANSPORT_SPENT_MAX || t->spent_bytes >= SPENT_BYTES) k = take_spent(t, out);
  plat_mutex_unlock(&t->spent_lock);
  for (size_t i = 0; i < k; i++) natsMsg_Destroy(out[i]);
}

void transport_release_flush(transport *t) {
  natsMsg *out[TRANSPORT_SPENT_MAX];
  plat_mutex_lock(&t->spent_lock);
  size_t k = take_spent(t, out);
  plat_mutex_unlock(&t->spent_lock);
  for (size_t i = 0; i < k; i++) natsMsg_Destroy(out[i]);
}

/* ---- cnats callbacks: enqueue or flip a flag, nothing else ------------------ */

int transport_enqueue(transport *t, natsMsg *msg, int tag) {
  int rc = -1;
  plat_mutex_lock(&t->lock);
  if (t->count < t->cap) {
    t->ring[(t->head + t->count) % t->cap] = (struct inbound_item){msg, tag};
    t->count++;
    rc = 0;
    plat_cond_signal(&t->cond);
  }
  plat_mutex_unlock(&t->lock);
  if (rc) atomic_fetch_add(&t->dropped, 1);
  return rc;
}

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
  (void)nc;
  (void)sub;
  transport *t = closure;
  if (transport_enqueue(t, msg, 0)) natsMsg_Destroy(msg);
}

/* The subscription with a direct handler (transport_opts.direct). */
static void on_direct(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
  (void)nc;
  (void)sub;
  transport *t = closure;
  t->direct(t->direct_ud, t, msg);
}

static void on_sub_complete(void *closure) {
  transport *t = closure;
  plat_mutex_lock(&t->lock);
  t->subs_done++;
  plat_cond_broadcast(&t->cond);
  plat_mutex_unlock(&t->lock);
}

static void on_disconnected(natsConnection *nc, void *closure) {
  (void)nc;
  transport *t = closure;
  atomic_store(&t->connected, 0);
}

static void on_reconnected(natsConnection *nc, void *closure) {
  (void)nc;
  transport *t = closure;
  atomic_store(&t->connected, 1);
  atomic_fetch_add(&t->reconnects, 1);
  transport_wake(t);
}

static void on_closed(natsConnection *nc, void *closure) {
  (void)nc;
  transport *t = closure;
  plat_mutex_lock(&t->lock);
  t->closed = 1;
  atomic_store(&t->connected, 0);
  plat_cond_broadcast(&t->cond);
  plat_mutex_unlock(&t->lock);
}

/* ---- opening -------------------------------------------------------------- */

static void set_error(char *err, size_t errlen, const char *what, natsStatus s) {
  natsStatus ls = NATS_OK;
  const char *detail = nats_GetLastError(&ls);
  if (!detail || !*detail) detail = natsStatus_GetText(s);
  /* cnats prefixes its texts with its source position, "(conn.c:1905): ". */
  if (detail[0] == '(') {
    const char *end = strstr(detail, "): ");
    if (end) detail = end + 3;
  }
  snprintf(err, errlen, "%s: %s", what, detail);
}

static void free_ring(transport *t) {
  for (size_t i = 0; i < t->count; i++) natsMsg_Destroy(t->ring[(t->head + i) % t->cap].msg);
  t->count = 0;
  free(t->ring);
  t->ring = NULL;
}

static void transport_free(transport *t) {
  free_ring(t);
  transport_release_flush(t);
  plat_mutex_destroy(&t->spent_lock);
  free(t->subs);
  plat_cond_destroy(&t->cond);
  plat_mutex_destroy(&t->lock);
  free(t);
}

/* Waits (bounded) until cnats has ended every callback that may name t. */
static int wait_callbacks_done(transport *t, int want_subs, uint64_t deadline) {
  plat_mutex_lock(&t->lock);
  while ((t->subs_done < want_subs || !t->closed) && plat_now_ns() < deadline)
    plat_cond_wait_until(&t->cond, &t->lock, deadline);
  int done = t->subs_done >= want_subs && t->closed;
  plat_mutex_unlock(&t->lock);
  return done;
}

transport *transport_open(const transport_opts *o, char *err, size_t errlen) {
  transport *t = calloc(1, sizeof *t);
  if (!t) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  plat_mutex_init(&t->lock);
  plat_cond_init(&t->cond);
  plat_mutex_init(&t->spent_lock);
  t->cap = o->inbound_max ? o->inbound_max : 65536;
  t->direct = o->direct;
  t->direct_ud = o->direct_ud;
  t->ring = malloc(t->cap * sizeof *t->ring);
  t->subs = calloc((size_t)(o->nsubjects > 0 ? o->nsubjects : 1), sizeof *t->subs);
  if (!t->ring || !t->subs) {
    snprintf(err, errlen, "out of memory");
    transport_free(t);
    return NULL;
  }
  natsOptions *opts = NULL;
  natsStatus s = natsOptions_Create(&opts);
  int64_t timeout_ms = (int64_t)(o->connect_timeout * 1000.0);
  if (timeout_ms < 1) timeout_ms = 1;
  if (s == NATS_OK) s = natsOptions_SetServers(opts, o->urls, o->nurls);
  if (s == NATS_OK) s = natsOptions_SetTimeout(opts, timeout_ms);
  if (s == NATS_OK && o->conn_name) s = natsOptions_SetName(opts, o->conn_name);
  if (s == NATS_OK && (o->user || o->password))
    s = natsOptions_SetUserInfo(opts, o->user ? o->user : "", o->password ? o->password : "");
  if (s == NATS_OK && o->token) s = natsOptions_SetToken(opts, o->token);
  /* Keep trying for ever: membership decides when a peer is gone, and a
   * node whose server is away keeps its messages in its links. */
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 250);
  if (s == NATS_OK) s = natsOptions_SetPingInterval(opts, 1000);
  if (s == NATS_OK) s = natsOptions_SetMaxPingsOut(opts, 3);
  if (s == NATS_OK) s = natsOptions_SetNoRandomize(opts, true);
  if (s == NATS_OK) s = natsOptions_SetSendAsap(opts, true);
  if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(opts, on_disconnected, t);
  if (s == NATS_OK) s = natsOptions_SetReconnectedCB(opts, on_reconnected, t);
  if (s == NATS_OK) s = natsOptions_SetClosedCB(opts, on_closed, t);
  if (s == NATS_OK && (o->tls_ca || o->tls_cert)) {
    s = natsOptions_SetSecure(opts, true);
    if (s == NATS_OK && o->tls_ca) s = natsOptions_LoadCATrustedCertificates(opts, o->tls_ca);
    if (s == NATS_OK && o->tls_cert) s = natsOptions_LoadCertificatesChain(opts, o->tls_cert, o->tls_key);
  }
  if (s != NATS_OK) {
    set_error(err, errlen, "invalid NATS options", s);
    natsOptions_Destroy(opts);
    transport_free(t);
    return NULL;
  }
  s = natsConnection_Connect(&t->nc, opts);
  natsOptions_Destroy(opts);
  if (s != NATS_OK) {
    set_error(err, errlen, "cannot connect to NATS", s);
    if (t->nc) {
      natsConnection_Destroy(t->nc);
    }
    transport_free(t);
    return NULL;
  }
  atomic_store(&t->connected, 1);
  for (int i = 0; i < o->nsubjects && s == NATS_OK; i++) {
    int direct = o->direct && i < 32 && (o->direct_mask >> i & 1u);
    s = natsConnection_Subscribe(&t->subs[i], t->nc, o->subjects[i], direct ? on_direct : on_msg, t);
    if (s == NATS_OK) {
      t->nsubs++;
      s = natsSubscription_SetOnCompleteCB(t->subs[i], on_sub_complete, t);
    }
  }
  if (s == NATS_OK) s = natsConnection_FlushTimeout(t->nc, timeout_ms);
  if (s != NATS_OK) {
    set_error(err, errlen, "cannot subscribe on NATS", s);
    transport_close(t, 1.0);
    return NULL;
  }
  return t;
}

int transport_publish(transport *t, const char *subject, const void *data, size_t len) {
  return natsConnection_Publish(t->nc, subject, data, (int)len) == NATS_OK ? 0 : -1;
}

int transport_publish_reply(transport *t, const char *subject, const char *reply, const void *data,
                            size_t len) {
  return natsConnection_PublishRequest(t->nc, subject, reply, data, (int)len) == NATS_OK ? 0 : -1;
}

natsMsg *transport_next(transport *t, uint64_t deadline_ns, int *tag) {
  natsMsg *m = NULL;
  plat_mutex_lock(&t->lock);
  while (!t->count && !t->woken && plat_now_ns() < deadline_ns)
    plat_cond_wait_until(&t->cond, &t->lock, deadline_ns);
  t->woken = 0;
  if (t->count) {
    m = t->ring[t->head].msg;
    *tag = t->ring[t->head].tag;
    t->head = (t->head + 1) % t->cap;
    t->count--;
  }
  plat_mutex_unlock(&t->lock);
  return m;
}

void transport_wake(transport *t) {
  plat_mutex_lock(&t->lock);
  t->woken = 1;
  plat_cond_broadcast(&t->cond);
  plat_mutex_unlock(&t->lock);
}

int transport_connected(transport *t) { return atomic_load(&t->connected); }
uint64_t transport_reconnects(transport *t) { return atomic_load(&t->reconnects); }
uint64_t transport_dropped(transport *t) { return atomic_load(&t->dropped); }
int64_t transport_max_payload(transport *t) { return natsConnection_GetMaxPayload(t->nc); }

int transport_close(transport *t, double timeout_s) {
  uint64_t deadline = plat_now_ns() + plat_seconds_to_ns(timeout_s);
  int64_t ms = (int64_t)(timeout_s * 1000.0);
  if (transport_connected(t)) natsConnection_FlushTimeout(t->nc, ms > 0 ? ms : 1);
  natsConnection_Close(t->nc);
  if (!wait_callbacks_done(t, t->nsubs, deadline + plat_seconds_to_ns(5.0))) {
    /* cnats still holds callbacks that name t: freeing it now could crash
     * the process later, so it is left to the process (a bounded leak). */
    return -1;
  }
  for (int i = 0; i < t->nsubs; i++) natsSubscription_Destroy(t->subs[i]);
  natsConnection_Destroy(t->nc);
  transport_free(t);
  return 0;
}
