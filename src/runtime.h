/*
 * runtime — the Lua code every isolate runs (lua/isolate_cluster/runtime.lua,
 * compiled into the library): handlers, waits, timers, events.
 */
#ifndef IC_RUNTIME_H
#define IC_RUNTIME_H

#include <stddef.h>

#include "mailbox.h"

extern const char ic_runtime_lua[];
extern const size_t ic_runtime_lua_len;

/* Compiles the runtime once per cluster into bytecode, so each new isolate
 * loads it without parsing. NULL on failure, *err malloc'ed. */
ic_blob *runtime_compile(char **err);

#endif
