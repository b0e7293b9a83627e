/* Embeds a cluster, spawns a Lua isolate that answers the program, and checks
 * the answer: the smallest C program against an installed isolate_cluster. */
#include <isolate_cluster.h>
#include <stdio.h>
#include <string.h>

static const char echo[] =
    "return function(context)\n"
    "  context:on_message(function(msg, sender) sender:send(msg .. '!') end)\n"
    "end\n";

int main(void) {
  ic_cluster *c;
  int rc = ic_cluster_create(NULL, &c);
  if (rc != IC_OK) {
    fprintf(stderr, "create: %s\n", ic_strerror(rc));
    return 1;
  }
  ic_ref r;
  rc = ic_spawn_lua(c, echo, sizeof echo - 1, "=echo", NULL, 0, NULL, &r);
  if (rc == IC_OK) rc = ic_send(c, r, "\xa2hi", 3); /* MessagePack "hi" */
  char *data = NULL;
  size_t len = 0;
  if (rc == IC_OK) rc = ic_receive(c, 10.0, &data, &len, NULL);
  int ok = rc == IC_OK && len == 4 && memcmp(data, "\xa3hi!", 4) == 0;
  if (rc != IC_OK) fprintf(stderr, "echo: %s\n", ic_strerror(rc));
  ic_free(data);
  ok = ic_cluster_shutdown(c, 5.0) && ok;
  ic_cluster_destroy(c);
  puts(ok ? "outside: ok" : "outside: FAILED");
  return ok ? 0 : 1;
}
