/*
 * transport — this node's one NATS connection (cnats) and its
 * subscriptions, created once when the node starts and closed once when it
 * stops (cnats may crash when a subscription is destroyed while a message
 * for it is being delivered, so none is ever destroyed earlier).
 *
 * Threads: cnats calls back on its own threads (one per subscription, one
 * library-wide for connection events). Those callbacks never block and never
 * touch a lua_State: they put the message into the transport's bounded
 * inbound queue (dropping it when the queue is full: the reliable link
 * resends, heartbeats repeat) or flip an atomic flag; one subscription may
 * instead have a direct handler (transport_opts.direct), which runs on that
 * subscription's cnats thread under the same rules and may hand a message
 * to the queue itself (transport_enqueue). cnats runs one subscription's
 * callbacks one at a time. Exactly one thread, the node's net thread, takes
 * from the queue (transport_next).
 * transport_publish may be called from any thread (cnats locks the
 * connection).
 *
 * cnats 3.4.1 can spin in the connect handshake against a server that
 * accepts TCP but never answers; the connect timeout bounds that.
 * nats_Close() is never called: it is library-wide and one-shot.
 */
#ifndef IC_NET_TRANSPORT_H
#define IC_NET_TRANSPORT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct transport transport;
typedef struct __natsMsg natsMsg; /* as <nats/nats.h> names it */

typedef struct transport_opts {
  const char **urls;
  int nurls;
  const char *user, *password, *token;
  const char *tls_ca, *tls_cert, *tls_key; /* NULL = no TLS */
  const char *conn_name;
  double connect_timeout; /* seconds */
  const char **subjects;  /* subscribed once, for the connection's life */
  int nsubjects;
  size_t inbound_max;     /* bounded inbound queue, in messages */
  /* Or NULL: the handler of the messages of the subjects in direct_mask
   * (bit i: subjects[i]), called on their subscriptions' cnats threads; it
   * owns each message (destroys it, or passes it on with
   * transport_enqueue). It must not block. */
  void (*direct)(void *ud, transport *t, natsMsg *msg);
  void *direct_ud;
  unsigned direct_mask;
} transport_opts;

/* Connects and subscribes. NULL with a message in err on failure (no
 * server, refused credentials, timeout...). */
transport *transport_open(const transport_opts *o, char *err, size_t errlen);

/* Publishes; 0, or -1 (the connection is closed or its reconnect buffer is
 * full: the caller's link resends later). Any thread. */
int transport_publish(transport *t, const char *subject, const void *data, size_t len);
/* Publishes with a reply subject (interop replies go without one). */
int transport_publish_reply(transport *t, const char *subject, const char *reply, const void *data,
                            size_t len);

/* Puts msg into the inbound queue with tag (0 for what the transport
 * queues itself): 0, or -1 when the queue is full (msg stays the caller's;
 * counted as dropped). Any thread; never blocks for long. */
int transport_enqueue(transport *t, natsMsg *msg, int tag);
/* The next inbound message and its tag (the caller destroys it with
 * natsMsg_Destroy), or NULL at deadline (monotonic ns) or after
 * transport_wake. Net thread only. */
natsMsg *transport_next(transport *t, uint64_t deadline_ns, int *tag);
/* Lets go of a received message (in place of natsMsg_Destroy). cnats
 * hands every destroyed message to its one collector thread and wakes that
 * thread when it sleeps: once per message, another thread to run beside
 * the one a message is for. Released messages are destroyed a batch at a
 * time instead: when TRANSPORT_SPENT_MAX are held (or 256 KiB of payload;
 * a larger message goes at once), or at transport_release_flush, which
 * the owner calls regularly (the net thread, at least once per tick), and
 * at transport_close. Any thread. */
#define TRANSPORT_SPENT_MAX 64
void transport_release(transport *t, natsMsg *msg);
void transport_release_flush(transport *t);

/* Makes a transport_next waiting now return. Any thread. */
void transport_wake(transport *t);

/* 1 while connected to a server. Any thread. */
int transport_connected(transport *t);
/* Counts reconnections, so the net thread sees one happened. */
uint64_t transport_reconnects(transport *t);
/* Messages dropped because the inbound queue was full. */
uint64_t transport_dropped(transport *t);
/* The server's max_payload, or 0 when not known. */
int64_t transport_max_payload(transport *t);

/* Flushes (bounded by timeout_s), closes, waits for cnats to be done with
 * every callback, frees. No other call may be running or follow. Returns 0,
 * or -1 when cnats did not report every callback ended in time: t is then
 * left allocated (callbacks may still come), and so must be whatever a
 * direct handler's ud names. */
int transport_close(transport *t, double timeout_s);

#endif
