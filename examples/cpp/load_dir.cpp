// Loads every regular file under a directory with several forked worker
// processes sharing one loader, then checks every byte against a plain read.
//
//   scripts/pkgconfig.sh --release
//   export PKG_CONFIG_PATH=target/release/pkgconfig
//   c++ -O2 -std=c++17 examples/cpp/load_dir.cpp -o load_dir_cpp
//       $(pkg-config --cflags --libs asyncloader)
//   ./load_dir_cpp DIR [PROCESSES] [spawn|start]
//
// spawn (default): al_loader_spawn forks a loader process. start: the
// loader runs as threads of this parent, which keeps serving the children
// (forked children inherit the shared memory, not the loader threads).
// Children report through a MAP_SHARED page; the parent prints files/s and
// MB/s and exits 1 if any file differs.
#include <asyncloader.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <unordered_map>
#include <vector>

namespace fs = std::filesystem;

namespace {

struct Report {  // one per child, in shared memory
    uint64_t files, bytes, differ, failed;
    double load_s;  // from fork to the last entry, before verifying
    int32_t rc;
    int32_t pad;
};

uint64_t fnv1a(const uint8_t *d, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ d[i]) * 1099511628211ull;
    return h;
}

bool plain_read_hash(const std::string &p, uint64_t *h) {
    int fd = open(p.c_str(), O_RDONLY);
    if (fd < 0) return false;
    std::vector<uint8_t> buf;
    uint8_t chunk[1 << 16];
    ssize_t r;
    while ((r = read(fd, chunk, sizeof chunk)) > 0) buf.insert(buf.end(), chunk, chunk + r);
    close(fd);
    *h = fnv1a(buf.data(), buf.size());
    return r == 0;
}

// Owns an al_worker; frees it on scope exit.
struct Worker {
    al_worker *w = nullptr;
    ~Worker() { al_worker_free(w); }
};

// The body of child `id`: load its share of `paths`, then verify it.
Report run_child(al_loader *l, uint32_t id, const std::vector<std::string> &paths,
                 std::chrono::steady_clock::time_point t0) {
    Report rep{};
    Worker w;
    if ((rep.rc = al_loader_worker(l, id, &w.w)) < 0) return rep;
    std::unordered_map<std::string, uint64_t> hashes;
    std::vector<const char *> cpaths;
    for (const auto &p : paths) cpaths.push_back(p.c_str());
    size_t next = 0, done = 0;
    al_entry *es[64];
    while (done < paths.size()) {
        while (next < paths.size()) {
            size_t acc = 0;
            int rc = al_worker_request_many(w.w, cpaths.data() + next, paths.size() - next, &acc);
            next += acc;
            if (rc == -EAGAIN) break;
            if (rc < 0) {
                rep.rc = rc;
                return rep;
            }
        }
        size_t got = 0;
        if ((rep.rc = al_worker_get_many(w.w, es, 64, 30'000'000'000LL, &got)) < 0) return rep;
        for (size_t k = 0; k < got; k++) {
            if (al_entry_error(es[k]) != 0) {
                std::fprintf(stderr, "%s: %s\n", al_entry_path(es[k]), al_strerror(al_entry_error(es[k])));
                rep.failed++;
            } else {
                hashes[al_entry_path(es[k])] = fnv1a(al_entry_data(es[k]), al_entry_size(es[k]));
                rep.bytes += al_entry_size(es[k]);
            }
        }
        al_entry_release_many(es, got);
        done += got;
        rep.files += got;
    }
    rep.load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (const auto &[p, h] : hashes) {
        uint64_t want = 0;
        if (!plain_read_hash(p, &want) || want != h) {
            std::fprintf(stderr, "%s: bytes differ from a plain read\n", p.c_str());
            rep.differ++;
        }
    }
    return rep;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s DIR [PROCESSES] [spawn|start]\n", argv[0]);
        return 2;
    }
    const uint32_t procs = argc > 2 ? static_cast<uint32_t>(std::max(1, std::atoi(argv[2]))) : 4;
    const bool spawn = argc <= 3 || std::strcmp(argv[3], "start") != 0;
    if (al_abi_version() != AL_ABI_VERSION) {
        std::fprintf(stderr, "libasyncloader ABI %u, compiled for %u\n", al_abi_version(), AL_ABI_VERSION);
        return 2;
    }

    std::vector<std::string> all;
    uint64_t largest = 1;
    for (const auto &e : fs::recursive_directory_iterator(argv[1])) {
        if (!e.is_regular_file() || e.is_symlink()) continue;
        all.push_back(e.path().string());
        largest = std::max<uint64_t>(largest, e.file_size());
    }

    al_config cfg{};
    cfg.struct_size = sizeof cfg; // the library reads only what we have
    al_config_default(&cfg);
    cfg.n_workers = procs;
    cfg.queue_depth = 32;
    cfg.max_file_size = largest;
    al_loader *l = nullptr;
    int rc = al_loader_new(&cfg, &l);
    if (rc == 0) rc = spawn ? al_loader_spawn(l) : al_loader_start(l);
    if (rc < 0) {
        std::fprintf(stderr, "loader: %s\n", al_strerror(rc));
        return 1;
    }

    void *mem = mmap(nullptr, sizeof(Report) * procs, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return 1;
    auto *reports = static_cast<Report *>(mem);

    const auto t0 = std::chrono::steady_clock::now();
    std::vector<pid_t> kids;
    for (uint32_t id = 0; id < procs; id++) {
        std::vector<std::string> mine;
        for (size_t i = id; i < all.size(); i += procs) mine.push_back(all[i]);
        pid_t pid = fork();
        if (pid == 0) {
            reports[id] = run_child(l, id, mine, t0);
            // The child's copy of the handle only unmaps; _exit skips the
            // parent's atexit work.
            al_loader_free(l);
            _exit(0);
        }
        kids.push_back(pid);
    }
    int status_bad = 0;
    for (pid_t k : kids) {
        int st = 0;
        waitpid(k, &st, 0);
        status_bad |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }

    al_stats st{};
    st.struct_size = sizeof st;
    al_loader_stats(l, &st);
    al_loader_shutdown(l);
    al_loader_free(l);

    Report sum{};
    double dt = 1e-9;  // the slowest child's load phase
    for (uint32_t id = 0; id < procs; id++) {
        const Report &r = reports[id];
        if (r.rc < 0) std::fprintf(stderr, "child %u: %s\n", id, al_strerror(r.rc));
        sum.files += r.files;
        sum.bytes += r.bytes;
        sum.differ += r.differ;
        sum.failed += r.failed;
        sum.rc |= r.rc;
        dt = std::max(dt, r.load_s);
    }
    std::printf("%llu files, %.1f MB in %.3f s: %.0f files/s, %.1f MB/s "
                "(%u processes, loader %s, backend %s)\n",
                static_cast<unsigned long long>(sum.files), sum.bytes / 1e6, dt, sum.files / dt,
                sum.bytes / 1e6 / dt, procs, spawn ? "process" : "threads",
                st.backend == AL_BACKEND_IO_URING ? "io_uring" : "threads");
    std::printf("verified: %llu differ, %llu failed to load, %zu expected\n",
                static_cast<unsigned long long>(sum.differ), static_cast<unsigned long long>(sum.failed),
                all.size());
    munmap(mem, sizeof(Report) * procs);
    const bool ok = !status_bad && sum.rc == 0 && sum.differ == 0 && sum.failed == 0 && sum.files == all.size();
    return ok ? 0 : 1;
}
