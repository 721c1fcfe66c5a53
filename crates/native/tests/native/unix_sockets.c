/* Unix sockets: stream, datagram and seqpacket socketpairs with data queued both ways, a
 * stream pair shared with a child (which blocks reading it), a listening stream socket bound
 * to a path, a listening seqpacket socket with an abstract name, a bound datagram socket
 * with a queued message, and a connection to a listener outside the tree (which comes back
 * closed). argv: DIR OUTSIDE_SOCKET RESULT. */
#include "common.h"
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stddef.h>
#include <sys/wait.h>

static socklen_t addr_of(struct sockaddr_un *a, const char *path, int abstract) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (abstract) {
        a->sun_path[0] = 0;
        strcpy(a->sun_path + 1, path);
        return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(path);
    }
    strcpy(a->sun_path, path);
    return sizeof *a;
}

static int got(int fd, const char *want) {
    char buf[64] = {0};
    ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
    return n == (ssize_t)strlen(want) && memcmp(buf, want, n) == 0;
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    setup_check(argv[3]);
    char lpath[256], dpath[256], abs_name[64];
    snprintf(lpath, sizeof lpath, "%s/listen.sock", argv[1]);
    snprintf(dpath, sizeof dpath, "%s/dgram.sock", argv[1]);
    snprintf(abs_name, sizeof abs_name, "podsnap-cr-files-%d", getpid());
    int s[2], d[2], q[2], x[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s) ||
        socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, d) ||
        socketpair(AF_UNIX, SOCK_SEQPACKET, 0, q) || socketpair(AF_UNIX, SOCK_STREAM, 0, x))
        return 3;
    if (write(s[1], "to-zero", 7) != 7 || write(s[1], "+more", 5) != 5 ||
        write(s[0], "to-one", 6) != 6)
        return 3;
    if (send(d[1], "m1", 2, 0) != 2 || send(d[1], "m22", 3, 0) != 3 || send(d[0], "back", 4, 0) != 4)
        return 3;
    if (send(q[0], "p1", 2, 0) != 2 || send(q[0], "p22", 3, 0) != 3) return 3;
    struct sockaddr_un a;
    socklen_t alen;
    int lis = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    alen = addr_of(&a, lpath, 0);
    if (bind(lis, (struct sockaddr *)&a, alen) || listen(lis, 8)) return 3;
    int alis = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    alen = addr_of(&a, abs_name, 1);
    if (bind(alis, (struct sockaddr *)&a, alen) || listen(alis, 8)) return 3;
    int dg = socket(AF_UNIX, SOCK_DGRAM, 0);
    alen = addr_of(&a, dpath, 0);
    if (bind(dg, (struct sockaddr *)&a, alen)) return 3;
    int tmp = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (sendto(tmp, "queued", 6, 0, (struct sockaddr *)&a, alen) != 6) return 3;
    close(tmp);
    int out = socket(AF_UNIX, SOCK_STREAM, 0);
    alen = addr_of(&a, argv[2], 0);
    if (connect(out, (struct sockaddr *)&a, alen)) return 3;
    pid_t child = fork();
    if (child == 0) {
        close(x[0]);
        if (write(x[1], "from-child", 10) != 10) _exit(1);
        char buf[4];
        if (read(x[1], buf, 4) != 4 || memcmp(buf, "ping", 4)) _exit(2);
        if (write(x[1], "pong", 4) != 4) _exit(3);
        _exit(0);
    }
    close(x[1]);
    usleep(50000); /* the child has written and waits */
    ready();
    wait_check();

    CHECK(got(s[0], "to-zero+more"), "the stream pair lost the data queued to end 0");
    CHECK(got(s[1], "to-one"), "the stream pair lost the data queued to end 1");
    CHECK(fcntl(s[0], F_GETFD) & FD_CLOEXEC, "the stream pair lost close-on-exec");
    CHECK(write(s[0], "new", 3) == 3 && got(s[1], "new"), "the stream pair does not carry new data");
    CHECK(fcntl(d[0], F_GETFL) & O_NONBLOCK, "the datagram pair lost O_NONBLOCK");
    CHECK(got(d[0], "m1") && got(d[0], "m22"), "the datagram pair lost messages or boundaries");
    CHECK(got(d[1], "back"), "the datagram pair lost the message queued the other way");
    CHECK(got(q[1], "p1") && got(q[1], "p22"), "the seqpacket pair lost messages");
    CHECK(send(q[1], "q", 1, 0) == 1 && got(q[0], "q"), "the seqpacket pair does not carry new data");

    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    alen = addr_of(&a, lpath, 0);
    CHECK(connect(c, (struct sockaddr *)&a, alen) == 0, "cannot connect to the path listener");
    int ac = accept(lis, NULL, NULL);
    CHECK(ac >= 0 && write(c, "hi", 2) == 2 && got(ac, "hi"), "the path listener does not work");
    int c2 = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    alen = addr_of(&a, abs_name, 1);
    CHECK(connect(c2, (struct sockaddr *)&a, alen) == 0, "cannot connect to the abstract listener");
    int ac2 = accept(alis, NULL, NULL);
    CHECK(ac2 >= 0 && send(c2, "yo", 2, 0) == 2 && got(ac2, "yo"), "the abstract listener does not work");
    CHECK(got(dg, "queued"), "the bound datagram socket lost its queued message");
    int t2 = socket(AF_UNIX, SOCK_DGRAM, 0);
    alen = addr_of(&a, dpath, 0);
    CHECK(sendto(t2, "again", 5, 0, (struct sockaddr *)&a, alen) == 5 && got(dg, "again"),
          "the bound datagram socket lost its name");
    char b1;
    CHECK(read(out, &b1, 1) == 0, "the connection to outside the tree is not closed");

    char buf[16] = {0};
    CHECK(read(x[0], buf, 10) == 10 && memcmp(buf, "from-child", 10) == 0,
          "the pair shared with the child lost the child's data");
    CHECK(write(x[0], "ping", 4) == 4, "cannot write to the child");
    CHECK(read(x[0], buf, 4) == 4 && memcmp(buf, "pong", 4) == 0, "the child did not answer");
    int st;
    CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "the child failed");
    verdict("ok");
    return 0;
}
