#include "wirecheck.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "codec.h"

typedef struct walk {
  const unsigned char *p, *end;
  int depth;
  uint64_t tables; /* tables begun so far, in pre-order: back-references name them */
} walk;

static uint64_t load_be(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = v << 8 | p[i];
  return v;
}

/* Skips n bytes; 0 when fewer are left. */
static int skip(walk *w, uint64_t n) {
  if ((uint64_t)(w->end - w->p) < n) return 0;
  w->p += n;
  return 1;
}

/* Reads an n-byte big-endian length after the marker byte already passed. */
static int length(walk *w, int n, uint64_t *out) {
  if (w->end - w->p < n) return 0;
  *out = load_be(w->p, n);
  w->p += n;
  return 1;
}

static int value(walk *w);

/* An ext item whose length has been read: only a ref (12 bytes) or a
 * back-reference (4 bytes, to a table already begun) is sure. */
static int ext(walk *w, uint64_t len) {
  if (w->p >= w->end) return 0;
  int type = (int8_t)*w->p++;
  if ((uint64_t)(w->end - w->p) < len) return 0;
  const unsigned char *data = w->p;
  w->p += len;
  if (type == CODEC_EXT_REF) return len == 12;
  if (type == CODEC_EXT_BACKREF) return len == 4 && load_be(data, 4) < w->tables;
  return 0;
}

/* Is the item at w->p a function ext (the first element of a function
 * array)? The decoder reads such an array as a function. */
static int at_function(const walk *w) {
  size_t hdr;
  if (w->p >= w->end) return 0;
  switch (*w->p) {
  case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: hdr = 1; break;
  case 0xc7: hdr = 2; break;
  case 0xc8: hdr = 3; break;
  case 0xc9: hdr = 5; break;
  default: return 0;
  }
  return (size_t)(w->end - w->p) > hdr && w->p[hdr] == CODEC_EXT_FUNC;
}

static int array(walk *w, uint64_t n) {
  if (++w->depth > WIRECHECK_DEPTH) return 0;
  if (n > 0 && at_function(w)) return 0;
  w->tables++;
  for (uint64_t i = 0; i < n; i++)
    if (!value(w)) return 0;
  w->depth--;
  return 1;
}

/* A map key: not nil, and not a NaN (Lua tables hold neither). */
static int key(walk *w) {
  if (w->p >= w->end) return 0;
  unsigned char c = *w->p;
  if (c == 0xc0) return 0;
  if (c == 0xca && w->end - w->p >= 5) {
    uint32_t bits = (uint32_t)load_be(w->p + 1, 4);
    float f;
    memcpy(&f, &bits, sizeof f);
    if (isnan(f)) return 0;
  } else if (c == 0xcb && w->end - w->p >= 9) {
    uint64_t bits = load_be(w->p + 1, 8);
    double d;
    memcpy(&d, &bits, sizeof d);
    if (isnan(d)) return 0;
  }
  return value(w);
}

static int map(walk *w, uint64_t n) {
  if (++w->depth > WIRECHECK_DEPTH) return 0;
  w->tables++;
  for (uint64_t i = 0; i < n; i++)
    if (!key(w) || !value(w)) return 0;
  w->depth--;
  return 1;
}

static int value(walk *w) {
  if (w->p >= w->end) return 0;
  unsigned char c = *w->p++;
  uint64_t n;
  if (c <= 0x7f || c >= 0xe0) return 1;           /* fixint, both signs */
  if (c <= 0x8f) return map(w, c & 0x0f);
  if (c <= 0x9f) return array(w, c & 0x0f);
  if (c <= 0xbf) return skip(w, c & 0x1f);         /* fixstr */
  switch (c) {
  case 0xc0: case 0xc2: case 0xc3: return 1;       /* nil, false, true */
  case 0xc4: return length(w, 1, &n) && skip(w, n); /* bin 8/16/32 */
  case 0xc5: return length(w, 2, &n) && skip(w, n);
  case 0xc6: return length(w, 4, &n) && skip(w, n);
  case 0xc7: return length(w, 1, &n) && ext(w, n); /* ext 8/16/32 */
  case 0xc8: return length(w, 2, &n) && ext(w, n);
  case 0xc9: return length(w, 4, &n) && ext(w, n);
  case 0xca: return skip(w, 4);                    /* float 32/64 */
  case 0xcb: return skip(w, 8);
  case 0xcc: case 0xd0: return skip(w, 1);         /* (u)int 8/16/32/64 */
  case 0xcd: case 0xd1: return skip(w, 2);
  case 0xce: case 0xd2: return skip(w, 4);
  case 0xcf: case 0xd3: return skip(w, 8);
  case 0xd4: return ext(w, 1);                     /* fixext 1/2/4/8/16 */
  case 0xd5: return ext(w, 2);
  case 0xd6: return ext(w, 4);
  case 0xd7: return ext(w, 8);
  case 0xd8: return ext(w, 16);
  case 0xd9: return length(w, 1, &n) && skip(w, n); /* str 8/16/32 */
  case 0xda: return length(w, 2, &n) && skip(w, n);
  case 0xdb: return length(w, 4, &n) && skip(w, n);
  case 0xdc: return length(w, 2, &n) && array(w, n);
  case 0xdd: return length(w, 4, &n) && array(w, n);
  case 0xde: return length(w, 2, &n) && map(w, n);
  case 0xdf: return length(w, 4, &n) && map(w, n);
  default: return 0;                               /* 0xc1: never used */
  }
}

int wirecheck_plain(const char *data, size_t len) {
  if (len == 0) return WIRECHECK_OK; /* delivered as nil */
  codec_limits lim;
  codec_limits_default(&lim);
  if (len > lim.max_bytes) return WIRECHECK_UNSURE;
  walk w = {(const unsigned char *)data, (const unsigned char *)data + len, 0, 0};
  return value(&w) && w.p == w.end ? WIRECHECK_OK : WIRECHECK_UNSURE;
}
