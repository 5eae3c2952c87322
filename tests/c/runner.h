/* A small test runner for the C programs under tests/c, after liburing's
 * suite: one behaviour per test, and the failing one named.
 *
 * A program defines its cases as `static void NAME(void)` functions, lists
 * them in a table and hands it to runner_main:
 *
 *     static const struct test tests[] = {T(first_case), T(second_case)};
 *     int main(int argc, char **argv) { return RUN(argc, argv, tests); }
 *
 * and is run as
 *
 *     prog list                 the case names, one a line
 *     prog NAME <scratch-dir>   that case alone, in this process
 *     prog all <scratch-dir>    every case, each in a forked child with its
 *                               own scratch subdirectory, so a crash or a
 *                               hang is that case's failure only
 *
 * printing `ok NAME` or `FAIL NAME: reason` per case on stdout; the exit
 * status is 0 when every case ran passed, 1 when one failed, 2 on a usage
 * error. Each case makes its own loader: cases are independent. A case
 * that runs longer than RUNNER_TIMEOUT seconds is killed (SIGALRM) and
 * fails; the Rust side (tests/c_abi.rs) and scripts/c-sanitize.sh add
 * their own time limits around the process.
 *
 * CHECK/CHECK_RC report a failed check on stderr with its line and go on;
 * a case fails when any check failed. make_file writes test files into the
 * scratch directory; same_as_file compares an entry with the file on disk. */
#ifndef AL_TEST_RUNNER_H
#define AL_TEST_RUNNER_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <asyncloader.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef RUNNER_TIMEOUT
#define RUNNER_TIMEOUT 60
#endif
#define SEC 1000000000LL
/* Exit status of a forked case whose checks failed (run_all). */
#define CASE_FAILED 99

/* Failed checks of the case running now. */
static int failures;
/* The directory the case writes its files in. */
static const char *scratch;

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

/* "dir/name" in a malloc'd string. */
static inline char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Writes `size` bytes of a pattern derived from `seed` to scratch/name;
 * returns the path (malloc'd). Exits 2 when the file cannot be written:
 * that is the machine's fault, not the case's. */
static inline char *make_file(const char *name, size_t size, unsigned seed) {
    char *p = join(scratch, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(p);
        exit(2);
    }
    unsigned char *buf = malloc(size ? size : 1);
    for (size_t i = 0; i < size; i++) buf[i] = (unsigned char)(seed * 131u + i * 7u + (i >> 9));
    if (write(fd, buf, size) != (ssize_t)size) {
        perror("write");
        exit(2);
    }
    free(buf);
    close(fd);
    return p;
}

/* 1 when the entry loaded without error and holds exactly the path and the
 * bytes of the file at `path`. */
static inline int same_as_file(const al_entry *e, const char *path) {
    const char *ep = al_entry_path(e);
    if (!ep || strcmp(ep, path) != 0 || al_entry_error(e) != 0 || al_entry_data(e) == NULL)
        return 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return 0;
    }
    size_t n = (size_t)st.st_size;
    unsigned char *buf = malloc(n ? n : 1);
    int ok = read(fd, buf, n) == (ssize_t)n && al_entry_size(e) == n &&
             memcmp(buf, al_entry_data(e), n) == 0;
    free(buf);
    close(fd);
    return ok;
}

/* fork() after flushing stdio (no output twice); exits 2 when it fails. */
static inline pid_t fork_or_exit(void) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    return pid;
}

struct test {
    const char *name;
    void (*fn)(void);
};

#define T(f) {#f, f}
#define RUN(argc, argv, tests) runner_main(argc, argv, tests, sizeof tests / sizeof tests[0])

/* Runs one case in this process; prints its verdict; 0 when it passed. */
static int run_case(const struct test *t) {
    failures = 0;
    alarm(RUNNER_TIMEOUT);
    t->fn();
    alarm(0);
    fflush(stderr);
    if (failures) {
        printf("FAIL %s: %d check%s failed\n", t->name, failures, failures == 1 ? "" : "s");
        fflush(stdout);
        return 1;
    }
    printf("ok %s\n", t->name);
    fflush(stdout);
    return 0;
}

/* Runs every case in a forked child of its own; 0 when all passed. */
static int run_all(const struct test *tests, size_t n, const char *dir) {
    int failed = 0;
    for (size_t i = 0; i < n; i++) {
        char *sub = join(dir, tests[i].name);
        if (mkdir(sub, 0755) != 0 && errno != EEXIST) {
            perror(sub);
            exit(2);
        }
        pid_t pid = fork_or_exit();
        if (pid == 0) {
            scratch = sub;
            /* exit, not _exit: the sanitizers' leak check runs at exit. The
             * verdict line is printed by run_case; CASE_FAILED tells its
             * FAIL apart from a sanitizer's exit status. */
            exit(run_case(&tests[i]) ? CASE_FAILED : 0);
        }
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        if (WIFSIGNALED(status)) {
            int sig = WTERMSIG(status);
            printf("FAIL %s: killed by signal %d (%s)%s\n", tests[i].name, sig, strsignal(sig),
                   sig == SIGALRM ? ", over the time limit" : "");
            failed++;
        } else if (WEXITSTATUS(status) != 0) {
            /* run_case printed FAIL; any other status is a sanitizer report
             * (after the case's own "ok", perhaps) or an exit of the case. */
            if (WEXITSTATUS(status) != CASE_FAILED)
                printf("FAIL %s: exited with status %d\n", tests[i].name, WEXITSTATUS(status));
            failed++;
        }
        fflush(stdout);
        free(sub);
    }
    printf("%zu of %zu cases passed\n", n - (size_t)failed, n);
    return failed ? 1 : 0;
}

static int runner_main(int argc, char **argv, const struct test *tests, size_t n) {
    if (argc == 2 && strcmp(argv[1], "list") == 0) {
        for (size_t i = 0; i < n; i++) printf("%s\n", tests[i].name);
        return 0;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: %s list | %s <case>|all <scratch-dir>\n", argv[0], argv[0]);
        return 2;
    }
    if (al_abi_version() != AL_ABI_VERSION) {
        fprintf(stderr, "ABI %u, header %u\n", al_abi_version(), AL_ABI_VERSION);
        return 1;
    }
    if (strcmp(argv[1], "all") == 0) return run_all(tests, n, argv[2]);
    scratch = argv[2];
    for (size_t i = 0; i < n; i++)
        if (strcmp(argv[1], tests[i].name) == 0) return run_case(&tests[i]);
    fprintf(stderr, "no case %s (%s list names them)\n", argv[1], argv[0]);
    return 2;
}

#endif
