/*
 * tsan_shim — preloaded (after libtsan) into every process of a ThreadSanitizer
 * test run (-DIC_SANITIZE=thread); see the tests section of CMakeLists.txt.
 * Test infrastructure only: never linked into the library.
 *
 * It fixes two ways gcc 12's TSan runtime (libtsan.so.2) breaks when the host
 * program is not instrumented, as with /usr/bin/lua5.4 and the shells that
 * io.popen/os.execute start:
 *
 * 1. Lua errors. Debian's liblua5.4 is built with _FORTIFY_SOURCE, so
 *    lua_error() leaves through __longjmp_chk(), which libtsan does not
 *    intercept (it does intercept longjmp and siglongjmp). TSan then never
 *    learns that the instrumented C frames between the setjmp and the
 *    longjmp are gone: its shadow stack grows by those frames on every Lua
 *    error raised through our code, stack traces in reports go wrong, and
 *    after enough errors (the codec tests raise hundreds of thousands) it
 *    dies with "CHECK failed: sanitizer_stackdepot.cpp:83". Defining
 *    __longjmp_chk here (preloaded, so it comes before libc) and jumping
 *    with siglongjmp (which libtsan intercepts, and which restores the
 *    same registers) keeps the shadow stack in step. The only thing lost is
 *    glibc's "longjmp into a deeper frame" check, which Lua never trips.
 *
 * 2. Shells. Preloaded into dash or bash, libtsan initializes lazily, on its
 *    first intercepted call; those shells call setjmp() before anything
 *    else, and libtsan's setjmp trampoline then jumps through a pointer
 *    that is not set yet (SIGSEGV at address 0). Calling __tsan_init() from
 *    a constructor initializes it before main().
 *
 * This file is built without instrumentation (see CMakeLists.txt).
 */
#include <setjmp.h>

void __tsan_init(void);

__attribute__((visibility("default"), noreturn)) void __longjmp_chk(sigjmp_buf env, int val);

__attribute__((constructor)) static void tsan_shim_init(void)
{
  __tsan_init();
}

void __longjmp_chk(sigjmp_buf env, int val)
{
  siglongjmp(env, val);
}
