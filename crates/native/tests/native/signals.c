/* Signals: a SA_SIGINFO|SA_RESTART handler with a mask, an ignored signal, a blocked
 * signal, an alternate signal stack; after restore the handler still runs (on the
 * alternate stack). argv: RESULT. */
#include "common.h"
#include <stdint.h>

static volatile sig_atomic_t usr2_seen, usr2_on_altstack;
static char altstack[65536];

static void on_usr2(int sig, siginfo_t *si, void *uc) {
    (void)sig; (void)uc;
    char probe;
    usr2_on_altstack = (uintptr_t)&probe >= (uintptr_t)altstack &&
                       (uintptr_t)&probe < (uintptr_t)altstack + sizeof altstack;
    usr2_seen = si->si_signo;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    setup_check(argv[1]);
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr2;
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGINT);
    sigaction(SIGUSR2, &sa, NULL);
    signal(SIGTERM, SIG_IGN);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGRTMIN + 3);
    sigprocmask(SIG_BLOCK, &block, NULL);

    ready();
    wait_check();

    struct sigaction cur;
    sigaction(SIGUSR2, NULL, &cur);
    CHECK(cur.sa_sigaction == on_usr2, "SIGUSR2 handler");
    CHECK((cur.sa_flags & (SA_SIGINFO | SA_RESTART | SA_ONSTACK)) ==
              (SA_SIGINFO | SA_RESTART | SA_ONSTACK), "SIGUSR2 flags");
    CHECK(sigismember(&cur.sa_mask, SIGINT) == 1, "SIGUSR2 mask");
    sigaction(SIGTERM, NULL, &cur);
    CHECK(cur.sa_handler == SIG_IGN, "SIGTERM ignored");
    sigaction(SIGQUIT, NULL, &cur);
    CHECK(cur.sa_handler == SIG_DFL, "SIGQUIT default");
    sigset_t now;
    sigprocmask(SIG_BLOCK, NULL, &now);
    CHECK(sigismember(&now, SIGHUP) == 1 && sigismember(&now, SIGRTMIN + 3) == 1, "blocked");
    CHECK(sigismember(&now, SIGUSR2) == 0, "SIGUSR2 not blocked");
    stack_t cs;
    sigaltstack(NULL, &cs);
    CHECK(cs.ss_sp == altstack && cs.ss_size == sizeof altstack, "sigaltstack");
    raise(SIGUSR2);
    CHECK(usr2_seen == SIGUSR2, "SIGUSR2 delivered");
    CHECK(usr2_on_altstack, "handler on the alternate stack");
    kill(getpid(), SIGHUP); /* blocked: must not kill us */
    sigset_t pend;
    sigpending(&pend);
    CHECK(sigismember(&pend, SIGHUP) == 1, "SIGHUP pending");
    verdict("ok");
    return 0;
}
