/* A process tree: the root, a relay child connected by pipes (one with bytes buffered across
 * the checkpoint), a child in its own session and a child that exited and is not reaped yet.
 * After restore the pipes carry data between the processes, the buffered bytes arrive,
 * sessions, groups and parenthood are as before, and the exited child is there to be reaped
 * with its exit code.
 * argv: RESULT. */
#include "common.h"
#include <sys/wait.h>

static int readn(int fd, char *buf, int n) {
    int got = 0;
    while (got < n) {
        int r = read(fd, buf + got, n - got);
        if (r <= 0) return got;
        got += r;
    }
    return got;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    setup_check(argv[1]);
    int go[2], back[2], held[2];
    if (pipe(go) || pipe(back) || pipe(held)) return 3;
    const char buffered[] = "bytes-buffered-across-the-checkpoint";
    if (write(held[1], buffered, sizeof buffered) != sizeof buffered) return 3;
    pid_t relay = fork();
    if (relay == 0) {
        close(go[1]);
        close(back[0]);
        close(held[1]);
        char c;
        /* Wait for "go", then pass on the held bytes and who we are. */
        if (read(go[0], &c, 1) != 1) _exit(4);
        char buf[128] = {0};
        int n = readn(held[0], buf, sizeof buffered);
        char msg[256];
        int len = snprintf(msg, sizeof msg, "%d %d %d %s", n, getppid(), getpgrp(), buf);
        if (write(back[1], msg, len) != len) _exit(5);
        pause();
        _exit(0);
    }
    pid_t leader = fork();
    if (leader == 0) {
        setsid();
        for (;;) pause();
    }
    pid_t exited = fork();
    if (exited == 0) _exit(7);
    close(go[0]);
    close(back[1]);
    close(held[0]);
    close(held[1]);
    usleep(100000);
    pid_t my_pgrp = getpgrp();
    ready();
    wait_check();

    CHECK(getsid(leader) == leader, "the session leader lost its session");
    CHECK(getpgid(leader) == leader, "the session leader lost its group");
    CHECK(write(go[1], "g", 1) == 1, "the pipe to the relay is broken");
    char msg[256] = {0};
    int n = read(back[0], msg, sizeof msg - 1);
    CHECK(n > 0, "no answer from the relay");
    int got = 0, ppid = 0, pgrp = 0;
    char text[128] = {0};
    CHECK(sscanf(msg, "%d %d %d %127s", &got, &ppid, &pgrp, text) == 4, "bad answer");
    CHECK(got == (int)sizeof buffered, "the buffered bytes did not all arrive");
    CHECK(strcmp(text, buffered) == 0, "the buffered bytes changed");
    CHECK(ppid == getpid(), "the relay has another parent");
    CHECK(pgrp == my_pgrp, "the relay left its process group");
    int st = 0;
    CHECK(waitpid(exited, &st, 0) == exited, "the exited child is not ours to reap");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 7, "the exited child lost its exit code");
    kill(relay, SIGKILL);
    kill(leader, SIGKILL);
    CHECK(waitpid(relay, NULL, 0) == relay, "the relay is not our child");
    CHECK(waitpid(leader, NULL, 0) == leader, "the leader is not our child");
    verdict("ok");
    return 0;
}
