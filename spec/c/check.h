/* The C tests' check: counts, and reports a failed condition with its line.
 * Each test prints "N passed, M failed" and exits non-zero on a failure. */
#ifndef IC_TEST_CHECK_H
#define IC_TEST_CHECK_H

#include <stdio.h>

static int passed, failed;

#define CHECK(cond)                                                                \
  do {                                                                             \
    if (cond) {                                                                    \
      passed++;                                                                    \
    } else {                                                                       \
      failed++;                                                                    \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);     \
    }                                                                              \
  } while (0)

#endif
