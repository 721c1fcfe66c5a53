/* Holds a netlink socket at fd 3 (and 7): a checkpoint must be refused, naming it, and leave
 * the process running. argv: RESULT. */
#include "common.h"
#include <linux/netlink.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    setup_check(argv[1]);
    int nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    dup2(nl, 7);
    ready();
    wait_check();
    verdict("ok");
    return 0;
}
