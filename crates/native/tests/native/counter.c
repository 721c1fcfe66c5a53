/* A counter in memory, each value written as a line to an open file (plain write(2), so
 * the file offset matters). After restore the lines must go on 1, 2, 3... without a gap or a
 * repeat. argv: OUTFILE RESULT. */
#include "common.h"
#include <fcntl.h>
#include <stdint.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    setup_check(argv[2]);
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 2;
    uint64_t counter = 0;
    struct timespec t = {0, 1000000};
    for (;;) {
        counter++;
        char line[32];
        int len = snprintf(line, sizeof line, "%llu\n", (unsigned long long)counter);
        if (write(fd, line, len) != len) return 4;
        if (counter == 20) ready();
        if (check_requested) {
            verdict(counter > 20 ? "ok" : "bad: counter");
            check_requested = 0;
        }
        nanosleep(&t, NULL);
    }
}
