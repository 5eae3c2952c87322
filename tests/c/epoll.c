/* The completion eventfd (al_worker_eventfd) in an epoll loop, and
 * al_worker_dispatch: two workers on one epoll instance, every byte compared
 * with its file, with loader threads and with a spawned loader process;
 * shutdown wakes the loop. A tests/c/runner.h program (see there). */
#include "runner.h"

#include <sys/epoll.h>

#define NFILES 200
#define NWORKERS 2

struct ctx {
    char **paths;   /* NFILES paths */
    int next[NWORKERS]; /* next file index to request, per worker */
    int got;        /* entries checked */
    int bad;        /* entries that differ from their file */
};

static al_loader *new_loader(int spawn) {
    al_config c = {.struct_size = sizeof c};
    CHECK_RC(al_config_default(&c), 0);
    c.n_workers = NWORKERS;
    c.queue_depth = 8;
    c.loader_threads = 2;
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    CHECK_RC(spawn ? al_loader_spawn(l) : al_loader_start(l), 0);
    return l;
}

static char **make_files(void) {
    char **paths = malloc(NFILES * sizeof *paths);
    for (int i = 0; i < NFILES; i++) {
        char name[32];
        snprintf(name, sizeof name, "f%03d.bin", i);
        paths[i] = make_file(name, (size_t)(i * 331) % 70000, (unsigned)i);
    }
    return paths;
}

static void free_files(char **paths) {
    for (int i = 0; i < NFILES; i++) free(paths[i]);
    free(paths);
}

/* Worker k requests the files i with i % NWORKERS == k, as many as fit. */
static void refill(al_worker *w, int k, struct ctx *x) {
    while (x->next[k] < NFILES) {
        int rc = al_worker_request(w, x->paths[x->next[k]]);
        if (rc == -EAGAIN) return;
        CHECK_RC(rc, 0);
        x->next[k] += NWORKERS;
    }
}

static void on_entry(al_entry *e, void *p) {
    struct ctx *x = p;
    const char *path = al_entry_path(e);
    if (!same_as_file(e, path)) x->bad++;
    x->got++;
    CHECK_RC(al_entry_release(e), 0);
}

/* One epoll loop over both workers' eventfds until every file came back.
 * With `dispatch`, entries go through al_worker_dispatch; else try_get. */
static void epoll_loop(int spawn, int dispatch) {
    al_loader *l = new_loader(spawn);
    al_worker *w[NWORKERS];
    int fd[NWORKERS];
    struct ctx x = {.paths = make_files()};
    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0);
    for (int k = 0; k < NWORKERS; k++) {
        CHECK_RC(al_loader_worker(l, (uint32_t)k, &w[k]), 0);
        CHECK_RC(al_worker_eventfd(w[k], &fd[k]), 0);
        int again = -1;
        CHECK_RC(al_worker_eventfd(w[k], &again), 0);
        CHECK(again == fd[k]);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)k};
        CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd[k], &ev) == 0);
        x.next[k] = k;
        refill(w[k], k, &x);
    }
    while (x.got < NFILES && !failures) {
        struct epoll_event evs[NWORKERS];
        int n = epoll_wait(ep, evs, NWORKERS, 10000);
        if (n <= 0) {
            fprintf(stderr, "epoll_wait: %d after %d entries (lost wake-up?)\n", n, x.got);
            failures++;
            break;
        }
        for (int i = 0; i < n; i++) {
            int k = (int)evs[i].data.u32;
            uint64_t v;
            (void)!read(fd[k], &v, sizeof v); /* EAGAIN is fine */
            if (dispatch) {
                int rc;
                while ((rc = al_worker_dispatch(w[k], 3, on_entry, &x)) > 0) refill(w[k], k, &x);
                CHECK_RC(rc, 0);
            } else {
                al_entry *e;
                int rc;
                while ((rc = al_worker_try_get(w[k], &e)) == 0) {
                    on_entry(e, &x);
                    refill(w[k], k, &x);
                }
                CHECK_RC(rc, -EAGAIN);
            }
            refill(w[k], k, &x);
        }
    }
    CHECK(x.got == NFILES);
    CHECK(x.bad == 0);
    for (int k = 0; k < NWORKERS; k++) al_worker_free(w[k]);
    close(ep);
    CHECK_RC(al_loader_shutdown(l), 0);
    al_loader_free(l);
    free_files(x.paths);
}

static void two_workers_on_one_epoll_loop_with_loader_threads(void) {
    epoll_loop(0, 0);
}

static void two_workers_on_one_epoll_loop_with_a_loader_process(void) {
    epoll_loop(1, 0);
}

static void dispatch_delivers_every_entry_to_the_callback(void) {
    epoll_loop(0, 1);
}

static void dispatch_and_eventfd_reject_bad_arguments(void) {
    al_loader *l = new_loader(0);
    al_worker *w = NULL;
    CHECK_RC(al_loader_worker(l, 0, &w), 0);
    int fd = -1;
    CHECK_RC(al_worker_eventfd(NULL, &fd), -EINVAL);
    CHECK_RC(al_worker_eventfd(w, NULL), -EINVAL);
    CHECK(fd == -1);
    struct ctx x = {0};
    CHECK_RC(al_worker_dispatch(NULL, 1, on_entry, &x), -EINVAL);
    CHECK_RC(al_worker_dispatch(w, 1, NULL, &x), -EINVAL);
    CHECK_RC(al_worker_dispatch(w, 0, on_entry, &x), -EINVAL);
    CHECK_RC(al_worker_dispatch(w, 4, on_entry, &x), 0);
    al_worker_free(w);
    CHECK_RC(al_loader_shutdown(l), 0);
    al_loader_free(l);
}

static void shutdown_wakes_the_loop_and_try_get_says_eshutdown(void) {
    al_loader *l = new_loader(1);
    al_worker *w = NULL;
    CHECK_RC(al_loader_worker(l, 0, &w), 0);
    int fd = -1;
    CHECK_RC(al_worker_eventfd(w, &fd), 0);
    pid_t pid = fork_or_exit();
    if (pid == 0) {
        usleep(100000);
        _exit(al_loader_shutdown(l) == 0 ? 0 : 1);
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0);
    CHECK(epoll_wait(ep, &ev, 1, 10000) == 1);
    uint64_t v;
    CHECK(read(fd, &v, sizeof v) == sizeof v);
    CHECK(epoll_wait(ep, &ev, 1, 0) == 1); /* stays readable */
    al_entry *e = NULL;
    CHECK_RC(al_worker_try_get(w, &e), -ESHUTDOWN);
    CHECK_RC(al_worker_dispatch(w, 1, on_entry, NULL), -ESHUTDOWN);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(ep);
    al_worker_free(w);
    al_loader_free(l);
}

static const struct test tests[] = {
    T(two_workers_on_one_epoll_loop_with_loader_threads),
    T(two_workers_on_one_epoll_loop_with_a_loader_process),
    T(dispatch_delivers_every_entry_to_the_callback),
    T(dispatch_and_eventfd_reject_bad_arguments),
    T(shutdown_wakes_the_loop_and_try_get_says_eshutdown),
};

int main(int argc, char **argv) {
    return RUN(argc, argv, tests);
}
