/* One of each kind of file and timer that is not a plain path: an eventfd with its count, a
 * periodic timerfd, a signalfd with a queued (blocked) signal carrying a value, an epoll set
 * watching the eventfd and a pipe with a byte in it, two fds sharing one open file (offset),
 * and an armed interval timer. After restore each must be as before. argv: DIR RESULT. */
#include "common.h"
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/time.h>
#include <sys/timerfd.h>

static void on_alarm(int s) { (void)s; }

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    setup_check(argv[2]);
    char path[512];
    snprintf(path, sizeof path, "%s/shared-offset", argv[1]);
    int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    char zeros[100] = {0};
    if (write(f, zeros, sizeof zeros) != sizeof zeros) return 3;
    int d = dup(f);
    lseek(f, 10, SEEK_SET);

    int efd = eventfd(5, EFD_NONBLOCK);
    eventfd_write(efd, 2);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    struct itimerspec its = {{0, 20 * 1000 * 1000}, {0, 20 * 1000 * 1000}};
    timerfd_settime(tfd, 0, &its, NULL);
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2, NULL);
    int sfd = signalfd(-1, &usr2, SFD_NONBLOCK);
    union sigval v = {.sival_int = 4242};
    sigqueue(getpid(), SIGUSR2, v);
    int p[2];
    if (pipe(p)) return 3;
    if (write(p[1], "x", 1) != 1) return 3;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e1 = {.events = EPOLLIN, .data.u64 = 0xabc};
    struct epoll_event e2 = {.events = EPOLLIN, .data.u64 = 0xdef};
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &e1);
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e2);
    signal(SIGALRM, on_alarm);
    struct itimerval it = {{0, 0}, {1000, 0}};
    setitimer(ITIMER_REAL, &it, NULL);
    ready();
    wait_check();

    CHECK(lseek(d, 0, SEEK_CUR) == 10, "the dup lost the shared offset");
    lseek(f, 20, SEEK_SET);
    CHECK(lseek(d, 0, SEEK_CUR) == 20, "the two fds no longer share one open file");
    struct epoll_event evs[4];
    int n = epoll_wait(ep, evs, 4, 1000);
    CHECK(n == 2, "epoll does not report both watched fds");
    unsigned long long seen = evs[0].data.u64 ^ evs[1].data.u64;
    CHECK(seen == (0xabcULL ^ 0xdefULL), "epoll user data changed");
    CHECK(fcntl(ep, F_GETFD) & FD_CLOEXEC, "epoll lost close-on-exec");
    eventfd_t count = 0;
    CHECK(eventfd_read(efd, &count) == 0 && count == 7, "the eventfd count changed");
    CHECK(fcntl(efd, F_GETFL) & O_NONBLOCK, "the eventfd lost O_NONBLOCK");
    char c = 0;
    CHECK(read(p[0], &c, 1) == 1 && c == 'x', "the pipe lost its byte");
    struct signalfd_siginfo si;
    CHECK(read(sfd, &si, sizeof si) == sizeof si, "the queued signal is gone");
    CHECK(si.ssi_signo == SIGUSR2 && si.ssi_int == 4242, "the queued signal changed");
    unsigned long long ticks = 0;
    CHECK(read(tfd, &ticks, sizeof ticks) == sizeof ticks && ticks >= 1, "the timerfd is dead");
    struct itimerval now;
    getitimer(ITIMER_REAL, &now);
    CHECK(now.it_value.tv_sec > 900 && now.it_value.tv_sec <= 1000, "the itimer was lost");
    verdict("ok");
    return 0;
}
