/* SysV shared memory, which a checkpoint refuses; the process runs on. argv: RESULT. */
#include "common.h"
#include <sys/shm.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    setup_check(argv[1]);
    int id = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600);
    char *p = shmat(id, NULL, 0);
    shmctl(id, IPC_RMID, NULL); /* gone with the last detach */
    if (p == (void *)-1) return 3;
    strcpy(p, "sysv");
    ready();
    wait_check();
    CHECK(strcmp(p, "sysv") == 0, "sysv contents");
    verdict("ok");
    return 0;
}
