//! `asyncloader info`: each reason io_uring may not be used here, forced for
//! real — the `ASYNCLOADER_BACKEND` override, a seccomp filter that makes
//! `io_uring_setup` fail with `EPERM` (or `ENOSYS`) installed in the child
//! before it runs the binary — and a tmpfs path for `O_DIRECT`.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{install_seccomp, io_uring_setup_filter};
use serde_json::Value;

/// Runs `asyncloader info --json ARGS` with `env`, optionally under a
/// seccomp filter that fails `io_uring_setup` with `blocked_errno`; kills
/// it after 30 s (never hangs).
fn info(args: &[&Path], env: &[(&str, &str)], blocked_errno: Option<u32>) -> (Value, Output) {
    let out = run(&[Path::new("--json")], args, env, blocked_errno);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out)
}

/// Runs `asyncloader info FLAGS ARGS` (see [`info`]).
fn run(
    flags: &[&Path],
    args: &[&Path],
    env: &[(&str, &str)],
    blocked_errno: Option<u32>,
) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_asyncloader"));
    c.arg("info").args(flags).args(args);
    c.env_remove("ASYNCLOADER_BACKEND");
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(errno) = blocked_errno {
        let prog = io_uring_setup_filter(errno);
        // SAFETY: the closure runs in the forked child before exec and only
        // makes two prctl calls (async-signal-safe) on memory it owns.
        unsafe { c.pre_exec(move || install_seccomp(&prog)) };
    }
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("run asyncloader info");
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("asyncloader info did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn uring_works_here() -> bool {
    let (v, _) = info(&[], &[], None);
    v["io_uring"]["available"] == true
}

#[test]
fn reports_io_uring_and_the_opcodes_it_needs() {
    let (v, out) = info(&[], &[], None);
    assert!(out.status.success());
    let ops = v["io_uring"]["opcodes"].as_object().unwrap();
    for op in [
        "OPENAT",
        "READ",
        "CLOSE",
        "STATX",
        "FADVISE",
        "ASYNC_CANCEL",
    ] {
        assert!(ops.contains_key(op), "{op} missing: {v}");
    }
    assert_eq!(v["backend"]["env"], Value::Null);
    if v["io_uring"]["available"] == true {
        assert_eq!(v["backend"]["auto"], "io_uring");
        assert_eq!(v["io_uring"]["errno"], 0);
        assert!(ops.values().all(|s| s == true), "{v}");
    } else {
        assert_eq!(v["backend"]["auto"], "threads");
    }
    assert!(v["kernel"]["release"].as_str().unwrap().contains('.'));
}

#[test]
fn backend_override_is_reported() {
    let (v, out) = info(&[], &[("ASYNCLOADER_BACKEND", "threads")], None);
    assert!(out.status.success());
    assert_eq!(v["backend"]["env"], "threads");
    assert_eq!(v["backend"]["auto"], "threads");
    if uring_works_here() {
        let (v, out) = info(&[], &[("ASYNCLOADER_BACKEND", "io_uring")], None);
        assert!(out.status.success());
        assert_eq!(v["backend"]["auto"], "io_uring");
    }
}

#[test]
fn seccomp_eperm_is_named() {
    for errno in [libc::EPERM, libc::ENOSYS] {
        let (v, out) = info(&[], &[], Some(errno as u32));
        assert!(out.status.success(), "{out:?}");
        let u = &v["io_uring"];
        assert_eq!(u["available"], false, "{v}");
        assert_eq!(u["errno"], errno, "{v}");
        assert_eq!(u["failed_step"], "io_uring_setup", "{v}");
        assert_eq!(u["reason"], "seccomp", "{v}");
        assert_eq!(v["seccomp"], 2, "{v}");
        assert!(u["explanation"].as_str().unwrap().contains("seccomp"));
        assert!(u["opcodes"]["READ"].is_null(), "no ring, no probe: {v}");
        assert_eq!(v["backend"]["auto"], "threads", "Auto falls back: {v}");
        // Asking for io_uring there is an error, and the exit code says so.
        let (v, out) = info(
            &[],
            &[("ASYNCLOADER_BACKEND", "io_uring")],
            Some(errno as u32),
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(v["backend"]["auto"].is_null());
        assert!(v["backend"]["error"].as_str().unwrap().contains("seccomp"));
    }
    // The text says it in one line (as the README shows).
    let out = run(&[], &[], &[], Some(libc::EPERM as u32));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("io_uring:   NO, errno 1 (Operation not permitted), cause: seccomp"),
        "{s}"
    );
    assert!(s.contains("backend:    threads"), "{s}");
    println!("{s}");
}

#[test]
fn tmpfs_o_direct_matches_the_kernel() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("SKIP: no /dev/shm");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, vec![7u8; 10_000]).unwrap();
    let (v, out) = info(&[&file, dir.path()], &[], None);
    assert!(out.status.success());
    for p in v["paths"].as_array().unwrap() {
        assert_eq!(p["fs_type"], "tmpfs", "{p}");
        assert!(
            p["block_device"].is_null(),
            "tmpfs has no block device: {p}"
        );
        let d = &p["direct"];
        assert_eq!(d["tested_file"], file.to_str().unwrap(), "{p}");
        // What the kernel says, asked independently.
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&file);
        match direct {
            Ok(_) => {
                // Linux 6.6+: tmpfs accepts O_DIRECT.
                assert_eq!(d["open_errno"], 0, "{p}");
                assert_eq!(d["read_errno"], 0, "{p}");
                assert_eq!(d["read_bytes"], 4096, "{p}");
            }
            Err(e) => assert_eq!(d["open_errno"], e.raw_os_error().unwrap(), "{p}"),
        }
        // The engine reads O_DIRECT only with an alignment it can meet.
        let aligned = d["dio_mem_align"]
            .as_u64()
            .zip(d["dio_offset_align"].as_u64())
            .is_some_and(|(m, o)| m > 0 && o > 0 && m <= 4096 && o <= 4096);
        assert_eq!(d["engine_direct"], aligned, "{p}");
        if !aligned {
            assert!(d["summary"].as_str().unwrap().contains("buffered"));
        }
    }
}

#[test]
fn missing_path_is_an_error_entry_not_a_failure() {
    let (v, out) = info(&[Path::new("/no/such/asyncloader/path")], &[], None);
    assert!(out.status.success());
    let p = &v["paths"][0];
    assert!(p["error"].as_str().unwrap().contains("No such file"), "{p}");
}

#[test]
fn text_output_names_the_backend() {
    let out = Command::new(env!("CARGO_BIN_EXE_asyncloader"))
        .args(["info", "/"])
        .env("ASYNCLOADER_BACKEND", "threads")
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("backend:    threads (ASYNCLOADER_BACKEND=threads)"),
        "{s}"
    );
    assert!(s.contains("O_DIRECT:"), "{s}");
}
