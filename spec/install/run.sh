#!/usr/bin/env bash
# Installs the build into a temporary prefix and uses it the ways SPEC §8 and
# the README promise: plain lua5.4 with the documented LUA_PATH/LUA_CPATH, the
# host from P/bin, a C program built with find_package(isolate_cluster), one
# built with `cc $(pkg-config --cflags --libs isolate_cluster)`, every C example
# built that way, and the rock
# (luarocks make into a local tree, then require from there).
#
#   bash spec/install/run.sh BUILD_DIR     (ctest runs it as "install")
set -euo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
T=$(mktemp -d "${TMPDIR:-/tmp}/ic-install.XXXXXX")
trap 'rm -rf "$T"' EXIT
step() { printf '== %s\n' "$*"; }
checks=0
pass() { checks=$((checks + 1)); printf 'ok: %s\n' "$*"; }

probe='
local ic = require("isolate_cluster")
local c = ic.single_node({ workers = 1 })
local echo = c:spawn_isolate(function(context)
  context:on_message(function(m) return m * 2 end)
end)
assert(echo:request(21) == 42)
assert(c:shutdown(5))
print("lua: ok")'

step "cmake --install into a prefix"
P=$T/prefix
cmake --install "$BUILD" --prefix "$P" >"$T/install.log"
for f in bin/isolate-cluster include/isolate_cluster.h lib/libisolate_cluster.so lib/libisolate_cluster.a \
  lib/pkgconfig/isolate_cluster.pc lib/cmake/isolate_cluster/isolate_clusterConfig.cmake \
  lib/lua/5.4/isolate_cluster/core.so share/lua/5.4/isolate_cluster/init.lua; do
  [ -e "$P/$f" ] || { echo "missing after install: $f" >&2; exit 1; }
done
pass "the SPEC §8 layout"

out=$(env LUA_PATH="$P/share/lua/5.4/?.lua;$P/share/lua/5.4/?/init.lua;;" LUA_CPATH="$P/lib/lua/5.4/?.so;;" \
  lua5.4 -e "$probe")
[ "$out" = "lua: ok" ] || { echo "lua5.4 against the prefix: $out" >&2; exit 1; }
pass "lua5.4 requires the installed module"

printf 'local r = cluster:spawn_isolate(function(ctx) ctx:on_message(function(m) return m + 1 end) end)\nprint("host:", r:request(1))\ncluster:shutdown(5)\n' >"$T/host.lua"
out=$(env -u LUA_PATH -u LUA_CPATH "$P/bin/isolate-cluster" "$T/host.lua")
[ "$out" = "host:	2" ] || { echo "installed host: $out" >&2; exit 1; }
pass "the installed host runs a script without LUA_PATH"

step "a C program with find_package(isolate_cluster)"
cmake -S "$SRC/spec/install/outside" -B "$T/outside" -DCMAKE_PREFIX_PATH="$P" >"$T/outside.log"
cmake --build "$T/outside" >>"$T/outside.log"
"$T/outside/ic_outside"
pass "find_package build runs"
"$T/outside/ic_outside_static"
pass "find_package build against the static library runs"

step "a C program with pkg-config"
cflags=$(PKG_CONFIG_PATH="$P/lib/pkgconfig" pkg-config --cflags --libs isolate_cluster)
# shellcheck disable=SC2086 # the flags are words
cc -o "$T/pc_outside" "$SRC/spec/install/outside/main.c" $cflags
LD_LIBRARY_PATH="$P/lib" "$T/pc_outside"
pass "pkg-config build runs"

step "every C example, built with pkg-config against the prefix"
for ex in "$SRC"/examples/*.c; do
  name=$(basename "$ex" .c)
  # shellcheck disable=SC2086 # the flags are words
  cc -o "$T/$name" "$ex" $cflags
  (cd "$SRC" && LD_LIBRARY_PATH="$P/lib" "$T/$name") >"$T/$name.log" 2>&1 ||
    { cat "$T/$name.log" >&2; echo "example $name failed against the prefix" >&2; exit 1; }
  pass "example $name"
done

step "a static C program with pkg-config --static"
# The archive itself in place of -lisolate_cluster (which would pick the
# shared library); every other flag, libnats and libcrypto among them, from
# the .pc file's private requirements.
slibs=$(PKG_CONFIG_PATH="$P/lib/pkgconfig" pkg-config --static --cflags --libs isolate_cluster)
# shellcheck disable=SC2086 # the flags are words
cc -o "$T/pc_static" "$SRC/spec/install/outside/main.c" ${slibs/-lisolate_cluster/$P/lib/libisolate_cluster.a}
if ldd "$T/pc_static" | grep -q libisolate_cluster; then
  echo "the static build links the shared library" >&2
  exit 1
fi
"$T/pc_static"
pass "pkg-config --static build runs"

step "luarocks make into a local tree"
if ! command -v luarocks >/dev/null; then
  echo "luarocks is not installed (apt-get install luarocks)" >&2
  exit 1
fi
# Build from a copy: luarocks builds in the source directory (build.luarocks/).
mkdir "$T/src"
tar -C "$SRC" --exclude='./build*' --exclude=./.git -cf - . | tar -C "$T/src" -xf -
(cd "$T/src" && luarocks --lua-version=5.4 make --tree "$T/tree" isolate_cluster-*.rockspec) >"$T/rock.log" 2>&1 ||
  { cat "$T/rock.log" >&2; exit 1; }
out=$(eval "$(luarocks --lua-version=5.4 path --tree "$T/tree")" && cd / && lua5.4 -e "$probe")
[ "$out" = "lua: ok" ] || { echo "lua5.4 against the rocks tree: $out" >&2; exit 1; }
pass "lua5.4 requires the module from the rocks tree"
[ -x "$T/tree/bin/isolate-cluster" ] || { echo "the rock did not install bin/isolate-cluster" >&2; exit 1; }
pass "the rock installs the host"

echo "$checks passed, 0 failed"
