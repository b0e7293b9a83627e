/* Interop: plain NATS clients of any language on ic.<cluster>.path.<a>.<b>
 * (plain MessagePack; a reply subject makes it a request). See
 * docs/multinode.md, "Interop". Net thread, except interop_reply (any). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpuck.h>

#include "codec.h"
#include "node.h"

/* Remembers a reply subject; returns its slot id (>= 1), 0 when out of memory. */
static uint64_t interop_remember(struct net *n, const char *reply) {
  char *copy = strdup(reply);
  if (!copy) return 0;
  plat_mutex_lock(&n->lock);
  uint64_t slot = ++n->interop_next;
  char **at = &n->interop[slot % INTEROP_MAX];
  free(*at); /* a request old enough to be forgotten */
  *at = copy;
  plat_mutex_unlock(&n->lock);
  return slot;
}

/* The reply subject of slot (taken: one reply per request), or NULL. */
static char *interop_take(struct net *n, uint64_t slot) {
  char *reply = NULL;
  plat_mutex_lock(&n->lock);
  if (slot && slot <= n->interop_next && n->interop_next - slot < INTEROP_MAX) {
    reply = n->interop[slot % INTEROP_MAX];
    n->interop[slot % INTEROP_MAX] = NULL;
  }
  plat_mutex_unlock(&n->lock);
  return reply;
}

/* Publishes {error = <value at data>} (data: one MessagePack value). */
static void publish_error_map(struct net *n, const char *reply, const char *data, size_t len) {
  char *buf = malloc(len + 16);
  if (!buf) return;
  char *w = mp_encode_map(buf, 1);
  w = mp_encode_str(w, "error", 5);
  memcpy(w, data, len);
  w += len;
  transport_publish(n->t, reply, buf, (size_t)(w - buf));
  free(buf);
}

static void publish_error_text(struct net *n, const char *reply, const char *text) {
  char buf[300];
  size_t len = strlen(text);
  if (len > sizeof buf - 5) len = sizeof buf - 5;
  publish_error_map(n, reply, buf, codec_put_str(buf, text, (uint32_t)len));
}

/* A reply (or error) of an isolate to a plain NATS client: plain
 * MessagePack on the client's reply subject. Any thread. */
const char *net__interop_reply(struct net *n, uint64_t slot, int kind, const char *data, size_t len) {
  char *reply = interop_take(n, slot);
  if (!reply) return "isolate down"; /* answered already, or forgotten */
  /* A reply over the server's max_payload (which a publish would refuse,
   * and the client would only see its timeout) is answered by an error
   * that says why (an error map has 16 bytes more than its value). */
  int too_large = n->max_payload > 0 && len + 16 > (size_t)n->max_payload;
  plat_mutex_lock(&n->lock);
  if (n->t) {
    if (too_large) publish_error_text(n, reply, "reply too large for the NATS server's max_payload");
    else if (kind == MSG_REPLY_ERROR) publish_error_map(n, reply, data, len);
    else if (kind == MSG_REPLY) transport_publish(n->t, reply, data, len);
  }
  plat_mutex_unlock(&n->lock);
  free(reply);
  if (too_large)
    cluster_log(n->c, "isolate_cluster: a reply to a NATS client (%zu bytes) is over the server's max_payload; the "
                "client gets an error instead", len);
  return NULL;
}

/* Is this node the one that answers for a path nobody holds? The first
 * live node by name, so that one answer comes back. */
static int answers_for_nobody(struct net *n) {
  plat_mutex_lock(&n->lock);
  int first = 1;
  for (size_t i = 0; i < n->ms.n && first; i++)
    if (n->ms.v[i]->up && strcmp(n->ms.v[i]->name, n->name) < 0) first = 0;
  plat_mutex_unlock(&n->lock);
  return first;
}

/* The subjects of this library's clusters, this one's and any other's on
 * the account ("ic.>": paths, node data, heartbeats, probes). A plain
 * client's reply subject there would make the node publish the answer into
 * them on the client's behalf, with the node's own NATS permissions: a
 * client allowed to reach only some paths would reach any other (the
 * answer, a plain message, arrives at the isolate whose path the reply
 * subject names), and answers would land on the nodes' own subjects. Such a
 * request is refused. */
#define CLUSTER_SUBJECTS "ic."

/* A message on ic.<cluster>.path.a.b: for the isolate at /a/b, if it lives
 * here. The payload is plain MessagePack (functions refused); with a reply
 * subject it is a request and the handler's first return value goes back. */
void net__handle_interop(struct net *n, natsMsg *msg, const char *subject) {
  const char *tokens = subject + n->path_prefix_len;
  size_t tlen = strlen(tokens);
  const char *reply = natsMsg_GetReply(msg);
  if (reply && !*reply) reply = NULL;
  int reply_refused = reply && strncmp(reply, CLUSTER_SUBJECTS, strlen(CLUSTER_SUBJECTS)) == 0;
  char path[512];
  if (tlen == 0 || tlen + 2 > sizeof path) return;
  path[0] = '/';
  for (size_t i = 0; i <= tlen; i++) path[i + 1] = tokens[i] == '.' ? '/' : tokens[i];
  const char *data = natsMsg_GetData(msg);
  int dlen = natsMsg_GetDataLength(msg);
  if (dlen < 0 || (dlen > 0 && !data)) return;
  ic_isolate *iso = cluster_find_path(n->c, path);
  if (!iso) {
    remote_id r;
    if (reply && !reply_refused && !paths_find(&n->replica, path, &r) && answers_for_nobody(n)) {
      char text[600];
      snprintf(text, sizeof text, "no isolate at path %s", path);
      publish_error_text(n, reply, text);
    }
    return;
  }
  if (reply_refused) {
    /* Neither delivered nor answered: the answer is what must not go there. */
    isolate_release(iso);
    atomic_fetch_add(&n->c->dead_letters, 1);
    return;
  }
  const char *why = NULL;
  if (!net__payload_ok(n, data, (size_t)dlen, 0)) why = "malformed message refused";
  uint64_t slot = 0;
  if (!why && reply && !(slot = interop_remember(n, reply))) why = "out of memory";
  if (!why) {
    ic_msg *m = msg_new(reply ? MSG_REQUEST : MSG_USER, data, (size_t)dlen);
    if (!m) {
      why = "out of memory";
    } else {
      if (reply) {
        m->from_node = INTEROP_NODE;
        m->from_id = slot;
        m->corr = slot;
      }
      why = isolate_post(iso, m, NULL);
    }
  }
  isolate_release(iso);
  if (!why) return;
  if (slot) free(interop_take(n, slot));
  if (reply) publish_error_text(n, reply, why);
  else atomic_fetch_add(&n->c->dead_letters, 1);
}

