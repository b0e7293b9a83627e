/* The pure parts of the network side: the reliable link's window, acks and
 * duplicate suppression, the envelope's parsing of hostile bytes and its
 * authentication, and the membership's pending requests. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/envelope.h"
#include "net/link.h"
#include "net/membership.h"

static int failures;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                          \
    }                                                                      \
  } while (0)

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
  link l;
  link_init(&l, 4, 100);
  CHECK(link_accept(&l, 1) == LINK_DELIVER);
  CHECK(link_accept(&l, 1) == LINK_DUPLICATE);
  CHECK(link_accept(&l, 3) == LINK_GAP);
  CHECK(link_accept(&l, 2) == LINK_DELIVER);
  CHECK(link_delivered(&l) == 2);
  CHECK(l.ack_due);
  link_fini(&l);
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
  unsigned char hb[ENVELOPE_HEADER + 4 + ENVELOPE_SUM] = {0};
  size_t hlen = ENVELOPE_HEADER + 4;
  envelope_put_header(hb, ENV_HEARTBEAT, 1, 0);
  hb[12] = 3;
  memcpy(hb + 13, "a b", 3);
  envelope_seal(hb, hlen, &none);
  CHECK(envelope_parse(hb, sizeof hb, &none, &e) != NULL);
  memcpy(hb + 13, "abc", 3);
  envelope_seal(hb, hlen, &none);
  CHECK(envelope_parse(hb, sizeof hb, &none, &e) == NULL);
  CHECK(e.name_len == 3 && memcmp(e.name, "abc", 3) == 0);
  hb[12] = 4;
  envelope_seal(hb, hlen, &none);
  CHECK(envelope_parse(hb, sizeof hb, &none, &e) != NULL);
  /* Random bytes never crash and never pass. */
  srand(7);
  unsigned char junk[64];
  int passed = 0;
  for (int i = 0; i < 100000; i++) {
    size_t n = (size_t)rand() % sizeof junk;
    for (size_t k = 0; k < n; k++) junk[k] = (unsigned char)rand();
    if (n > 2 && rand() % 2) {
      junk[0] = 'i';
      junk[1] = 'c';
      junk[2] = ENVELOPE_VERSION;
    }
    if (!envelope_parse(junk, n, (i & 1) ? &key : &none, &e)) passed++;
  }
  CHECK(passed == 0);
}

static void test_pending(void) {
  member m;
  memset(&m, 0, sizeof m);
  for (uint64_t i = 1; i <= 40; i++) membership_add_pending(&m, 1, i);
  membership_answered(&m, 1, 1);
  membership_answered(&m, 1, 20);
  membership_answered(&m, 2, 3); /* not ours */
  size_t n;
  pending_req *p = membership_take_pending(&m, &n);
  CHECK(n == 38);
  CHECK(p[0].corr == 2 && p[17].corr == 19 && p[18].corr == 21);
  free(p);
  CHECK(m.pending == NULL && m.pending_count == 0);
}

int main(void) {
  test_link_window();
  test_link_bytes_bound();
  test_link_accept();
  test_envelope();
  test_pending();
  if (failures) {
    fprintf(stderr, "test_net: %d failures\n", failures);
    return 1;
  }
  printf("test_net: ok\n");
  return 0;
}
