//! C and C++ programs against `include/asyncloader.h` and the cdylib.
//!
//! Each test compiles a program with the system compiler (`$CC`/`cc`,
//! `$CXX`/`c++`) and `-Wall -Wextra -Werror`, links it against the
//! `libasyncloader.so` that this `cargo test` run built (it sits next to the
//! test binary in `<target>/<profile>/deps`), runs it on generated files in
//! a temp dir, and checks its exit status (the programs compare every byte
//! with a plain read). Set `AL_SKIP_C_TESTS=1` to skip them on a machine
//! without a C toolchain.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Directory holding `libasyncloader.so`.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe
        .parent()
        .expect("test binary has a directory")
        .to_path_buf();
    let mut candidates = vec![deps.clone()];
    candidates.extend(deps.parent().map(Path::to_path_buf));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest().join("target"));
    candidates.push(target.join("debug"));
    candidates
        .into_iter()
        .find(|d| d.join("libasyncloader.so").is_file())
        .expect("libasyncloader.so next to the test binary (crate-type includes cdylib)")
}

fn skip() -> bool {
    if std::env::var("AL_SKIP_C_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("AL_SKIP_C_TESTS=1: skipping the C/C++ tests");
        return true;
    }
    false
}

/// Compiles `src` (relative to the crate) into `out`; C++ when `cxx`.
fn compile(src: &str, out: &Path, cxx: bool, extra: &[&str]) {
    let (var, default, std) = if cxx {
        ("CXX", "c++", "-std=c++17")
    } else {
        ("CC", "cc", "-std=c11")
    };
    let compiler = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let lib = lib_dir();
    let output = Command::new(&compiler)
        .args([std, "-Wall", "-Wextra", "-Werror", "-O1", "-g"])
        .args(extra)
        .arg("-I")
        .arg(manifest().join("include"))
        .arg(manifest().join(src))
        .arg("-o")
        .arg(out)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lasyncloader", "-lpthread"])
        .output()
        .unwrap_or_else(|e| panic!("running {compiler}: {e} (set AL_SKIP_C_TESTS=1 to skip)"));
    assert!(
        output.status.success(),
        "{compiler} {src} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits for `child` at most TIMEOUT (then kills it) and returns its output.
fn finish(child: Child, what: &str) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(out) => out.expect("wait for the program"),
        Err(_) => {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{what} did not finish within {TIMEOUT:?}");
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    // The library this run built, not whatever `cargo test` puts first on
    // LD_LIBRARY_PATH (which overrides the rpath, and can be the uplifted
    // copy in target/debug from an earlier `cargo build`).
    let child = cmd
        .env("LD_LIBRARY_PATH", lib_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let out = finish(child, what);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Writes `n` files of varied sizes (some empty, one non-UTF-8 name) in
/// three subdirectories; returns their paths.
fn make_tree(dir: &Path, n: usize) -> Vec<PathBuf> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut paths = Vec::new();
    for i in 0..n {
        let sub = dir.join(format!("d{}", i % 3));
        std::fs::create_dir_all(&sub).unwrap();
        let size = match i % 10 {
            0 => 0,
            1 => 300_000 + (next() % 100_000) as usize,
            _ => (next() % 20_000) as usize,
        };
        let data: Vec<u8> = (0..size).map(|_| next() as u8).collect();
        let p = sub.join(format!("f{i:05}.bin"));
        std::fs::write(&p, data).unwrap();
        paths.push(p);
    }
    use std::os::unix::ffi::OsStrExt;
    let odd = dir.join(std::ffi::OsStr::from_bytes(b"odd-\xff\xfe.bin"));
    std::fs::write(&odd, b"not utf-8 in the name").unwrap();
    paths.push(odd);
    paths
}

#[test]
fn header_compiles_as_c11_and_cpp17() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let body = "#include <asyncloader.h>\n\
                #include <string.h>\n\
                int main(void) {\n\
                    al_config c;\n\
                    memset(&c, 0, sizeof c);\n\
                    c.struct_size = sizeof c;\n\
                    al_config_default(&c);\n\
                    return al_abi_version() == AL_ABI_VERSION &&\n\
                           strcmp(al_version(), AL_VERSION_STRING) == 0 &&\n\
                           c.queue_depth > 0 ? 0 : 1;\n\
                }\n";
    for (name, cxx) in [("h.c", false), ("h.cpp", true)] {
        let src = tmp.path().join(name);
        std::fs::write(&src, body).unwrap();
        let exe = tmp.path().join(format!("{name}.out"));
        compile(src.to_str().unwrap(), &exe, cxx, &["-Wpedantic"]);
        run(&mut Command::new(&exe), name);
    }
}

#[test]
fn docs_example_compiles_and_runs() {
    if skip() {
        return;
    }
    let doc = std::fs::read_to_string(manifest().join("docs/c-api.md")).unwrap();
    let start = doc.find("```c\n").expect("docs/c-api.md has a C example") + 5;
    let len = doc[start..].find("```").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("doc.c");
    std::fs::write(&src, &doc[start..start + len]).unwrap();
    let exe = tmp.path().join("doc");
    compile(src.to_str().unwrap(), &exe, false, &[]);
    let file = tmp.path().join("hello.txt");
    std::fs::write(&file, b"hello").unwrap();
    let out = run(
        Command::new(&exe)
            .arg(&file)
            .arg(tmp.path().join("missing")),
        "docs example",
    );
    assert!(out.contains("hello.txt: 5 bytes"), "{out}");
    assert!(out.contains("missing: No such file or directory"), "{out}");
}

#[test]
fn c_example_loads_a_directory_with_threads() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("load_dir");
    compile("examples/c/load_dir.c", &exe, false, &[]);
    let data = tmp.path().join("data");
    let n = make_tree(&data, 600).len();
    let out = run(
        Command::new(&exe).arg(&data).args(["3", "2"]),
        "examples/c/load_dir.c",
    );
    assert!(
        out.contains(&format!("verified: {n} ok, 0 differ, 0 failed to load")),
        "{out}"
    );
}

#[test]
fn c_epoll_example_loads_a_directory_through_eventfds() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("epoll_dir");
    compile("examples/c/epoll_dir.c", &exe, false, &[]);
    // A flat directory (the example does not descend), sizes 0 to ~180 KiB.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let n = 500;
    for i in 0..n {
        let len = (i * 373) % 180_000;
        let mut bytes = vec![0; len];
        asyncloader::testkit::SplitMix64::new(i as u64).fill(&mut bytes);
        std::fs::write(data.join(format!("f{i:04}")), bytes).unwrap();
    }
    let out = run(Command::new(&exe).arg(&data), "examples/c/epoll_dir.c");
    assert!(
        out.contains(&format!("verified: {n} ok, 0 differ, 0 failed to load")),
        "{out}"
    );
}

#[test]
fn c_example_reads_ranges_of_its_own_file_and_of_a_given_one() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("read_ranges");
    compile("examples/c/read_ranges.c", &exe, false, &[]);
    // No arguments: a file of its own (in TMPDIR, removed at exit) and the
    // default ranges, two of them over max_file_size (into the arena).
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let out = run(
        Command::new(&exe).env("TMPDIR", &scratch),
        "examples/c/read_ranges.c",
    );
    assert!(out.contains("verified: 11 ok, 0 differ, 0 failed"), "{out}");
    assert_eq!(out.matches("(arena)").count(), 2, "{out}");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "file left behind"
    );
    // A given file and ranges: odd, across and past the end, empty, longer
    // than max_file_size.
    let file = tmp.path().join("data.bin");
    let mut bytes = vec![0; 2_000_001];
    asyncloader::testkit::SplitMix64::new(5).fill(&mut bytes);
    std::fs::write(&file, bytes).unwrap();
    let ranges = [
        "0:10",
        "5:100000",
        "1999990:100",
        "2000001:5",
        "0:0",
        "0:2000001",
        "3:1048577",
        "0x1001:0x2000",
    ];
    let out = run(
        Command::new(&exe).arg(&file).args(ranges),
        "examples/c/read_ranges.c FILE RANGES",
    );
    assert!(out.contains("verified: 8 ok, 0 differ, 0 failed"), "{out}");
    assert!(
        out.contains("1999990+100: 11 bytes, same as pread"),
        "{out}"
    );
    assert!(
        out.contains("0+2000001: 2000001 bytes (arena), same as pread"),
        "{out}"
    );
}

#[test]
fn cpp_example_loads_a_directory_with_forked_workers() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("load_dir_cpp");
    compile("examples/cpp/load_dir.cpp", &exe, true, &[]);
    let data = tmp.path().join("data");
    let n = make_tree(&data, 400).len();
    for (procs, mode) in [("3", "spawn"), ("2", "start")] {
        let out = run(
            Command::new(&exe).arg(&data).args([procs, mode]),
            "examples/cpp/load_dir.cpp",
        );
        assert!(
            out.contains(&format!(
                "verified: 0 differ, 0 failed to load, {n} expected"
            )),
            "{mode}: {out}"
        );
    }
}

#[test]
fn attach_from_an_unrelated_process() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("attach");
    compile("tests/c/attach.c", &exe, false, &[]);
    let files = make_tree(&tmp.path().join("data"), 30);

    // The library this run built, as `run` gives the "work" process: a
    // server on another copy (the uplifted one in target/debug, from an
    // earlier `cargo build`) may have another layout and refuse it.
    let mut server = Command::new(&exe)
        .arg("serve")
        .env("LD_LIBRARY_PATH", lib_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    let mut name = String::new();
    stdout.read_line(&mut name).unwrap();
    let name = name.trim().to_owned();
    assert!(name.starts_with("asyncloader-"), "server printed {name:?}");

    // A separately started process: it shares nothing with the server but
    // the name.
    let out = run(
        Command::new(&exe).arg("work").arg(&name).args(&files),
        "attach work",
    );
    assert!(
        out.contains(&format!("loaded {} files, 0 bad", files.len())),
        "{out}"
    );

    let mut stdin = server.stdin.take().unwrap();
    let _ = stdin.flush();
    drop(stdin); // the server shuts down when its stdin closes
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = finish(server, "attach serve");
    assert!(
        out.status.success(),
        "server failed: {rest}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        rest.contains(&format!("served {} requests", files.len())),
        "{rest}"
    );
}

/// A program of `tests/c` built on `tests/c/runner.h`, compiled once per
/// test binary; the temp dir holding it lives as long as the process
/// (removed by the OS's tmp cleaning only if the process dies: the binary
/// is small).
fn case_exe(
    src: &str,
    cell: &'static std::sync::OnceLock<(tempfile::TempDir, PathBuf)>,
) -> &'static Path {
    let (_, exe) = cell.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("cases");
        compile(src, &exe, false, &[]);
        (tmp, exe)
    });
    exe
}

/// Runs case `name` of the runner program `exe` (built from `src`) in a
/// scratch dir of its own; a failure names the case.
fn run_case(src: &str, exe: &Path, name: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let out = run(
        Command::new(exe).arg(name).arg(scratch.path()),
        &format!("{src} case {name}"),
    );
    assert!(
        out.lines().any(|l| l == format!("ok {name}")),
        "{src} case {name}: no \"ok {name}\" in\n{out}"
    );
}

/// One `#[test]` per case of a `tests/c` runner program, in a module named
/// after the program, plus one that checks the program lists exactly these
/// cases (a case added on one side only fails it).
macro_rules! c_cases {
    ($module:ident, $src:literal, [$($name:ident),* $(,)?]) => {
        mod $module {
            use super::*;

            static EXE: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> =
                std::sync::OnceLock::new();

            $(
                #[test]
                fn $name() {
                    if skip() {
                        return;
                    }
                    run_case($src, case_exe($src, &EXE), stringify!($name));
                }
            )*

            #[test]
            fn program_lists_exactly_these_cases() {
                if skip() {
                    return;
                }
                let out = run(Command::new(case_exe($src, &EXE)).arg("list"), concat!($src, " list"));
                let listed: Vec<&str> = out.lines().collect();
                assert_eq!(listed, [$(stringify!($name)),*]);
            }
        }
    };
}

c_cases!(
    errors_c,
    "tests/c/errors.c",
    [
        abi_version_and_version_string_match_the_header,
        strerror_names_a_code_of_either_sign_and_never_returns_null,
        config_default_of_null_is_einval,
        config_default_fills_the_documented_defaults,
        loader_new_with_a_null_config_or_out_is_einval_and_leaves_out_alone,
        loader_calls_on_a_null_loader_are_einval,
        attach_with_a_null_name_or_out_is_einval,
        attach_to_a_malformed_name_is_einval,
        attach_to_a_loader_whose_process_is_gone_is_eownerdead,
        worker_calls_on_a_null_worker_are_einval,
        entry_calls_on_a_null_entry_are_einval_or_empty,
        loader_new_rejects_a_zero_queue_depth,
        loader_new_rejects_zero_workers,
        loader_new_rejects_an_unknown_backend,
        loader_new_rejects_a_max_file_size_that_cannot_be_mapped,
        loader_name_and_config_read_back,
        loader_worker_rejects_an_id_out_of_range_or_a_null_out,
        request_of_a_null_empty_or_nul_holding_path_is_einval_and_queues_nothing,
        request_of_a_path_over_path_max_is_enametoolong_and_queues_nothing,
        get_before_the_loader_runs_is_eagain_or_etimedout,
        requests_queue_before_start_until_queue_depth_then_eagain,
        start_twice_or_spawn_after_start_is_ebusy,
        entry_holds_the_file_bytes_in_a_page_aligned_buffer,
        entry_info_matches_the_accessors,
        missing_file_is_an_enoent_entry,
        directory_is_an_eisdir_entry,
        non_utf8_path_loads,
        empty_file_loads_with_size_zero_and_a_buffer,
        released_entry_refuses_every_accessor,
        release_many_skips_entries_already_released,
        reused_slot_leaves_a_stale_handle_dead,
        request_bytes_needs_no_nul_and_takes_non_utf8,
        file_of_exactly_max_file_size_loads,
        file_one_byte_over_max_file_size_is_an_efbig_entry,
        request_many_stops_at_the_first_bad_path,
        get_many_rejects_no_room_and_returns_what_completed,
        freed_worker_handle_refuses_calls_while_its_entries_live,
        stats_count_requests_completions_and_errors,
        shutdown_is_idempotent_and_leaves_the_state_stopped,
        calls_after_shutdown_are_eshutdown,
        worker_outlives_its_loader_handle_and_reports_eshutdown,
        loader_free_shuts_down_a_running_loader_and_entries_stay_mapped,
        spawned_loader_runs_in_another_process,
        become_runs_the_loader_on_the_calling_thread,
        prefault_before_start_changes_nothing_but_speed,
        reclaim_worker_takes_back_held_entries_and_queued_requests,
        reclaim_worker_rejects_an_unknown_worker,
    ]
);

c_cases!(
    hardening_c,
    "tests/c/hardening.c",
    [
        old_config_default_writes_only_its_fields,
        old_config_gets_defaults_for_the_fields_it_lacks,
        old_loader_config_writes_only_its_fields,
        old_stats_caller_gets_only_its_fields,
        old_entry_info_caller_gets_only_its_fields,
        entry_info_of_the_size_before_the_tag_leaves_the_bytes_after_alone,
        newer_config_with_unknown_fields_zero_is_accepted,
        newer_config_with_an_unknown_field_set_is_e2big,
        struct_size_that_is_too_small_or_cuts_a_field_is_einval,
        struct_size_above_a_page_is_e2big,
        config_error_message_names_the_field,
        last_error_message_is_cut_like_snprintf,
        fork_child_release_leaves_the_parent_entry_unchanged,
        fork_child_release_many_skips_inherited_entries,
    ]
);

c_cases!(
    batch_c,
    "tests/c/batch.c",
    [
        tagged_requests_bring_each_file_back_with_its_tag,
        untagged_requests_in_a_slot_that_had_a_tag_read_tag_zero,
        tagged_request_refuses_what_request_bytes_refuses,
        entry_tag_of_null_or_a_released_entry_is_zero,
        packed_requests_tag_the_ith_path_first_tag_plus_i,
        packed_request_stops_at_an_empty_path_with_einval,
        packed_request_counts_a_last_path_without_its_nul,
        packed_request_of_zero_bytes_or_null_arguments,
        packed_request_on_a_full_queue_is_eagain_after_the_free_slots,
        packed_request_of_a_missing_file_comes_back_with_its_tag_and_enoent,
        packed_request_with_a_path_over_path_max_is_enametoolong,
        get_batch_rejects_no_room_null_items_and_a_null_worker,
        get_batch_of_one_takes_one_entry,
        get_batch_of_n_takes_every_entry_outstanding,
        get_batch_with_more_room_than_outstanding_returns_what_is_there,
        get_batch_with_nothing_to_take_is_etimedout,
        get_batch_after_shutdown_is_eshutdown,
        batch_release_releases_every_item_once,
        worker_buffers_span_every_entry_of_the_worker,
        worker_buffers_span_every_entry_with_a_loader_process,
        worker_buffers_rejects_null_arguments,
        worker_buffers_of_a_freed_handle_is_einval_while_its_entry_lives,
        batch_handed_over_is_taken_by_a_forked_process,
        entry_handoff_kills_the_handle_and_the_entry_counts_until_taken,
        loader_take_checks_every_ticket_and_the_room_before_it_releases,
        failed_load_handed_over_is_taken_with_size_zero,
    ]
);

c_cases!(
    epoll_c,
    "tests/c/epoll.c",
    [
        two_workers_on_one_epoll_loop_with_loader_threads,
        two_workers_on_one_epoll_loop_with_a_loader_process,
        dispatch_delivers_every_entry_to_the_callback,
        dispatch_and_eventfd_reject_bad_arguments,
        shutdown_wakes_the_loop_and_try_get_says_eshutdown,
    ]
);

c_cases!(
    ranges_c,
    "tests/c/ranges.c",
    [
        ranges_match_pread_on_both_backends_and_drives,
        ranges_match_pread_with_o_direct,
        entry_offset_is_the_requested_offset_and_zero_for_a_whole_file,
        loader_take_copies_the_ranges_not_the_buffers,
        request_into_the_arena_matches_pread_and_writes_nothing_else,
        request_into_malloc_and_aligned_alloc_memory_matches_pread,
        arena_is_shared_with_a_loader_process_and_an_attached_process,
        registered_memory_with_a_loader_process_is_exdev,
        range_over_int64_max_is_einval_and_queues_nothing,
        range_over_max_file_size_without_destination_is_efbig,
        destination_outside_the_arena_is_einval_and_the_arena_untouched,
        unknown_memory_id_or_no_arena_is_einval,
        null_arguments_are_einval,
        register_memory_of_length_zero_is_einval,
        register_memory_hands_out_16_ids_then_enospc,
        old_entry_info_without_the_offset_is_not_written,
        old_config_without_the_arena_size_gets_no_arena,
        request_ranges_queues_an_array_and_stops_where_one_fails,
    ]
);
