/*
 * runtime — the Lua code every isolate runs (lua/isolate_cluster/runtime.lua
 * and runtime_extras.lua, compiled into the library): the pump, handlers,
 * waits, timers, events.
 */
#ifndef IC_RUNTIME_H
#define IC_RUNTIME_H

#include <stddef.h>

#include "mailbox.h"

extern const char ic_runtime_lua[];
extern const size_t ic_runtime_lua_len;
extern const char ic_runtime_extras_lua[];
extern const size_t ic_runtime_extras_lua_len;

/* Compiles a runtime chunk once per cluster into stripped bytecode, so each
 * new isolate loads it without parsing. NULL on failure, *err malloc'ed. */
ic_blob *runtime_compile(const char *src, size_t len, const char *name, char **err);

#endif
