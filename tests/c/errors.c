/* Error cases of the C ABI: NULL arguments, bad ids, released entries,
 * calls after shutdown, a full queue, failed loads, odd paths, and the
 * three ways to run a loader.
 *
 * Usage: errors <scratch-dir>   (exit 0 when every check passed)
 * Built by tests/c_abi.rs and scripts/c-sanitize.sh with -Wall -Wextra
 * -Werror, the latter under AddressSanitizer and UBSan. */
#define _GNU_SOURCE
#include <asyncloader.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The layouts the Rust side asserts too (src/ffi/loader.rs, entry.rs). */
_Static_assert(sizeof(al_config) == 48 && _Alignof(al_config) == 8, "al_config layout");
_Static_assert(offsetof(al_config, struct_size) == 0, "al_config.struct_size");
_Static_assert(offsetof(al_config, queue_depth) == 4, "al_config.queue_depth");
_Static_assert(offsetof(al_config, max_file_size) == 8, "al_config.max_file_size");
_Static_assert(offsetof(al_config, direct) == 28, "al_config.direct");
_Static_assert(offsetof(al_config, backend) == 40, "al_config.backend");
_Static_assert(sizeof(al_stats) == 88 && _Alignof(al_stats) == 8, "al_stats layout");
_Static_assert(offsetof(al_stats, state) == 4, "al_stats.state");
_Static_assert(offsetof(al_stats, backend) == 72, "al_stats.backend");
_Static_assert(sizeof(al_entry_info) == 48 && _Alignof(al_entry_info) == 8, "al_entry_info");
_Static_assert(offsetof(al_entry_info, error) == 4, "al_entry_info.error");

static int failures;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                              \
        }                                                                            \
    } while (0)

#define CHECK_RC(expr, want)                                                          \
    do {                                                                              \
        int rc_ = (expr);                                                             \
        int want_ = (want);                                                           \
        if (rc_ != want_) {                                                           \
            fprintf(stderr, "%s:%d: %s = %d (%s), want %d (%s)\n", __FILE__, __LINE__, \
                    #expr, rc_, al_strerror(rc_), want_, al_strerror(want_));         \
            failures++;                                                               \
        }                                                                             \
    } while (0)

#define SEC 1000000000LL

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Writes `size` bytes of a pattern derived from `seed` to dir/name. */
static char *make_file(const char *dir, const char *name, size_t size, unsigned seed) {
    char *p = join(dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(p);
        exit(2);
    }
    unsigned char *buf = malloc(size ? size : 1);
    for (size_t i = 0; i < size; i++) buf[i] = (unsigned char)(seed * 31u + i * 7u + (i >> 8));
    if (write(fd, buf, size) != (ssize_t)size) {
        perror("write");
        exit(2);
    }
    free(buf);
    close(fd);
    return p;
}

/* 1 when the entry holds exactly the bytes of the file at `path`. */
static int same_as_file(const al_entry *e, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    struct stat st;
    fstat(fd, &st);
    size_t n = (size_t)st.st_size;
    unsigned char *buf = malloc(n ? n : 1);
    int ok = read(fd, buf, n) == (ssize_t)n && al_entry_size(e) == n && al_entry_error(e) == 0 &&
             al_entry_data(e) != NULL && memcmp(buf, al_entry_data(e), n) == 0;
    free(buf);
    close(fd);
    return ok;
}

static al_entry *get(al_worker *w) {
    al_entry *e = NULL;
    CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
    return e;
}

static al_config small_config(void) {
    al_config c = {.struct_size = sizeof c};
    CHECK_RC(al_config_default(&c), 0);
    c.queue_depth = 4;
    c.n_workers = 2;
    c.max_file_size = 1 << 20;
    c.loader_threads = 1;
    c.dispatch_n = 1;
    return c;
}

static void test_versions(void) {
    CHECK(al_abi_version() == AL_ABI_VERSION);
    CHECK(strcmp(al_version(), AL_VERSION_STRING) == 0);
    CHECK(al_strerror(0) != NULL);
    CHECK(strstr(al_strerror(-EAGAIN), "EAGAIN") != NULL);
    CHECK(strcmp(al_strerror(ENOENT), al_strerror(-ENOENT)) == 0);
    CHECK(al_strerror(INT_MIN) != NULL && al_strerror(123456) != NULL);
}

static void test_null_arguments(void) {
    al_config c = {.struct_size = sizeof c};
    CHECK_RC(al_config_default(NULL), -EINVAL);
    CHECK_RC(al_config_default(&c), 0);
    CHECK(c.queue_depth == 64 && c.n_workers == 1 && c.loader_threads == 0 && !c.direct);
    CHECK(c.backend == AL_BACKEND_AUTO);

    al_loader *l = (al_loader *)&c; /* must stay untouched on failure */
    CHECK_RC(al_loader_new(NULL, &l), -EINVAL);
    CHECK(l == (al_loader *)&c);
    CHECK_RC(al_loader_new(&c, NULL), -EINVAL);
    CHECK_RC(al_loader_start(NULL), -EINVAL);
    CHECK_RC(al_loader_spawn(NULL), -EINVAL);
    CHECK_RC(al_loader_become(NULL), -EINVAL);
    CHECK_RC(al_loader_shutdown(NULL), -EINVAL);
    al_loader_free(NULL);
    CHECK(al_loader_name(NULL) == NULL);
    CHECK_RC(al_loader_attach(NULL, &l), -EINVAL);
    CHECK_RC(al_loader_attach("asyncloader-1-2-3", NULL), -EINVAL);
    CHECK_RC(al_loader_attach("not a loader", &l), -EINVAL);
    CHECK_RC(al_loader_attach("asyncloader-999999999-3-ff", &l), -EOWNERDEAD);
    al_worker *w = NULL;
    CHECK_RC(al_loader_worker(NULL, 0, &w), -EINVAL);
    al_stats s = {.struct_size = sizeof s};
    CHECK_RC(al_loader_stats(NULL, &s), -EINVAL);
    CHECK_RC(al_loader_config(NULL, &c), -EINVAL);

    al_worker_free(NULL);
    CHECK(al_worker_id(NULL) == UINT32_MAX);
    CHECK(al_worker_outstanding(NULL) == 0);
    CHECK_RC(al_worker_request(NULL, "/etc/hostname"), -EINVAL);
    CHECK_RC(al_worker_request_bytes(NULL, (const uint8_t *)"/x", 2), -EINVAL);
    size_t n = 99;
    const char *paths[1] = {"/etc/hostname"};
    CHECK_RC(al_worker_request_many(NULL, paths, 1, &n), -EINVAL);
    CHECK(n == 0);
    al_entry *e = NULL;
    CHECK_RC(al_worker_try_get(NULL, &e), -EINVAL);
    CHECK_RC(al_worker_wait_get(NULL, 0, &e), -EINVAL);
    n = 99;
    CHECK_RC(al_worker_get_many(NULL, &e, 1, 0, &n), -EINVAL);
    CHECK(n == 0);

    CHECK(al_entry_path(NULL) == NULL);
    CHECK(al_entry_path_len(NULL) == 0);
    CHECK(al_entry_data(NULL) == NULL);
    CHECK(al_entry_size(NULL) == 0);
    CHECK(al_entry_error(NULL) == -EINVAL);
    CHECK(al_entry_latency_ns(NULL) == 0);
    al_entry_info info = {.struct_size = sizeof info};
    CHECK_RC(al_entry_get_info(NULL, &info), -EINVAL);
    CHECK_RC(al_entry_release(NULL), -EINVAL);
    CHECK(al_entry_release_many(NULL, 3) == 0);
    al_entry *none[2] = {NULL, NULL};
    CHECK(al_entry_release_many(none, 2) == 0);
}

static void test_bad_config(void) {
    al_loader *l = NULL;
    al_config c = small_config();
    c.queue_depth = 0;
    CHECK_RC(al_loader_new(&c, &l), -EINVAL);
    c = small_config();
    c.n_workers = 0;
    CHECK_RC(al_loader_new(&c, &l), -EINVAL);
    c = small_config();
    c.backend = 7;
    CHECK_RC(al_loader_new(&c, &l), -EINVAL);
    c = small_config();
    c.max_file_size = UINT64_MAX;
    CHECK_RC(al_loader_new(&c, &l), -EINVAL);
    CHECK(l == NULL);
}

/* The main sequence: one loader, queue_depth 4, two workers. */
static void test_worker_and_entries(const char *dir) {
    char *small = make_file(dir, "small.bin", 1000, 1);
    char *empty = make_file(dir, "empty.bin", 0, 2);
    char *big = make_file(dir, "big.bin", (1 << 20) + 1, 3);
    char *exact = make_file(dir, "exact.bin", 1 << 20, 4);
    char *odd = make_file(dir, "\xff\xfe-not-utf8", 5000, 5);
    char *missing = join(dir, "missing");

    al_config c = small_config();
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    if (!l) return;
    CHECK(strncmp(al_loader_name(l), "asyncloader-", 12) == 0);
    al_config got_cfg = {.struct_size = sizeof got_cfg};
    CHECK_RC(al_loader_config(l, &got_cfg), 0);
    CHECK(got_cfg.queue_depth == 4 && got_cfg.n_workers == 2 && got_cfg.loader_threads == 1);

    al_worker *w = NULL, *w1 = NULL;
    CHECK_RC(al_loader_worker(l, 2, &w), -EINVAL);
    CHECK_RC(al_loader_worker(l, UINT32_MAX, &w), -EINVAL);
    CHECK(w == NULL);
    CHECK_RC(al_loader_worker(l, 0, NULL), -EINVAL);
    CHECK_RC(al_loader_worker(l, 0, &w), 0);
    CHECK_RC(al_loader_worker(l, 1, &w1), 0);
    CHECK(al_worker_id(w) == 0 && al_worker_id(w1) == 1);

    /* Bad paths: nothing gets queued. */
    CHECK_RC(al_worker_request(w, NULL), -EINVAL);
    CHECK_RC(al_worker_request(w, ""), -EINVAL);
    CHECK_RC(al_worker_request_bytes(w, NULL, 3), -EINVAL);
    CHECK_RC(al_worker_request_bytes(w, (const uint8_t *)"/etc\0x", 6), -EINVAL);
    char *longp = malloc(5000);
    memset(longp, 'a', 5000);
    longp[0] = '/';
    longp[4096] = 0;
    CHECK_RC(al_worker_request(w, longp), -ENAMETOOLONG);
    CHECK_RC(al_worker_request_bytes(w, (const uint8_t *)longp, 5000), -ENAMETOOLONG);
    CHECK(al_worker_outstanding(w) == 0);

    /* No loader runs yet: requests queue up until queue_depth, then EAGAIN. */
    al_entry *e = NULL;
    CHECK_RC(al_worker_try_get(w, NULL), -EINVAL);
    CHECK_RC(al_worker_try_get(w, &e), -EAGAIN);
    CHECK_RC(al_worker_wait_get(w, 0, &e), -ETIMEDOUT);
    CHECK_RC(al_worker_wait_get(w, 1000000, &e), -ETIMEDOUT);
    CHECK(e == NULL);
    CHECK_RC(al_worker_request(w, small), 0);
    CHECK_RC(al_worker_request(w, missing), 0);
    CHECK_RC(al_worker_request(w, dir), 0);
    CHECK_RC(al_worker_request(w, odd), 0);
    CHECK_RC(al_worker_request(w, empty), -EAGAIN);
    CHECK(al_worker_outstanding(w) == 4);
    al_stats s = {.struct_size = sizeof s};
    CHECK_RC(al_loader_stats(l, &s), 0);
    CHECK(s.state == AL_STATE_CREATED && s.requests == 4 && s.backend == 0);

    CHECK_RC(al_loader_start(l), 0);
    CHECK_RC(al_loader_start(l), -EBUSY);
    CHECK_RC(al_loader_spawn(l), -EBUSY);

    al_entry *es[4];
    for (int i = 0; i < 4; i++) es[i] = get(w);
    for (int i = 0; i < 4; i++) {
        e = es[i];
        if (!e) continue;
        const char *p = al_entry_path(e);
        CHECK(p != NULL && strlen(p) == al_entry_path_len(e));
        CHECK(al_entry_latency_ns(e) > 0);
        CHECK(al_entry_data(e) != NULL && ((uintptr_t)al_entry_data(e) & 4095) == 0);
        if (strcmp(p, small) == 0) {
            CHECK(same_as_file(e, small));
            al_entry_info info = {.struct_size = sizeof info};
            CHECK_RC(al_entry_get_info(e, NULL), -EINVAL);
            CHECK_RC(al_entry_get_info(e, &info), 0);
            CHECK(info.path == p && info.path_len == strlen(small) && info.size == 1000);
            CHECK(info.data == al_entry_data(e) && info.error == 0);
            CHECK(info.latency_ns == al_entry_latency_ns(e));
        } else if (strcmp(p, missing) == 0) {
            CHECK(al_entry_error(e) == ENOENT && al_entry_size(e) == 0);
        } else if (strcmp(p, dir) == 0) {
            CHECK(al_entry_error(e) == EISDIR && al_entry_size(e) == 0);
        } else if (strcmp(p, odd) == 0) {
            CHECK(same_as_file(e, odd));
        } else {
            fprintf(stderr, "unexpected path %s\n", p);
            failures++;
        }
    }
    CHECK(al_worker_outstanding(w) == 4);

    /* Release, then use again: every accessor refuses, release is harmless. */
    al_entry *stale = es[0];
    CHECK_RC(al_entry_release(stale), 0);
    CHECK(al_worker_outstanding(w) == 3);
    CHECK(al_entry_path(stale) == NULL && al_entry_data(stale) == NULL);
    CHECK(al_entry_size(stale) == 0 && al_entry_path_len(stale) == 0);
    CHECK(al_entry_error(stale) == -EINVAL && al_entry_latency_ns(stale) == 0);
    al_entry_info info = {.struct_size = sizeof info};
    CHECK_RC(al_entry_get_info(stale, &info), -EINVAL);
    CHECK_RC(al_entry_release(stale), -EINVAL);
    CHECK_RC(al_entry_release(stale), -EINVAL);
    CHECK(al_entry_release_many(es, 4) == 3); /* es[0] is skipped */
    CHECK(al_entry_release_many(es, 4) == 0);
    CHECK(al_worker_outstanding(w) == 0);

    /* The same slots come back with new generations: stale handles stay dead. */
    CHECK_RC(al_worker_request(w, empty), 0);
    e = get(w);
    CHECK(e != stale && al_entry_error(stale) == -EINVAL);
    CHECK(e && al_entry_size(e) == 0 && al_entry_error(e) == 0 && al_entry_data(e) != NULL);
    al_entry_release(e);
    CHECK(al_entry_error(e) == -EINVAL);

    /* Paths as bytes: no NUL needed, non-UTF-8 fine. */
    size_t len = strlen(small);
    char *nonul = malloc(len + 8);
    memcpy(nonul, small, len);
    memcpy(nonul + len, "XXXXXXXX", 8);
    CHECK_RC(al_worker_request_bytes(w, (const uint8_t *)nonul, len), 0);
    CHECK_RC(al_worker_request_bytes(w, (const uint8_t *)odd, strlen(odd)), 0);
    for (int i = 0; i < 2; i++) {
        e = get(w);
        if (!e) continue;
        const char *p = al_entry_path(e);
        CHECK(strcmp(p, small) == 0 || strcmp(p, odd) == 0);
        CHECK(same_as_file(e, p));
        al_entry_release(e);
    }
    free(nonul);

    /* Size limit: max_file_size loads, one byte more is EFBIG. */
    CHECK_RC(al_worker_request(w, exact), 0);
    CHECK_RC(al_worker_request(w, big), 0);
    for (int i = 0; i < 2; i++) {
        e = get(w);
        if (!e) continue;
        if (strcmp(al_entry_path(e), exact) == 0)
            CHECK(same_as_file(e, exact));
        else
            CHECK(al_entry_error(e) == EFBIG && al_entry_size(e) == 0);
        al_entry_release(e);
    }

    /* Batch calls: request_many stops at the first failure. */
    const char *batch[4] = {small, empty, longp, odd};
    size_t acc = 99, got = 99;
    CHECK_RC(al_worker_request_many(w, batch, 4, &acc), -ENAMETOOLONG);
    CHECK(acc == 2);
    CHECK_RC(al_worker_request_many(w, batch + 3, 1, &acc), 0);
    CHECK(acc == 1);
    CHECK_RC(al_worker_request_many(w, NULL, 0, &acc), 0);
    CHECK(acc == 0);
    CHECK_RC(al_worker_get_many(w, es, 0, 0, &got), -EINVAL);
    CHECK_RC(al_worker_get_many(w, NULL, 4, 0, &got), -EINVAL);
    size_t have = 0;
    while (have < 3) {
        CHECK_RC(al_worker_get_many(w, es + have, 4 - have, 10 * SEC, &got), 0);
        if (got == 0) break;
        have += got;
    }
    CHECK(have == 3);
    for (size_t i = 0; i < have; i++) CHECK(same_as_file(es[i], al_entry_path(es[i])));
    CHECK(al_entry_release_many(es, have) == have);

    /* A freed worker: its entries outlive it, its handle refuses calls. */
    CHECK_RC(al_worker_request(w1, small), 0);
    e = get(w1);
    al_worker_free(w1);
    CHECK(same_as_file(e, small));
    CHECK(al_worker_id(w1) == UINT32_MAX); /* kept alive by e */
    CHECK_RC(al_worker_request(w1, small), -EINVAL);
    al_worker_free(w1); /* second free: ignored while e lives */
    al_entry_release(e);
    /* w1 and e are gone now; do not touch them. */

    CHECK_RC(al_loader_stats(l, NULL), -EINVAL);
    CHECK_RC(al_loader_stats(l, &s), 0);
    CHECK(s.state == AL_STATE_RUNNING && s.loader_threads == 1);
    CHECK(s.backend == AL_BACKEND_IO_URING || s.backend == AL_BACKEND_THREADS);
    CHECK(s.requests == 13 && s.completions == 13 && s.errors == 3);
    CHECK(s.loader_pid == (int32_t)getpid() && s.struct_size == sizeof s);

    /* Shutdown: everything fails cleanly, nothing hangs. */
    CHECK_RC(al_loader_shutdown(l), 0);
    CHECK_RC(al_loader_shutdown(l), 0);
    CHECK_RC(al_loader_stats(l, &s), 0);
    CHECK(s.state == AL_STATE_STOPPED);
    CHECK_RC(al_worker_request(w, small), -ESHUTDOWN);
    CHECK_RC(al_worker_try_get(w, &e), -ESHUTDOWN);
    CHECK_RC(al_worker_wait_get(w, -1, &e), -ESHUTDOWN);
    CHECK_RC(al_worker_wait_get(w, INT64_MAX, &e), -ESHUTDOWN);
    got = 99;
    CHECK_RC(al_worker_get_many(w, es, 4, -1, &got), -ESHUTDOWN);
    CHECK(got == 0);
    al_worker *w2 = NULL;
    CHECK_RC(al_loader_worker(l, 0, &w2), -ESHUTDOWN);
    CHECK(w2 == NULL);
    CHECK_RC(al_loader_start(l), -ESHUTDOWN);
    CHECK_RC(al_loader_spawn(l), -ESHUTDOWN);
    CHECK_RC(al_loader_become(l), -ESHUTDOWN);

    /* Workers outlive the loader handle; they just report the shutdown. */
    al_loader_free(l);
    CHECK_RC(al_worker_request(w, small), -ESHUTDOWN);
    al_worker_free(w);

    free(longp);
    free(small);
    free(empty);
    free(big);
    free(exact);
    free(odd);
    free(missing);
}

/* One round trip through a loader, after `run` started it. */
static void round_trip(al_loader *l, const char *path) {
    al_worker *w = NULL;
    CHECK_RC(al_loader_worker(l, 0, &w), 0);
    if (!w) return;
    CHECK_RC(al_worker_request(w, path), 0);
    al_entry *e = get(w);
    CHECK(e && same_as_file(e, path));
    al_entry_release(e);
    al_worker_free(w);
}

static void test_spawn(const char *dir) {
    char *p = make_file(dir, "spawned.bin", 70000, 9);
    al_config c = small_config();
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    CHECK_RC(al_loader_spawn(l), 0);
    round_trip(l, p);
    al_stats s = {.struct_size = sizeof s};
    CHECK_RC(al_loader_stats(l, &s), 0);
    CHECK(s.loader_pid > 0 && s.loader_pid != (int32_t)getpid());
    CHECK_RC(al_loader_shutdown(l), 0);
    CHECK_RC(al_loader_stats(l, &s), 0);
    CHECK(s.state == AL_STATE_STOPPED);
    al_loader_free(l);
    free(p);
}

/* A worker whose user vanished with entries held and requests queued: the
 * loader takes its slots back; prefaulting is harmless meanwhile. */
static void test_reclaim_and_prefault(const char *dir) {
    char *p = make_file(dir, "reclaimed.bin", 12345, 11);
    al_config c = small_config();
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    CHECK_RC(al_loader_prefault(l), 0);
    CHECK_RC(al_loader_prefault(NULL), -EINVAL);
    CHECK_RC(al_loader_start(l), 0);
    al_worker *w = NULL;
    CHECK_RC(al_loader_worker(l, 0, &w), 0);
    for (int i = 0; i < 4; i++) CHECK_RC(al_worker_request(w, p), 0);
    CHECK_RC(al_worker_request(w, p), -EAGAIN);
    al_entry *held = get(w); /* held, never released by its "owner" */
    CHECK(held != NULL && same_as_file(held, p));
    uint32_t n = 0;
    CHECK_RC(al_loader_reclaim_worker(l, 0, &n), 0);
    CHECK(n == 4);
    CHECK(al_worker_outstanding(w) == 0);
    CHECK_RC(al_loader_reclaim_worker(l, 99, &n), -EINVAL);
    CHECK_RC(al_loader_reclaim_worker(NULL, 0, &n), -EINVAL);
    al_entry_release(held); /* stale after the reclaim: harmless */
    al_worker_free(w);
    round_trip(l, p);
    CHECK_RC(al_loader_shutdown(l), 0);
    al_loader_free(l);
    free(p);
}

static void *become_thread(void *arg) {
    static int rc;
    rc = al_loader_become((al_loader *)arg);
    return &rc;
}

static void test_become(const char *dir) {
    char *p = make_file(dir, "become.bin", 3000, 10);
    al_config c = small_config();
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    pthread_t t;
    pthread_create(&t, NULL, become_thread, l);
    round_trip(l, p); /* requests queue until the loader runs */
    CHECK_RC(al_loader_shutdown(l), 0);
    void *res = NULL;
    pthread_join(t, &res);
    CHECK_RC(*(int *)res, 0);
    al_loader_free(l);
    free(p);
}

/* al_loader_free shuts down a running loader; workers then see ESHUTDOWN. */
static void test_free_running(const char *dir) {
    char *p = make_file(dir, "free.bin", 10, 11);
    al_config c = small_config();
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    CHECK_RC(al_loader_start(l), 0);
    al_worker *w = NULL;
    CHECK_RC(al_loader_worker(l, 0, &w), 0);
    CHECK_RC(al_worker_request(w, p), 0);
    al_entry *e = get(w);
    al_loader_free(l);
    CHECK(same_as_file(e, p)); /* the entry keeps the memory mapped */
    al_entry_release(e);
    al_entry *e2 = NULL;
    CHECK_RC(al_worker_wait_get(w, -1, &e2), -ESHUTDOWN);
    al_worker_free(w);
    free(p);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s <scratch-dir>\n", argv[0]);
        return 2;
    }
    test_versions();
    test_null_arguments();
    test_bad_config();
    test_worker_and_entries(argv[1]);
    test_spawn(argv[1]);
    test_reclaim_and_prefault(argv[1]);
    test_become(argv[1]);
    test_free_running(argv[1]);
    if (failures) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("errors: all checks passed\n");
    return 0;
}
