/* replay.c: a main() for the fuzz harnesses without libFuzzer. Runs LLVMFuzzerTestOneInput
 * on every file named, or every file in every directory named. `make test` builds each
 * harness with it under ASan/UBSan (gcc) and replays the seed and committed corpora. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static long runs;

static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  uint8_t *buf;
  long n;
  if (!f) { perror(path); return -1; }
  if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
    fclose(f);
    return -1;
  }
  buf = malloc((size_t)n + 1);   /* exactly n bytes are given to the harness */
  if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) { fclose(f); free(buf); return -1; }
  fclose(f);
  LLVMFuzzerTestOneInput(buf, (size_t)n);
  free(buf);
  runs++;
  return 0;
}

static int run_path(const char *path) {
  struct stat st;
  DIR *d;
  struct dirent *e;
  int rc = 0;
  if (stat(path, &st) != 0) { perror(path); return -1; }
  if (!S_ISDIR(st.st_mode)) return run_file(path);
  if (!(d = opendir(path))) { perror(path); return -1; }
  while ((e = readdir(d)) != NULL) {
    char sub[4096];
    if (e->d_name[0] == '.') continue;
    snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
    if (run_path(sub) != 0) rc = -1;
  }
  closedir(d);
  return rc;
}

int main(int argc, char **argv) {
  int i, rc = 0;
  for (i = 1; i < argc; i++)
    if (run_path(argv[i]) != 0) rc = 1;
  printf("%ld inputs replayed\n", runs);
  return rc;
}
