/* The pure parts of the network side: the reliable link's window, acks and
 * duplicate suppression, the envelope's parsing of hostile bytes and its
 * authentication, the inbound side's sequence checks and pending requests,
 * and the C payload check the data callback relies on (whatever it passes,
 * the hardened decoder accepts). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <sched.h>

#include "codec.h"
#include "isolate.h"
#include "platform.h"
#include "net/envelope.h"
#include "net/inbound.h"
#include "net/link.h"
#include "net/membership.h"
#include "net/paths.h"
#include "net/reasm.h"
#include "net/wirecheck.h"

#include "check.h"

static unsigned char *frame_of(size_t len) {
  unsigned char *f = malloc(len);
  memset(f, 'x', len);
  return f;
}

static void test_link_window(void) {
  link l;
  link_init(&l, 4, 1 << 20);
  for (int i = 0; i < 4; i++) CHECK(link_push(&l, frame_of(10), 10, 1, 7, 0, 0) == 0);
  /* Full: refused, never dropped. */
  unsigned char *extra = frame_of(10);
  CHECK(link_push(&l, extra, 10, 1, 7, 0, 0) == -1);
  free(extra);
  CHECK(link_unacked(&l, 0)->seq == 1);
  CHECK(link_unacked(&l, 3)->seq == 4);
  CHECK(link_unacked(&l, 4) == NULL);
  /* An ack beyond what was sent is not from this link. */
  CHECK(link_ack(&l, 99) == 0);
  CHECK(link_ack(&l, 2) == 2);
  CHECK(link_unacked(&l, 0)->seq == 3);
  CHECK(link_ack(&l, 2) == 0); /* a repeated ack */
  CHECK(link_push(&l, frame_of(10), 10, 1, 7, 0, 0) == 0);
  CHECK(link_unacked(&l, 2)->seq == 5);
  CHECK(link_fini(&l) == 3);
}

static void test_link_bytes_bound(void) {
  link l;
  link_init(&l, 100, 25);
  CHECK(link_push(&l, frame_of(20), 20, 1, 0, 0, 0) == 0);
  unsigned char *f = frame_of(10);
  CHECK(link_push(&l, f, 10, 1, 0, 0, 0) == -1);
  free(f);
  CHECK(link_fini(&l) == 1);
}

static void test_link_accept(void) {
  link_rx r;
  link_rx_init(&r);
  CHECK(link_rx_peek(&r, 1) == LINK_DELIVER);
  CHECK(!r.ack_due);
  CHECK(link_accept(&r, 1) == LINK_DELIVER);
  CHECK(link_accept(&r, 1) == LINK_DUPLICATE);
  CHECK(link_accept(&r, 3) == LINK_GAP);
  CHECK(link_accept(&r, 2) == LINK_DELIVER);
  CHECK(link_delivered(&r) == 2);
  CHECK(r.ack_due);
}

/* Peek, deliver, advance: a frame is delivered once, strangers and frames
 * for another incarnation are never, and a peer's pending requests come
 * back when it goes. */
static void test_inbound(void) {
  inbound in;
  inbound_init(&in);
  inbound_set_self(&in, 7);
  CHECK(inbound_add(&in, 9) == 0);
  CHECK(inbound_peek(&in, 7, 8, 1, 100) == INBOUND_STRANGER); /* unknown peer */
  CHECK(inbound_peek(&in, 6, 9, 1, 100) == INBOUND_STRANGER); /* another incarnation of ours */
  uint64_t cum;
  CHECK(inbound_take_ack(&in, 9, &cum) == 0);
  CHECK(inbound_peek(&in, 7, 9, 1, 100) == LINK_DELIVER);
  CHECK(inbound_peek(&in, 7, 9, 1, 100) == LINK_DELIVER); /* not advanced yet */
  CHECK(inbound_last_seen(&in, 9, UINT64_MAX) == 100);
  /* A stamp later than the asker's now counts as its now (no wrap-around
   * of now - last_seen: a live peer taken for one silent for years). */
  inbound_heard(&in, 9, 1, 500);
  CHECK(inbound_last_seen(&in, 9, 300) == 300);
  inbound_heard(&in, 9, 2, 400); /* never back in time */
  CHECK(inbound_last_seen(&in, 9, UINT64_MAX) == 500);
  inbound_heard(&in, 8, 1, 600); /* not a peer */
  CHECK(inbound_last_seen(&in, 8, UINT64_MAX) == 0);
  CHECK(inbound_advance(&in, 9, 1, 0, 0, 0) == 1);
  CHECK(inbound_advance(&in, 9, 1, 0, 0, 0) == 0); /* twice: no */
  CHECK(inbound_peek(&in, 7, 9, 1, 101) == LINK_DUPLICATE);
  CHECK(inbound_peek(&in, 7, 9, 3, 101) == LINK_GAP);
  CHECK(inbound_take_ack(&in, 9, &cum) == 1 && cum == 1);
  CHECK(inbound_take_ack(&in, 9, &cum) == 0);
  for (uint64_t i = 1; i <= 40; i++) inbound_add_pending(&in, 9, 1, i);
  inbound_add_pending(&in, 8, 1, 99); /* not a peer */
  CHECK(inbound_peek(&in, 7, 9, 2, 102) == LINK_DELIVER);
  CHECK(inbound_advance(&in, 9, 2, 1, 1, 1) == 1); /* a reply: answers (1, 1) */
  CHECK(inbound_advance(&in, 9, 3, 1, 1, 20) == 2);
  CHECK(inbound_advance(&in, 9, 4, 1, 2, 3) == 3); /* not ours */
  size_t n;
  pending_req *p = inbound_remove(&in, 9, &n);
  CHECK(n == 38);
  CHECK(p && p[0].corr == 2 && p[17].corr == 19 && p[18].corr == 21);
  free(p);
  CHECK(inbound_peek(&in, 7, 9, 5, 103) == INBOUND_STRANGER); /* gone */
  CHECK(inbound_remove(&in, 9, &n) == NULL && n == 0);
  inbound_fini(&in);
}

static void test_envelope(void) {
  unsigned char key_bytes[] = "secret";
  envelope_key key = {key_bytes, 6}, none = {NULL, 0};
  unsigned char f[ENVELOPE_HEADER + ENVELOPE_DATA_BODY + 3 + ENVELOPE_MAC];
  envelope_put_header(f, ENV_DATA, 5, 6);
  envelope_put_data(f + ENVELOPE_HEADER, 9, 2, 10, 11, 12);
  memcpy(f + ENVELOPE_HEADER + ENVELOPE_DATA_BODY, "abc", 3);
  size_t len = ENVELOPE_HEADER + ENVELOPE_DATA_BODY + 3;
  envelope e;
  /* Without a secret: a digest, which a flipped bit or a cut fails. */
  CHECK(envelope_size(ENVELOPE_DATA_BODY + 3, &none) == len + ENVELOPE_SUM);
  CHECK(envelope_seal(f, len, &none) == 0);
  CHECK(envelope_parse(f, len + ENVELOPE_SUM, &none, &e) == NULL);
  CHECK(e.type == ENV_DATA && e.from_inc == 5 && e.to_inc == 6 && e.seq == 9 && e.kind == 2);
  CHECK(e.to_id == 10 && e.from_id == 11 && e.corr == 12 && e.payload_len == 3);
  for (size_t i = 0; i < len + ENVELOPE_SUM; i++) CHECK(envelope_parse(f, i, &none, &e) != NULL);
  for (size_t bit = 0; bit < (len + ENVELOPE_SUM) * 8; bit++) {
    f[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    CHECK(envelope_parse(f, len + ENVELOPE_SUM, &none, &e) != NULL);
    f[bit / 8] ^= (unsigned char)(1u << (bit % 8));
  }
  /* With a secret: the MAC must match, bit for bit. */
  CHECK(envelope_seal(f, len, &key) == 0);
  CHECK(envelope_parse(f, len + ENVELOPE_MAC, &key, &e) == NULL);
  CHECK(envelope_parse(f, len + ENVELOPE_MAC, &none, &e) != NULL);
  CHECK(envelope_parse(f, len, &key, &e) != NULL); /* without its MAC */
  f[20] ^= 1;
  CHECK(envelope_parse(f, len + ENVELOPE_MAC, &key, &e) != NULL);
  /* Names: printable, bounded. */
  unsigned char hb[ENVELOPE_HEADER + 12 + ENVELOPE_SUM] = {0};
  size_t hlen = ENVELOPE_HEADER + 12;
  envelope_put_header(hb, ENV_HEARTBEAT, 1, 0);
  envelope_put_named(hb + ENVELOPE_HEADER, 1, "a b", 3);
  envelope_seal(hb, hlen, &none);
  CHECK(envelope_parse(hb, sizeof hb, &none, &e) != NULL);
  memcpy(hb + ENVELOPE_HEADER + 9, "abc", 3);
  envelope_seal(hb, hlen, &none);
  CHECK(envelope_parse(hb, sizeof hb, &none, &e) == NULL);
  CHECK(e.name_len == 3 && memcmp(e.name, "abc", 3) == 0 && e.counter == 1);
  hb[ENVELOPE_HEADER + 8] = 4;
  envelope_seal(hb, hlen, &none);
  CHECK(envelope_parse(hb, sizeof hb, &none, &e) != NULL);
  /* Random bytes never crash and never pass. */
  srand(7);
  unsigned char junk[64];
  int accepted = 0;
  for (int i = 0; i < 100000; i++) {
    size_t n = (size_t)rand() % sizeof junk;
    for (size_t k = 0; k < n; k++) junk[k] = (unsigned char)rand();
    if (n > 2 && rand() % 2) {
      junk[0] = 'i';
      junk[1] = 'c';
      junk[2] = ENVELOPE_VERSION;
    }
    if (!envelope_parse(junk, n, (i & 1) ? &key : &none, &e)) accepted++;
  }
  CHECK(accepted == 0);
}

/* ---- replays: what a copy of a node's old frames can still do ---- */

static void test_replay(void) {
  /* A data frame of the link, replayed after the window moved on: a
   * duplicate, never delivered again. */
  inbound in;
  inbound_init(&in);
  inbound_set_self(&in, 7);
  CHECK(inbound_add(&in, 9) == 0);
  for (uint64_t s = 1; s <= 5; s++) {
    CHECK(inbound_peek(&in, 7, 9, s, 100) == LINK_DELIVER);
    inbound_advance(&in, 9, s, 0, 0, 0);
  }
  for (uint64_t s = 1; s <= 5; s++) CHECK(inbound_peek(&in, 7, 9, s, 900) == LINK_DUPLICATE);
  CHECK(inbound_last_seen(&in, 9, UINT64_MAX) == 100); /* a copy is no sign of life */
  /* The receiver's link state starts afresh only with a new incarnation of
   * the receiver (a new process, or a rejoin): every frame addressed to the
   * old one is a stranger's, even the link's next number. */
  inbound_set_self(&in, 17);
  CHECK(inbound_peek(&in, 7, 9, 1, 100) == INBOUND_STRANGER);
  CHECK(inbound_peek(&in, 7, 9, 6, 100) == INBOUND_STRANGER);
  inbound_set_self(&in, 7);
  /* A peer taken down and forgotten: its frames are a stranger's. */
  size_t np;
  free(inbound_remove(&in, 9, &np));
  CHECK(inbound_peek(&in, 7, 9, 6, 100) == INBOUND_STRANGER);
  /* Heartbeats: only a newer counter is a sign of life. */
  CHECK(inbound_add(&in, 9) == 0);
  inbound_heard(&in, 9, 5, 500);
  CHECK(inbound_last_seen(&in, 9, UINT64_MAX) == 500);
  inbound_heard(&in, 9, 5, 600); /* the same one again */
  inbound_heard(&in, 9, 3, 700); /* an older one */
  CHECK(inbound_last_seen(&in, 9, UINT64_MAX) == 500);
  inbound_heard(&in, 9, 6, 800);
  CHECK(inbound_last_seen(&in, 9, UINT64_MAX) == 800);
  inbound_fini(&in);

  /* The envelope carries the counter and the nonces under its check. */
  unsigned char key_bytes[] = "secret";
  envelope_key key = {key_bytes, 6};
  unsigned char f[ENVELOPE_HEADER + 9 + ENVELOPE_NAME_MAX + ENVELOPE_MAC];
  envelope e;
  size_t len = ENVELOPE_HEADER + envelope_put_named(f + ENVELOPE_HEADER, 41, "nodeb", 5);
  envelope_put_header(f, ENV_HEARTBEAT, 3, 0);
  CHECK(envelope_seal(f, len, &key) == 0);
  CHECK(envelope_parse(f, len + ENVELOPE_MAC, &key, &e) == NULL);
  CHECK(e.type == ENV_HEARTBEAT && e.counter == 41 && e.name_len == 5 && memcmp(e.name, "nodeb", 5) == 0);
  f[ENVELOPE_HEADER + 7] ^= 1; /* another counter: not the frame that was sealed */
  CHECK(envelope_parse(f, len + ENVELOPE_MAC, &key, &e) != NULL);
  len = ENVELOPE_HEADER + envelope_put_named(f + ENVELOPE_HEADER, 0, "nodeb", 5);
  CHECK(envelope_seal(f, len, &key) == 0);
  CHECK(envelope_parse(f, len + ENVELOPE_MAC, &key, &e) != NULL); /* no counter */
  f[2] = 1; /* the version before counters */
  len = ENVELOPE_HEADER + envelope_put_named(f + ENVELOPE_HEADER, 1, "nodeb", 5);
  CHECK(envelope_seal(f, len, &key) == 0);
  CHECK(envelope_parse(f, len + ENVELOPE_MAC, &key, &e) != NULL);
  envelope_put_header(f, ENV_HELLO, 3, 4);
  len = ENVELOPE_HEADER + envelope_put_named(f + ENVELOPE_HEADER, 0x1122334455667788ull, "nodeb", 5);
  CHECK(envelope_seal(f, len, &key) == 0);
  CHECK(envelope_parse(f, len + ENVELOPE_MAC, &key, &e) == NULL);
  CHECK(e.type == ENV_HELLO && e.nonce == 0x1122334455667788ull && e.to_inc == 4 && e.name_len == 5);
  envelope_put_header(f, ENV_HELLO, 3, 0); /* a hello challenges one incarnation */
  CHECK(envelope_seal(f, len, &key) == 0);
  CHECK(envelope_parse(f, len + ENVELOPE_MAC, &key, &e) != NULL);
  envelope_put_header(f, ENV_WELCOME, 4, 3);
  envelope_put_u64(f + ENVELOPE_HEADER, 0x1122334455667788ull);
  envelope_put_u64(f + ENVELOPE_HEADER + 8, 12);
  CHECK(envelope_seal(f, ENVELOPE_HEADER + 16, &key) == 0);
  CHECK(envelope_parse(f, ENVELOPE_HEADER + 16 + ENVELOPE_MAC, &key, &e) == NULL);
  CHECK(e.type == ENV_WELCOME && e.nonce == 0x1122334455667788ull && e.counter == 12);
  CHECK(envelope_seal(f, ENVELOPE_HEADER + 8, &key) == 0);
  CHECK(envelope_parse(f, ENVELOPE_HEADER + 8 + ENVELOPE_MAC, &key, &e) != NULL);

  /* Candidates: bounded, forgotten when not heard again, cleared by a reset. */
  membership ms;
  membership_init(&ms);
  CHECK(membership_add_candidate(&ms, 5, "five", 4, 99, 1000) != NULL);
  candidate *k = membership_candidate(&ms, 5, 1000 + MEMBERSHIP_CANDIDATE_NS);
  CHECK(k && k->nonce == 99 && strcmp(k->name, "five") == 0 && k->counter == 0);
  CHECK(membership_candidate(&ms, 5, 1001 + MEMBERSHIP_CANDIDATE_NS) == NULL);
  CHECK(membership_find(&ms, 5) == NULL); /* not a member */
  for (uint32_t i = 0; i < 2 * MEMBERSHIP_CANDIDATES; i++)
    CHECK(membership_add_candidate(&ms, 100 + i, "x", 1, 1 + i, 2000 + i) != NULL);
  CHECK(ms.ncand == MEMBERSHIP_CANDIDATES);
  CHECK(membership_candidate(&ms, 100, 3000) == NULL); /* the oldest made room */
  CHECK(membership_candidate(&ms, 100 + 2 * MEMBERSHIP_CANDIDATES - 1, 3000) != NULL);
  k = membership_add_candidate(&ms, 100 + 2 * MEMBERSHIP_CANDIDATES - 1, "y", 1, 7, 3000); /* anew */
  CHECK(k && k->nonce == 7 && ms.ncand == MEMBERSHIP_CANDIDATES);
  membership_drop_candidate(&ms, k);
  CHECK(membership_candidate(&ms, 100 + 2 * MEMBERSHIP_CANDIDATES - 1, 3000) == NULL);
  CHECK(membership_add_candidate(&ms, 1, "", 0, 1, 3000) == NULL);
  membership_fini(&ms);
}

/* ---- the replica: indexed, right through growth, downs and trimming ---- */

static void test_paths(void) {
  paths p;
  paths_init(&p);
  enum { N = 100000 };
  char path[64];
  for (uint64_t i = 1; i <= N; i++) {
    snprintf(path, sizeof path, "/w/%llu", (unsigned long long)i);
    CHECK(paths_add(&p, (uint32_t)(i % 7 + 1), i, i % 2 ? path : NULL, i % 2 ? strlen(path) : 0, NULL, 0) == 1);
  }
  CHECK(paths_add(&p, 8, 1, NULL, 0, NULL, 0) == 1); /* another node's id 1 */
  CHECK(paths_add(&p, 1 % 7 + 1, 1, NULL, 0, NULL, 0) == 0); /* known */
  remote_id r;
  CHECK(paths_find(&p, "/w/99999", &r) == 1 && r.id == 99999 && r.node == 99999 % 7 + 1);
  CHECK(paths_find(&p, "/w/2", &r) == 0); /* even ids have no path */
  CHECK(paths_state(&p, 50000 % 7 + 1, 50000) == 1);
  CHECK(paths_state(&p, 9, 50000) == 0);
  /* Down: not found by path, still by id (its path prints). */
  CHECK(paths_remove(&p, 99999 % 7 + 1, 99999) == 1);
  CHECK(paths_remove(&p, 99999 % 7 + 1, 99999) == -1);
  CHECK(paths_find(&p, "/w/99999", &r) == 0);
  char *s = paths_path_of(&p, 99999 % 7 + 1, 99999);
  CHECK(s && strcmp(s, "/w/99999") == 0);
  free(s);
  CHECK(paths_state(&p, 99999 % 7 + 1, 99999) == -1);
  /* The same path again, by another node: found, and the older live one
   * first while both live. */
  CHECK(paths_add(&p, 9, 1, "/w/99999", 8, NULL, 0) == 1);
  CHECK(paths_find(&p, "/w/99999", &r) == 1 && r.node == 9);
  CHECK(paths_add(&p, 10, 1, "/w/99999", 8, NULL, 0) == 1);
  CHECK(paths_find(&p, "/w/99999", &r) == 1 && r.node == 9);
  /* A node goes: each of its entries down; then many downs trim the
   * oldest down entries, and the rest is found as before. */
  size_t n;
  remote_id *gone = paths_remove_node(&p, 3, &n);
  CHECK(gone && n > 14000);
  free(gone);
  CHECK(paths_find(&p, "/w/99995", &r) == 1 && r.id == 99995); /* of node 99995 % 7 + 1 == 1 */
  CHECK(paths_find(&p, "/w/99997", &r) == 0);                   /* of node 3 */
  CHECK(paths_state(&p, 3, 2) == 0 || paths_state(&p, 3, 2) == -1);
  CHECK(p.ndown <= 2 * PATHS_DOWN_KEEP);
  CHECK(paths_find(&p, "/w/1", &r) == 1 && r.id == 1);
  for (uint64_t i = 1; i <= N; i += 2) {
    snprintf(path, sizeof path, "/w/%llu", (unsigned long long)i);
    int live = (i % 7 + 1) != 3; /* (/w/99999 is held again, by node 9) */
    if (paths_find(&p, path, &r) != live) {
      CHECK(!"a live path not found, or a down one found");
      break;
    }
  }
  size_t k;
  remote_id *all = paths_prefix(&p, "/w/1", &k);
  CHECK(all && k > 0 && all[0].id == 1); /* in the order they came up */
  free(all);
  paths_fini(&p);
}

/* ---- reassembly of chunked messages: bounded, whatever the chunks say ---- */

static void test_reasm(void) {
  reasm r;
  reasm_init(&r, 1000, 1500);
  char *out = NULL;
  size_t len = 0;
  reasm_key k = {5, 1, 10, 11, 12, 30}, dropped;
  const char *why = NULL;
  /* In order: whole, and nothing held afterwards. */
  CHECK(reasm_add(&r, &k, 0, "0123456789", 10, &out, &len, &dropped, &why, 0) == REASM_MORE);
  CHECK(r.bytes == 10);
  CHECK(reasm_add(&r, &k, 10, "abcdefghij", 10, &out, &len, &dropped, &why, 0) == REASM_MORE);
  CHECK(reasm_add(&r, &k, 20, "ABCDEFGHIJ", 10, &out, &len, &dropped, &why, 0) == REASM_WHOLE);
  CHECK(len == 30 && memcmp(out, "0123456789abcdefghijABCDEFGHIJ", 30) == 0);
  free(out);
  CHECK(r.bytes == 0 && r.n == 0);
  /* A lying total holds only what came. */
  reasm_key liar = {6, 1, 1, 2, 3, 1000};
  CHECK(reasm_add(&r, &liar, 0, "x", 1, &out, &len, &dropped, &why, 0) == REASM_MORE);
  CHECK(r.bytes == 1);
  /* Out of place: refused, nothing kept, the rest ignored. */
  CHECK(reasm_add(&r, &liar, 5, "y", 1, &out, &len, &dropped, &why, 0) == REASM_REFUSED);
  CHECK(dropped.inc == 6 && dropped.corr == 3 && why && strstr(why, "out of place"));
  CHECK(r.bytes == 0 && r.n == 0);
  CHECK(reasm_add(&r, &liar, 6, "z", 1, &out, &len, &dropped, &why, 0) == REASM_IGNORED);
  /* Another message's chunk (other corr, other total) breaks it too. */
  CHECK(reasm_add(&r, &liar, 0, "x", 1, &out, &len, &dropped, &why, 0) == REASM_MORE);
  reasm_key other = liar;
  other.corr = 4;
  CHECK(reasm_add(&r, &other, 1, "x", 1, &out, &len, &dropped, &why, 0) == REASM_REFUSED);
  other = liar;
  other.total = 999;
  CHECK(reasm_add(&r, &liar, 0, "x", 1, &out, &len, &dropped, &why, 0) == REASM_MORE);
  CHECK(reasm_add(&r, &other, 1, "x", 1, &out, &len, &dropped, &why, 0) == REASM_REFUSED);
  /* Past its total, empty, too large, or in one chunk: refused. */
  CHECK(reasm_add(&r, &k, 0, "0123456789", 10, &out, &len, &dropped, &why, 0) == REASM_MORE);
  char big[1100];
  memset(big, 'b', sizeof big);
  CHECK(reasm_add(&r, &k, 10, big, 21, &out, &len, &dropped, &why, 0) == REASM_REFUSED);
  CHECK(reasm_add(&r, &k, 0, "", 0, &out, &len, &dropped, &why, 0) == REASM_REFUSED);
  reasm_key huge = {7, 1, 1, 1, 1, 1001};
  CHECK(reasm_add(&r, &huge, 0, "x", 1, &out, &len, &dropped, &why, 0) == REASM_REFUSED && r.n == 0);
  reasm_key one = {7, 1, 1, 1, 1, 5};
  CHECK(reasm_add(&r, &one, 0, "12345", 5, &out, &len, &dropped, &why, 0) == REASM_REFUSED && r.n == 0);
  /* All peers together: at most 1500 bytes. */
  reasm_key a = {8, 1, 1, 1, 1, 1000}, b = {9, 1, 1, 1, 1, 1000};
  CHECK(reasm_add(&r, &a, 0, big, 900, &out, &len, &dropped, &why, 0) == REASM_MORE);
  CHECK(reasm_add(&r, &b, 0, big, 500, &out, &len, &dropped, &why, 0) == REASM_MORE);
  CHECK(r.bytes == 1400);
  CHECK(reasm_add(&r, &b, 500, big, 200, &out, &len, &dropped, &why, 0) == REASM_REFUSED);
  CHECK(dropped.inc == 9 && strstr(why, "too many"));
  CHECK(r.bytes == 900 && r.n == 1);
  CHECK(reasm_add(&r, &a, 900, big, 100, &out, &len, &dropped, &why, 0) == REASM_WHOLE && len == 1000);
  free(out);
  CHECK(r.bytes == 0);
  /* A new message while one is in progress: refused until it is forgotten. */
  CHECK(reasm_add(&r, &a, 0, big, 10, &out, &len, &dropped, &why, 0) == REASM_MORE);
  CHECK(reasm_add(&r, &a, 0, big, 10, &out, &len, &dropped, &why, 0) == REASM_REFUSED && r.n == 0);
  CHECK(reasm_add(&r, &a, 0, big, 10, &out, &len, &dropped, &why, 0) == REASM_MORE);
  CHECK(reasm_forget(&r, 8, &dropped) == 1 && dropped.inc == 8 && r.bytes == 0);
  CHECK(reasm_forget(&r, 8, &dropped) == 0);
  CHECK(reasm_add(&r, &k, 0, "0123456789", 10, &out, &len, &dropped, &why, 0) == REASM_MORE);
  reasm_fini(&r);
}

/* ---- wirecheck: what it passes, the decoder accepts ---------------------- */

static void push_ref(lua_State *L, uint32_t node, uint64_t id, void *ud) {
  (void)node;
  (void)id;
  (void)ud;
  lua_newuserdatauv(L, 1, 0);
}

static int decode_protected(lua_State *L) {
  const char *data = lua_touserdata(L, 1);
  size_t len = (size_t)lua_tointeger(L, 2);
  codec_limits lim;
  codec_limits_default(&lim);
  lim.allow_functions = lua_toboolean(L, 3);
  codec_hooks h = {NULL, push_ref, NULL, NULL};
  codec_decode(L, data, len, &h, &lim);
  return 1;
}

/* Does the decoder accept the bytes (functions allowed or not)? An empty
 * payload is nil, as an isolate takes it (it never reaches the decoder). */
static int decodes(lua_State *L, const char *data, size_t len, int functions) {
  if (len == 0) return 1;
  lua_settop(L, 0);
  lua_pushcfunction(L, decode_protected);
  lua_pushlightuserdata(L, (void *)data);
  lua_pushinteger(L, (lua_Integer)len);
  lua_pushboolean(L, functions);
  int ok = lua_pcall(L, 3, 1, 0) == LUA_OK;
  lua_settop(L, 0);
  return ok;
}

static int encode_protected(lua_State *L) {
  codec_buf *b = lua_touserdata(L, 2);
  codec_hooks h = {NULL, NULL, NULL, NULL};
  codec_encode(L, 1, "msg", &h, NULL, b);
  return 0;
}

/* The encoding of the value the chunk returns. */
static size_t encode_chunk(lua_State *L, const char *chunk, char *out, size_t cap) {
  codec_buf b = {NULL, 0, 0};
  lua_settop(L, 0);
  lua_pushcfunction(L, encode_protected);
  int ok = luaL_dostring(L, chunk) == LUA_OK;
  CHECK(ok);
  lua_pushlightuserdata(L, &b);
  ok = ok && lua_pcall(L, 2, 0, 0) == LUA_OK;
  CHECK(ok);
  size_t len = ok && b.len <= cap ? b.len : 0;
  if (len) memcpy(out, b.data, len);
  codec_buf_free(&b);
  lua_settop(L, 0);
  return len;
}

/* A partial message whose chunks stopped coming is dropped after a while
 * (its peer still live): its bytes are not held until its next message. */
static void test_reasm_expire(void) {
  reasm r;
  reasm_init(&r, 1000, 1500);
  char *out = NULL;
  size_t len = 0;
  reasm_key a = {5, 1, 10, 11, 12, 30}, b = {6, 1, 10, 11, 13, 30}, dropped;
  const char *why = NULL;
  CHECK(reasm_add(&r, &a, 0, "0123456789", 10, &out, &len, &dropped, &why, 100) == REASM_MORE);
  CHECK(reasm_add(&r, &b, 0, "0123456789", 10, &out, &len, &dropped, &why, 150) == REASM_MORE);
  CHECK(reasm_expire(&r, 150, 50, &dropped) == 0); /* not idle long enough */
  CHECK(reasm_add(&r, &a, 10, "abcdefghij", 10, &out, &len, &dropped, &why, 160) == REASM_MORE);
  CHECK(reasm_expire(&r, 201, 50, &dropped) == 1 && dropped.inc == 6 && dropped.corr == 13);
  CHECK(reasm_expire(&r, 201, 50, &dropped) == 0); /* a's last chunk came at 160 */
  CHECK(r.n == 1 && r.bytes == 20);
  CHECK(reasm_expire(&r, 211, 50, &dropped) == 1 && dropped.inc == 5);
  CHECK(r.n == 0 && r.bytes == 0);
  /* A chunk of an expired message is ignored; its peer's next message starts afresh. */
  CHECK(reasm_add(&r, &a, 20, "ABCDEFGHIJ", 10, &out, &len, &dropped, &why, 300) == REASM_IGNORED);
  CHECK(reasm_add(&r, &a, 0, "0123456789", 10, &out, &len, &dropped, &why, 300) == REASM_MORE);
  reasm_fini(&r);
}

static void test_wirecheck(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  char buf[4096];
  /* What messages usually are passes (the data callback delivers them). */
  const char *plain[] = {
      "return 'hello'", "return 42", "return -7.5", "return {1, 2, 'three', {x = true}}",
      "return {a = {b = {c = {d = 1}}}, list = {1, 2, 3}}", "local t = {} t.self = t return t",
      "local s = {1} return {s, s, {s}}", "return string.rep('x', 70000)", "return {[1.5] = 1, [true] = 2}",
      "local t = {} for i = 1, 100 do t['k' .. i] = i end return t",
  };
  for (size_t i = 0; i < sizeof plain / sizeof *plain; i++) {
    size_t len = encode_chunk(L, plain[i], buf, sizeof buf);
    if (strstr(plain[i], "70000")) {
      static char big[80000];
      len = encode_chunk(L, plain[i], big, sizeof big);
      CHECK(len > 0 && wirecheck_plain(big, len) == WIRECHECK_OK);
      continue;
    }
    CHECK(len > 0);
    CHECK(wirecheck_plain(buf, len) == WIRECHECK_OK);
    CHECK(decodes(L, buf, len, 0));
  }
  CHECK(wirecheck_plain("", 0) == WIRECHECK_OK);
  /* A ref: ext type 1 with 12 bytes. */
  const char ref[] = "\xd8\x01" "\0\0\0\5" "\0\0\0\0\0\0\0\x09" "\0\0";
  CHECK(wirecheck_plain(ref, 14) == WIRECHECK_UNSURE); /* fixext16 is 16 bytes, not 12 */
  const char ref12[] = "\xc7\x0c\x01" "\0\0\0\5" "\0\0\0\0\0\0\0\x09";
  CHECK(wirecheck_plain(ref12, 15) == WIRECHECK_OK && decodes(L, ref12, 15, 0));
  /* Never passed: functions, nil and NaN keys, trailing bytes, truncation,
   * deep nesting, back-references forward, unknown ext types, 0xc1. */
  size_t flen = encode_chunk(L, "return {f = function() return 1 end}", buf, sizeof buf);
  CHECK(flen > 0 && wirecheck_plain(buf, flen) == WIRECHECK_UNSURE);
  flen = encode_chunk(L, "return {print}", buf, sizeof buf);
  CHECK(flen > 0 && wirecheck_plain(buf, flen) == WIRECHECK_UNSURE);
  CHECK(wirecheck_plain("\x81\xc0\x01", 3) == WIRECHECK_UNSURE);
  CHECK(wirecheck_plain("\x81\xcb\x7f\xf8\0\0\0\0\0\0\x01", 11) == WIRECHECK_UNSURE);
  CHECK(wirecheck_plain("\x81\xca\x7f\xc0\0\0\x01", 7) == WIRECHECK_UNSURE);
  CHECK(wirecheck_plain("\x01\x01", 2) == WIRECHECK_UNSURE);
  CHECK(wirecheck_plain("\x92\x01", 2) == WIRECHECK_UNSURE);
  CHECK(wirecheck_plain("\xc1", 1) == WIRECHECK_UNSURE);
  CHECK(wirecheck_plain("\xd6\x03\0\0\0\0", 6) == WIRECHECK_UNSURE); /* back-reference, no table yet */
  CHECK(wirecheck_plain("\x91\xd6\x03\0\0\0\0", 7) == WIRECHECK_OK);
  CHECK(wirecheck_plain("\x91\xd6\x03\0\0\0\1", 7) == WIRECHECK_UNSURE);
  CHECK(wirecheck_plain("\xd4\x07\0", 3) == WIRECHECK_UNSURE);
  CHECK(wirecheck_plain("\xdd\xff\xff\xff\xff", 5) == WIRECHECK_UNSURE);
  memset(buf, 0x91, WIRECHECK_DEPTH + 1);
  buf[WIRECHECK_DEPTH + 1] = 1;
  CHECK(wirecheck_plain(buf, WIRECHECK_DEPTH + 2) == WIRECHECK_UNSURE);
  CHECK(wirecheck_plain(buf + 1, WIRECHECK_DEPTH + 1) == WIRECHECK_OK);
  /* Random and mutated bytes: whatever passes decodes (with functions
   * refused), and it never crashes. */
  const char *seeds[] = {"return {1, 'a', {b = 2.5, c = {true, false}}, -3, 'xyz'}",
                         "local t = {} t[1] = t t.x = {t} return t", "return {n = 1e300, s = string.rep('q', 40)}"};
  srand(11);
  int cleared = 0;
  for (int round = 0; round < 200000; round++) {
    size_t len;
    if (round % 2) {
      len = encode_chunk(L, seeds[round % 3], buf, sizeof buf);
      int flips = 1 + rand() % 4;
      for (int k = 0; k < flips && len; k++) buf[(size_t)rand() % len] = (char)rand();
      if (rand() % 4 == 0 && len) len = (size_t)rand() % len;
    } else {
      len = (size_t)rand() % 24;
      for (size_t k = 0; k < len; k++) buf[k] = (char)(rand() % 3 ? rand() : 0x90 + rand() % 16);
    }
    if (wirecheck_plain(buf, len) == WIRECHECK_OK) {
      cleared++;
      if (!decodes(L, buf, len, 0)) {
        fprintf(stderr, "passed but refused:");
        for (size_t k = 0; k < len; k++) fprintf(stderr, " %02x", (unsigned char)buf[k]);
        fprintf(stderr, "\n");
        CHECK(!"wirecheck passed bytes the decoder refuses");
        break;
      }
    }
  }
  CHECK(cleared > 1000);
  lua_close(L);
}

/* The fence between the data callback's deliveries and a node going down:
 * a thread that removes a peer and quiesces does not get past the quiesce
 * (to send the down events) while a delivery claimed before the removal is
 * still under way. */
typedef struct fence_run {
  inbound *in;
  plat_mutex lock;
  char log[8];  /* 'd': the claimed delivery posted; 'x': the down events */
  size_t len;
  int removed;
} fence_run;

static void fence_log(fence_run *f, char what) {
  plat_mutex_lock(&f->lock);
  if (f->len < sizeof f->log) f->log[f->len++] = what;
  plat_mutex_unlock(&f->lock);
}

static void *fence_down(void *arg) {
  fence_run *f = arg;
  size_t n;
  free(inbound_remove(f->in, 9, &n));
  plat_mutex_lock(&f->lock);
  f->removed = 1;
  plat_mutex_unlock(&f->lock);
  inbound_quiesce(f->in);
  fence_log(f, 'x');
  return NULL;
}

static void test_inbound_fence(void) {
  inbound in;
  inbound_init(&in);
  inbound_set_self(&in, 7);
  CHECK(inbound_add(&in, 9) == 0);
  inbound_quiesce(&in); /* nothing claimed: returns at once */
  CHECK(inbound_claim(&in, 7, 9, 2, 100) == LINK_GAP); /* not a delivery: no claim */
  CHECK(inbound_claim(&in, 7, 8, 1, 100) == INBOUND_STRANGER);
  inbound_quiesce(&in);
  CHECK(inbound_claim(&in, 7, 9, 1, 100) == LINK_DELIVER);
  fence_run f;
  memset(&f, 0, sizeof f);
  f.in = &in;
  plat_mutex_init(&f.lock);
  plat_thread t;
  CHECK(plat_thread_start(&t, fence_down, &f, 0) == 0);
  uint64_t until = plat_now_ns() + plat_seconds_to_ns(10.0);
  for (;;) {
    plat_mutex_lock(&f.lock);
    int removed = f.removed;
    plat_mutex_unlock(&f.lock);
    if (removed || plat_now_ns() > until) break;
    sched_yield();
  }
  CHECK(f.removed);
  CHECK(inbound_claim(&in, 7, 9, 2, 101) == INBOUND_STRANGER); /* gone: no new claim */
  /* Gives a down thread that did not wait the time to log first (a bounded
   * wait: with the fence nothing comes, and the wait ends). */
  until = plat_now_ns() + plat_seconds_to_ns(0.2);
  while (plat_now_ns() < until) {
    plat_mutex_lock(&f.lock);
    size_t len = f.len;
    plat_mutex_unlock(&f.lock);
    if (len) break;
    sched_yield();
  }
  fence_log(&f, 'd');
  inbound_unclaim(&in);
  plat_thread_join(t);
  CHECK(f.len == 2 && f.log[0] == 'd' && f.log[1] == 'x');
  plat_mutex_destroy(&f.lock);
  inbound_fini(&in);
}

/* The data callback lets go of an isolate only when that is not the last
 * reference (the last one is handed to the net thread). */
static void test_release_unless_last(void) {
  ic_isolate *iso = calloc(1, sizeof *iso);
  atomic_store(&iso->refs, 2);
  CHECK(isolate_release_unless_last(iso) == 1);
  CHECK(atomic_load(&iso->refs) == 1);
  CHECK(isolate_release_unless_last(iso) == 0);
  CHECK(atomic_load(&iso->refs) == 1);
  free(iso);
}

int main(void) {
  test_link_window();
  test_link_bytes_bound();
  test_link_accept();
  test_inbound();
  test_inbound_fence();
  test_release_unless_last();
  test_envelope();
  test_replay();
  test_paths();
  test_reasm();
  test_reasm_expire();
  test_wirecheck();
  printf("test_net: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
