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
        if m != "seq" && m != "pool" {
            let l = &r["loader"];
            assert_eq!(l["completions"].as_u64(), Some(files), "{m}: {l}");
            assert_eq!(l["requests"].as_u64(), Some(files), "{m}: {l}");
            assert!(l["batches"].as_u64().unwrap() > 0, "{m}: {l}");
            assert_ne!(l["backend"].as_str(), Some("none"), "{m}: {l}");
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
    check_rows(
        &v,
        200,
        &[
            "seq",
            "pool",
            "threads",
            "process",
            "threads-direct",
            "process-direct",
        ],
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
