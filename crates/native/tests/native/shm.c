/* Shared memory between a parent and its child: MAP_SHARED anonymous memory with holes, a
 * memfd mapped shared (inherited by the child) and privately (some pages changed), a
 * /dev/shm file (shm_open) and a regular file, both mapped shared. After restore each
 * process sees the contents as before, and what one writes the other sees: one object each.
 * argv: DIR SHM_NAME RESULT. */
#include "common.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define ANON (4u << 20)
#define MFD (1u << 20)
#define SHM (64u << 10)
#define FILE_PAGES 16
#define PG 4096

struct ctl {
    volatile int child_ready, go, child_verdict;
};

static uint64_t pat(uint64_t i, uint64_t salt) { return (i * 0x9E3779B97F4A7C15ull) ^ salt; }

static char *anon, *mfd_s, *mfd_p, *shm, *fm;
static struct ctl *ctl;

/* What both processes see before anyone writes after the restore; "" if all is well. */
static const char *check_before(void) {
    for (size_t p = 1; p < ANON / PG; p++) {
        uint64_t *w = (uint64_t *)(anon + p * PG);
        uint64_t want = (p % 4 == 3 || p >= 600) ? 0 : pat(p, 1);
        if (p == 600) want = 0x600600;
        if (w[0] != want || w[511] != (p == 600 ? 0 : want)) return "shared anonymous memory";
    }
    for (size_t p = 0; p < MFD / PG; p++) {
        uint64_t want = p == 200 ? 0xc41d : (p % 3 == 0 ? 0 : pat(p, 2));
        if (*(uint64_t *)(mfd_s + p * PG) != want) return "memfd shared";
        uint64_t pwant = (p % 10 == 5) ? pat(p, 3) : want;
        if (*(uint64_t *)(mfd_p + p * PG) != pwant) return "memfd private";
    }
    for (size_t i = 0; i < SHM; i++)
        if (shm[i] != (char)('A' + i % 26)) return "shm_open mapping";
    for (int p = 0; p < FILE_PAGES; p++)
        if (fm[p * PG + 7] != (p % 2 ? 'w' : 'a' + p)) return "shared file mapping";
    return "";
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    setup_check(argv[3]);
    anon = mmap(NULL, ANON, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ctl = (struct ctl *)anon; /* page 0 */
    for (size_t p = 1; p < 600; p++) {
        if (p % 4 == 3) continue; /* never touched */
        uint64_t *w = (uint64_t *)(anon + p * PG);
        w[0] = w[511] = pat(p, 1);
    }
    int m = memfd_create("podsnap-test", MFD_CLOEXEC);
    if (m < 0 || ftruncate(m, MFD)) return 3;
    mfd_s = mmap(NULL, MFD, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
    for (size_t p = 0; p < MFD / PG; p++)
        if (p % 3) *(uint64_t *)(mfd_s + p * PG) = pat(p, 2);
    mfd_p = mmap(NULL, MFD, PROT_READ | PROT_WRITE, MAP_PRIVATE, m, 0);
    for (size_t p = 5; p < MFD / PG; p += 10) *(uint64_t *)(mfd_p + p * PG) = pat(p, 3);
    close(m);
    int s = shm_open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (s < 0 || ftruncate(s, SHM)) return 4;
    shm = mmap(NULL, SHM, PROT_READ | PROT_WRITE, MAP_SHARED, s, 0);
    close(s);
    for (size_t i = 0; i < SHM; i++) shm[i] = 'A' + i % 26;
    char path[4096];
    snprintf(path, sizeof path, "%s/shared.bin", argv[1]);
    int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    for (int p = 0; p < FILE_PAGES; p++) {
        char page[PG];
        memset(page, 'a' + p, sizeof page);
        if (write(f, page, sizeof page) != sizeof page) return 5;
    }
    fm = mmap(NULL, FILE_PAGES * PG, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
    for (int p = 1; p < FILE_PAGES; p += 2) fm[p * PG + 7] = 'w';

    pid_t child = fork();
    if (child == 0) {
        *(uint64_t *)(anon + 600 * PG) = 0x600600;
        *(uint64_t *)(mfd_s + 200 * PG) = 0xc41d;
        ctl->child_ready = 1;
        while (!ctl->go) usleep(1000);
        const char *bad = check_before();
        if (*bad) {
            ctl->child_verdict = 2;
            _exit(1);
        }
        /* Written after the restore, for the parent to see. */
        *(uint64_t *)(anon + 601 * PG) = 0x601601;
        *(uint64_t *)(mfd_s + 1 * PG) = 0x1111; /* page 1: not changed in the private one */
        shm[5] = '!';
        fm[2 * PG] = '!';
        ctl->child_verdict = 1;
        _exit(0);
    }
    while (!ctl->child_ready) usleep(1000);
    ready();
    wait_check();

    const char *bad = check_before();
    if (*bad) {
        char why[128];
        snprintf(why, sizeof why, "bad: parent: %s", bad);
        verdict(why);
        return 1;
    }
    ctl->go = 1;
    int st;
    CHECK(waitpid(child, &st, 0) == child, "waitpid");
    CHECK(ctl->child_verdict == 1, "the child's view after restore");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child's exit");
    CHECK(*(uint64_t *)(anon + 601 * PG) == 0x601601, "child's write in shared anonymous memory");
    CHECK(*(uint64_t *)(mfd_s + 1 * PG) == 0x1111, "child's write in the memfd");
    CHECK(*(uint64_t *)(mfd_p + 1 * PG) == 0x1111, "unchanged private memfd page follows the file");
    CHECK(*(uint64_t *)(mfd_p + 5 * PG) == pat(5, 3), "changed private memfd page");
    CHECK(shm[5] == '!', "child's write in the shm_open mapping");
    CHECK(fm[2 * PG] == '!', "child's write in the shared file mapping");
    char c = 0;
    int f2 = open(path, O_RDONLY);
    CHECK(pread(f2, &c, 1, 2 * PG) == 1 && c == '!', "the file has the child's write");
    verdict("ok");
    return 0;
}
