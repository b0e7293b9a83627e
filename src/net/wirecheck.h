/*
 * wirecheck — a quick check, in C and without a lua_State, that a payload
 * from another node decodes in an isolate: that the hardened decoder
 * (src/codec.c, default limits, functions refused) would accept it. For the
 * data subscription's callback (src/net/net.c), which delivers without the
 * net thread's full check (a decode in a Lua state) whatever this passes.
 *
 * It is conservative: it answers WIRECHECK_OK only for payloads it can
 * prove well formed (complete, no trailing bytes, nested at most
 * WIRECHECK_DEPTH deep, no nil or NaN map key, and of the extension types
 * only refs and back-references to a table already begun), and
 * WIRECHECK_UNSURE for everything else: functions, globals, deeper nesting,
 * unknown extension types, malformed bytes. An unsure payload goes to the
 * full check on the net thread, which decides (and refuses what it must).
 * So a payload this passes never makes an isolate's decoder fail, and one it
 * does not pass is never lost to it either.
 *
 * Pure function: no allocation, no locks, any thread. Recursion is bounded
 * by WIRECHECK_DEPTH.
 */
#ifndef IC_NET_WIRECHECK_H
#define IC_NET_WIRECHECK_H

#include <stddef.h>

/* Well below the decoder's default depth (200), so that the answer does not
 * depend on it. */
#define WIRECHECK_DEPTH 64

enum { WIRECHECK_UNSURE = 0, WIRECHECK_OK = 1 };

int wirecheck_plain(const char *data, size_t len);

#endif
