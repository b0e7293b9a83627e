#!/usr/bin/env bash
# Set up a Debian 12 machine for isolate_cluster and build it, run as root
# from anywhere (the script finds the repository root itself).
#
#   bash scripts/bootstrap.sh quickstart
#       Installs the Debian packages that are missing, builds into build/
#       (RelWithDebInfo) and runs examples/quickstart.lua from the build tree.
#
#   bash scripts/bootstrap.sh bench
#       The same packages plus erlang-base (the Erlang peer of the benchmark),
#       a Release build into build-rel/, then bench/bench.lua with its C
#       baseline and --peers (every figure beside Erlang/OTP's, measured in
#       the same run). Not part of the test mode: the tests never need Erlang.
#
#   bash scripts/bootstrap.sh test
#       The same packages plus the test tools, then every test in three builds:
#         build/        -DIC_WERROR=ON                  ctest: the C tests, every spec
#                                                       (spec/ and spec/multinode/), the
#                                                       single-process specs again with
#                                                       the GC stressed, the examples
#         build-asan/   -DIC_SANITIZE=address,undefined the same ctest suite
#         build-tsan/   -DIC_SANITIZE=thread            the C tests, the single-process
#                                                       specs, the multi-node specs where
#                                                       threads meet most (see .ci/run),
#                                                       the examples
#         build/ again  valgrind memcheck               four C tests and three busted
#                                                       specs, no leaks, no errors
#       A failing step does not stop the others; a summary comes at the end,
#       then a line "N passed, M failed" (ctest tests over all three builds
#       plus the valgrind runs),
#       and the exit status is non-zero if anything failed.
#
# Environment knobs (all optional):
#   IC_JOBS=n              parallel compile jobs (default: nproc)
#   IC_CTEST_JOBS=n        parallel tests within one build (default: 4 on
#                          2 cores: the spec entries mostly wait, and those
#                          that compute most hold a ctest RESOURCE_LOCK: see
#                          the test section of CMakeLists.txt)
#   IC_VALGRIND_JOBS=n     valgrind runs at a time (default: nproc; each
#                          only computes)
#   IC_SAN_BUILD_TYPE=t    CMAKE_BUILD_TYPE of the sanitizer builds
#                          (default RelWithDebInfo: -O2 -g, fast enough for 2 cores)
#   IC_SKIP_APT=1          never call apt-get (only report what is missing)
#
# How the sanitized Lua tests work: /usr/bin/lua5.4 is not instrumented, so
# the sanitizer runtime has to be loaded before core.so is dlopen()ed. The
# CMake test section sets LD_PRELOAD (from `cc -print-file-name=libasan.so`
# etc.) and ASAN/UBSAN/TSAN_OPTIONS in each test's environment, so a plain
# `ctest` in build-asan/ or build-tsan/ does the right thing on its own.
set -uo pipefail

usage() {
  echo "usage: bash scripts/bootstrap.sh quickstart|bench|test" >&2
  exit 2
}
[ $# -eq 1 ] || usage
MODE=$1
case "$MODE" in quickstart | bench | test) ;; *) usage ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
[ -f CMakeLists.txt ] || { echo "bootstrap: $ROOT has no CMakeLists.txt" >&2; exit 1; }

JOBS=${IC_JOBS:-$(nproc 2>/dev/null || echo 2)}
CTEST_JOBS=${IC_CTEST_JOBS:-4}
VALGRIND_JOBS=${IC_VALGRIND_JOBS:-$(nproc 2>/dev/null || echo 2)}
SAN_BUILD_TYPE=${IC_SAN_BUILD_TYPE:-RelWithDebInfo}
export DEBIAN_FRONTEND=noninteractive

if [ -t 1 ]; then
  say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
  say() { printf '\n==> %s\n' "$*"; }
fi
now() { date +%s; }

# ---- packages ---------------------------------------------------------------

# libnats-dev (cnats) and libssl-dev (libcrypto, for the node envelope's
# HMAC) build the NATS transport of multi-node clusters.
BASE_PKGS=(cmake gcc libc6-dev make pkg-config liblua5.4-dev lua5.4 lua-busted libmsgpuck-dev libnats-dev libssl-dev)
# gcc-12's sanitizer runtimes (libgcc-12-dev depends on them; listed so that a
# trimmed system gets them back) and the tools some tests call.
# nats-server: the multi-node specs start real servers on loopback ports;
# openssl: the TLS spec makes a throwaway certificate authority; lua-luv: the
# event-loop example.
# erlang-base: the bench mode's peer (erl, erlc; Erlang/OTP 25 on Debian 12).
BENCH_PKGS=(erlang-base)
TEST_PKGS=(libasan8 libubsan1 libtsan2 python3 python3-msgpack valgrind luarocks lua-luv nats-server openssl)

is_installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

install_packages() {
  local missing=() p
  for p in "$@"; do
    is_installed "$p" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "bootstrap: all ${#} Debian packages are installed"
    return 0
  fi
  say "installing ${missing[*]}"
  if [ "${IC_SKIP_APT:-0}" = 1 ]; then
    echo "bootstrap: IC_SKIP_APT=1 and these packages are missing: ${missing[*]}" >&2
    return 1
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo -n env DEBIAN_FRONTEND=noninteractive)
    else
      echo "bootstrap: not root and no sudo; install these first: ${missing[*]}" >&2
      return 1
    fi
  fi
  "${sudo[@]}" apt-get update -q &&
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ---- building -----------------------------------------------------------------

# configure_and_build DIR [cmake args...]
configure_and_build() {
  local dir=$1
  shift
  cmake -S "$ROOT" -B "$ROOT/$dir" "$@" &&
    cmake --build "$ROOT/$dir" --parallel "$JOBS"
}

lua_env() { # the build tree looks like an installed tree (SPEC §8 layout)
  local b="$ROOT/$1"
  export LUA_PATH="$b/share/lua/5.4/?.lua;$b/share/lua/5.4/?/init.lua;;"
  export LUA_CPATH="$b/lib/lua/5.4/?.so;;"
}

if [ "$MODE" = quickstart ]; then
  install_packages "${BASE_PKGS[@]}" || exit 1
  say "building into build/"
  configure_and_build build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIC_WERROR=OFF -DIC_SANITIZE= || {
    echo "bootstrap: the build failed" >&2
    exit 1
  }
  say "running examples/quickstart.lua"
  lua_env build
  exec lua5.4 examples/quickstart.lua
fi

if [ "$MODE" = bench ]; then
  install_packages "${BASE_PKGS[@]}" "${BENCH_PKGS[@]}" || exit 1
  say "building into build-rel/ (Release)"
  configure_and_build build-rel -DCMAKE_BUILD_TYPE=Release -DIC_WERROR=OFF -DIC_SANITIZE= || {
    echo "bootstrap: the build failed" >&2
    exit 1
  }
  say "running bench/bench.lua --baseline build-rel/bench_baseline --peers"
  lua_env build-rel
  exec lua5.4 bench/bench.lua --baseline build-rel/bench_baseline --peers
fi

# ---- test mode ------------------------------------------------------------------

T_START=$(now)
STEP_NAMES=()
STEP_RESULTS=()
STEP_TIMES=()
TOTAL_PASSED=0
TOTAL_FAILED=0
ANY_FAILED=0

record() { # record NAME RESULT SECONDS
  STEP_NAMES+=("$1")
  STEP_RESULTS+=("$2")
  STEP_TIMES+=("$3")
  case "$2" in ok*) ;; *) ANY_FAILED=1 ;; esac
}

say "checking Debian packages"
t0=$(now)
if install_packages "${BASE_PKGS[@]}" "${TEST_PKGS[@]}"; then
  record packages ok $(($(now) - t0))
else
  record packages FAILED $(($(now) - t0))
  # Nothing can be built without them.
  echo "bootstrap: package installation failed" >&2
fi

PROBE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ic-probe.XXXXXX")
trap 'rm -rf "$PROBE_DIR"' EXIT

# How to run a program built with -fsanitize=$1 on this machine: prints the
# command prefix to use (empty, or `setarch <arch> -R` where the kernel's
# mmap randomization is wider than the sanitizer's shadow layout allows,
# e.g. vm.mmap_rnd_bits > 28 with gcc 12's TSan). Fails if neither works.
SAN_PREFIX=()
probe_sanitizer() {
  local san=$1 out
  printf 'int main(void) { return 0; }\n' >"$PROBE_DIR/probe.c"
  if ! gcc -fsanitize="$san" -o "$PROBE_DIR/probe-$san" "$PROBE_DIR/probe.c" 2>"$PROBE_DIR/cc.err"; then
    echo "bootstrap: gcc cannot build with -fsanitize=$san:" >&2
    cat "$PROBE_DIR/cc.err" >&2
    return 1
  fi
  SAN_PREFIX=()
  if out=$("$PROBE_DIR/probe-$san" 2>&1); then
    return 0
  fi
  echo "bootstrap: -fsanitize=$san programs fail here: $out" >&2
  local arch
  arch=$(uname -m)
  if command -v setarch >/dev/null 2>&1 && setarch "$arch" -R "$PROBE_DIR/probe-$san" >/dev/null 2>&1; then
    echo "bootstrap: running the $san tests with address randomization off (setarch $arch -R)" >&2
    SAN_PREFIX=(setarch "$arch" -R)
    return 0
  fi
  return 1
}

# Whether LeakSanitizer can run here (it cannot under ptrace, e.g. inside
# strace/gdb or some sandboxes). A leak it finds is a failure; LSan itself
# not working is a property of the machine, and only then are leaks not checked.
lsan_works() {
  cat >"$PROBE_DIR/leak.c" <<'EOF'
#include <stdlib.h>
void *volatile sink;
int main(void) { sink = malloc(33); sink = 0; return 0; }
EOF
  gcc -fsanitize=address -g -o "$PROBE_DIR/leak" "$PROBE_DIR/leak.c" 2>/dev/null || return 1
  local out
  out=$(ASAN_OPTIONS=detect_leaks=1 "${SAN_PREFIX[@]}" "$PROBE_DIR/leak" 2>&1)
  case "$out" in *"detected memory leaks"*) return 0 ;; esac
  echo "bootstrap: LeakSanitizer does not work on this machine: $out" >&2
  return 1
}

# run_suite NAME DIR [cmake args...]: configure, build, ctest; adds the ctest
# counts to the totals. A failed configure or build counts every registered
# test (at least one) as failed, so the total never looks better than it is.
run_suite() {
  local name=$1 dir=$2
  shift 2
  local t0 t1 log="$ROOT/$dir/ctest.log" tests=0
  say "$name: configure + build in $dir/"
  t0=$(now)
  if ! configure_and_build "$dir" "$@"; then
    t1=$(now)
    if [ -f "$ROOT/$dir/CTestTestfile.cmake" ]; then
      tests=$(cd "$ROOT/$dir" && ctest -N 2>/dev/null | sed -n 's/^Total Tests: \([0-9]*\)$/\1/p')
    fi
    [ "${tests:-0}" -gt 0 ] || tests=1
    TOTAL_FAILED=$((TOTAL_FAILED + tests))
    record "$name" "FAILED (build; $tests tests not run)" $((t1 - t0))
    return
  fi
  local tb
  tb=$(now)
  say "$name: ctest in $dir/ (build took $((tb - t0))s)"
  (cd "$ROOT/$dir" && "${SAN_PREFIX[@]}" ctest --output-on-failure --no-tests=error \
    --parallel "$CTEST_JOBS") 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  t1=$(now)
  local line failed total
  line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1)
  if [ -n "$line" ]; then
    failed=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
    total=$(sed -E 's/.* failed out of ([0-9]+).*/\1/' <<<"$line")
  else
    failed=1 total=1 # ctest itself failed (no tests found, crashed...)
  fi
  TOTAL_PASSED=$((TOTAL_PASSED + total - failed))
  TOTAL_FAILED=$((TOTAL_FAILED + failed))
  local failing
  failing=$(sed -n '/^The following tests FAILED:/,$ s/^[[:space:]]*[0-9]* - \(.*\) (\(.*\))$/\1 (\2)/p' "$log" |
    paste -sd ',' - | sed 's/,/, /g')
  if [ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]; then
    record "$name" "ok ($total tests, build $((tb - t0))s, ctest $((t1 - tb))s)" $((t1 - t0))
  else
    record "$name" "FAILED ($failed of $total tests: ${failing:-ctest exit $rc}; build $((tb - t0))s, ctest $((t1 - tb))s)" $((t1 - t0))
  fi
}

# (a) the normal build, warnings as errors
SAN_PREFIX=()
run_suite "normal (-Werror)" build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIC_WERROR=ON -DIC_SANITIZE=

# (b) AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer)
asan_args=(-DCMAKE_BUILD_TYPE="$SAN_BUILD_TYPE" -DIC_WERROR=OFF "-DIC_SANITIZE=address,undefined")
if probe_sanitizer address; then
  if ! lsan_works; then
    asan_args+=(-DIC_ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=1)
  else
    asan_args+=(-UIC_ASAN_OPTIONS) # back to the CMake default (detect_leaks=1)
  fi
  run_suite "asan+ubsan" build-asan "${asan_args[@]}"
else
  TOTAL_FAILED=$((TOTAL_FAILED + 1))
  record "asan+ubsan" "FAILED (AddressSanitizer does not work on this machine)" 0
fi

# (c) ThreadSanitizer
if probe_sanitizer thread; then
  run_suite "tsan" build-tsan -DCMAKE_BUILD_TYPE="$SAN_BUILD_TYPE" -DIC_WERROR=OFF -DIC_SANITIZE=thread
else
  TOTAL_FAILED=$((TOTAL_FAILED + 1))
  record "tsan" "FAILED (ThreadSanitizer does not work on this machine)" 0
fi
SAN_PREFIX=()

# (d) valgrind memcheck over a representative subset, on the normal build:
# the C tests and the message/value/cluster specs. Zero definite or indirect
# leaks and zero errors, or the step fails. (The ASan build runs
# everything; this catches what needs no instrumentation to see, in the
# binaries as they ship.) IC_TEST_QUICK trims the rounds that only repeat:
# test_codec's random inputs and prefix cuts, test_alloc_fail's points.
run_valgrind() {
  local t0 failed=0 total=0 log name
  t0=$(now)
  say "valgrind memcheck on build/"
  if ! command -v valgrind >/dev/null 2>&1 || [ ! -x "$ROOT/build/test_api" ]; then
    TOTAL_FAILED=$((TOTAL_FAILED + 1))
    record valgrind "FAILED (no valgrind, or build/ was not built)" 0
    return
  fi
  local vg=(valgrind -q --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect)
  local b="$ROOT/build"
  local lpath="$b/share/lua/5.4/?.lua;$b/share/lua/5.4/?/init.lua;$ROOT/spec/?.lua;;"
  local cpath="$b/lib/lua/5.4/?.so;;"
  # The longest first; VALGRIND_JOBS of them at a time (each is one process
  # doing little but computing, valgrind runs its threads one at a time).
  local runs=("c:test_alloc_fail" "c:test_codec" "lua:values_spec" "lua:messaging_spec"
    "lua:cluster_spec" "c:test_api" "c:test_pool")
  vg_one() { # vg_one KIND NAME LOG: one run, its exit status and seconds in LOG.rc
    local kind=$1 name=$2 log=$3 s rc
    s=$(now)
    if [ "$kind" = c ]; then
      (cd "$ROOT" && IC_TEST_QUICK=1 "${vg[@]}" "$b/$name") >"$log" 2>&1
      rc=$?
    else
      (cd "$ROOT" && LUA_PATH="$lpath" LUA_CPATH="$cpath" IC_TEST_QUICK=1 \
        "${vg[@]}" lua5.4 "$(command -v busted)" -o utfTerminal "spec/$name.lua") >"$log" 2>&1
      rc=$?
    fi
    echo "$rc $(($(now) - s))" >"$log.rc"
  }
  local r running=0
  for r in "${runs[@]}"; do
    name=${r#*:}
    rm -f "$b/valgrind-$name.log.rc"
    if [ "$running" -ge "$VALGRIND_JOBS" ]; then
      wait -n
      running=$((running - 1))
    fi
    vg_one "${r%%:*}" "$name" "$b/valgrind-$name.log" &
    running=$((running + 1))
  done
  wait
  for r in "${runs[@]}"; do
    name=${r#*:}
    log="$b/valgrind-$name.log"
    total=$((total + 1))
    local rc=1 secs=0
    [ -f "$log.rc" ] && read -r rc secs <"$log.rc"
    if [ "$rc" -eq 0 ]; then
      echo "valgrind: $name ok (${secs}s)"
    else
      failed=$((failed + 1))
      echo "valgrind: $name FAILED (exit $rc, ${secs}s); the end of $log:"
      tail -n 40 "$log"
    fi
  done
  TOTAL_PASSED=$((TOTAL_PASSED + total - failed))
  TOTAL_FAILED=$((TOTAL_FAILED + failed))
  if [ "$failed" -eq 0 ]; then
    record valgrind "ok ($total runs)" $(($(now) - t0))
  else
    record valgrind "FAILED ($failed of $total runs)" $(($(now) - t0))
  fi
}
run_valgrind

# ---- summary --------------------------------------------------------------------

say "summary ($(($(now) - T_START))s in all)"
for i in "${!STEP_NAMES[@]}"; do
  printf '  %-18s %5ss  %s\n' "${STEP_NAMES[$i]}" "${STEP_TIMES[$i]}" "${STEP_RESULTS[$i]}"
done
[ "$ANY_FAILED" -eq 0 ] && echo "  all steps passed" || echo "  SOME STEPS FAILED (see above)"
echo "$TOTAL_PASSED passed, $TOTAL_FAILED failed"
[ "$ANY_FAILED" -eq 0 ] && [ "$TOTAL_FAILED" -eq 0 ]
