//! Loads large files whole, each with one `Worker::request_into` straight
//! into destination memory (the loader's arena, or memory this process
//! registered), prints MB/s per run and checks what it loaded.
//!
//! ```sh
//! cargo run --release --example large_files -- [OPTIONS] FILE_OR_DIR...
//! sudo target/release/examples/large_files --direct --cold --repeat 3 /data/big
//! ```
//!
//! Options:
//! - `--direct`: `Config::direct` (O_DIRECT; each request asks for the file's
//!   length rounded up to 4 KiB, so that every read is aligned and direct;
//!   the entry holds the bytes actually read, the file's length).
//! - `--repeat N`: runs (default 1), each loading every file once.
//! - `--cold`: drops the page cache before each run (root).
//! - `--inflight K`: files requested at once (default 1; each is read in
//!   1 MiB pieces, several in flight, by the engine).
//! - `--dest arena|registered`: where the bytes go (default `arena`,
//!   `Config::arena_size`; `registered`: anonymous memory of this process,
//!   `Loader::register_memory`).
//! - `--hugepages`: with `--dest registered`, asks for transparent huge
//!   pages (`madvise(MADV_HUGEPAGE)` on a 2 MiB aligned mapping): a 1 MiB
//!   read then lands in one or two physically contiguous pieces instead of
//!   up to 256 pages (what the kernel gives depends on
//!   /sys/kernel/mm/transparent_hugepage/enabled; the run prints how much
//!   of the memory is huge pages).
//! - `--mem-budget BYTES`: destination memory at most (default 8 GiB). When
//!   every file fits, each has its own destination and the checks run after
//!   the clock stops; otherwise destinations are reused and a file is
//!   checked as soon as it is loaded (inside the timed run).
//! - `--verify`: compares every byte with `pread` (default: the sizes, and
//!   `--samples` random 4 KiB blocks per file, default 64, plus the first and
//!   last block).
//! - `--drive auto|loader|worker`, `--backend auto|uring|threads`.
//!
//! Before each run the destination memory is filled with a poison byte
//! (outside the clock), so a byte the load did not write cannot pass the
//! check as a leftover of the previous run. Exits 1 on any failed load,
//! wrong size or differing byte, 2 on bad arguments.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use asyncloader::{ARENA, BackendKind, Config, Dest, Drive, ErrorKind, Loader, Worker};

const BLOCK: u64 = 4096;
const POISON: u8 = 0xA5;

struct Args {
    paths: Vec<PathBuf>,
    direct: bool,
    repeat: u32,
    cold: bool,
    inflight: usize,
    registered: bool,
    hugepages: bool,
    mem_budget: u64,
    verify: bool,
    samples: u32,
    drive: Drive,
    backend: BackendKind,
}

fn usage(msg: &str) -> ! {
    eprintln!("large_files: {msg}");
    eprintln!(
        "usage: large_files [--direct] [--repeat N] [--cold] [--inflight K] \
         [--dest arena|registered] [--hugepages] [--mem-budget BYTES] [--verify] [--samples N] \
         [--drive auto|loader|worker] [--backend auto|uring|threads] FILE_OR_DIR..."
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        paths: Vec::new(),
        direct: false,
        repeat: 1,
        cold: false,
        inflight: 1,
        registered: false,
        hugepages: false,
        mem_budget: 8 << 30,
        verify: false,
        samples: 64,
        drive: Drive::Auto,
        backend: BackendKind::Auto,
    };
    let mut it = std::env::args().skip(1);
    fn num<T: std::str::FromStr>(v: Option<String>, what: &str) -> T {
        v.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| usage(&format!("{what} wants a number")))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--direct" => a.direct = true,
            "--cold" => a.cold = true,
            "--verify" => a.verify = true,
            "--hugepages" => a.hugepages = true,
            "--repeat" => a.repeat = num(it.next(), "--repeat"),
            "--inflight" => a.inflight = num(it.next(), "--inflight"),
            "--mem-budget" => a.mem_budget = num(it.next(), "--mem-budget"),
            "--samples" => a.samples = num(it.next(), "--samples"),
            "--dest" => match it.next().as_deref() {
                Some("arena") => a.registered = false,
                Some("registered") => a.registered = true,
                _ => usage("--dest is arena or registered"),
            },
            "--drive" => {
                a.drive = match it.next().as_deref() {
                    Some("auto") => Drive::Auto,
                    Some("loader") => Drive::Loader,
                    Some("worker") => Drive::Worker,
                    _ => usage("--drive is auto, loader or worker"),
                }
            }
            "--backend" => {
                a.backend = match it.next().as_deref() {
                    Some("auto") => BackendKind::Auto,
                    Some("uring") => BackendKind::IoUring,
                    Some("threads") => BackendKind::Threads,
                    _ => usage("--backend is auto, uring or threads"),
                }
            }
            "-h" | "--help" => usage("help"),
            s if s.starts_with('-') => usage(&format!("unknown option {s}")),
            _ => a.paths.push(PathBuf::from(arg)),
        }
    }
    if a.paths.is_empty() {
        usage("no file or directory given");
    }
    if a.hugepages && !a.registered {
        usage("--hugepages goes with --dest registered (the arena is shared memory)");
    }
    if a.repeat == 0 || a.inflight == 0 {
        usage("--repeat and --inflight must be at least 1");
    }
    a
}

/// Regular files under `p` (itself if it is one), sorted by path.
fn collect(p: PathBuf, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(md) = std::fs::metadata(&p) else {
        eprintln!("{}: cannot stat", p.display());
        std::process::exit(1);
    };
    if md.is_file() {
        out.push((p, md.len()));
    } else if md.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&p)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        for n in names {
            collect(n, out);
        }
    }
}

fn drop_caches() -> std::io::Result<()> {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
}

/// `len` bytes of `f` at `off`, fewer at end of file.
fn pread(f: &std::fs::File, off: u64, len: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.resize(len as usize, 0);
    let mut got = 0;
    while got < buf.len() {
        let n = f.read_at(&mut buf[got..], off + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(())
}

/// Compares `data` (what the loader put in the destination) with the file:
/// every byte, or the first and last block and `samples` random ones.
/// Returns the first difference found.
fn check(path: &PathBuf, data: &[u8], all: bool, samples: u32, seed: u64) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("open: {e}"))?;
    let size = data.len() as u64;
    let mut blocks: Vec<(u64, u64)> = Vec::new();
    if all {
        let step = 8 << 20;
        let mut off = 0;
        while off < size {
            blocks.push((off, step.min(size - off)));
            off += step;
        }
    } else if size > 0 {
        let n_blocks = size.div_ceil(BLOCK);
        let mut x = seed | 1;
        let mut pick = vec![0, n_blocks - 1];
        for _ in 0..samples {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pick.push(x % n_blocks);
        }
        pick.sort_unstable();
        pick.dedup();
        blocks.extend(
            pick.into_iter()
                .map(|b| (b * BLOCK, BLOCK.min(size - b * BLOCK))),
        );
    }
    let mut buf = Vec::new();
    for (off, len) in blocks {
        pread(&f, off, len, &mut buf).map_err(|e| format!("pread at {off}: {e}"))?;
        let got = &data[off as usize..(off + len) as usize];
        if buf.len() as u64 != len {
            return Err(format!("the file is shorter than loaded at {off}"));
        }
        if got != &buf[..] {
            let i = got.iter().zip(&buf).position(|(a, b)| a != b).unwrap_or(0);
            return Err(format!(
                "byte {} differs: loaded {:#04x}, file {:#04x}",
                off + i as u64,
                got[i],
                buf[i]
            ));
        }
    }
    Ok(())
}

/// Destination memory of this process (`--dest registered`): anonymous,
/// page aligned (2 MiB aligned with huge pages), unmapped on drop.
struct Anon {
    map: *mut u8,
    map_len: usize,
    ptr: *mut u8,
    len: usize,
}

const HUGE: usize = 2 << 20;

impl Anon {
    fn new(len: usize, huge: bool) -> std::io::Result<Anon> {
        let map_len = if huge { len + HUGE } else { len };
        // SAFETY: a fresh private anonymous mapping; no address is given.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let map = p.cast::<u8>();
        let skip = if huge {
            (HUGE - map as usize % HUGE) % HUGE
        } else {
            0
        };
        // SAFETY: skip < HUGE and the mapping has len + HUGE bytes.
        let ptr = unsafe { map.add(skip) };
        // SAFETY: ptr..ptr + len lies inside the mapping made above.
        if huge && unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) } != 0 {
            let e = std::io::Error::last_os_error();
            eprintln!("warning: madvise(MADV_HUGEPAGE): {e}");
        }
        Ok(Anon {
            map,
            map_len,
            ptr,
            len,
        })
    }
}

/// AnonHugePages of /proc/self/smaps_rollup, in bytes.
fn anon_huge_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("AnonHugePages:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb << 10)
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once (the loader that
        // wrote it was shut down before, see main).
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
    }
}

struct Run {
    bytes: u64,
    secs: f64,
    failures: Vec<String>,
}

/// One run: every file once into its destination slot.
#[allow(clippy::too_many_arguments)]
fn run(
    a: &Args,
    w: &Worker,
    files: &[(PathBuf, u64)],
    mem: u32,
    base: *mut u8,
    slot: u64,
    slots: usize,
    round: u32,
) -> Run {
    // Poison every destination (and fault its pages in) outside the clock.
    // SAFETY: base..base + slots * slot is the destination memory (sized so
    // in main); no load is in flight between runs.
    unsafe { std::ptr::write_bytes(base, POISON, slots * slot as usize) };
    if a.cold
        && let Err(e) = drop_caches()
    {
        eprintln!("warning: cannot drop the page cache ({e}): this run is not cold");
    }
    let deferred = slots >= files.len();
    let mut failures = Vec::new();
    let mut held = Vec::new();
    let mut free: Vec<usize> = (0..slots).rev().collect();
    let (mut next, mut done, mut bytes) = (0usize, 0usize, 0u64);
    let mut in_flight = 0usize;
    let t0 = Instant::now();
    let mut elapsed = Duration::ZERO;
    while done < files.len() {
        while next < files.len() && in_flight < a.inflight && !free.is_empty() {
            let s = *free.last().expect("a free slot");
            let (path, size) = &files[next];
            let want = if a.direct {
                size.div_ceil(BLOCK) * BLOCK
            } else {
                *size
            };
            let dest = Dest {
                mem,
                offset: s as u64 * slot,
            };
            // Tag: file index in the low 32 bits, slot above.
            let tag = ((s as u64) << 32) | next as u64;
            // SAFETY: slot `s` (`slot` bytes >= `want`) is free: no other
            // request is in flight into it and nothing here reads it until
            // its entry is delivered.
            match unsafe { w.request_into(path.as_os_str().as_bytes(), 0, want, dest, tag) } {
                Ok(()) => {
                    free.pop();
                    next += 1;
                    in_flight += 1;
                }
                Err(e) if e.kind() == ErrorKind::QueueFull => break,
                Err(e) => {
                    eprintln!("{}: request: {e}", path.display());
                    std::process::exit(1);
                }
            }
        }
        let e = match w.wait_get() {
            Ok(e) => e,
            Err(err) => {
                eprintln!("wait_get: {err}");
                std::process::exit(1);
            }
        };
        in_flight -= 1;
        done += 1;
        if done == files.len() {
            elapsed = t0.elapsed();
        }
        let (i, s) = ((e.tag() & 0xffff_ffff) as usize, (e.tag() >> 32) as usize);
        let (path, size) = &files[i];
        // SAFETY: inside the destination memory (slot s of `slots`).
        let want_ptr = unsafe { base.add(s * slot as usize) };
        if e.error() != 0 {
            failures.push(format!(
                "{}: {}",
                path.display(),
                std::io::Error::from_raw_os_error(e.error())
            ));
        } else if e.len() as u64 != *size {
            failures.push(format!(
                "{}: loaded {} bytes, the file has {size}",
                path.display(),
                e.len()
            ));
        } else if e.data().as_ptr() != want_ptr.cast_const() {
            failures.push(format!("{}: data not at its destination", path.display()));
        } else {
            bytes += *size;
            if deferred {
                held.push(e);
                continue;
            }
            if let Err(m) = check(path, e.data(), a.verify, a.samples, seed(round, i)) {
                failures.push(format!("{}: {m}", path.display()));
            }
        }
        e.release();
        free.push(s);
    }
    for e in held {
        let i = (e.tag() & 0xffff_ffff) as usize;
        let path = &files[i].0;
        if let Err(m) = check(path, e.data(), a.verify, a.samples, seed(round, i)) {
            failures.push(format!("{}: {m}", path.display()));
        }
        e.release();
    }
    Run {
        bytes,
        secs: elapsed.as_secs_f64(),
        failures,
    }
}

fn seed(round: u32, file: usize) -> u64 {
    0x9e37_79b9_7f4a_7c15u64
        .wrapping_mul(round as u64 + 1)
        .wrapping_add(file as u64 * 0x2545_f491_4f6c_dd1d)
}

fn main() {
    let a = parse_args();
    let mut files = Vec::new();
    for p in &a.paths {
        collect(p.clone(), &mut files);
    }
    if files.is_empty() {
        usage("no regular file found");
    }
    let total: u64 = files.iter().map(|f| f.1).sum();
    let largest = files.iter().map(|f| f.1).max().unwrap_or(0);
    // One destination slot per file when they all fit the budget, else as
    // many as fit (at least one per file in flight).
    let slot = largest.div_ceil(BLOCK).max(1) * BLOCK;
    let slots = files
        .len()
        .min((a.mem_budget / slot).max(a.inflight as u64) as usize);
    let inflight = a.inflight.min(slots);
    let dest_len = slots as u64 * slot;
    let queue_depth = slots.max(inflight) as u32;

    let loader = Loader::new(Config {
        n_workers: 1,
        queue_depth,
        max_file_size: 64 << 10,
        dispatch_n: 1,
        direct: a.direct,
        backend: a.backend,
        drive: a.drive,
        arena_size: if a.registered { 0 } else { dest_len },
        ..Config::default()
    })
    .unwrap_or_else(|e| {
        eprintln!("loader: {e}");
        std::process::exit(1)
    });
    let anon = if a.registered {
        Some(
            Anon::new(dest_len as usize, a.hugepages).unwrap_or_else(|e| {
                eprintln!("mmap {dest_len} bytes: {e}");
                std::process::exit(1)
            }),
        )
    } else {
        None
    };
    let (mem, base) = match &anon {
        // SAFETY: the mapping lives until after the loader is shut down
        // (dropped after it, at the end of main).
        Some(m) => match unsafe { loader.register_memory(m.ptr, m.len) } {
            Ok(id) => (id, m.ptr),
            Err(e) => {
                eprintln!("register_memory: {e}");
                std::process::exit(1)
            }
        },
        None => (ARENA, loader.arena().0),
    };
    if let Err(e) = loader.start() {
        eprintln!("start: {e}");
        std::process::exit(1);
    }
    let w = loader.worker(0).expect("worker 0");
    println!(
        "{} files, {:.1} MB; {} in flight, {} destinations of {} bytes ({}), direct {}, {}",
        files.len(),
        total as f64 / 1e6,
        inflight,
        slots,
        slot,
        if a.registered { "registered" } else { "arena" },
        a.direct,
        if slots >= files.len() {
            "checked after each run"
        } else {
            "checked as loaded (inside the timed run)"
        },
    );
    let a = Args { inflight, ..a };
    let mut rates = Vec::new();
    let mut failed = false;
    for round in 0..a.repeat {
        let before = loader.stats();
        let r = run(&a, &w, &files, mem, base, slot, slots, round);
        let after = loader.stats();
        if round == 0 && a.registered {
            println!(
                "destination memory in transparent huge pages: {:.1} of {:.1} MB",
                anon_huge_bytes() as f64 / 1e6,
                dest_len as f64 / 1e6
            );
        }
        let mbs = r.bytes as f64 / 1e6 / r.secs;
        println!(
            "run {}/{}: {} bytes, {} files, {:.3} s, {:.1} MB/s, direct reads {}, \
             buffered fallbacks {}, {}",
            round + 1,
            a.repeat,
            r.bytes,
            files.len(),
            r.secs,
            mbs,
            after.direct_reads - before.direct_reads,
            after.buffered_fallbacks - before.buffered_fallbacks,
            if r.failures.is_empty() {
                if a.verify {
                    "verify ok (every byte)"
                } else {
                    "verify ok (sizes, sampled blocks)"
                }
            } else {
                "VERIFY FAILED"
            }
        );
        for f in &r.failures {
            eprintln!("  {f}");
        }
        failed |= !r.failures.is_empty();
        rates.push(mbs);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "median {:.1} MB/s (min {:.1}, max {:.1}) over {} runs; {:?}",
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1],
        rates.len(),
        loader.stats()
    );
    drop(w);
    if let Err(e) = loader.shutdown() {
        eprintln!("shutdown: {e}");
        failed = true;
    }
    drop(loader);
    drop(anon);
    if failed {
        eprintln!("large_files: FAILED");
        std::process::exit(1);
    }
}
