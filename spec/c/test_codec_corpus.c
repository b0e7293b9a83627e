/*
 * test_codec_corpus — replays every file in fuzz/corpus/ and
 * fuzz/regressions/ through the entry points of both fuzz harnesses
 * (fuzz/fuzz_decode.c, the codec alone, and fuzz/fuzz_decode_state.c, the
 * decode path of a real state; both are compiled into this program), so
 * the decoder's properties are checked by ctest without libFuzzer. A
 * crash found by the fuzzer is saved under fuzz/regressions/ with a
 * descriptive name and stays a test from then on.
 *
 * Runs from the repository root (ctest's WORKING_DIRECTORY). Exit status 0
 * when every file was replayed; a property violation aborts.
 */
#include "../../fuzz/fuzz_decode.c"
/* The harness of a real state's decode path, under a name of its own. */
#define FUZZ_STATE_ENTRY fuzz_state_test_one_input
#include "../../fuzz/fuzz_decode_state.c"

#include <dirent.h>

static int replay_file(const char *path)
{
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    perror(path);
    return -1;
  }
  size_t cap = 4096, len = 0;
  uint8_t *data = malloc(cap);
  size_t n;
  while (data != NULL && (n = fread(data + len, 1, cap - len, f)) > 0) {
    len += n;
    if (len == cap) {
      uint8_t *bigger = realloc(data, cap * 2);
      if (bigger == NULL) {
        free(data);
        data = NULL;
        break;
      }
      data = bigger;
      cap *= 2;
    }
  }
  fclose(f);
  if (data == NULL) {
    fprintf(stderr, "%s: out of memory\n", path);
    return -1;
  }
  /* An exact-size copy, so a read past the end is caught under ASan. */
  uint8_t *exact = malloc(len > 0 ? len : 1);
  memcpy(exact, data, len);
  free(data);
  LLVMFuzzerTestOneInput(exact, len);
  fuzz_state_test_one_input(exact, len);
  free(exact);
  return 0;
}

/* Returns the number of files replayed, or -1 when dir cannot be read. */
static int replay_dir(const char *dir)
{
  DIR *d = opendir(dir);
  if (d == NULL) {
    perror(dir);
    return -1;
  }
  int count = 0, errors = 0;
  struct dirent *ent;
  while ((ent = readdir(d)) != NULL) {
    if (ent->d_name[0] == '.')
      continue; /* ., .., .gitkeep */
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
    if (replay_file(path) != 0)
      errors++;
    else
      count++;
  }
  closedir(d);
  return errors > 0 ? -1 : count;
}

int main(void)
{
  int corpus = replay_dir("fuzz/corpus");
  int regressions = replay_dir("fuzz/regressions");
  if (corpus < 0 || regressions < 0) {
    fprintf(stderr, "cannot replay (run from the repository root)\n");
    return 1;
  }
  if (corpus == 0) {
    fprintf(stderr, "fuzz/corpus is empty\n");
    return 1;
  }
  printf("replayed %d corpus files and %d regression files\n", corpus, regressions);
  return 0;
}
