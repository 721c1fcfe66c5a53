/* A few MiB of anonymous memory holding a pattern, checked after a restore: the program of
 * the corrupt-image tests. argv: RESULT. */
#include "common.h"
#include <stdint.h>
#include <sys/mman.h>

#define SIZE (4u << 20)

static uint64_t pat(uint64_t i) { return (i * 0x9E3779B97F4A7C15ull) ^ 0xc0ffee; }

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    setup_check(argv[1]);
    uint64_t *mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return 2;
    for (size_t i = 0; i < SIZE / 8; i++) mem[i] = pat(i);
    ready();
    wait_check();
    for (size_t i = 0; i < SIZE / 8; i++) CHECK(mem[i] == pat(i), "pattern");
    verdict("ok");
    return 0;
}
