/* Shared by the conformance programs: readiness on stdout, SIGUSR1 asks for a check, the
 * verdict ("ok" or "bad: why") goes to the result file named by the last argument. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/close_range.h>

static volatile sig_atomic_t check_requested;
static const char *result_path;

static void on_usr1(int sig) { (void)sig; check_requested = 1; }

static void setup_check(const char *path) {
    /* Start clean: fds inherited from the test runner (e.g. a jobserver pipe) are not ours. */
    close_range(3, ~0U, 0);
    result_path = path;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
}

/* Waits for SIGUSR1 without the check-then-pause race: the signal stays blocked but inside
 * sigsuspend (which a checkpoint interrupts; the restored process sees EINTR and loops). */
__attribute__((unused)) static void wait_check(void) {
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old);
    while (!check_requested) sigsuspend(&old);
    sigprocmask(SIG_SETMASK, &old, NULL);
}

static void ready(void) {
    printf("ready\n");
    fflush(stdout);
}

static void verdict(const char *v) {
    FILE *f = fopen(result_path, "w");
    if (!f) exit(3);
    fprintf(f, "%s\n", v);
    fclose(f);
}

#define CHECK(cond, why) do { if (!(cond)) { verdict("bad: " why); exit(1); } } while (0)
