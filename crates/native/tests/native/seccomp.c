/* A seccomp filter (no_new_privs set first) that makes getpid fail with EPERM, inherited by a
 * thread started after it. After restore the filter still applies in both threads, and
 * everything else is allowed. argv: RESULT. */
#include "common.h"
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static volatile int thread_verdict;

static int getpid_denied(void) {
    errno = 0;
    long r = syscall(SYS_getpid);
    return r == -1 && errno == EPERM;
}

static void *thread_main(void *arg) {
    (void)arg;
    /* The check request is the main thread's: were it handled here, the main thread would
     * wait for it for ever. */
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    while (!check_requested) usleep(1000);
    thread_verdict = getpid_denied() ? 1 : 2;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    setup_check(argv[1]);
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getpid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof code / sizeof code[0], code};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return 3;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) return 4;
    if (!getpid_denied()) return 5;
    pthread_t th;
    if (pthread_create(&th, NULL, thread_main, NULL)) return 6;

    ready();
    wait_check();

    CHECK(getpid_denied(), "getpid is still denied in the main thread");
    CHECK(getppid() > 0, "other syscalls are allowed");
    pthread_join(th, NULL);
    CHECK(thread_verdict == 1, "getpid is still denied in the other thread");
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    int mode = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Seccomp: %d", &mode) == 1) break;
    CHECK(mode == 2, "seccomp filter mode");
    verdict("ok");
    return 0;
}
