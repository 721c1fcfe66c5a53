/* POSIX timers: a periodic one (20 ms) delivering SIGRTMIN+1 with a value, a one-shot one
 * far in the future, and a deleted one before them, so that the IDs are not the first ones.
 * After restore both have their IDs (glibc's timer_t still names them), their period and
 * remaining time, and the periodic one goes on delivering its signal and value.
 * argv: RESULT. */
#include "common.h"
#include <stdint.h>
#include <time.h>

static volatile sig_atomic_t ticks;
static volatile int last_value, last_timer;

static void on_tick(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    ticks++;
    last_value = si->si_value.sival_int;
    last_timer = si->si_timerid;
}

static timer_t make(clockid_t clock, int sig, int value) {
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = sig;
    ev.sigev_value.sival_int = value;
    timer_t t;
    if (timer_create(clock, &ev, &t)) exit(3);
    return t;
}

static void sleep_ms(long ms) {
    struct timespec end, now;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_nsec += ms * 1000000;
    end.tv_sec += end.tv_nsec / 1000000000;
    end.tv_nsec %= 1000000000;
    do {
        struct timespec d = {0, 1000000};
        nanosleep(&d, NULL);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec < end.tv_sec || (now.tv_sec == end.tv_sec && now.tv_nsec < end.tv_nsec));
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    setup_check(argv[1]);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_tick;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGRTMIN + 1, &sa, NULL);
    signal(SIGUSR2, SIG_IGN);

    timer_t gone = make(CLOCK_MONOTONIC, SIGUSR2, 1);
    timer_t periodic = make(CLOCK_MONOTONIC, SIGRTMIN + 1, 0x5eed);
    timer_t oneshot = make(CLOCK_REALTIME, SIGUSR2, 0x77);
    timer_delete(gone);
    struct itimerspec p = {{0, 20000000}, {0, 20000000}};
    struct itimerspec o = {{0, 0}, {1000, 0}};
    if (timer_settime(periodic, 0, &p, NULL) || timer_settime(oneshot, 0, &o, NULL)) return 4;
    sleep_ms(100);
    int periodic_id = last_timer;

    ready();
    wait_check();

    struct itimerspec now;
    CHECK(timer_gettime(periodic, &now) == 0, "the periodic timer's ID");
    CHECK(now.it_interval.tv_sec == 0 && now.it_interval.tv_nsec == 20000000, "period");
    CHECK(timer_gettime(oneshot, &now) == 0, "the one-shot timer's ID");
    CHECK(now.it_interval.tv_sec == 0 && now.it_interval.tv_nsec == 0, "one-shot");
    CHECK(now.it_value.tv_sec > 900 && now.it_value.tv_sec < 1000, "remaining time");
    CHECK(timer_gettime(gone, &now) != 0, "the deleted timer stays deleted");
    int before = ticks;
    sleep_ms(200);
    CHECK(ticks - before >= 5, "periodic delivery");
    CHECK(last_value == 0x5eed, "the signal's value");
    CHECK(last_timer == periodic_id, "the signal's timer ID");
    timer_t fresh = make(CLOCK_MONOTONIC, SIGUSR2, 9);
    CHECK(fresh != periodic && fresh != oneshot, "a new timer gets a new ID");
    verdict("ok");
    return 0;
}
