/* Files: a file read up to an offset, one open for appending, a directory, /dev/null,
 * /dev/zero and /dev/urandom at chosen fd numbers (with gaps), close-on-exec and non-blocking
 * flags. argv: DIR RESULT. */
#include "common.h"
#include <dirent.h>
#include <fcntl.h>

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    setup_check(argv[2]);
    char in[4096], log[4096];
    snprintf(in, sizeof in, "%s/input.txt", argv[1]);
    snprintf(log, sizeof log, "%s/log.txt", argv[1]);
    int f = open(in, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (int i = 0; i < 1000; i++) dprintf(f, "%04d\n", i);
    close(f);
    int rd = open(in, O_RDONLY);
    char buf[500];
    if (read(rd, buf, 500) != 500) return 2; /* offset 500 = line 100 */
    dup2(rd, 9); close(rd);
    int ap = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    dup3(ap, 12, O_CLOEXEC); close(ap);
    if (write(12, "before\n", 7) != 7) return 2;
    int dn = open("/dev/null", O_RDWR | O_NONBLOCK); dup2(dn, 5); close(dn);
    int dz = open("/dev/zero", O_RDONLY); dup2(dz, 20); close(dz);
    int du = open("/dev/urandom", O_RDONLY); dup2(du, 21); close(du);
    int dd = open(argv[1], O_RDONLY | O_DIRECTORY); dup2(dd, 22); close(dd);

    ready();
    wait_check();

    CHECK(lseek(9, 0, SEEK_CUR) == 500, "offset of fd 9");
    char line[6] = {0};
    CHECK(read(9, line, 5) == 5 && memcmp(line, "0100\n", 5) == 0, "contents at the offset");
    CHECK((fcntl(9, F_GETFL) & O_ACCMODE) == O_RDONLY, "fd 9 read-only");
    CHECK(fcntl(9, F_GETFD) == 0, "fd 9 not cloexec");
    CHECK(fcntl(12, F_GETFD) == FD_CLOEXEC, "fd 12 cloexec");
    CHECK(fcntl(12, F_GETFL) & O_APPEND, "fd 12 append");
    CHECK(write(12, "after\n", 6) == 6, "write fd 12");
    CHECK(fcntl(5, F_GETFL) & O_NONBLOCK, "fd 5 non-blocking");
    CHECK(write(5, "x", 1) == 1, "write /dev/null");
    char z[16]; memset(z, 1, sizeof z);
    CHECK(read(20, z, 16) == 16 && z[0] == 0 && z[15] == 0, "read /dev/zero");
    CHECK(read(21, z, 16) == 16, "read /dev/urandom");
    CHECK(fcntl(3, F_GETFD) == -1 && fcntl(4, F_GETFD) == -1, "gaps stay closed");
    CHECK(fcntl(22, F_GETFL) & O_DIRECTORY, "directory fd");
    DIR *d = fdopendir(22);
    CHECK(d && readdir(d), "readdir");
    char want[64];
    FILE *lf = fopen(log, "r");
    size_t got = fread(want, 1, sizeof want, lf);
    CHECK(got == 13 && memcmp(want, "before\nafter\n", 13) == 0, "log contents");
    verdict("ok");
    return 0;
}
