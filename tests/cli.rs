//! End-to-end tests of the `asyncloader` binary: `gen` then `bench --json`.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_asyncloader"))
}

fn bench_json(args: &[&str], envs: &[(&str, &Path)]) -> (serde_json::Value, String) {
    let mut c = bin();
    c.arg("bench").args(args).args(["--json", "--no-progress"]);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().expect("run asyncloader bench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stderr}",
        out.status
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));
    (v, stderr)
}

/// Rows without an asyncloader loader (no `loader` stats).
const NO_LOADER: [&str; 6] = ["seq", "pool", "pread", "pread-2x", "ring", "ring-direct"];

/// The default rows, and with `--direct`.
const DEFAULT_ROWS: [&str; 7] = [
    "seq", "pool", "pread", "pread-2x", "ring", "threads", "process",
];
const DIRECT_ROWS: [&str; 3] = ["ring-direct", "threads-direct", "process-direct"];

fn check_rows(v: &serde_json::Value, files: u64, methods: &[&str]) {
    let rows = v["rows"].as_array().expect("rows");
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(names, methods);
    let bytes = v["data"]["bytes"].as_u64().unwrap();
    for r in rows {
        let m = r["method"].as_str().unwrap();
        assert_eq!(r["files"].as_u64(), Some(files), "{m}: {r}");
        assert_eq!(r["errors"].as_u64(), Some(0), "{m}: {r}");
        assert_eq!(r["bytes"].as_u64(), Some(bytes), "{m}: {r}");
        assert_eq!(r["verified"].as_bool(), Some(true), "{m}: {r}");
        assert!(r["files_per_s"].as_f64().unwrap() > 0.0, "{m}");
        assert!(r["cpu_s_per_1k_files"].as_f64().unwrap() >= 0.0, "{m}");
        // Every verified row has a ratio to the ceiling (a direct row to
        // ring-direct), when the ceiling row ran.
        let ceiling = if m.ends_with("-direct") {
            "ring-direct"
        } else {
            "ring"
        };
        if methods.contains(&ceiling) {
            let x = r["ratio_to_ceiling"].as_f64();
            assert!(x.is_some_and(|x| x > 0.0), "{m}: {r}");
            if m == ceiling {
                assert_eq!(x, Some(1.0), "{m}: {r}");
            }
        } else {
            assert!(r["ratio_to_ceiling"].is_null(), "{m}: {r}");
        }
        if !NO_LOADER.contains(&m) {
            // Each worker loads its first file once more before the clock
            // starts (the bench's warm-up, counted by the loader).
            let workers = v["config"]["workers"].as_u64().unwrap().min(files);
            let l = &r["loader"];
            assert_eq!(l["completions"].as_u64(), Some(files + workers), "{m}: {l}");
            assert_eq!(l["requests"].as_u64(), Some(files + workers), "{m}: {l}");
            assert!(l["batches"].as_u64().unwrap() > 0, "{m}: {l}");
            assert_ne!(l["backend"].as_str(), Some("auto"), "{m}: {l}");
        }
    }
}

#[test]
fn gen_then_bench_every_method_loads_and_verifies_all_files() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("set");
    let out = bin()
        .args(["gen", dir.to_str().unwrap(), "--files", "200", "--dist"])
        .args(["uniform:1-40K", "--seed", "3", "--no-progress"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (v, _) = bench_json(&[dir.to_str().unwrap(), "--direct"], &[]);
    assert_eq!(v["data"]["files"].as_u64(), Some(200));
    let all: Vec<&str> = DEFAULT_ROWS.iter().chain(&DIRECT_ROWS).copied().collect();
    check_rows(&v, 200, &all);
    for r in v["rows"].as_array().unwrap() {
        if NO_LOADER.contains(&r["method"].as_str().unwrap()) {
            assert!(r["loader"].is_null(), "{r}");
        }
    }
    // The ceiling rows are labelled with their shape; x pool is over the
    // fastest pool row, which the JSON names.
    let label = |m: &str| {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["method"] == m)
            .unwrap()["label"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        label("ring").contains("x 32 in flight"),
        "{}",
        label("ring")
    );
    assert!(
        label("ring-direct").contains("x 128 in flight, direct"),
        "{}",
        label("ring-direct")
    );
    let best = v["ratios"]["pool"].as_str().expect("best pool row");
    assert!(["pool", "pread", "pread-2x"].contains(&best), "{best}");
    let best_row = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["method"] == best)
        .unwrap();
    assert_eq!(best_row["ratio_to_pool"].as_f64(), Some(1.0));
}

/// Issue 12: the ring and pread rows on a directory that also holds a FIFO
/// and a dangling symlink (a missing file): the listing keeps only regular
/// files, so no row opens the FIFO (which would block) or fails on the
/// missing file; every row loads the rest and verifies.
#[test]
fn ceiling_rows_skip_fifos_and_missing_files_like_the_other_rows() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("set");
    gen_small(&dir, "40");
    nix::unistd::mkfifo(&dir.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::os::unix::fs::symlink(dir.join("gone.bin"), dir.join("missing.bin")).unwrap();
    let o = run_child(
        &[
            "bench",
            dir.to_str().unwrap(),
            "--methods",
            "ring,pread,pread-2x,threads,ring-direct",
            "--json",
            "--no-progress",
        ],
        &[],
        None,
        60,
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(!o.leftover);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["data"]["files"].as_u64(), Some(40));
    check_rows(
        &v,
        40,
        &["ring", "pread", "pread-2x", "threads", "ring-direct"],
    );
    // The table says what x pool and x ceiling are over.
    assert!(
        o.stderr.contains("x ceiling: over the ring row"),
        "{}",
        o.stderr
    );
}

#[test]
fn bench_without_dir_generates_the_default_set_once_and_reuses_it() {
    let t = tempfile::tempdir().unwrap();
    let env = [("ASYNCLOADER_CACHE", t.path())];
    let args = [
        "--files",
        "150",
        "--methods",
        "seq,threads",
        "--ext",
        ".bin",
    ];
    let (v, err) = bench_json(&args, &env);
    assert!(err.contains("generating"), "{err}");
    check_rows(&v, 150, &["seq", "threads"]);
    let set = t.path().join("small-150-s1");
    assert!(set.join(".asyncloader-gen").exists());
    let (v, err) = bench_json(&args, &env);
    assert!(err.contains("reusing"), "{err}");
    check_rows(&v, 150, &["seq", "threads"]);
    // Sizes of the small set: 4..16 KiB.
    let bytes = v["data"]["bytes"].as_u64().unwrap();
    assert!((150 * 4096..=150 * 16384).contains(&bytes), "{bytes}");
}

#[test]
fn bench_of_a_missing_or_empty_dir_fails_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["bench", t.path().to_str().unwrap(), "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no regular files"));
}

/// What a bench run as a child left behind.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// Peak resident set of the bench and of every child it reaped, KiB
    /// (`wait4`'s rusage: the largest of the process and its children).
    max_rss_kib: i64,
    /// Processes of the bench's process group alive (or unreaped) after the
    /// bench exited: forked children it left behind.
    leftover: bool,
}

/// Runs `asyncloader ARGS` in its own process group, with RLIMIT_NOFILE
/// lowered to `nofile` when given; kills the group after `limit`.
fn run_child(args: &[&str], envs: &[(&str, &Path)], nofile: Option<u64>, limit: u64) -> Outcome {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut c = bin();
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in envs {
        c.env(k, v);
    }
    if let Some(n) = nofile {
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setrlimit, which is async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                let r = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    }
    // Reaped by `wait4` below (which also gives its rusage), not `wait()`.
    #[allow(clippy::zombie_processes)]
    let mut child = c.spawn().expect("spawn asyncloader");
    let pid = child.id() as i32;
    let reader = |mut s: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(limit);
    let mut status = 0;
    // SAFETY: rusage is plain old data.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child, writing into `status` and `ru`.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if std::time::Instant::now() > deadline {
            // SAFETY: signals the process group this test created.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            panic!("asyncloader {args:?} ran longer than {limit} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signal 0 only checks whether the group has members.
    let leftover = unsafe { libc::kill(-pid, 0) } == 0;
    if leftover {
        // SAFETY: signals the process group this test created (cleanup).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    Outcome {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        max_rss_kib: ru.ru_maxrss,
        leftover,
    }
}

fn gen_small(dir: &Path, files: &str) {
    let out = bin()
        .args(["gen", dir.to_str().unwrap(), "--files", files, "--dist"])
        .args(["uniform:1-8K", "--seed", "5", "--no-progress"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Item 10 of issue 9: a directory with files over 1 GiB (and one over the
/// memory budget's buffer cap) next to small files: the big ones are left
/// out of every row and said so, every row loads the rest and verifies, and
/// the bench's memory stays bounded (the old bench read the 1.5 GB file in
/// its `std::fs::read` rows and sized every loader buffer by it).
#[test]
fn bench_leaves_out_files_over_the_buffer_cap_and_bounds_its_memory() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("set");
    gen_small(&dir, "60");
    // Sparse: no disk used, but stat says 1.5 GB (over the library's 1 GiB
    // limit) and 1.0 GB; and a real 600 KiB file.
    for (name, len) in [("huge.bin", 1_500_000_000u64), ("big.bin", 1_000_000_000)] {
        std::fs::File::create(dir.join(name))
            .unwrap()
            .set_len(len)
            .unwrap();
    }
    std::fs::write(dir.join("medium.bin"), vec![7u8; 600 << 10]).unwrap();
    // Default budget (a quarter of the available memory): the 1.5 GB file
    // is over the library's limit whatever the machine.
    let o = run_child(
        &["bench", dir.to_str().unwrap(), "--methods", "seq,threads"],
        &[],
        None,
        120,
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(!o.leftover, "the bench left processes behind");
    assert!(o.stderr.contains("left out of every row"), "{}", o.stderr);
    assert!(o.stdout.contains("left out of every row"), "{}", o.stdout);
    // 64 MiB over 2 x 64 entries: 512 KiB buffers, files up to 508 KiB.
    let o = run_child(
        &[
            "bench",
            dir.to_str().unwrap(),
            "--memory-budget",
            "64M",
            "--json",
            "--no-progress",
        ],
        &[],
        None,
        120,
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(!o.leftover, "the bench left processes behind");
    assert!(
        o.stderr
            .contains("3 files over 508 KiB left out of every row"),
        "{}",
        o.stderr
    );
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["data"]["files"].as_u64(), Some(60));
    assert_eq!(v["data"]["left_out"]["files"].as_u64(), Some(3));
    assert_eq!(v["memory"]["buffer_cap"].as_u64(), Some(508 << 10));
    check_rows(&v, 60, &DEFAULT_ROWS);
    for r in v["rows"].as_array().unwrap() {
        assert!(r["ratio_to_seq"].as_f64().is_some(), "{r}");
    }
    // The small files need 2 MB of buffers; hundreds of MB would mean a big
    // file was read or a buffer sized by it.
    assert!(
        o.max_rss_kib < 256 * 1024,
        "peak RSS {} KiB:\n{}",
        o.max_rss_kib,
        o.stderr
    );
}

fn usage_error(args: &[&str], envs: &[(&str, &Path)], want: &[&str]) {
    let o = run_child(args, envs, None, 60);
    assert_eq!(o.code, Some(2), "{args:?}:\n{}", o.stderr);
    for w in want {
        assert!(o.stderr.contains(w), "{args:?}: no {w:?} in:\n{}", o.stderr);
    }
    assert!(!o.leftover);
}

/// Item 13 of issue 9: out-of-range values are usage errors (exit 2) with a
/// message naming the flag, not an abort, a panic or a table of failed rows.
#[test]
fn gen_refuses_out_of_range_values_with_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("g");
    let ds = d.to_str().unwrap();
    usage_error(
        &["gen", ds, "--files", "1", "--dist", "uniform:1-99999G"],
        &[],
        &["--dist", "1 GiB"],
    );
    usage_error(
        &[
            "gen",
            ds,
            "--files",
            "1",
            "--dist",
            "uniform:1-99999999999999999G",
        ],
        &[],
        &["--dist"],
    );
    usage_error(
        &["gen", ds, "--files", "18446744073709551615"],
        &[],
        &["--files"],
    );
    usage_error(&["gen", ds, "--files", "0"], &[], &["--files"]);
    // 100,000 files of 1 GiB: more than any disk here has free.
    usage_error(
        &["gen", ds, "--files", "100000", "--dist", "uniform:1G-1G"],
        &[],
        &["free"],
    );
    assert!(!d.join(".asyncloader-gen").exists());
}

#[test]
fn bench_refuses_out_of_range_values_with_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    let cache = [("ASYNCLOADER_CACHE", t.path())];
    usage_error(
        &["bench", "--files", "1", "--dist", "uniform:1-99999G"],
        &cache,
        &["--dist", "1 GiB"],
    );
    usage_error(
        &["bench", "--files", "18446744073709551615"],
        &cache,
        &["--files"],
    );
    let dir = t.path().join("set");
    gen_small(&dir, "5");
    let ds = dir.to_str().unwrap();
    for (flag, value) in [
        ("--loader-threads", "100"),
        ("--workers", "5000"),
        ("--queue-depth", "100000"),
        ("--ring-window", "100000"),
    ] {
        usage_error(&["bench", ds, flag, value], &[], &[flag]);
    }
    let o = run_child(&["bench", ds, "--files", "0"], &[], None, 60);
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("--files"), "{}", o.stderr);
    assert!(!o.stderr.contains("no regular files"), "{}", o.stderr);
}

/// Item 16 of issue 9: when `pipe()` fails inside the fork loop of the
/// `process` row (RLIMIT_NOFILE lowered so it runs out part-way), the
/// workers already forked are killed and reaped: the row fails, the bench
/// exits 1 and leaves no process behind. The old code returned early and
/// left them blocked on the start pipe (they later ran against a dead
/// loader for up to a minute).
#[test]
fn bench_reaps_forked_workers_when_the_fork_loop_fails() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("set");
    gen_small(&dir, "20");
    let args = [
        "bench",
        dir.to_str().unwrap(),
        "--methods",
        "process",
        "--workers",
        "200",
        "--queue-depth",
        "2",
        "--loader-threads",
        "1",
        "--no-warmup",
        "--no-progress",
    ];
    let o = run_child(&args, &[], Some(64), 60);
    assert!(
        !o.leftover,
        "forked workers outlived the bench:\n{}",
        o.stderr
    );
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    // The row failed in the fork loop after forking some workers.
    let k: u32 = o
        .stderr
        .split("pipe for worker ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pipe failure in the fork loop:\n{}", o.stderr));
    assert!(k > 0, "{}", o.stderr);
    assert!(o.stderr.contains("Too many open files"), "{}", o.stderr);
    assert!(o.stdout.contains("failed: pipe for worker"), "{}", o.stdout);
}

/// Issue 12: on tmpfs the `ring-direct` row loads and verifies every file:
/// with O_DIRECT where tmpfs accepts it (Linux 6.6 and later), else
/// buffered, as the engine falls back to, with the label saying which.
#[test]
fn ring_direct_on_tmpfs_loads_every_file_direct_or_buffered() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm: skipped");
        return;
    }
    let t = tempfile::tempdir_in(shm).unwrap();
    let dir = t.path().join("set");
    gen_small(&dir, "30");
    let (v, _) = bench_json(
        &[
            dir.to_str().unwrap(),
            "--methods",
            "ring-direct,threads-direct",
        ],
        &[],
    );
    check_rows(&v, 30, &["ring-direct", "threads-direct"]);
    use std::os::unix::fs::OpenOptionsExt;
    let first = std::fs::read_dir(dir.join("d000"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let accepted = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(first.path())
        .is_ok();
    let label = v["rows"][0]["label"].as_str().unwrap();
    let want = if accepted {
        "in flight, direct"
    } else {
        "buffered (O_DIRECT refused)"
    };
    assert!(label.contains(want), "{label}");
}
