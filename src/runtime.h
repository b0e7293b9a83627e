/*
 * runtime — the Lua part of the isolate runtime
 * (lua/isolate_cluster/runtime_extras.lua, compiled into the library):
 * waits, timers, events, the rest of the context, loaded by an isolate on
 * first use; the pump and the fast path are C (src/lpump.c).
 */
#ifndef IC_RUNTIME_H
#define IC_RUNTIME_H

#include <stddef.h>

#include "mailbox.h"

extern const char ic_runtime_extras_lua[];
extern const size_t ic_runtime_extras_lua_len;

/* Compiles a runtime chunk once per cluster into stripped bytecode, so each
 * new isolate loads it without parsing. NULL on failure, *err malloc'ed. */
ic_blob *runtime_compile(const char *src, size_t len, const char *name, char **err);

#endif
