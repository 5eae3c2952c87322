/* Error cases of the C ABI, one behaviour per case: NULL arguments, bad
 * ids and configs, released entries, calls after shutdown, a full queue,
 * failed loads, odd paths, and the three ways to run a loader.
 *
 * Usage: errors list | errors <case>|all <scratch-dir>   (tests/c/runner.h)
 * Built by tests/c_abi.rs (one Rust test per case) and scripts/c-sanitize.sh
 * with -Wall -Wextra -Werror, the latter under AddressSanitizer and UBSan. */
#include "runner.h"

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* The layouts the Rust side asserts too (src/ffi/loader.rs, entry.rs). */
_Static_assert(sizeof(al_config) == 64 && _Alignof(al_config) == 8, "al_config layout");
_Static_assert(offsetof(al_config, struct_size) == 0, "al_config.struct_size");
_Static_assert(offsetof(al_config, queue_depth) == 4, "al_config.queue_depth");
_Static_assert(offsetof(al_config, max_file_size) == 8, "al_config.max_file_size");
_Static_assert(offsetof(al_config, direct) == 28, "al_config.direct");
_Static_assert(offsetof(al_config, backend) == 40, "al_config.backend");
_Static_assert(offsetof(al_config, drive) == 48, "al_config.drive (after the old size)");
_Static_assert(offsetof(al_config, arena_size) == 56, "al_config.arena_size (after the 56 bytes)");
_Static_assert(sizeof(al_stats) == 96 && _Alignof(al_stats) == 8, "al_stats layout");
_Static_assert(offsetof(al_stats, drive) == 88, "al_stats.drive");
_Static_assert(offsetof(al_stats, state) == 4, "al_stats.state");
_Static_assert(offsetof(al_stats, backend) == 72, "al_stats.backend");
_Static_assert(sizeof(al_entry_info) == 64 && _Alignof(al_entry_info) == 8, "al_entry_info");
_Static_assert(offsetof(al_entry_info, error) == 4, "al_entry_info.error");
_Static_assert(offsetof(al_entry_info, latency_ns) == 40, "al_entry_info.latency_ns");
_Static_assert(offsetof(al_entry_info, tag) == 48, "al_entry_info.tag (after the old size)");
_Static_assert(offsetof(al_entry_info, offset) == 56, "al_entry_info.offset (after the 56 bytes)");
_Static_assert(sizeof(al_batch_item) == 48 && _Alignof(al_batch_item) == 8, "al_batch_item");
_Static_assert(offsetof(al_batch_item, entry) == 0, "al_batch_item.entry");
_Static_assert(offsetof(al_batch_item, data) == 8, "al_batch_item.data");
_Static_assert(offsetof(al_batch_item, size) == 16, "al_batch_item.size");
_Static_assert(offsetof(al_batch_item, tag) == 24, "al_batch_item.tag");
_Static_assert(offsetof(al_batch_item, error) == 32, "al_batch_item.error");
_Static_assert(offsetof(al_batch_item, path_len) == 36, "al_batch_item.path_len");
_Static_assert(offsetof(al_batch_item, path) == 40, "al_batch_item.path");

/* queue_depth 4, two workers, 1 MiB files, one loader thread. */
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

/* A loader made from `c`, started (loader threads) when `start`; NULL (and
 * a failed check) when that fails. */
static al_loader *loader_from(al_config c, int start) {
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    if (l && start) CHECK_RC(al_loader_start(l), 0);
    return l;
}

static al_worker *worker(al_loader *l, uint32_t id) {
    al_worker *w = NULL;
    if (l) CHECK_RC(al_loader_worker(l, id, &w), 0);
    return w;
}

static al_entry *get(al_worker *w) {
    al_entry *e = NULL;
    CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
    return e;
}

/* Requests `path` and waits for its entry. */
static al_entry *load(al_worker *w, const char *path) {
    CHECK_RC(al_worker_request(w, path), 0);
    return get(w);
}

static void stop(al_loader *l, al_worker *w) {
    al_worker_free(w);
    if (l) CHECK_RC(al_loader_shutdown(l), 0);
    al_loader_free(l);
}

/* What every completed entry offers, loaded or failed: its path as asked,
 * a latency, and a page-aligned buffer. */
static void check_entry_basics(const al_entry *e, const char *path) {
    const char *p = al_entry_path(e);
    CHECK(p != NULL && strcmp(p, path) == 0 && strlen(p) == al_entry_path_len(e));
    CHECK(al_entry_latency_ns(e) > 0);
    CHECK(al_entry_data(e) != NULL && ((uintptr_t)al_entry_data(e) & 4095) == 0);
}

/* One file loaded through a fresh started loader (small_config, worker 0):
 * the cases about a single entry start with fx_load and end with fx_done. */
struct fx {
    al_loader *l;
    al_worker *w;
    al_entry *e; /* NULL when the load failed (a failed check) */
    char *path;  /* owned */
};

static struct fx fx_load(char *path) {
    struct fx f = {.path = path};
    f.l = loader_from(small_config(), 1);
    f.w = worker(f.l, 0);
    if (f.w) f.e = load(f.w, path);
    return f;
}

/* Releases the entry (unless the case did and set it to NULL), stops the
 * loader, frees the path. */
static void fx_done(struct fx *f) {
    if (f->e) CHECK_RC(al_entry_release(f->e), 0);
    stop(f->l, f->w);
    free(f->path);
}

/* `path` (owned) loads: its entry holds the file's path and bytes. */
static void check_loads(char *path) {
    struct fx f = fx_load(path);
    if (f.e) {
        check_entry_basics(f.e, f.path);
        CHECK(same_as_file(f.e, f.path));
    }
    fx_done(&f);
}

/* `path` (owned) fails to load with `err`: an entry with no bytes. */
static void check_fails(char *path, int err) {
    struct fx f = fx_load(path);
    if (f.e) {
        check_entry_basics(f.e, f.path);
        CHECK(al_entry_error(f.e) == err && al_entry_size(f.e) == 0);
    }
    fx_done(&f);
}

/* al_loader_new refuses `c` with EINVAL and leaves its out pointer NULL. */
static void loader_new_refuses(al_config c) {
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), -EINVAL);
    CHECK(l == NULL);
}

/* A path of 4999 bytes: over PATH_MAX as a string (NUL at 4096) and as
 * bytes (5000). */
static char *long_path(void) {
    char *p = malloc(5000);
    memset(p, 'a', 5000);
    p[0] = '/';
    p[4096] = 0;
    return p;
}

/* --- versions and strings ------------------------------------------------ */

static void abi_version_and_version_string_match_the_header(void) {
    CHECK(al_abi_version() == AL_ABI_VERSION);
    CHECK(strcmp(al_version(), AL_VERSION_STRING) == 0);
}

static void strerror_names_a_code_of_either_sign_and_never_returns_null(void) {
    CHECK(al_strerror(0) != NULL);
    CHECK(strstr(al_strerror(-EAGAIN), "EAGAIN") != NULL);
    CHECK(strcmp(al_strerror(ENOENT), al_strerror(-ENOENT)) == 0);
    CHECK(al_strerror(INT_MIN) != NULL && al_strerror(123456) != NULL);
}

/* --- NULL arguments -------------------------------------------------------- */

static void config_default_of_null_is_einval(void) {
    CHECK_RC(al_config_default(NULL), -EINVAL);
}

static void config_default_fills_the_documented_defaults(void) {
    al_config c = {.struct_size = sizeof c};
    CHECK_RC(al_config_default(&c), 0);
    CHECK(c.queue_depth == 64 && c.n_workers == 1 && c.loader_threads == 0 && !c.direct);
    CHECK(c.backend == AL_BACKEND_AUTO && c.arena_size == 0);
}

static void loader_new_with_a_null_config_or_out_is_einval_and_leaves_out_alone(void) {
    al_config c = small_config();
    al_loader *l = (al_loader *)&c; /* must stay untouched on failure */
    CHECK_RC(al_loader_new(NULL, &l), -EINVAL);
    CHECK(l == (al_loader *)&c);
    CHECK_RC(al_loader_new(&c, NULL), -EINVAL);
}

static void loader_calls_on_a_null_loader_are_einval(void) {
    CHECK_RC(al_loader_start(NULL), -EINVAL);
    CHECK_RC(al_loader_spawn(NULL), -EINVAL);
    CHECK_RC(al_loader_become(NULL), -EINVAL);
    CHECK_RC(al_loader_shutdown(NULL), -EINVAL);
    al_loader_free(NULL);
    CHECK(al_loader_name(NULL) == NULL);
    al_worker *w = NULL;
    CHECK_RC(al_loader_worker(NULL, 0, &w), -EINVAL);
    al_stats s = {.struct_size = sizeof s};
    CHECK_RC(al_loader_stats(NULL, &s), -EINVAL);
    al_config c = {.struct_size = sizeof c};
    CHECK_RC(al_loader_config(NULL, &c), -EINVAL);
    CHECK_RC(al_loader_prefault(NULL), -EINVAL);
    uint32_t n = 0;
    CHECK_RC(al_loader_reclaim_worker(NULL, 0, &n), -EINVAL);
}

static void attach_with_a_null_name_or_out_is_einval(void) {
    al_loader *l = NULL;
    CHECK_RC(al_loader_attach(NULL, &l), -EINVAL);
    CHECK_RC(al_loader_attach("asyncloader-1-2-3", NULL), -EINVAL);
}

static void attach_to_a_malformed_name_is_einval(void) {
    al_loader *l = NULL;
    CHECK_RC(al_loader_attach("not a loader", &l), -EINVAL);
}

static void attach_to_a_loader_whose_process_is_gone_is_eownerdead(void) {
    al_loader *l = NULL;
    CHECK_RC(al_loader_attach("asyncloader-999999999-3-ff", &l), -EOWNERDEAD);
}

static void worker_calls_on_a_null_worker_are_einval(void) {
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
}

static void entry_calls_on_a_null_entry_are_einval_or_empty(void) {
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

/* --- bad configs ----------------------------------------------------------- */

static void loader_new_rejects_a_zero_queue_depth(void) {
    al_config c = small_config();
    c.queue_depth = 0;
    loader_new_refuses(c);
}

static void loader_new_rejects_zero_workers(void) {
    al_config c = small_config();
    c.n_workers = 0;
    loader_new_refuses(c);
}

static void loader_new_rejects_an_unknown_backend(void) {
    al_config c = small_config();
    c.backend = 7;
    loader_new_refuses(c);
}

static void loader_new_rejects_a_max_file_size_that_cannot_be_mapped(void) {
    al_config c = small_config();
    c.max_file_size = UINT64_MAX;
    loader_new_refuses(c);
}

/* --- a loader and its workers ---------------------------------------------- */

static void loader_name_and_config_read_back(void) {
    al_loader *l = loader_from(small_config(), 0);
    if (!l) return;
    CHECK(strncmp(al_loader_name(l), "asyncloader-", 12) == 0);
    al_config got = {.struct_size = sizeof got};
    CHECK_RC(al_loader_config(l, &got), 0);
    CHECK(got.queue_depth == 4 && got.n_workers == 2 && got.loader_threads == 1);
    stop(l, NULL);
}

static void loader_worker_rejects_an_id_out_of_range_or_a_null_out(void) {
    al_loader *l = loader_from(small_config(), 0);
    if (!l) return;
    al_worker *w = NULL, *w1 = NULL;
    CHECK_RC(al_loader_worker(l, 2, &w), -EINVAL);
    CHECK_RC(al_loader_worker(l, UINT32_MAX, &w), -EINVAL);
    CHECK(w == NULL);
    CHECK_RC(al_loader_worker(l, 0, NULL), -EINVAL);
    CHECK_RC(al_loader_worker(l, 0, &w), 0);
    CHECK_RC(al_loader_worker(l, 1, &w1), 0);
    CHECK(al_worker_id(w) == 0 && al_worker_id(w1) == 1);
    al_worker_free(w1);
    stop(l, w);
}

static void request_of_a_null_empty_or_nul_holding_path_is_einval_and_queues_nothing(void) {
    al_loader *l = loader_from(small_config(), 0);
    al_worker *w = worker(l, 0);
    if (!w) {
        stop(l, w);
        return;
    }
    CHECK_RC(al_worker_request(w, NULL), -EINVAL);
    CHECK_RC(al_worker_request(w, ""), -EINVAL);
    CHECK_RC(al_worker_request_bytes(w, NULL, 3), -EINVAL);
    CHECK_RC(al_worker_request_bytes(w, (const uint8_t *)"/etc\0x", 6), -EINVAL);
    CHECK(al_worker_outstanding(w) == 0);
    stop(l, w);
}

static void request_of_a_path_over_path_max_is_enametoolong_and_queues_nothing(void) {
    al_loader *l = loader_from(small_config(), 0);
    al_worker *w = worker(l, 0);
    if (!w) {
        stop(l, w);
        return;
    }
    char *longp = long_path();
    CHECK_RC(al_worker_request(w, longp), -ENAMETOOLONG);
    CHECK_RC(al_worker_request_bytes(w, (const uint8_t *)longp, 5000), -ENAMETOOLONG);
    CHECK(al_worker_outstanding(w) == 0);
    free(longp);
    stop(l, w);
}

static void get_before_the_loader_runs_is_eagain_or_etimedout(void) {
    al_loader *l = loader_from(small_config(), 0);
    al_worker *w = worker(l, 0);
    if (!w) {
        stop(l, w);
        return;
    }
    al_entry *e = NULL;
    CHECK_RC(al_worker_try_get(w, NULL), -EINVAL);
    CHECK_RC(al_worker_try_get(w, &e), -EAGAIN);
    CHECK_RC(al_worker_wait_get(w, 0, &e), -ETIMEDOUT);
    CHECK_RC(al_worker_wait_get(w, 1000000, &e), -ETIMEDOUT);
    CHECK(e == NULL);
    stop(l, w);
}

/* No loader runs yet: requests queue up until queue_depth, then EAGAIN. */
static void requests_queue_before_start_until_queue_depth_then_eagain(void) {
    char *small = make_file("small.bin", 1000, 1);
    char *empty = make_file("empty.bin", 0, 2);
    char *odd = make_file("\xff\xfe-not-utf8", 5000, 5);
    char *missing = join(scratch, "missing");
    al_loader *l = loader_from(small_config(), 0);
    al_worker *w = worker(l, 0);
    if (w) {
        CHECK_RC(al_worker_request(w, small), 0);
        CHECK_RC(al_worker_request(w, missing), 0);
        CHECK_RC(al_worker_request(w, scratch), 0);
        CHECK_RC(al_worker_request(w, odd), 0);
        CHECK_RC(al_worker_request(w, empty), -EAGAIN);
        CHECK(al_worker_outstanding(w) == 4);
        al_stats s = {.struct_size = sizeof s};
        CHECK_RC(al_loader_stats(l, &s), 0);
        CHECK(s.state == AL_STATE_CREATED && s.requests == 4 && s.backend == 0);
        /* Started, the loader serves what queued. */
        CHECK_RC(al_loader_start(l), 0);
        for (int i = 0; i < 4; i++) al_entry_release(get(w));
        CHECK(al_worker_outstanding(w) == 0);
    }
    stop(l, w);
    free(small);
    free(empty);
    free(odd);
    free(missing);
}

static void start_twice_or_spawn_after_start_is_ebusy(void) {
    al_loader *l = loader_from(small_config(), 1);
    if (!l) return;
    CHECK_RC(al_loader_start(l), -EBUSY);
    CHECK_RC(al_loader_spawn(l), -EBUSY);
    stop(l, NULL);
}

/* --- entries --------------------------------------------------------------- */

static void entry_holds_the_file_bytes_in_a_page_aligned_buffer(void) {
    check_loads(make_file("small.bin", 1000, 1));
}

static void entry_info_matches_the_accessors(void) {
    struct fx f = fx_load(make_file("small.bin", 1000, 1));
    if (f.e) {
        al_entry_info info = {.struct_size = sizeof info};
        CHECK_RC(al_entry_get_info(f.e, NULL), -EINVAL);
        CHECK_RC(al_entry_get_info(f.e, &info), 0);
        CHECK(info.path == al_entry_path(f.e) && info.path_len == strlen(f.path) &&
              info.size == 1000);
        CHECK(info.data == al_entry_data(f.e) && info.error == 0);
        CHECK(info.latency_ns == al_entry_latency_ns(f.e));
    }
    fx_done(&f);
}

static void missing_file_is_an_enoent_entry(void) {
    check_fails(join(scratch, "missing"), ENOENT);
}

static void directory_is_an_eisdir_entry(void) {
    check_fails(strdup(scratch), EISDIR);
}

static void non_utf8_path_loads(void) {
    check_loads(make_file("\xff\xfe-not-utf8", 5000, 5));
}

static void empty_file_loads_with_size_zero_and_a_buffer(void) {
    struct fx f = fx_load(make_file("empty.bin", 0, 2));
    if (f.e) {
        CHECK(al_entry_size(f.e) == 0 && al_entry_error(f.e) == 0 && al_entry_data(f.e) != NULL);
        CHECK(same_as_file(f.e, f.path));
    }
    fx_done(&f);
}

/* Release, then use again: every accessor refuses, release is harmless. */
static void released_entry_refuses_every_accessor(void) {
    struct fx f = fx_load(make_file("small.bin", 1000, 1));
    al_entry *stale = f.e;
    f.e = NULL;
    if (stale) {
        CHECK(al_worker_outstanding(f.w) == 1);
        CHECK_RC(al_entry_release(stale), 0);
        CHECK(al_worker_outstanding(f.w) == 0);
        CHECK(al_entry_path(stale) == NULL && al_entry_data(stale) == NULL);
        CHECK(al_entry_size(stale) == 0 && al_entry_path_len(stale) == 0);
        CHECK(al_entry_error(stale) == -EINVAL && al_entry_latency_ns(stale) == 0);
        al_entry_info info = {.struct_size = sizeof info};
        CHECK_RC(al_entry_get_info(stale, &info), -EINVAL);
        CHECK_RC(al_entry_release(stale), -EINVAL);
        CHECK_RC(al_entry_release(stale), -EINVAL);
    }
    fx_done(&f);
}

static void release_many_skips_entries_already_released(void) {
    char *small = make_file("small.bin", 1000, 1);
    al_loader *l = loader_from(small_config(), 1);
    al_worker *w = worker(l, 0);
    if (w) {
        al_entry *es[4];
        for (int i = 0; i < 4; i++) CHECK_RC(al_worker_request(w, small), 0);
        for (int i = 0; i < 4; i++) es[i] = get(w);
        CHECK(al_worker_outstanding(w) == 4);
        CHECK_RC(al_entry_release(es[0]), 0);
        CHECK(al_worker_outstanding(w) == 3);
        CHECK(al_entry_release_many(es, 4) == 3); /* es[0] is skipped */
        CHECK(al_entry_release_many(es, 4) == 0);
        CHECK(al_worker_outstanding(w) == 0);
    }
    stop(l, w);
    free(small);
}

/* The same slot comes back with a new generation: the stale handle stays
 * dead. queue_depth 1, so the second load must reuse the first's slot. */
static void reused_slot_leaves_a_stale_handle_dead(void) {
    char *small = make_file("small.bin", 1000, 1);
    char *empty = make_file("empty.bin", 0, 2);
    al_config c = small_config();
    c.queue_depth = 1;
    al_loader *l = loader_from(c, 1);
    al_worker *w = worker(l, 0);
    al_entry *stale = w ? load(w, small) : NULL;
    if (stale) {
        CHECK_RC(al_entry_release(stale), 0);
        al_entry *e = load(w, empty);
        CHECK(e != stale && al_entry_error(stale) == -EINVAL);
        CHECK(e && al_entry_size(e) == 0 && al_entry_error(e) == 0 && al_entry_data(e) != NULL);
        al_entry_release(e);
        CHECK(al_entry_error(e) == -EINVAL);
    }
    stop(l, w);
    free(small);
    free(empty);
}

/* Paths as bytes: no NUL needed, non-UTF-8 fine. */
static void request_bytes_needs_no_nul_and_takes_non_utf8(void) {
    char *small = make_file("small.bin", 1000, 1);
    char *odd = make_file("\xff\xfe-not-utf8", 5000, 5);
    al_loader *l = loader_from(small_config(), 1);
    al_worker *w = worker(l, 0);
    if (w) {
        size_t len = strlen(small);
        char *nonul = malloc(len + 8);
        memcpy(nonul, small, len);
        memcpy(nonul + len, "XXXXXXXX", 8);
        CHECK_RC(al_worker_request_bytes(w, (const uint8_t *)nonul, len), 0);
        CHECK_RC(al_worker_request_bytes(w, (const uint8_t *)odd, strlen(odd)), 0);
        int seen_small = 0, seen_odd = 0;
        for (int i = 0; i < 2; i++) {
            al_entry *e = get(w);
            if (!e) continue;
            const char *p = al_entry_path(e);
            seen_small += strcmp(p, small) == 0;
            seen_odd += strcmp(p, odd) == 0;
            CHECK(same_as_file(e, p));
            al_entry_release(e);
        }
        CHECK(seen_small == 1 && seen_odd == 1);
        free(nonul);
    }
    stop(l, w);
    free(small);
    free(odd);
}

static void file_of_exactly_max_file_size_loads(void) {
    check_loads(make_file("exact.bin", 1 << 20, 4));
}

static void file_one_byte_over_max_file_size_is_an_efbig_entry(void) {
    check_fails(make_file("big.bin", (1 << 20) + 1, 3), EFBIG);
}

/* --- batch calls ----------------------------------------------------------- */

static void request_many_stops_at_the_first_bad_path(void) {
    char *small = make_file("small.bin", 1000, 1);
    char *empty = make_file("empty.bin", 0, 2);
    char *odd = make_file("\xff\xfe-not-utf8", 5000, 5);
    char *longp = long_path();
    al_loader *l = loader_from(small_config(), 1);
    al_worker *w = worker(l, 0);
    if (w) {
        const char *batch[4] = {small, empty, longp, odd};
        size_t acc = 99;
        CHECK_RC(al_worker_request_many(w, batch, 4, &acc), -ENAMETOOLONG);
        CHECK(acc == 2);
        CHECK_RC(al_worker_request_many(w, batch + 3, 1, &acc), 0);
        CHECK(acc == 1);
        CHECK_RC(al_worker_request_many(w, NULL, 0, &acc), 0);
        CHECK(acc == 0);
        for (int i = 0; i < 3; i++) {
            al_entry *e = get(w);
            CHECK(e && same_as_file(e, al_entry_path(e)));
            al_entry_release(e);
        }
        CHECK(al_worker_outstanding(w) == 0);
    }
    stop(l, w);
    free(small);
    free(empty);
    free(odd);
    free(longp);
}

static void get_many_rejects_no_room_and_returns_what_completed(void) {
    char *small = make_file("small.bin", 1000, 1);
    char *empty = make_file("empty.bin", 0, 2);
    char *odd = make_file("\xff\xfe-not-utf8", 5000, 5);
    al_loader *l = loader_from(small_config(), 1);
    al_worker *w = worker(l, 0);
    if (w) {
        al_entry *es[4];
        size_t got = 99, acc = 0;
        CHECK_RC(al_worker_get_many(w, es, 0, 0, &got), -EINVAL);
        CHECK_RC(al_worker_get_many(w, NULL, 4, 0, &got), -EINVAL);
        const char *batch[3] = {small, empty, odd};
        CHECK_RC(al_worker_request_many(w, batch, 3, &acc), 0);
        CHECK(acc == 3);
        size_t have = 0;
        while (have < 3) {
            CHECK_RC(al_worker_get_many(w, es + have, 4 - have, 10 * SEC, &got), 0);
            if (got == 0) break;
            have += got;
        }
        CHECK(have == 3);
        for (size_t i = 0; i < have; i++) CHECK(same_as_file(es[i], al_entry_path(es[i])));
        CHECK(al_entry_release_many(es, have) == have);
    }
    stop(l, w);
    free(small);
    free(empty);
    free(odd);
}

/* --- worker handles, stats, shutdown --------------------------------------- */

/* A freed worker: its entries outlive it, its handle refuses calls. */
static void freed_worker_handle_refuses_calls_while_its_entries_live(void) {
    char *small = make_file("small.bin", 1000, 1);
    al_loader *l = loader_from(small_config(), 1);
    al_worker *w1 = worker(l, 1);
    al_entry *e = w1 ? load(w1, small) : NULL;
    if (e) {
        al_worker_free(w1);
        CHECK(same_as_file(e, small));
        CHECK(al_worker_id(w1) == UINT32_MAX); /* kept alive by e */
        CHECK_RC(al_worker_request(w1, small), -EINVAL);
        al_worker_free(w1); /* second free: ignored while e lives */
        al_entry_release(e);
        /* w1 and e are gone now; do not touch them. */
    } else {
        al_worker_free(w1);
    }
    stop(l, NULL);
    free(small);
}

static void stats_count_requests_completions_and_errors(void) {
    char *small = make_file("small.bin", 1000, 1);
    char *big = make_file("big.bin", (1 << 20) + 1, 3);
    char *missing = join(scratch, "missing");
    al_loader *l = loader_from(small_config(), 1);
    al_worker *w = worker(l, 0);
    if (w) {
        const char *paths[4] = {small, missing, scratch, big}; /* 3 fail */
        for (int i = 0; i < 4; i++) al_entry_release(load(w, paths[i]));
        al_stats s = {.struct_size = sizeof s};
        CHECK_RC(al_loader_stats(l, NULL), -EINVAL);
        CHECK_RC(al_loader_stats(l, &s), 0);
        CHECK(s.state == AL_STATE_RUNNING);
        CHECK((s.drive == AL_DRIVE_LOADER && s.loader_threads == 1) ||
              (s.drive == AL_DRIVE_WORKER && s.loader_threads == 0));
        CHECK(s.backend == AL_BACKEND_IO_URING || s.backend == AL_BACKEND_THREADS);
        CHECK(s.requests == 4 && s.completions == 4 && s.errors == 3);
        CHECK(s.loader_pid == (int32_t)getpid() && s.struct_size == sizeof s);
    }
    stop(l, w);
    free(small);
    free(big);
    free(missing);
}

static void shutdown_is_idempotent_and_leaves_the_state_stopped(void) {
    al_loader *l = loader_from(small_config(), 1);
    if (!l) return;
    CHECK_RC(al_loader_shutdown(l), 0);
    CHECK_RC(al_loader_shutdown(l), 0);
    al_stats s = {.struct_size = sizeof s};
    CHECK_RC(al_loader_stats(l, &s), 0);
    CHECK(s.state == AL_STATE_STOPPED);
    al_loader_free(l);
}

/* Shutdown: everything fails cleanly, nothing hangs. */
static void calls_after_shutdown_are_eshutdown(void) {
    al_loader *l = loader_from(small_config(), 1);
    al_worker *w = worker(l, 0);
    if (!w) {
        stop(l, w);
        return;
    }
    CHECK_RC(al_loader_shutdown(l), 0);
    al_entry *e = NULL, *es[4];
    CHECK_RC(al_worker_request(w, "/etc/hostname"), -ESHUTDOWN);
    CHECK_RC(al_worker_try_get(w, &e), -ESHUTDOWN);
    CHECK_RC(al_worker_wait_get(w, -1, &e), -ESHUTDOWN);
    CHECK_RC(al_worker_wait_get(w, INT64_MAX, &e), -ESHUTDOWN);
    size_t got = 99;
    CHECK_RC(al_worker_get_many(w, es, 4, -1, &got), -ESHUTDOWN);
    CHECK(got == 0);
    al_worker *w2 = NULL;
    CHECK_RC(al_loader_worker(l, 0, &w2), -ESHUTDOWN);
    CHECK(w2 == NULL);
    CHECK_RC(al_loader_start(l), -ESHUTDOWN);
    CHECK_RC(al_loader_spawn(l), -ESHUTDOWN);
    CHECK_RC(al_loader_become(l), -ESHUTDOWN);
    stop(l, w);
}

/* Workers outlive the loader handle; they just report the shutdown. */
static void worker_outlives_its_loader_handle_and_reports_eshutdown(void) {
    al_loader *l = loader_from(small_config(), 1);
    al_worker *w = worker(l, 0);
    if (!w) {
        stop(l, w);
        return;
    }
    CHECK_RC(al_loader_shutdown(l), 0);
    al_loader_free(l);
    CHECK_RC(al_worker_request(w, "/etc/hostname"), -ESHUTDOWN);
    al_worker_free(w);
}

/* al_loader_free shuts down a running loader; workers then see ESHUTDOWN. */
static void loader_free_shuts_down_a_running_loader_and_entries_stay_mapped(void) {
    char *p = make_file("free.bin", 10, 11);
    al_loader *l = loader_from(small_config(), 1);
    al_worker *w = worker(l, 0);
    al_entry *e = w ? load(w, p) : NULL;
    al_loader_free(l);
    if (e) {
        CHECK(same_as_file(e, p)); /* the entry keeps the memory mapped */
        al_entry_release(e);
    }
    if (w) {
        al_entry *e2 = NULL;
        CHECK_RC(al_worker_wait_get(w, -1, &e2), -ESHUTDOWN);
    }
    al_worker_free(w);
    free(p);
}

/* --- the other ways to run a loader ---------------------------------------- */

/* One round trip through a loader, after it was started. */
static void round_trip(al_loader *l, const char *path) {
    al_worker *w = worker(l, 0);
    if (!w) return;
    al_entry *e = load(w, path);
    CHECK(e && same_as_file(e, path));
    al_entry_release(e);
    al_worker_free(w);
}

static void spawned_loader_runs_in_another_process(void) {
    char *p = make_file("spawned.bin", 70000, 9);
    al_loader *l = loader_from(small_config(), 0);
    if (l) {
        CHECK_RC(al_loader_spawn(l), 0);
        round_trip(l, p);
        al_stats s = {.struct_size = sizeof s};
        CHECK_RC(al_loader_stats(l, &s), 0);
        CHECK(s.loader_pid > 0 && s.loader_pid != (int32_t)getpid());
        CHECK_RC(al_loader_shutdown(l), 0);
        CHECK_RC(al_loader_stats(l, &s), 0);
        CHECK(s.state == AL_STATE_STOPPED);
        al_loader_free(l);
    }
    free(p);
}

static void *become_thread(void *arg) {
    static int rc;
    rc = al_loader_become((al_loader *)arg);
    return &rc;
}

static void become_runs_the_loader_on_the_calling_thread(void) {
    char *p = make_file("become.bin", 3000, 10);
    al_loader *l = loader_from(small_config(), 0);
    if (l) {
        pthread_t t;
        CHECK(pthread_create(&t, NULL, become_thread, l) == 0);
        round_trip(l, p); /* requests queue until the loader runs */
        CHECK_RC(al_loader_shutdown(l), 0);
        void *res = NULL;
        pthread_join(t, &res);
        CHECK_RC(*(int *)res, 0);
        al_loader_free(l);
    }
    free(p);
}

/* --- prefault and reclaim -------------------------------------------------- */

static void prefault_before_start_changes_nothing_but_speed(void) {
    char *p = make_file("prefaulted.bin", 12345, 11);
    al_loader *l = loader_from(small_config(), 0);
    if (l) {
        CHECK_RC(al_loader_prefault(l), 0);
        CHECK_RC(al_loader_start(l), 0);
        round_trip(l, p);
        stop(l, NULL);
    }
    free(p);
}

/* A worker whose user vanished with an entry held and requests queued: the
 * loader takes its slots back, and the worker loads again. */
static void reclaim_worker_takes_back_held_entries_and_queued_requests(void) {
    char *p = make_file("reclaimed.bin", 12345, 11);
    al_loader *l = loader_from(small_config(), 1);
    al_worker *w = worker(l, 0);
    if (w) {
        for (int i = 0; i < 4; i++) CHECK_RC(al_worker_request(w, p), 0);
        CHECK_RC(al_worker_request(w, p), -EAGAIN);
        al_entry *held = get(w); /* held, never released by its "owner" */
        CHECK(held != NULL && same_as_file(held, p));
        uint32_t n = 0;
        CHECK_RC(al_loader_reclaim_worker(l, 0, &n), 0);
        CHECK(n == 4);
        CHECK(al_worker_outstanding(w) == 0);
        al_entry_release(held); /* stale after the reclaim: harmless */
        al_worker_free(w);
        round_trip(l, p);
    }
    stop(l, NULL);
    free(p);
}

static void reclaim_worker_rejects_an_unknown_worker(void) {
    al_loader *l = loader_from(small_config(), 1);
    if (!l) return;
    uint32_t n = 0;
    CHECK_RC(al_loader_reclaim_worker(l, 99, &n), -EINVAL);
    stop(l, NULL);
}

static const struct test tests[] = {
    T(abi_version_and_version_string_match_the_header),
    T(strerror_names_a_code_of_either_sign_and_never_returns_null),
    T(config_default_of_null_is_einval),
    T(config_default_fills_the_documented_defaults),
    T(loader_new_with_a_null_config_or_out_is_einval_and_leaves_out_alone),
    T(loader_calls_on_a_null_loader_are_einval),
    T(attach_with_a_null_name_or_out_is_einval),
    T(attach_to_a_malformed_name_is_einval),
    T(attach_to_a_loader_whose_process_is_gone_is_eownerdead),
    T(worker_calls_on_a_null_worker_are_einval),
    T(entry_calls_on_a_null_entry_are_einval_or_empty),
    T(loader_new_rejects_a_zero_queue_depth),
    T(loader_new_rejects_zero_workers),
    T(loader_new_rejects_an_unknown_backend),
    T(loader_new_rejects_a_max_file_size_that_cannot_be_mapped),
    T(loader_name_and_config_read_back),
    T(loader_worker_rejects_an_id_out_of_range_or_a_null_out),
    T(request_of_a_null_empty_or_nul_holding_path_is_einval_and_queues_nothing),
    T(request_of_a_path_over_path_max_is_enametoolong_and_queues_nothing),
    T(get_before_the_loader_runs_is_eagain_or_etimedout),
    T(requests_queue_before_start_until_queue_depth_then_eagain),
    T(start_twice_or_spawn_after_start_is_ebusy),
    T(entry_holds_the_file_bytes_in_a_page_aligned_buffer),
    T(entry_info_matches_the_accessors),
    T(missing_file_is_an_enoent_entry),
    T(directory_is_an_eisdir_entry),
    T(non_utf8_path_loads),
    T(empty_file_loads_with_size_zero_and_a_buffer),
    T(released_entry_refuses_every_accessor),
    T(release_many_skips_entries_already_released),
    T(reused_slot_leaves_a_stale_handle_dead),
    T(request_bytes_needs_no_nul_and_takes_non_utf8),
    T(file_of_exactly_max_file_size_loads),
    T(file_one_byte_over_max_file_size_is_an_efbig_entry),
    T(request_many_stops_at_the_first_bad_path),
    T(get_many_rejects_no_room_and_returns_what_completed),
    T(freed_worker_handle_refuses_calls_while_its_entries_live),
    T(stats_count_requests_completions_and_errors),
    T(shutdown_is_idempotent_and_leaves_the_state_stopped),
    T(calls_after_shutdown_are_eshutdown),
    T(worker_outlives_its_loader_handle_and_reports_eshutdown),
    T(loader_free_shuts_down_a_running_loader_and_entries_stay_mapped),
    T(spawned_loader_runs_in_another_process),
    T(become_runs_the_loader_on_the_calling_thread),
    T(prefault_before_start_changes_nothing_but_speed),
    T(reclaim_worker_takes_back_held_entries_and_queued_requests),
    T(reclaim_worker_rejects_an_unknown_worker),
};

int main(int argc, char **argv) {
    return RUN(argc, argv, tests);
}
