/* A multi-threaded TCP server: 4 workers serve one listening socket on 127.0.0.1 (port 0,
 * printed before "ready") — workers 0 and 1 block in accept, 2 and 3 in epoll_wait on an
 * epoll set holding it (then accept, which may block if another worker took the
 * connection first). A shared counter sits behind a mutex; each worker keeps its own
 * count of requests served in thread-local storage, mirrored in a shared array.
 * Requests, one line per connection:
 *   "inc"  -> "COUNTER WORKER SERVED" (the counter after adding one, who served, how many
 *             that worker has served), or "bad: …" if the worker's own state is wrong;
 *   "sum"  -> "COUNTER SUM" (SUM: the workers' served counts added up, equal when sound).
 * Used by tests/cr_programs.rs. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <linux/close_range.h>

#define N 4
static int lfd, epfd;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static long counter;
static long served_by[N];
static pid_t tids[N];
static __thread long my_served;
static __thread long my_index = -1;
static __thread pid_t my_tid;

static void serve(int c) {
    char buf[64];
    ssize_t n = 0, r;
    while (n < (ssize_t)sizeof buf - 1 && (r = read(c, buf + n, sizeof buf - 1 - n)) > 0) {
        n += r;
        if (memchr(buf, '\n', n)) break;
    }
    buf[n > 0 ? n : 0] = 0;
    char out[128];
    if (strncmp(buf, "inc", 3) == 0) {
        pthread_mutex_lock(&mu);
        long i = my_index;
        if (i < 0 || i >= N || my_served != served_by[i] || my_tid != syscall(SYS_gettid) ||
            tids[i] != my_tid) {
            snprintf(out, sizeof out, "bad: worker %ld served %ld, shared %ld, tid %d/%ld\n", i,
                     my_served, i >= 0 && i < N ? served_by[i] : -1, my_tid,
                     (long)syscall(SYS_gettid));
        } else {
            long v = ++counter;
            my_served++;
            served_by[i] = my_served;
            snprintf(out, sizeof out, "%ld %ld %ld\n", v, i, my_served);
        }
        pthread_mutex_unlock(&mu);
    } else if (strncmp(buf, "sum", 3) == 0) {
        pthread_mutex_lock(&mu);
        long s = 0;
        for (int i = 0; i < N; i++) s += served_by[i];
        snprintf(out, sizeof out, "%ld %ld\n", counter, s);
        pthread_mutex_unlock(&mu);
    } else {
        snprintf(out, sizeof out, "bad: request %s\n", buf);
    }
    size_t len = strlen(out), off = 0;
    while (off < len && (r = write(c, out + off, len - off)) > 0) off += r;
    close(c);
}

static void *worker(void *arg) {
    my_index = (long)arg;
    my_tid = syscall(SYS_gettid);
    char name[16];
    snprintf(name, sizeof name, "worker-%ld", my_index);
    pthread_setname_np(pthread_self(), name);
    __atomic_store_n(&tids[my_index], my_tid, __ATOMIC_SEQ_CST);
    for (;;) {
        if (my_index >= 2) {
            struct epoll_event ev;
            int r = epoll_wait(epfd, &ev, 1, -1);
            if (r < 0 && errno != EINTR) {
                perror("epoll_wait");
                exit(1);
            }
            if (r <= 0) continue;
            /* Another worker may have taken it first: then this one waits in accept for the
             * next connection, which is as good. */
            int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0) serve(c);
            else if (errno != EINTR && errno != ECONNABORTED) {
                perror("accept (epoll)");
                exit(1);
            }
        } else {
            int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0) serve(c);
            else if (errno != EINTR && errno != ECONNABORTED) {
                perror("accept");
                exit(1);
            }
        }
    }
    return NULL;
}

int main(void) {
    close_range(3, ~0U, 0);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 64)) {
        perror("bind/listen");
        return 1;
    }
    socklen_t al = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &al);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    pthread_t th[N];
    for (long i = 0; i < N; i++) pthread_create(&th[i], NULL, worker, (void *)i);
    for (int i = 0; i < N; i++)
        while (!__atomic_load_n(&tids[i], __ATOMIC_SEQ_CST)) usleep(1000);
    printf("%d\nready\n", ntohs(a.sin_port));
    fflush(stdout);
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    return 0;
}
