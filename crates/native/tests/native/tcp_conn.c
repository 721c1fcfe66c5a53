/* TCP connections over loopback with both ends in the tree, kept across a restore (repair
 * mode): one inside this process with unread data both ways (100 KiB one way), one with a
 * child at the other end that blocks reading it. After restore the data arrives, new writes
 * flow both ways and the listener accepts. argv: RESULT. */
#include "common.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define BIG (100 * 1024)

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a;
    memset(a.sin_zero, 0, sizeof a.sin_zero);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int read_all(int fd, char *buf, int len) {
    int done = 0;
    while (done < len) {
        ssize_t n = read(fd, buf + done, len - done);
        if (n <= 0) return -1;
        done += n;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    setup_check(argv[1]);
    int lis = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lis, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = loopback(0);
    socklen_t len = sizeof a;
    if (bind(lis, (struct sockaddr *)&a, sizeof a) || listen(lis, 16)) return 3;
    getsockname(lis, (struct sockaddr *)&a, &len);
    int port = ntohs(a.sin_port);
    struct sockaddr_in to = loopback(port);
    int c1 = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c1, (struct sockaddr *)&to, sizeof to)) return 3;
    int a1 = accept(lis, NULL, NULL);
    if (a1 < 0) return 3;
    setsockopt(c1, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    static char big[BIG], got[BIG];
    for (int i = 0; i < BIG; i++) big[i] = (char)(i * 7 + 3);
    if (write(c1, big, BIG) != BIG) return 3;
    if (write(a1, "s2c-data", 8) != 8) return 3;
    pid_t child = fork();
    if (child == 0) {
        close(lis);
        close(c1);
        close(a1);
        int c2 = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c2, (struct sockaddr *)&to, sizeof to)) _exit(1);
        if (write(c2, "child-data", 10) != 10) _exit(2);
        char buf[4];
        if (read_all(c2, buf, 4) || memcmp(buf, "ping", 4)) _exit(3);
        if (write(c2, "pong", 4) != 4) _exit(4);
        _exit(0);
    }
    int a2 = accept(lis, NULL, NULL);
    if (a2 < 0) return 3;
    usleep(50000); /* the child has written and waits */
    ready();
    wait_check();

    char buf[16] = {0};
    CHECK(read_all(a1, got, BIG) == 0 && memcmp(got, big, BIG) == 0,
          "the connection lost the unread client-to-server data");
    CHECK(read_all(c1, buf, 8) == 0 && memcmp(buf, "s2c-data", 8) == 0,
          "the connection lost the unread server-to-client data");
    {
        ssize_t w = write(c1, "more", 4);
        int e1 = errno;
        ssize_t r = read(a1, buf, 4);
        char msg[200];
        snprintf(msg, sizeof msg, "bad: write %zd errno %d read %zd errno %d", w, e1, r, errno);
        if (w != 4 || r != 4) { verdict(msg); exit(1); }
    }
    CHECK(write(a1, "back", 4) == 4 && read_all(c1, buf, 4) == 0 && memcmp(buf, "back", 4) == 0,
          "new data does not flow server to client");
    int nd = 0;
    socklen_t nl = sizeof nd;
    getsockopt(c1, IPPROTO_TCP, TCP_NODELAY, &nd, &nl);
    CHECK(nd, "TCP_NODELAY was lost");
    CHECK(read_all(a2, buf, 10) == 0 && memcmp(buf, "child-data", 10) == 0,
          "the connection to the child lost its data");
    CHECK(write(a2, "ping", 4) == 4 && read_all(a2, buf, 4) == 0 && memcmp(buf, "pong", 4) == 0,
          "the child did not answer");
    int st;
    CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "the child failed");
    int c3 = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(c3, (struct sockaddr *)&to, sizeof to) == 0, "cannot connect to the listener");
    int a3 = accept(lis, NULL, NULL);
    CHECK(a3 >= 0 && write(c3, "n", 1) == 1 && read_all(a3, buf, 1) == 0, "the listener does not work");
    verdict("ok");
    return 0;
}
