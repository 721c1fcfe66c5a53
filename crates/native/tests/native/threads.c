/* Many threads: each counts in a loop checking its thread-local value, has a name and its
 * TID; one waits on a condition variable across the checkpoint. After restore every thread
 * must be there with its TID and name and go on counting, and the waiting one must wake when
 * signalled. argv: RESULT. */
#include "common.h"
#include <pthread.h>
#include <sys/syscall.h>

#define N 8
static volatile long counters[N];
static volatile pid_t tids[N];
static __thread long tls_value;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int woken;

static void *worker(void *arg) {
    long i = (long)arg;
    tls_value = 1000 + i;
    char name[16];
    snprintf(name, sizeof name, "worker-%ld", i);
    pthread_setname_np(pthread_self(), name);
    tids[i] = syscall(SYS_gettid);
    if (i == 0) {
        pthread_mutex_lock(&mu);
        while (!woken) pthread_cond_wait(&cv, &mu);
        pthread_mutex_unlock(&mu);
        counters[0] = tls_value == 1000 ? -1 : -2;
        return NULL;
    }
    for (;;) {
        if (tls_value != 1000 + i) {
            counters[i] = -2;
            return NULL;
        }
        counters[i]++;
        if (counters[i] % 1000 == 0) usleep(200);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    setup_check(argv[1]);
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    /* The workers inherit SIGUSR1 blocked: the check request goes to the main thread. */
    pthread_sigmask(SIG_BLOCK, &usr1, &old);
    pthread_t th[N];
    for (long i = 0; i < N; i++) pthread_create(&th[i], NULL, worker, (void *)i);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    for (int i = 0; i < N; i++)
        while (!tids[i]) usleep(1000);
    usleep(50000);
    ready();
    wait_check();

    for (int i = 1; i < N; i++) {
        long a = counters[i];
        usleep(50000);
        CHECK(counters[i] != -2, "a thread-local value changed");
        CHECK(counters[i] > a, "a thread stopped counting");
        char path[64], name[32] = {0}, want[16];
        snprintf(path, sizeof path, "/proc/self/task/%d/comm", tids[i]);
        FILE *f = fopen(path, "r");
        CHECK(f != NULL, "a thread's TID is gone");
        CHECK(fgets(name, sizeof name, f) != NULL, "unreadable comm");
        fclose(f);
        snprintf(want, sizeof want, "worker-%d\n", i);
        CHECK(strcmp(name, want) == 0, "a thread's name changed");
    }
    pthread_mutex_lock(&mu);
    woken = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(th[0], NULL);
    CHECK(counters[0] == -1, "the waiting thread did not wake with its state");
    verdict("ok");
    _exit(0);
}
