/* Lazy restore's test process: maps an anonymous region of PAGES pages that the test fills
 * through a userfaultfd with a known pattern, says "ready <address>", waits for one byte on
 * stdin ("go"), then reads and checks the region the way MODE says, and prints "ok ..." or
 * "bad ...". argv: MODE PAGES LAYOUT.
 *
 * The pattern: page p holds words pat(p, w), or zeros where present(LAYOUT, p) is false (a
 * page missing from the image). Both functions are repeated in tests/lazy.rs. */
#define _GNU_SOURCE
#include <linux/close_range.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8)

static uint64_t *base;
static uint64_t pages;
static int layout;

static int present(uint64_t p) {
    if (layout == 0) return !(p % 7 == 3 || (p / 64) % 13 == 5);
    return (p / 512) % 17 != 9;
}

static uint64_t pat(uint64_t p, uint64_t w) {
    return (p * 0x9E3779B97F4A7C15ull) ^ (w * 0xD1B54A32D192ED03ull) ^ 0x5eedull;
}

static void bad(const char *why, uint64_t p) {
    printf("bad: %s (page %llu)\n", why, (unsigned long long)p);
    fflush(stdout);
    exit(1);
}

/* Checks page p of the region at `at` (the page's own number is `p` for the pattern). */
static void check(uint64_t *at, uint64_t p, int zero) {
    uint64_t *w = at + p * WORDS;
    for (uint64_t i = 0; i < WORDS; i++) {
        uint64_t want = (zero || !present(p)) ? 0 : pat(p, i);
        if (w[i] != want) {
            printf("bad: %s (page %llu word %llu: %llx, not %llx)\n",
                   zero ? "expected zeros" : "pattern", (unsigned long long)p,
                   (unsigned long long)i, (unsigned long long)w[i], (unsigned long long)want);
            fflush(stdout);
            exit(1);
        }
    }
}

static uint64_t rng = 0x1234567887654321ull;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static uint32_t *shuffled(void) {
    uint32_t *perm = malloc(pages * sizeof *perm);
    for (uint64_t i = 0; i < pages; i++) perm[i] = i;
    for (uint64_t i = pages - 1; i > 0; i--) {
        uint64_t j = next() % (i + 1);
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    return perm;
}

static void wait_byte(void) {
    char c;
    if (read(0, &c, 1) != 1) exit(4);
}

/* Every page in random order (the last page first), writing into every fifth. skip(p) pages
 * are left out. */
static void verify_all(int (*skip)(uint64_t)) {
    uint32_t *perm = shuffled();
    if (!(skip && skip(pages - 1))) check(base, pages - 1, 0);
    for (uint64_t i = 0; i < pages; i++) {
        uint64_t p = perm[i];
        if (skip && skip(p)) continue;
        check(base, p, 0);
        if (p % 5 == 0) {
            volatile uint64_t *w = base + p * WORDS + 1;
            *w = ~*w;
            if (*w != ~(present(p) ? pat(p, 1) : 0)) bad("write", p);
            *w = ~*w;
        }
    }
    free(perm);
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}

static int cmp64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* dontneed mode's ranges */
static uint64_t a_lo, a_hi, b_lo, b_hi, c_lo, c_hi, d_lo, d_hi;
static int in(uint64_t p, uint64_t lo, uint64_t hi) { return p >= lo && p < hi; }
static int skip_changed(uint64_t p) {
    return in(p, a_lo, a_hi) || in(p, b_lo, b_hi) || in(p, c_lo, c_hi) || in(p, d_lo, d_hi);
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    close_range(3, ~0U, 0);
    const char *mode = argv[1];
    pages = strtoull(argv[2], NULL, 0);
    layout = atoi(argv[3]);
    base = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return 3;
    printf("ready %llx\n", (unsigned long long)(uintptr_t)base);
    fflush(stdout);
    wait_byte();

    if (!strcmp(mode, "verify")) {
        verify_all(NULL);
        printf("ok\n");
    } else if (!strcmp(mode, "wait-verify")) {
        /* Touch nothing until told the background fill is done. */
        wait_byte();
        uint64_t t0 = now_ns();
        verify_all(NULL);
        printf("ok verify_ms=%llu\n", (unsigned long long)((now_ns() - t0) / 1000000));
    } else if (!strcmp(mode, "exit-early")) {
        check(base, pages - 1, 0);
        check(base, 1, 0);
        printf("ok\n");
        fflush(stdout);
        _exit(0);
    } else if (!strcmp(mode, "dontneed")) {
        a_lo = pages / 2, a_hi = a_lo + 64;
        b_lo = pages - 128, b_hi = pages - 64;
        c_lo = 0, c_hi = 32;
        d_lo = pages - 64, d_hi = pages;
        /* A: never touched, dropped: zeros. */
        madvise(base + a_lo * WORDS, (a_hi - a_lo) * PAGE, MADV_DONTNEED);
        /* C: read and written, then dropped: zeros. */
        for (uint64_t p = c_lo; p < c_hi; p++) check(base, p, 0);
        base[c_lo * WORDS] = 42;
        madvise(base + c_lo * WORDS, (c_hi - c_lo) * PAGE, MADV_DONTNEED);
        /* B: unmapped and mapped again: zeros (and no longer the userfaultfd's). */
        munmap(base + b_lo * WORDS, (b_hi - b_lo) * PAGE);
        void *b = mmap(base + b_lo * WORDS, (b_hi - b_lo) * PAGE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (b == MAP_FAILED) bad("mmap over B", b_lo);
        /* D: moved elsewhere: its pattern follows it. */
        void *spot = mmap(NULL, (d_hi - d_lo) * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
                          -1, 0);
        uint64_t *d = mremap(base + d_lo * WORDS, (d_hi - d_lo) * PAGE, (d_hi - d_lo) * PAGE,
                             MREMAP_MAYMOVE | MREMAP_FIXED, spot);
        if (d == MAP_FAILED) bad("mremap of D", d_lo);
        for (uint64_t p = a_lo; p < a_hi; p++) check(base, p, 1);
        for (uint64_t p = b_lo; p < b_hi; p++) check(base, p, 1);
        for (uint64_t p = c_lo; p < c_hi; p++) check(base, p, 1);
        for (uint64_t p = d_lo; p < d_hi; p++) check(d - d_lo * WORDS, p, 0);
        verify_all(skip_changed);
        /* Once more after the rest, in case the fill came by later. */
        for (uint64_t p = a_lo; p < a_hi; p++) check(base, p, 1);
        for (uint64_t p = c_lo; p < c_hi; p++) check(base, p, 1);
        printf("ok\n");
    } else if (!strcmp(mode, "fork")) {
        pid_t kid = fork();
        if (kid < 0) bad("fork", 0);
        if (kid == 0) {
            rng = 0xfeedfacecafebeefull;
            char *written = calloc(pages, 1);
            for (int i = 0; i < 300; i++) {
                uint64_t p = next() % pages;
                if (written[p]) continue;
                written[p] = 1;
                check(base, p, 0);
                base[p * WORDS + 2] = 7; /* the child's own copy */
            }
            _exit(0);
        }
        verify_all(NULL);
        int st;
        if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            bad("the forked child failed", st);
        for (uint64_t p = 0; p < pages; p++)
            if (base[p * WORDS + 2] != (present(p) ? pat(p, 2) : 0)) bad("child's write leaked", p);
        printf("ok\n");
    } else if (!strcmp(mode, "bench")) {
        /* First touches of random pages, timed here, while the fill runs. */
        uint64_t n = pages < 4000 ? pages : 4000;
        uint64_t *lat = malloc(n * sizeof *lat);
        uint32_t *perm = shuffled();
        volatile uint64_t sink = 0;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t t0 = now_ns();
            sink += base[(uint64_t)perm[i] * WORDS + 3];
            lat[i] = now_ns() - t0;
        }
        (void)sink;
        qsort(lat, n, sizeof *lat, cmp64);
        /* The touches that waited (over 2 us: a fault, not a page already there). */
        uint64_t k = 0;
        while (k < n && lat[k] <= 2000) k++;
        uint64_t *f = lat + k, nf = n - k;
        uint64_t t0 = now_ns();
        verify_all(NULL);
        printf("ok touches=%llu p50_ns=%llu p99_ns=%llu; faulted=%llu p50_ns=%llu p90_ns=%llu "
               "p99_ns=%llu max_ns=%llu; verify_ms=%llu\n",
               (unsigned long long)n, (unsigned long long)lat[n / 2],
               (unsigned long long)lat[n * 99 / 100], (unsigned long long)nf,
               (unsigned long long)(nf ? f[nf / 2] : 0),
               (unsigned long long)(nf ? f[nf * 90 / 100] : 0),
               (unsigned long long)(nf ? f[nf * 99 / 100] : 0),
               (unsigned long long)(nf ? f[nf - 1] : 0),
               (unsigned long long)((now_ns() - t0) / 1000000));
    } else {
        return 2;
    }
    fflush(stdout);
    return 0;
}
