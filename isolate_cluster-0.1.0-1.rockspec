-- LuaRocks package: `luarocks --lua-version=5.4 make` in a checkout builds the
-- module with CMake (the same CMakeLists.txt as a plain build) and installs
-- the Lua module and the isolate-cluster host into the rocks tree. The C
-- library, its header and the CMake/pkg-config files are for C programs and
-- come with `cmake --install` (README), not with the rock.
rockspec_format = "3.0"
package = "isolate_cluster"
version = "0.1.0-1"
source = {
  url = "git+file:///dev/null", -- built from a checkout: luarocks make
}
description = {
  summary = "A cluster of Lua 5.4 isolates that talk by copied MessagePack messages",
  detailed = [[
Each isolate is its own lua_State with its own globals and mailbox, run M:N on a
pool of worker threads; isolates share nothing but copied messages. Isolates are
written in plain Lua (context:on_message, ref:send, ref:request) and tested with
busted. Multi-node clusters meet through a NATS server.]],
  license = "MIT",
  labels = { "concurrency", "actors", "messaging", "msgpack" },
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
-- libnats (cnats) and libcrypto: the NATS transport of multi-node clusters
-- (CMake finds them with pkg-config; listed so that luarocks says what is
-- missing before the build does).
external_dependencies = {
  MSGPUCK = { header = "msgpuck.h" },
  NATS = { header = "nats/nats.h" },
  CRYPTO = { header = "openssl/hmac.h" },
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    BUILD_TESTING = "OFF",
    IC_INSTALL_LMOD = "$(LUADIR)",
    IC_INSTALL_CMOD = "$(LIBDIR)",
    IC_INSTALL_C_LIBRARY = "OFF",
  },
}
