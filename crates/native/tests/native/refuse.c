/* Holds a Unix socket at fd 7: a checkpoint must be refused, naming it, and leave the process
 * running. argv: RESULT. */
#include "common.h"
#include <sys/socket.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    setup_check(argv[1]);
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    dup2(sv[0], 7);
    ready();
    wait_check();
    verdict("ok");
    return 0;
}
