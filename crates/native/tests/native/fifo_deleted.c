/* A FIFO opened by path (read and write ends) with buffered bytes, and a deleted-but-open
 * file with contents and an offset. After restore the bytes are in the FIFO, the deleted
 * file has its contents and offset and is still unnamed. argv: DIR RESULT. */
#include "common.h"
#include <fcntl.h>
#include <sys/stat.h>

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    setup_check(argv[2]);
    char fifo[256], del[256];
    snprintf(fifo, sizeof fifo, "%s/fifo", argv[1]);
    snprintf(del, sizeof del, "%s/deleted", argv[1]);
    unlink(fifo);
    if (mkfifo(fifo, 0600)) return 3;
    int r = open(fifo, O_RDONLY | O_NONBLOCK);
    int w = open(fifo, O_WRONLY);
    if (r < 0 || w < 0 || write(w, "fifo-bytes", 10) != 10) return 3;
    int d = open(del, O_RDWR | O_CREAT | O_TRUNC, 0640);
    if (d < 0 || write(d, "deleted-contents", 16) != 16 || unlink(del)) return 3;
    lseek(d, 8, SEEK_SET);
    ready();
    wait_check();

    char buf[32] = {0};
    CHECK(read(r, buf, sizeof buf) == 10 && memcmp(buf, "fifo-bytes", 10) == 0,
          "the FIFO lost its bytes");
    CHECK(write(w, "x", 1) == 1 && read(r, buf, 1) == 1 && buf[0] == 'x', "the FIFO does not flow");
    CHECK(fcntl(r, F_GETFL) & O_NONBLOCK, "the FIFO's read end lost O_NONBLOCK");
    CHECK(lseek(d, 0, SEEK_CUR) == 8, "the deleted file lost its offset");
    CHECK(read(d, buf, 8) == 8 && memcmp(buf, "contents", 8) == 0, "the deleted file lost its contents");
    struct stat st;
    CHECK(fstat(d, &st) == 0 && st.st_nlink == 0 && (st.st_mode & 0777) == 0640,
          "the deleted file is named or lost its mode");
    CHECK(access(del, F_OK) != 0, "the deleted file has a name again");
    verdict("ok");
    return 0;
}
