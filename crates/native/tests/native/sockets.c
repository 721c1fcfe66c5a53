/* Sockets: a TCP listener and a bound UDP socket on loopback (ephemeral ports), and a TCP
 * connection (client and accepted end). After restore the listener accepts a new
 * connection on its port, the UDP socket receives on its port, and the old connection (both
 * ends in the tree) still carries data. argv: RESULT. */
#include "common.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int port_of(int fd) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    return ntohs(a.sin_port);
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    setup_check(argv[1]);
    int lis = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lis, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = loopback(0);
    if (bind(lis, (struct sockaddr *)&a, sizeof a) || listen(lis, 16)) return 3;
    int tcp_port = port_of(lis);
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (bind(udp, (struct sockaddr *)&a, sizeof a)) return 3;
    int udp_port = port_of(udp);
    int client = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = loopback(tcp_port);
    if (connect(client, (struct sockaddr *)&to, sizeof to)) return 3;
    int accepted = accept(lis, NULL, NULL);
    if (accepted < 0) return 3;
    ready();
    wait_check();

    CHECK(port_of(lis) == tcp_port, "the listener lost its port");
    CHECK(fcntl(lis, F_GETFD) & FD_CLOEXEC, "the listener lost close-on-exec");
    int c2 = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(c2, (struct sockaddr *)&to, sizeof to) == 0, "cannot connect to the listener");
    int a2 = accept(lis, NULL, NULL);
    CHECK(a2 >= 0, "the listener does not accept");
    CHECK(write(c2, "ping", 4) == 4, "cannot write on the new connection");
    char buf[8] = {0};
    CHECK(read(a2, buf, 4) == 4 && memcmp(buf, "ping", 4) == 0, "the new connection lost data");
    CHECK(fcntl(udp, F_GETFL) & O_NONBLOCK, "the UDP socket lost O_NONBLOCK");
    int u2 = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in ut = loopback(udp_port);
    CHECK(sendto(u2, "dgram", 5, 0, (struct sockaddr *)&ut, sizeof ut) == 5, "sendto failed");
    usleep(10000);
    CHECK(recv(udp, buf, sizeof buf, 0) == 5 && memcmp(buf, "dgram", 5) == 0,
          "the UDP socket lost its port");
    /* Both ends are in the tree: the connection is kept (TCP repair). */
    CHECK(write(client, "kept", 4) == 4 && read(accepted, buf, 4) == 4 && memcmp(buf, "kept", 4) == 0,
          "the old connection was not kept");
    verdict("ok");
    return 0;
}
