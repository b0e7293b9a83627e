/*
 * envelope — the binary frame every node-to-node NATS message carries (see
 * docs/multinode.md, "Envelope"). Pure functions: no NATS, no Lua, no locks.
 *
 * Every frame starts with a fixed 12-byte header:
 *   'i' 'c' version(1) type(1) from_inc(u32 BE) to_inc(u32 BE, 0 = everyone)
 * followed by the body of its type, and by a check of everything before it:
 * an HMAC-SHA256 (32 bytes) with the cluster's secret, or without one a
 * 64-bit FNV-1a digest (8 bytes), which keeps random or mutated bytes from
 * passing for a frame (it authenticates nothing: only the secret does).
 *
 * envelope_parse never trusts its input: every length is checked against
 * the end, and a frame that fails any check is rejected as a whole.
 */
#ifndef IC_NET_ENVELOPE_H
#define IC_NET_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#define ENVELOPE_VERSION 2
#define ENVELOPE_HEADER 12
#define ENVELOPE_MAC 32
#define ENVELOPE_SUM 8
#define ENVELOPE_NAME_MAX 64

enum {
  ENV_HEARTBEAT = 1, /* body: u64 counter, u8 name length, name */
  ENV_BYE = 2,       /* body: u64 counter, u8 name length, name */
  ENV_DATA = 3,      /* body: u64 seq, u8 kind, u64 to_id, u64 from_id, u64 corr, payload */
  ENV_ACK = 4,       /* body: u64 cumulative seq */
  ENV_FENCED = 5,    /* body: none; to_inc was declared down by the sender */
  ENV_HELLO = 6,     /* body: u64 nonce, u8 name length, the sender's name; to_inc is challenged */
  ENV_WELCOME = 7,   /* body: u64 nonce (of to_inc's hello, echoed), u64 counter (the sender's now) */
};

/* Replay protection (docs/multinode.md, "Replays"): heartbeats and byes
 * carry a counter that grows with every one an incarnation sends, and a
 * receiver takes only a counter newer than the last it took from that
 * incarnation; data frames have their link's sequence numbers; an
 * incarnation becomes a member only by echoing a fresh random nonce (hello,
 * welcome), which no copy of its old frames holds. */

#define ENVELOPE_DATA_BODY (8 + 1 + 8 + 8 + 8)

typedef struct envelope {
  int type;
  uint32_t from_inc, to_inc;
  /* heartbeat / bye / hello */
  const char *name; /* not NUL-terminated; points into the frame */
  size_t name_len;
  uint64_t counter; /* heartbeat / bye / welcome */
  uint64_t nonce;   /* hello / welcome */
  /* data / ack */
  uint64_t seq;
  int kind;
  uint64_t to_id, from_id, corr;
  const char *payload; /* points into the frame */
  size_t payload_len;
} envelope;

/* The cluster secret as a key; len 0 = no secret (frames carry no MAC). */
typedef struct envelope_key {
  const unsigned char *key;
  size_t len;
} envelope_key;

/* Size of a frame with a body of body_len bytes. */
size_t envelope_size(size_t body_len, const envelope_key *k);

/* Writes the header of e (type, from_inc, to_inc) into out (ENVELOPE_HEADER bytes). */
void envelope_put_header(unsigned char *out, int type, uint32_t from_inc, uint32_t to_inc);
/* Writes the body of a data frame (ENVELOPE_DATA_BODY bytes) at out. */
void envelope_put_data(unsigned char *out, uint64_t seq, int kind, uint64_t to_id, uint64_t from_id,
                       uint64_t corr);
void envelope_put_u64(unsigned char *out, uint64_t v);
/* Writes the body of a heartbeat, bye (v: the counter) or hello (v: the
 * nonce) at out (room for 9 + ENVELOPE_NAME_MAX bytes); returns its length.
 * len is at most ENVELOPE_NAME_MAX. */
size_t envelope_put_named(unsigned char *out, uint64_t v, const char *name, size_t len);
/* Appends the MAC (with a key) or the digest (without) over frame[0..len)
 * at frame + len. Returns 0, or -1 when libcrypto fails. */
int envelope_seal(unsigned char *frame, size_t len, const envelope_key *k);

/* Parses and authenticates a frame. Returns 0 with *e filled (pointers into
 * data), or a static text saying why it was rejected. */
const char *envelope_parse(const unsigned char *data, size_t len, const envelope_key *k, envelope *e);

#endif
