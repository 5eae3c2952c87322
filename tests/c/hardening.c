/* The C ABI's edges, one behaviour per test (issue 9, items 5, 11, 12):
 * structs that grow (struct_size), the last error message, and entries
 * inherited across fork.
 *
 * Usage: hardening list | hardening <case>|all <scratch-dir>
 * (tests/c/runner.h). Built by tests/c_abi.rs (one Rust test per case) and by
 * scripts/c-sanitize.sh under AddressSanitizer and UBSan, where the "old
 * caller" structs live in heap blocks of exactly their size, so a read or
 * write past them is reported. */
#include "runner.h"

#include <stddef.h>
#include <stdint.h>

#define CANARY 0xA5

/* An "old" caller: compiled against a header whose structs held only their
 * first fields. */
struct old_config {
    uint32_t struct_size;
    uint32_t queue_depth;
};
struct old_stats {
    uint32_t struct_size;
    uint32_t state;
};
struct old_entry_info {
    uint32_t struct_size;
    int32_t error;
};

/* `n` bytes followed by `extra` canary bytes, 8-aligned (malloc). */
static unsigned char *canaried(size_t n, size_t extra) {
    unsigned char *p = malloc(n + extra);
    memset(p, CANARY, n + extra);
    return p;
}

static int canary_intact(const unsigned char *p, size_t from, size_t to) {
    for (size_t i = from; i < to; i++)
        if (p[i] != CANARY) return 0;
    return 1;
}

static al_config full_config(uint32_t queue_depth) {
    al_config c = {.struct_size = sizeof c};
    CHECK_RC(al_config_default(&c), 0);
    c.queue_depth = queue_depth;
    c.max_file_size = 1 << 20;
    c.loader_threads = 1;
    c.dispatch_n = 1;
    return c;
}

static void last_error(char *buf, size_t len) {
    int n = al_last_error_message(buf, len);
    CHECK(n > 0);
}

/* ---- item 5: structs that grow ---------------------------------------- */

static void old_config_default_writes_only_its_fields(void) {
    unsigned char *p = canaried(sizeof(struct old_config), 64);
    struct old_config *c = (struct old_config *)p;
    c->struct_size = sizeof *c;
    CHECK_RC(al_config_default((al_config *)c), 0);
    CHECK(c->struct_size == sizeof *c);
    CHECK(c->queue_depth == 64);
    CHECK(canary_intact(p, sizeof *c, sizeof *c + 64));
    free(p);
}

static void old_config_gets_defaults_for_the_fields_it_lacks(void) {
    /* Exactly its size on the heap: ASan reports any read past it. */
    struct old_config *c = malloc(sizeof *c);
    c->struct_size = sizeof *c;
    c->queue_depth = 3;
    al_loader *l = NULL;
    CHECK_RC(al_loader_new((const al_config *)c, &l), 0);
    al_config got = {.struct_size = sizeof got};
    CHECK_RC(al_loader_config(l, &got), 0);
    al_config def = {.struct_size = sizeof def};
    CHECK_RC(al_config_default(&def), 0);
    CHECK(got.queue_depth == 3);
    CHECK(got.max_file_size == def.max_file_size && got.n_workers == def.n_workers);
    CHECK(got.dispatch_n == def.dispatch_n && got.idle_iters == def.idle_iters);
    CHECK(got.direct == def.direct && got.backend == def.backend);
    al_loader_free(l);
    free(c);
}

static void old_loader_config_writes_only_its_fields(void) {
    al_config full = full_config(5);
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&full, &l), 0);
    unsigned char *p = canaried(sizeof(struct old_config), 64);
    struct old_config *c = (struct old_config *)p;
    c->struct_size = sizeof *c;
    CHECK_RC(al_loader_config(l, (al_config *)c), 0);
    CHECK(c->queue_depth == 5);
    CHECK(canary_intact(p, sizeof *c, sizeof *c + 64));
    al_loader_free(l);
    free(p);
}

static void old_stats_caller_gets_only_its_fields(void) {
    al_config full = full_config(4);
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&full, &l), 0);
    unsigned char *p = canaried(sizeof(struct old_stats), 96);
    struct old_stats *s = (struct old_stats *)p;
    s->struct_size = sizeof *s;
    CHECK_RC(al_loader_stats(l, (al_stats *)s), 0);
    CHECK(s->state == AL_STATE_CREATED);
    CHECK(canary_intact(p, sizeof *s, sizeof *s + 96));
    al_loader_free(l);
    free(p);
}

static void old_entry_info_caller_gets_only_its_fields(void) {
    al_config full = full_config(4);
    al_loader *l = NULL;
    al_worker *w = NULL;
    al_entry *e = NULL;
    CHECK_RC(al_loader_new(&full, &l), 0);
    CHECK_RC(al_loader_start(l), 0);
    CHECK_RC(al_loader_worker(l, 0, &w), 0);
    CHECK_RC(al_worker_request(w, "/nonexistent/asyncloader-hardening"), 0);
    CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
    unsigned char *p = canaried(sizeof(struct old_entry_info), 64);
    struct old_entry_info *info = (struct old_entry_info *)p;
    info->struct_size = sizeof *info;
    CHECK_RC(al_entry_get_info(e, (al_entry_info *)info), 0);
    CHECK(info->error == ENOENT);
    CHECK(canary_intact(p, sizeof *info, sizeof *info + 64));
    CHECK_RC(al_entry_release(e), 0);
    al_worker_free(w);
    al_loader_free(l);
    free(p);
}

/* A caller compiled before al_entry_info grew its tag: 48 bytes, struct_size
 * 48. It gets every field it knows; the 8 bytes after them (where the tag
 * now lies) stay as they were. A current caller gets the tag. */
static void entry_info_of_the_size_before_the_tag_leaves_the_bytes_after_alone(void) {
    enum { OLD_INFO = 48 };
    _Static_assert(offsetof(al_entry_info, tag) == OLD_INFO, "the tag follows the old fields");
    char *path = make_file("tagged.bin", 5000, 6);
    const uint64_t tag = 0x0102030405060708ULL;
    al_config full = full_config(4);
    al_loader *l = NULL;
    al_worker *w = NULL;
    al_entry *e = NULL;
    CHECK_RC(al_loader_new(&full, &l), 0);
    CHECK_RC(al_loader_start(l), 0);
    CHECK_RC(al_loader_worker(l, 0, &w), 0);
    CHECK_RC(al_worker_request_tagged(w, (const uint8_t *)path, strlen(path), tag), 0);
    CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
    unsigned char *p = canaried(OLD_INFO, 64);
    memset(p, 0, OLD_INFO);
    ((al_entry_info *)p)->struct_size = OLD_INFO;
    CHECK_RC(al_entry_get_info(e, (al_entry_info *)p), 0);
    al_entry_info old;
    memcpy(&old, p, OLD_INFO);
    CHECK(old.struct_size == OLD_INFO && old.error == 0 && old.size == 5000);
    CHECK(old.path == al_entry_path(e) && old.path_len == strlen(path));
    CHECK(old.data == al_entry_data(e) && old.latency_ns == al_entry_latency_ns(e));
    CHECK(canary_intact(p, OLD_INFO, OLD_INFO + 64));
    al_entry_info now;
    memset(&now, 0, sizeof now);
    now.struct_size = sizeof now;
    CHECK_RC(al_entry_get_info(e, &now), 0);
    CHECK(now.tag == tag && al_entry_tag(e) == tag);
    CHECK(now.data == old.data && now.size == old.size && now.path == old.path);
    CHECK_RC(al_entry_release(e), 0);
    al_worker_free(w);
    al_loader_free(l);
    free(p);
    free(path);
}

/* A "newer" caller: al_config plus a field this library does not know. */
struct newer_config {
    al_config base;
    uint64_t future_field;
};

static void newer_config_with_unknown_fields_zero_is_accepted(void) {
    struct newer_config *c = calloc(1, sizeof *c);
    c->base.struct_size = sizeof *c;
    CHECK_RC(al_config_default(&c->base), 0);
    CHECK(c->future_field == 0); /* not written: past the library's struct */
    c->base.queue_depth = 2;
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c->base, &l), 0);
    al_loader_free(l);
    free(c);
}

static void newer_config_with_an_unknown_field_set_is_e2big(void) {
    struct newer_config *c = calloc(1, sizeof *c);
    c->base.struct_size = sizeof *c;
    CHECK_RC(al_config_default(&c->base), 0);
    c->future_field = 1;
    al_loader *l = (al_loader *)c;
    CHECK_RC(al_loader_new(&c->base, &l), -E2BIG);
    CHECK(l == (al_loader *)c);
    char msg[256];
    last_error(msg, sizeof msg);
    CHECK(strstr(msg, "al_config") != NULL);
    free(c);
}

static void struct_size_that_is_too_small_or_cuts_a_field_is_einval(void) {
    al_config c;
    memset(&c, 0, sizeof c);
    c.struct_size = 0;
    CHECK_RC(al_config_default(&c), -EINVAL);
    c.struct_size = 3;
    CHECK_RC(al_config_default(&c), -EINVAL);
    c.struct_size = 12; /* inside max_file_size (bytes 8..16) */
    CHECK_RC(al_config_default(&c), -EINVAL);
    CHECK(c.queue_depth == 0); /* nothing written on failure */
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), -EINVAL);
    char msg[256];
    last_error(msg, sizeof msg);
    CHECK(strstr(msg, "struct_size") != NULL);
    al_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = 2;
    al_config ok = full_config(2);
    CHECK_RC(al_loader_new(&ok, &l), 0);
    CHECK_RC(al_loader_stats(l, &s), -EINVAL);
    al_loader_free(l);
}

static void struct_size_above_a_page_is_e2big(void) {
    al_config c;
    memset(&c, 0, sizeof c);
    c.struct_size = 1u << 20; /* garbage, e.g. an unset field */
    CHECK_RC(al_config_default(&c), -E2BIG);
    CHECK(c.queue_depth == 0);
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), -E2BIG);
}

/* ---- item 11: the last error message ---------------------------------- */

static void config_error_message_names_the_field(void) {
    al_config c = full_config(0);
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), -EINVAL);
    char msg[256];
    last_error(msg, sizeof msg);
    CHECK(strstr(msg, "queue_depth") != NULL);
    c = full_config(4);
    c.backend = 9;
    CHECK_RC(al_loader_new(&c, &l), -EINVAL);
    last_error(msg, sizeof msg);
    CHECK(strstr(msg, "backend") != NULL);
    c = full_config(4);
    c.ring_window = 0xffffffffu;
    CHECK_RC(al_loader_new(&c, &l), -EINVAL);
    last_error(msg, sizeof msg);
    CHECK(strstr(msg, "ring_window") != NULL);
}

static void last_error_message_is_cut_like_snprintf(void) {
    al_config c = full_config(0);
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), -EINVAL);
    int full = al_last_error_message(NULL, 0);
    CHECK(full > 8);
    char small[8];
    memset(small, 'x', sizeof small);
    CHECK(al_last_error_message(small, sizeof small) == full);
    CHECK(small[7] == '\0' && strlen(small) == 7);
    CHECK_RC(al_last_error_message(NULL, 5), -EINVAL);
    /* A success leaves the message alone; a plain errno failure replaces it. */
    al_config ok = full_config(2);
    CHECK_RC(al_loader_new(&ok, &l), 0);
    CHECK(al_last_error_message(NULL, 0) == full);
    CHECK_RC(al_loader_worker(l, 99, &(al_worker *){NULL}), -EINVAL);
    char msg[256];
    last_error(msg, sizeof msg);
    CHECK(strstr(msg, "queue_depth") == NULL);
    al_loader_free(l);
}

/* ---- item 12: entries inherited across fork --------------------------- */

/* The parent holds an entry and forks; the child reads it (the parent's
 * bytes), releases its copy (-EPERM: not given back), and requests as many
 * files as it can. Before the fix the child's release freed the parent's
 * buffer and its second request loaded another file into it. */
static void fork_child_release_leaves_the_parent_entry_unchanged(void) {
    char *a = make_file("a.bin", 100000, 1);
    char *b = make_file("b.bin", 70000, 2);
    char *c = make_file("c.bin", 50000, 3);
    al_config cfg = full_config(2);
    al_loader *l = NULL;
    al_worker *w = NULL;
    al_entry *e = NULL;
    CHECK_RC(al_loader_new(&cfg, &l), 0);
    /* A loader process, so that this process has no threads when it forks. */
    CHECK_RC(al_loader_spawn(l), 0);
    CHECK_RC(al_loader_worker(l, 0, &w), 0);
    CHECK_RC(al_worker_request(w, a), 0);
    CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
    CHECK(same_as_file(e, a));

    pid_t pid = fork_or_exit();
    if (pid == 0) {
        int bad = 0;
        bad += !same_as_file(e, a); /* readable while the parent holds it */
        bad += al_entry_release(e) != -EPERM;
        bad += al_entry_data(e) != NULL; /* forgotten here */
        int asked = 0;
        const char *paths[2] = {b, c};
        for (int i = 0; i < 2; i++) {
            int rc = al_worker_request(w, paths[i]);
            if (rc == 0)
                asked++;
            else
                bad += rc != -EAGAIN;
        }
        bad += asked != 1; /* the parent's entry is not free */
        for (int i = 0; i < asked; i++) {
            al_entry *x = NULL;
            if (al_worker_wait_get(w, 10 * SEC, &x) != 0) {
                bad++;
                continue;
            }
            bad += al_entry_release(x) != 0;
        }
        if (bad) fprintf(stderr, "child: %d checks failed\n", bad);
        _exit(bad ? 1 : 0);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(same_as_file(e, a));
    CHECK(al_worker_outstanding(w) == 1);
    CHECK_RC(al_entry_release(e), 0);
    CHECK(al_worker_outstanding(w) == 0);
    al_worker_free(w);
    CHECK_RC(al_loader_shutdown(l), 0);
    al_loader_free(l);
    free(a);
    free(b);
    free(c);
}

static void fork_child_release_many_skips_inherited_entries(void) {
    char *a = make_file("m.bin", 4096, 4);
    al_config cfg = full_config(2);
    al_loader *l = NULL;
    al_worker *w = NULL;
    al_entry *es[2] = {NULL, NULL};
    CHECK_RC(al_loader_new(&cfg, &l), 0);
    CHECK_RC(al_loader_spawn(l), 0);
    CHECK_RC(al_loader_worker(l, 0, &w), 0);
    CHECK_RC(al_worker_request(w, a), 0);
    CHECK_RC(al_worker_request(w, a), 0);
    for (int i = 0; i < 2; i++) CHECK_RC(al_worker_wait_get(w, 10 * SEC, &es[i]), 0);
    pid_t pid = fork_or_exit();
    if (pid == 0) _exit(al_entry_release_many(es, 2) == 0 ? 0 : 1);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(al_worker_outstanding(w) == 2);
    CHECK(al_entry_release_many(es, 2) == 2);
    al_worker_free(w);
    CHECK_RC(al_loader_shutdown(l), 0);
    al_loader_free(l);
    free(a);
}

static const struct test tests[] = {
    T(old_config_default_writes_only_its_fields),
    T(old_config_gets_defaults_for_the_fields_it_lacks),
    T(old_loader_config_writes_only_its_fields),
    T(old_stats_caller_gets_only_its_fields),
    T(old_entry_info_caller_gets_only_its_fields),
    T(entry_info_of_the_size_before_the_tag_leaves_the_bytes_after_alone),
    T(newer_config_with_unknown_fields_zero_is_accepted),
    T(newer_config_with_an_unknown_field_set_is_e2big),
    T(struct_size_that_is_too_small_or_cuts_a_field_is_einval),
    T(struct_size_above_a_page_is_e2big),
    T(config_error_message_names_the_field),
    T(last_error_message_is_cut_like_snprintf),
    T(fork_child_release_leaves_the_parent_entry_unchanged),
    T(fork_child_release_many_skips_inherited_entries),
};

int main(int argc, char **argv) {
    return RUN(argc, argv, tests);
}
