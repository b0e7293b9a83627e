/* A real nats-server for the C tests of multi-node clusters: started on a
 * free loopback port, stopped by its pid. nats_test_start returns 0 with
 * the server running, 77 (ctest's "skipped") when nats-server is not
 * installed or under ThreadSanitizer without IC_TSAN_NATS (see .ci/run),
 * or 1 when it cannot start. Header-only: each test is one program. */
#ifndef IC_TEST_NATS_SERVER_H
#define IC_TEST_NATS_SERVER_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_THREAD__)
#define TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_TSAN 1
#endif
#endif

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

static int accepts(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
  if (fd >= 0) close(fd);
  return ok;
}

static void pause_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Starts nats-server on port; its pid, or -1 (77 for "not installed"). */
static pid_t start_server(int port) {
  char p[16];
  snprintf(p, sizeof p, "%d", port);
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) {
      dup2(null, 1);
      dup2(null, 2);
    }
    execlp("nats-server", "nats-server", "-a", "127.0.0.1", "-p", p, (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 200 && pid > 0; i++) {
    if (accepts(port)) return pid;
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) && WEXITSTATUS(st) == 127 ? -77 : -1;
    pause_ms(50);
  }
  if (pid > 0) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
  }
  return -1;
}

static void stop_server(pid_t pid) {
  kill(pid, SIGTERM);
  for (int i = 0; i < 100; i++) {
    if (waitpid(pid, NULL, WNOHANG) == pid) return;
    pause_ms(50);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

/* Starts the server for test `name`; *pid and url (nats://127.0.0.1:PORT)
 * are set on 0. */
static int nats_test_start(const char *name, pid_t *pid, char *url, size_t urllen) {
#ifdef TEST_TSAN
  if (!getenv("IC_TSAN_NATS")) {
    printf("%s: skipped under ThreadSanitizer without IC_TSAN_NATS (see .ci/run)\n", name);
    return 77;
  }
#endif
  int port = free_port();
  pid_t srv = port > 0 ? start_server(port) : -1;
  if (srv == -77) {
    printf("%s: skipped: nats-server is not installed\n", name);
    return 77;
  }
  if (srv < 0) {
    fprintf(stderr, "%s: cannot start nats-server\n", name);
    return 1;
  }
  *pid = srv;
  snprintf(url, urllen, "nats://127.0.0.1:%d", port);
  return 0;
}

#endif
