#include "envelope.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t get_u64(const unsigned char *p) { return (uint64_t)get_u32(p) << 32 | get_u32(p + 4); }

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

void envelope_put_u64(unsigned char *out, uint64_t v) {
  put_u32(out, (uint32_t)(v >> 32));
  put_u32(out + 4, (uint32_t)v);
}

size_t envelope_size(size_t body_len, const envelope_key *k) {
  return ENVELOPE_HEADER + body_len + (k && k->len ? ENVELOPE_MAC : ENVELOPE_SUM);
}

static uint64_t fnv1a64(const unsigned char *p, size_t len) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

void envelope_put_header(unsigned char *out, int type, uint32_t from_inc, uint32_t to_inc) {
  out[0] = 'i';
  out[1] = 'c';
  out[2] = ENVELOPE_VERSION;
  out[3] = (unsigned char)type;
  put_u32(out + 4, from_inc);
  put_u32(out + 8, to_inc);
}

size_t envelope_put_named(unsigned char *out, uint64_t v, const char *name, size_t len) {
  envelope_put_u64(out, v);
  out[8] = (unsigned char)len;
  memcpy(out + 9, name, len);
  return 9 + len;
}

void envelope_put_data(unsigned char *out, uint64_t seq, int kind, uint64_t to_id, uint64_t from_id,
                       uint64_t corr) {
  envelope_put_u64(out, seq);
  out[8] = (unsigned char)kind;
  envelope_put_u64(out + 9, to_id);
  envelope_put_u64(out + 17, from_id);
  envelope_put_u64(out + 25, corr);
}

static int mac_of(const unsigned char *data, size_t len, const envelope_key *k, unsigned char *out) {
  unsigned int outlen = 0;
  if (!HMAC(EVP_sha256(), k->key, (int)k->len, data, len, out, &outlen)) return -1;
  return outlen == ENVELOPE_MAC ? 0 : -1;
}

int envelope_seal(unsigned char *frame, size_t len, const envelope_key *k) {
  if (!k || !k->len) {
    envelope_put_u64(frame + len, fnv1a64(frame, len));
    return 0;
  }
  return mac_of(frame, len, k, frame + len);
}

const char *envelope_parse(const unsigned char *data, size_t len, const envelope_key *k, envelope *e) {
  memset(e, 0, sizeof *e);
  if (len < ENVELOPE_HEADER) return "frame too short";
  if (data[0] != 'i' || data[1] != 'c') return "not a node frame";
  if (data[2] != ENVELOPE_VERSION) return "unknown frame version";
  if (k && k->len) {
    if (len < ENVELOPE_HEADER + ENVELOPE_MAC) return "frame too short for its MAC";
    unsigned char mac[ENVELOPE_MAC];
    len -= ENVELOPE_MAC;
    if (mac_of(data, len, k, mac) || CRYPTO_memcmp(mac, data + len, ENVELOPE_MAC) != 0)
      return "frame not authenticated by the cluster secret";
  } else {
    if (len < ENVELOPE_HEADER + ENVELOPE_SUM) return "frame too short for its digest";
    len -= ENVELOPE_SUM;
    if (get_u64(data + len) != fnv1a64(data, len)) return "frame digest mismatch";
  }
  e->type = data[3];
  e->from_inc = get_u32(data + 4);
  e->to_inc = get_u32(data + 8);
  if (e->from_inc == 0) return "frame without a sender";
  const unsigned char *b = data + ENVELOPE_HEADER;
  size_t blen = len - ENVELOPE_HEADER;
  switch (e->type) {
  case ENV_HEARTBEAT:
  case ENV_BYE:
  case ENV_HELLO:
    if (blen < 9 || b[8] == 0 || b[8] > ENVELOPE_NAME_MAX || blen != (size_t)9 + b[8]) return "bad node name";
    if (e->type == ENV_HELLO) e->nonce = get_u64(b);
    else e->counter = get_u64(b);
    e->name = (const char *)b + 9;
    e->name_len = b[8];
    for (size_t i = 0; i < e->name_len; i++)
      if ((unsigned char)e->name[i] <= ' ' || (unsigned char)e->name[i] >= 0x7f) return "bad node name";
    if (e->type != ENV_HELLO && e->counter == 0) return "heartbeat without a counter";
    if (e->type == ENV_HELLO && (e->nonce == 0 || e->to_inc == 0)) return "bad hello";
    return NULL;
  case ENV_WELCOME:
    if (blen != 16) return "bad welcome frame";
    e->nonce = get_u64(b);
    e->counter = get_u64(b + 8);
    return e->nonce && e->to_inc ? NULL : "bad welcome frame";
  case ENV_DATA:
    if (blen < ENVELOPE_DATA_BODY) return "data frame too short";
    e->seq = get_u64(b);
    e->kind = b[8];
    e->to_id = get_u64(b + 9);
    e->from_id = get_u64(b + 17);
    e->corr = get_u64(b + 25);
    e->payload = (const char *)b + ENVELOPE_DATA_BODY;
    e->payload_len = blen - ENVELOPE_DATA_BODY;
    if (e->seq == 0) return "data frame without a sequence number";
    return NULL;
  case ENV_FENCED:
    return blen == 0 ? NULL : "bad fenced frame";
  case ENV_ACK:
    if (blen != 8) return "bad ack frame";
    e->seq = get_u64(b);
    return NULL;
  default:
    return "unknown frame type";
  }
}
