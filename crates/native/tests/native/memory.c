/* Memory: a 64 MiB anonymous pattern with holes (never-touched and zero pages), heap blocks,
 * a read-only anonymous region, a private file mapping with some pages changed, and a
 * thread-local variable (fs_base). argv: DIR RESULT. */
#include "common.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>

#define BIG (64u << 20)
#define FILE_PAGES 16
static __thread uint64_t tls_value;

static uint64_t pat(uint64_t i, uint64_t salt) { return (i * 0x9E3779B97F4A7C15ull) ^ salt; }

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    setup_check(argv[2]);
    tls_value = 0x1234567890abcdefull;
    uint64_t *big = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    size_t n = BIG / 8;
    for (size_t i = 0; i < n; i++) {
        size_t page = i / 512;
        if (page % 7 == 3) continue;           /* never touched */
        big[i] = page % 5 == 1 ? 0 : pat(i, 1); /* touched, but zero */
    }
    char *heap[100];
    for (int i = 0; i < 100; i++) {
        heap[i] = malloc(1000 + i * 37);
        memset(heap[i], i + 1, 1000 + i * 37);
    }
    uint64_t *ro = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < 8 * 512; i++) ro[i] = pat(i, 2);
    mprotect(ro, 8 * 4096, PROT_READ);

    char path[4096];
    snprintf(path, sizeof path, "%s/mapped.bin", argv[1]);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    for (int p = 0; p < FILE_PAGES; p++) {
        char page[4096];
        memset(page, 'a' + p, sizeof page);
        if (write(fd, page, sizeof page) != sizeof page) return 2;
    }
    char *fm = mmap(NULL, FILE_PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    volatile char sink = 0;
    for (int p = 0; p < FILE_PAGES; p++) sink += fm[p * 4096]; /* file pages, present */
    for (int p = 0; p < FILE_PAGES; p += 3) memset(fm + p * 4096 + 100, 'Z', 50); /* changed */
    (void)sink;

    ready();
    wait_check();

    CHECK(tls_value == 0x1234567890abcdefull, "tls");
    for (size_t i = 0; i < n; i++) {
        size_t page = i / 512;
        uint64_t want = (page % 7 == 3 || page % 5 == 1) ? 0 : pat(i, 1);
        CHECK(big[i] == want, "big anonymous pattern");
    }
    for (int i = 0; i < 100; i++)
        for (int j = 0; j < 1000 + i * 37; j++) CHECK(heap[i][j] == (char)(i + 1), "heap");
    for (size_t i = 0; i < 8 * 512; i++) CHECK(ro[i] == pat(i, 2), "read-only region");
    for (int p = 0; p < FILE_PAGES; p++) {
        for (int k = 0; k < 4096; k++) {
            char want = (p % 3 == 0 && k >= 100 && k < 150) ? 'Z' : 'a' + p;
            CHECK(fm[p * 4096 + k] == want, "private file mapping");
        }
    }
    /* still usable: the heap grows, new memory maps */
    char *more = malloc(1 << 20);
    memset(more, 1, 1 << 20);
    CHECK(mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED, "mmap");
    verdict("ok");
    return 0;
}
