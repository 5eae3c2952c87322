//! Helpers shared by the integration tests: generated files, forked
//! children, a loader in each mode.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use asyncloader::testkit::SplitMix64;
use asyncloader::{Config, Entry, Loader, Worker};

/// Deterministic bytes for file `i` of `len` bytes (splitmix64 stream).
pub fn content(i: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    SplitMix64::new(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len as u64).fill(&mut out);
    out
}
#[allow(unused_imports)] // not every test binary uses it
pub use asyncloader::testkit::Rng;

/// Writes `sizes.len()` files into `dir`, returns their paths.
pub fn make_files(dir: &Path, sizes: &[usize]) -> Vec<PathBuf> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let p = dir.join(format!("f{i:06}_{n}.bin"));
            std::fs::write(&p, content(i as u64, n)).unwrap();
            p
        })
        .collect()
}

/// Asserts that `e` loaded `path` exactly as it is on disk.
pub fn check_entry(e: &Entry) {
    assert_eq!(e.error(), 0, "{:?} failed to load", e.path());
    let disk = std::fs::read(e.path()).unwrap();
    assert_eq!(e.len(), disk.len(), "{:?}: size", e.path());
    assert!(e.data() == &disk[..], "{:?}: bytes differ", e.path());
}

/// How the loader runs in a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Threads,
    Process,
    Become,
}

/// A loader running in `mode`. For `Become`, a helper thread of this
/// process calls `become_loader` (which the Loader handle shuts down).
pub struct Running {
    pub loader: std::sync::Arc<Loader>,
    become_thread: Option<std::thread::JoinHandle<asyncloader::Result<()>>>,
}

impl Running {
    pub fn new(cfg: Config, mode: Mode) -> Running {
        let loader = std::sync::Arc::new(Loader::new(cfg).unwrap());
        let mut become_thread = None;
        match mode {
            Mode::Threads => loader.start().unwrap(),
            Mode::Process => loader.spawn().unwrap(),
            Mode::Become => {
                let l = loader.clone();
                become_thread = Some(std::thread::spawn(move || l.become_loader()));
            }
        }
        Running {
            loader,
            become_thread,
        }
    }

    pub fn worker(&self, id: u32) -> Worker {
        self.loader.worker(id).unwrap()
    }

    pub fn stop(mut self) {
        self.loader.shutdown().unwrap();
        if let Some(t) = self.become_thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

/// Loads every path through `w`, keeping the queue full, checking every
/// entry's bytes against the disk; releases in completion order. Returns the
/// number of entries checked.
pub fn load_all(w: &Worker, paths: &[PathBuf]) -> usize {
    let mut next = 0;
    let mut got = 0;
    while got < paths.len() {
        while next < paths.len() {
            match w.request(&paths[next]) {
                Ok(()) => next += 1,
                Err(e) if e.kind() == asyncloader::ErrorKind::QueueFull => break,
                Err(e) => panic!("request: {e}"),
            }
        }
        let e = w.wait_get_timeout(Duration::from_secs(30)).unwrap();
        check_entry(&e);
        e.release();
        got += 1;
    }
    got
}

/// Runs `f` in a forked child; returns true when it exited 0. The child
/// never returns into the test harness.
pub fn in_child(f: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the child only runs `f` and then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
        // SAFETY: leaves the child without running the harness's code.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    pid
}

/// Waits for child `pid`; true when it exited with status 0.
pub fn child_ok(pid: libc::pid_t) -> bool {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// The backend the loader should pick: the suite runs once per backend,
/// selected by `ASYNCLOADER_BACKEND`.
pub fn expected_backend() -> &'static str {
    match std::env::var("ASYNCLOADER_BACKEND").as_deref() {
        Ok("threads") => "threads",
        _ => "io_uring",
    }
}

/// A seccomp program: `io_uring_setup` fails with `errno`, all else allowed
/// (what a container's seccomp profile does to io_uring).
pub fn io_uring_setup_filter(errno: u32) -> [libc::sock_filter; 4] {
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    [
        // seccomp_data.nr is at offset 0.
        f(ld, 0, 0, 0),
        f(jeq, 0, 1, libc::SYS_io_uring_setup as u32),
        f(ret, 0, 0, RET_ERRNO | errno),
        f(ret, 0, 0, RET_ALLOW),
    ]
}

/// Installs seccomp program `prog` on the calling thread (and what it
/// forks or execs). Only two `prctl` calls: async-signal-safe, usable
/// between fork and exec.
pub fn install_seccomp(prog: &[libc::sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut _,
    };
    // SAFETY: plain prctl calls; `fprog` points at `prog`, alive for the
    // call, and the kernel copies the program.
    let ok = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            ) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// poll(2) for POLLIN on `fd`, up to `ms` milliseconds.
pub fn poll_in(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    n > 0 && p.revents & libc::POLLIN != 0
}

/// Reads an eventfd once; false on EAGAIN.
pub fn read_fd(fd: i32) -> bool {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live u64.
    let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    n == 8
}
