//! What this machine can do for the loader, asked up front: whether
//! io_uring can be set up here and, if not, why (seccomp, the
//! `kernel.io_uring_disabled` sysctl, an old kernel, `RLIMIT_MEMLOCK`);
//! which io_uring opcodes the engine needs and whether the kernel has
//! them; which backend `Auto` picks; and, per path, the file system,
//! whether `O_DIRECT` works there and with which alignment, and the block
//! device's queue depth and read-ahead.
//!
//! [`probe`] gathers it (`asyncloader info`, `al_probe_json`,
//! `asyncloader.probe()` in Python); [`Probe::to_json`] and the `Display`
//! impl render it. Nothing here changes the machine: the checks open, read
//! and close; they never write.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::{BUF_ALIGN, BackendKind};

/// The io_uring opcodes the engine submits.
pub const NEEDED_OPCODES: [(&str, u8); 6] = [
    ("OPENAT", io_uring::opcode::OpenAt::CODE),
    ("READ", io_uring::opcode::Read::CODE),
    ("CLOSE", io_uring::opcode::Close::CODE),
    ("STATX", io_uring::opcode::Statx::CODE),
    ("FADVISE", io_uring::opcode::Fadvise::CODE),
    ("ASYNC_CANCEL", io_uring::opcode::AsyncCancel::CODE),
];

/// Why io_uring cannot be set up, as far as the machine tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A seccomp filter is installed and the error is what filters return.
    Seccomp,
    /// `kernel.io_uring_disabled` is 2, or 1 and this process is not in
    /// `kernel.io_uring_group`.
    Sysctl,
    /// The kernel has no io_uring (`ENOSYS`) or lacks what the engine
    /// sets up (`EINVAL`: CQ sizing, clamping, a sparse file table, 5.19+).
    Kernel,
    /// `ENOMEM`: before 5.12 the rings are charged to `RLIMIT_MEMLOCK`.
    Memlock,
    /// Anything else (the errno says what).
    Other,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Seccomp => "seccomp",
            Reason::Sysctl => "sysctl",
            Reason::Kernel => "kernel",
            Reason::Memlock => "memlock",
            Reason::Other => "other",
        }
    }
}

/// The io_uring part of a probe.
#[derive(Clone, Debug)]
pub struct Uring {
    /// The engine's io_uring backend can be set up here.
    pub available: bool,
    /// The errno of the failed step (0 when available).
    pub errno: i32,
    /// The step that failed: `io_uring_setup`, or `engine setup` (the ring
    /// exists, the engine's flags or sparse file table do not).
    pub failed_step: Option<&'static str>,
    pub reason: Option<Reason>,
    /// One sentence for people.
    pub explanation: String,
    /// `(name, supported)` for each of [`NEEDED_OPCODES`]; `None` when the
    /// kernel could not be asked (no ring).
    pub opcodes: Vec<(&'static str, Option<bool>)>,
}

/// One path's part of a probe.
#[derive(Clone, Debug, Default)]
pub struct PathProbe {
    pub path: PathBuf,
    /// Why the path could not be examined at all.
    pub error: Option<String>,
    /// `statfs` magic and its name (`"unknown"` for magics not in the table).
    pub fs_magic: u64,
    pub fs_type: String,
    /// The regular file the O_DIRECT check used (the path, or the first
    /// regular file of a directory); `None`: no file to try.
    pub tested_file: Option<PathBuf>,
    /// `open(O_DIRECT)`: `Ok(())` or the errno.
    pub direct_open: Option<Result<(), i32>>,
    /// A 4 KiB aligned `pread` on that descriptor: bytes or the errno.
    pub direct_read: Option<Result<usize, i32>>,
    /// `STATX_DIOALIGN`: `(mem_align, offset_align)`, `None` when the file
    /// system does not report it.
    pub dio_align: Option<(u32, u32)>,
    /// The engine reads with `O_DIRECT` here when asked (`direct = true`):
    /// alignment reported and at most 4 KiB. Otherwise it reads buffered and
    /// counts a fallback.
    pub engine_direct: bool,
    /// `MAJ:MIN` of the file system's device.
    pub device: (u32, u32),
    /// The block device (the whole disk for a partition), when sysfs has one.
    pub block: Option<BlockDev>,
}

/// Queue settings of a block device from sysfs.
#[derive(Clone, Debug, Default)]
pub struct BlockDev {
    pub name: String,
    pub nr_requests: Option<u64>,
    pub read_ahead_kb: Option<u64>,
    pub rotational: Option<bool>,
    pub logical_block_size: Option<u64>,
}

/// Everything [`probe`] found.
#[derive(Clone, Debug)]
pub struct Probe {
    /// This library's version.
    pub version: &'static str,
    /// `uname`: sysname, release, machine.
    pub kernel: (String, String, String),
    pub uring: Uring,
    /// `/proc/self/status` `Seccomp:` (0 off, 1 strict, 2 filter).
    pub seccomp: Option<u32>,
    /// `/proc/sys/kernel/io_uring_disabled` (absent before 6.6).
    pub io_uring_disabled: Option<u32>,
    /// `RLIMIT_MEMLOCK` soft and hard (`None`: unlimited).
    pub memlock: Option<(Option<u64>, Option<u64>)>,
    /// `ASYNCLOADER_BACKEND` as set (raw), if set.
    pub backend_env: Option<String>,
    /// What a loader with `backend: Auto` uses here (the environment
    /// override included): `"io_uring"` or `"threads"`; or an error when the
    /// override asks for io_uring and it cannot be set up.
    pub auto_backend: Result<&'static str, String>,
    pub paths: Vec<PathProbe>,
}

fn read_u64(p: impl AsRef<Path>) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn seccomp_mode() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `(major, minor)` of a release string like `6.18.44-fc`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Is this process in `kernel.io_uring_group` (or root, which has
/// `CAP_SYS_ADMIN` as far as we can tell without libcap)?
fn in_io_uring_group() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let Some(g) = read_u64("/proc/sys/kernel/io_uring_group") else {
        return false;
    };
    let g = g as libc::gid_t;
    nix::unistd::getegid().as_raw() == g
        || nix::unistd::getgroups().is_ok_and(|gs| gs.iter().any(|x| x.as_raw() == g))
}

/// Names the likely cause of an io_uring setup failure.
fn classify(
    errno: i32,
    step: &str,
    seccomp: Option<u32>,
    disabled: Option<u32>,
    release: &str,
) -> (Reason, String) {
    let e = errno_name(errno);
    let filtered = seccomp == Some(2);
    let kv = kernel_version(release);
    let old = kv.is_some_and(|v| v < (5, 19));
    match errno {
        libc::EPERM if disabled == Some(2) => (
            Reason::Sysctl,
            format!("{step}: {e}: kernel.io_uring_disabled = 2 forbids io_uring for every process"),
        ),
        libc::EPERM if disabled == Some(1) && !in_io_uring_group() => (
            Reason::Sysctl,
            format!(
                "{step}: {e}: kernel.io_uring_disabled = 1 allows io_uring only to \
                 kernel.io_uring_group and CAP_SYS_ADMIN"
            ),
        ),
        libc::EPERM | libc::EACCES | libc::ENOSYS if filtered && step == "io_uring_setup" => (
            Reason::Seccomp,
            format!(
                "{step}: {e}: a seccomp filter is installed (Seccomp: 2 in /proc/self/status), \
                 as container runtimes do; allow io_uring_setup/enter/register in its profile"
            ),
        ),
        libc::ENOSYS => (
            Reason::Kernel,
            format!(
                "{step}: {e}: kernel {release} has no io_uring (older than 5.1 or built without CONFIG_IO_URING)"
            ),
        ),
        libc::EINVAL if old || step != "io_uring_setup" => (
            Reason::Kernel,
            format!(
                "{step}: {e}: kernel {release} lacks what the engine sets up \
                 (CQ size, clamping, a sparse file table: Linux 5.19 or later)"
            ),
        ),
        libc::ENOMEM => (
            Reason::Memlock,
            format!(
                "{step}: {e}: before Linux 5.12 io_uring rings count against RLIMIT_MEMLOCK; \
                 raise it (ulimit -l) or use a newer kernel"
            ),
        ),
        _ if filtered => (
            Reason::Seccomp,
            format!("{step}: {e}: a seccomp filter is installed and may be the cause"),
        ),
        _ => (Reason::Other, format!("{step}: {e}")),
    }
}

fn probe_uring(seccomp: Option<u32>, disabled: Option<u32>, release: &str) -> Uring {
    // The bare ring, for the opcode probe and to tell which step fails.
    let bare = io_uring::IoUring::new(8);
    let opcodes: Vec<(&'static str, Option<bool>)> = match &bare {
        Ok(ring) => {
            let mut p = io_uring::Probe::new();
            let asked = ring.submitter().register_probe(&mut p).is_ok();
            NEEDED_OPCODES
                .iter()
                .map(|&(n, c)| (n, asked.then(|| p.is_supported(c))))
                .collect()
        }
        Err(_) => NEEDED_OPCODES.iter().map(|&(n, _)| (n, None)).collect(),
    };
    let bare = bare.map(drop);
    // Exactly what the engine sets up (Auto's decision).
    let engine = crate::backend::uring::UringBackend::new(
        1,
        false,
        4096,
        std::sync::Arc::new(()),
        &crate::config::env_overrides(),
    );
    let errno = |e: &std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let failure = match (&bare, engine) {
        (Err(e), _) => Some(("io_uring_setup", errno(e))),
        (Ok(()), Err(e)) => Some(("engine setup", errno(&e))),
        (Ok(()), Ok(_)) => None,
    };
    match failure {
        None => {
            let missing: Vec<&str> = opcodes
                .iter()
                .filter(|(_, s)| *s == Some(false))
                .map(|(n, _)| *n)
                .collect();
            let explanation = if missing.is_empty() {
                "io_uring can be set up; the engine uses it".to_string()
            } else {
                format!(
                    "io_uring can be set up, but the kernel lacks {}: loads fail with EINVAL; \
                     use backend = threads",
                    missing.join(", ")
                )
            };
            Uring {
                available: true,
                errno: 0,
                failed_step: None,
                reason: None,
                explanation,
                opcodes,
            }
        }
        Some((step, errno)) => {
            let (reason, explanation) = classify(errno, step, seccomp, disabled, release);
            Uring {
                available: false,
                errno,
                failed_step: Some(step),
                reason: Some(reason),
                explanation,
                opcodes,
            }
        }
    }
}

/// Names of `statfs` magics (linux/magic.h and the file systems' own).
fn fs_name(magic: u64) -> &'static str {
    match magic {
        0xEF53 => "ext2/ext3/ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x8584_58f6 => "ramfs",
        0x794c_7630 => "overlayfs",
        0x6969 => "nfs",
        0x2fc1_2fc1 => "zfs",
        0xF2F5_2010 => "f2fs",
        0xca45_1a4e => "bcachefs",
        0x6573_5546 => "fuse",
        0x9fa0 => "proc",
        0x6265_6572 => "sysfs",
        0x6367_7270 => "cgroup2",
        0x7371_7368 => "squashfs",
        0xE0F5_E1E2 => "erofs",
        0x00c3_6400 => "ceph",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x0102_1997 => "9p",
        0x2011_BAB0 => "exfat",
        0x4d44 => "vfat",
        0x5346_544e => "ntfs",
        0x9660 => "iso9660",
        0x9584_58f6 => "hugetlbfs",
        0x1373 => "devfs",
        0x6165_676C => "pstorefs",
        _ => "unknown",
    }
}

/// `STATX_DIOALIGN` of `path`: `(mem, offset)` when reported.
fn dio_align(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `stx` a local statx to write.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            0,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

/// The regular file to try O_DIRECT on: `path` itself, or the first regular
/// file among the first 1,000 entries of a directory.
fn file_to_test(path: &Path, meta: &std::fs::Metadata) -> Option<PathBuf> {
    if meta.is_file() {
        return Some(path.to_path_buf());
    }
    if !meta.is_dir() {
        return None;
    }
    std::fs::read_dir(path)
        .ok()?
        .take(1000)
        .filter_map(|e| e.ok())
        .find(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
}

/// A 4 KiB aligned buffer of 4 KiB (what the engine's buffers are).
#[repr(C, align(4096))]
struct Page([u8; BUF_ALIGN as usize]);

fn direct_check(file: &Path) -> (Result<(), i32>, Option<Result<usize, i32>>) {
    let opened: std::io::Result<File> = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(file);
    match opened {
        Err(e) => (Err(e.raw_os_error().unwrap_or(libc::EIO)), None),
        Ok(f) => {
            let mut page = Box::new(Page([0; BUF_ALIGN as usize]));
            let r = f
                .read_at(&mut page.0, 0)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
            (Ok(()), Some(r))
        }
    }
}

/// sysfs queue settings of block device `maj:min`, or of its disk when it
/// is a partition.
fn block_dev(maj: u32, min: u32) -> Option<BlockDev> {
    let dev = std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}")).ok()?;
    let disk = if dev.join("partition").exists() {
        dev.parent()?.to_path_buf()
    } else {
        dev
    };
    let q = disk.join("queue");
    Some(BlockDev {
        name: disk.file_name()?.to_string_lossy().into_owned(),
        nr_requests: read_u64(q.join("nr_requests")),
        read_ahead_kb: read_u64(q.join("read_ahead_kb")),
        rotational: read_u64(q.join("rotational")).map(|r| r != 0),
        logical_block_size: read_u64(q.join("logical_block_size")),
    })
}

fn probe_path(path: &Path) -> PathProbe {
    let mut p = PathProbe {
        path: path.to_path_buf(),
        fs_type: "unknown".into(),
        ..PathProbe::default()
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            p.error = Some(e.to_string());
            return p;
        }
    };
    match nix::sys::statfs::statfs(path) {
        Ok(s) => {
            p.fs_magic = s.filesystem_type().0 as u64;
            p.fs_type = fs_name(p.fs_magic).into();
        }
        Err(e) => p.error = Some(format!("statfs: {e}")),
    }
    let dev = meta.dev();
    p.device = (libc::major(dev), libc::minor(dev));
    p.block = block_dev(p.device.0, p.device.1);
    if let Some(f) = file_to_test(path, &meta) {
        let (o, r) = direct_check(&f);
        p.direct_open = Some(o);
        p.direct_read = r;
        p.dio_align = dio_align(&f);
        p.tested_file = Some(f);
    } else {
        p.dio_align = dio_align(path);
    }
    p.engine_direct = p
        .dio_align
        .is_some_and(|(m, o)| m != 0 && o != 0 && m as u64 <= BUF_ALIGN && o as u64 <= BUF_ALIGN);
    p
}

/// Probes the machine, and each of `paths`. Takes a few milliseconds; sets
/// up (and closes) two small io_uring instances.
pub fn probe<P: AsRef<Path>>(paths: &[P]) -> Probe {
    let kernel = match nix::sys::utsname::uname() {
        Ok(u) => (
            u.sysname().to_string_lossy().into_owned(),
            u.release().to_string_lossy().into_owned(),
            u.machine().to_string_lossy().into_owned(),
        ),
        Err(_) => ("unknown".into(), "unknown".into(), "unknown".into()),
    };
    let seccomp = seccomp_mode();
    let io_uring_disabled = read_u64("/proc/sys/kernel/io_uring_disabled").map(|v| v as u32);
    let memlock = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
        .ok()
        .map(|(s, h)| {
            let f = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
            (f(s), f(h))
        });
    let uring = probe_uring(seccomp, io_uring_disabled, &kernel.1);
    let backend_env = std::env::var("ASYNCLOADER_BACKEND").ok();
    let wanted = crate::config::env_overrides()
        .backend
        .unwrap_or(BackendKind::Auto);
    let auto_backend = match wanted {
        BackendKind::Threads => Ok("threads"),
        BackendKind::Auto if !uring.available => Ok("threads"),
        _ if uring.available => Ok("io_uring"),
        _ => Err(format!(
            "ASYNCLOADER_BACKEND asks for io_uring, which cannot be set up: {}",
            uring.explanation
        )),
    };
    Probe {
        version: env!("CARGO_PKG_VERSION"),
        kernel,
        uring,
        seccomp,
        io_uring_disabled,
        memlock,
        backend_env,
        auto_backend,
        paths: paths.iter().map(|p| probe_path(p.as_ref())).collect(),
    }
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn jopt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or("null".into(), |v| v.to_string())
}

fn errno_name(e: i32) -> String {
    let s = std::io::Error::from_raw_os_error(e).to_string();
    match s.rfind(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl PathProbe {
    /// One line on O_DIRECT here.
    pub fn direct_summary(&self) -> String {
        let align = match self.dio_align {
            Some((m, o)) => format!("STATX_DIOALIGN mem {m}, offset {o}"),
            None => "no STATX_DIOALIGN".into(),
        };
        let test = match (&self.direct_open, &self.direct_read) {
            (None, _) => "not tried (no regular file)".to_string(),
            (Some(Err(e)), _) => format!("open fails: {} (errno {e})", errno_name(*e)),
            (Some(Ok(())), Some(Ok(n))) => format!("open+read works ({n} bytes)"),
            (Some(Ok(())), Some(Err(e))) => {
                format!("open works, read fails: {} (errno {e})", errno_name(*e))
            }
            (Some(Ok(())), None) => "open works".into(),
        };
        let engine = if self.engine_direct {
            "the engine reads O_DIRECT here"
        } else {
            "the engine reads buffered here (counted as a fallback)"
        };
        format!("{test}; {align}; {engine}")
    }
}

impl Probe {
    /// The probe as one JSON object (stable field names; see docs).
    pub fn to_json(&self) -> String {
        let u = &self.uring;
        let opcodes: Vec<String> = u
            .opcodes
            .iter()
            .map(|(n, s)| format!("{}:{}", js(n), jopt(*s)))
            .collect();
        let (ml_soft, ml_hard) = self.memlock.unwrap_or((None, None));
        let paths: Vec<String> = self
            .paths
            .iter()
            .map(|p| {
                let res = |r: &Option<Result<(), i32>>| match r {
                    None => "null".to_string(),
                    Some(Ok(())) => "0".into(),
                    Some(Err(e)) => e.to_string(),
                };
                let (read_bytes, read_errno) = match p.direct_read {
                    None => ("null".to_string(), "null".to_string()),
                    Some(Ok(n)) => (n.to_string(), "0".into()),
                    Some(Err(e)) => ("null".into(), e.to_string()),
                };
                let block = match &p.block {
                    None => "null".to_string(),
                    Some(b) => format!(
                        "{{\"name\":{},\"nr_requests\":{},\"read_ahead_kb\":{},\"rotational\":{},\"logical_block_size\":{}}}",
                        js(&b.name),
                        jopt(b.nr_requests),
                        jopt(b.read_ahead_kb),
                        jopt(b.rotational),
                        jopt(b.logical_block_size)
                    ),
                };
                format!(
                    "{{\"path\":{},\"error\":{},\"fs_type\":{},\"fs_magic\":{},\"device\":\"{}:{}\",\
                     \"direct\":{{\"tested_file\":{},\"open_errno\":{},\"read_errno\":{},\"read_bytes\":{},\
                     \"dio_mem_align\":{},\"dio_offset_align\":{},\"engine_direct\":{},\"summary\":{}}},\
                     \"block_device\":{}}}",
                    js(&p.path.to_string_lossy()),
                    p.error.as_deref().map_or("null".into(), js),
                    js(&p.fs_type),
                    p.fs_magic,
                    p.device.0,
                    p.device.1,
                    p.tested_file
                        .as_ref()
                        .map_or("null".into(), |f| js(&f.to_string_lossy())),
                    res(&p.direct_open),
                    read_errno,
                    read_bytes,
                    jopt(p.dio_align.map(|a| a.0)),
                    jopt(p.dio_align.map(|a| a.1)),
                    p.engine_direct,
                    js(&p.direct_summary()),
                    block
                )
            })
            .collect();
        let (auto, auto_err) = match &self.auto_backend {
            Ok(b) => (js(b), "null".into()),
            Err(e) => ("null".into(), js(e)),
        };
        format!(
            "{{\"version\":{},\"kernel\":{{\"sysname\":{},\"release\":{},\"machine\":{}}},\
             \"io_uring\":{{\"available\":{},\"errno\":{},\"failed_step\":{},\"reason\":{},\
             \"explanation\":{},\"opcodes\":{{{}}}}},\
             \"seccomp\":{},\"io_uring_disabled\":{},\"memlock\":{{\"soft\":{},\"hard\":{}}},\
             \"backend\":{{\"env\":{},\"auto\":{},\"error\":{}}},\"paths\":[{}]}}",
            js(self.version),
            js(&self.kernel.0),
            js(&self.kernel.1),
            js(&self.kernel.2),
            u.available,
            u.errno,
            u.failed_step.map_or("null".into(), js),
            u.reason.map_or("null".into(), |r| js(r.name())),
            js(&u.explanation),
            opcodes.join(","),
            jopt(self.seccomp),
            jopt(self.io_uring_disabled),
            jopt(ml_soft),
            jopt(ml_hard),
            self.backend_env.as_deref().map_or("null".into(), js),
            auto,
            auto_err,
            paths.join(",")
        )
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = &self.uring;
        writeln!(f, "asyncloader {}", self.version)?;
        writeln!(
            f,
            "kernel:     {} {} {}",
            self.kernel.0, self.kernel.1, self.kernel.2
        )?;
        if u.available {
            writeln!(f, "io_uring:   yes ({})", u.explanation)?;
        } else {
            writeln!(
                f,
                "io_uring:   NO, errno {} ({}), cause: {}\n            {}",
                u.errno,
                errno_name(u.errno),
                u.reason.map_or("?", Reason::name),
                u.explanation
            )?;
        }
        let ops: Vec<String> = u
            .opcodes
            .iter()
            .map(|(n, s)| {
                let s = match s {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "?",
                };
                format!("{n} {s}")
            })
            .collect();
        writeln!(f, "opcodes:    {}", ops.join(", "))?;
        let mode = match self.seccomp {
            Some(0) => "off".to_string(),
            Some(1) => "strict".into(),
            Some(2) => "filter".into(),
            Some(n) => n.to_string(),
            None => "unknown".into(),
        };
        let dis = match self.io_uring_disabled {
            Some(0) => "0 (enabled)".to_string(),
            Some(1) => "1 (io_uring_group only)".into(),
            Some(2) => "2 (disabled)".into(),
            Some(n) => n.to_string(),
            None => "absent (kernel before 6.6)".into(),
        };
        let lim = |v: Option<u64>| v.map_or("unlimited".into(), |v| format!("{} KiB", v / 1024));
        let (ml_s, ml_h) = self.memlock.unwrap_or((None, None));
        writeln!(f, "seccomp:    {mode}")?;
        writeln!(f, "sysctl:     kernel.io_uring_disabled = {dis}")?;
        writeln!(f, "memlock:    {} (hard {})", lim(ml_s), lim(ml_h))?;
        let env = match &self.backend_env {
            Some(v) => format!(" (ASYNCLOADER_BACKEND={v})"),
            None => String::new(),
        };
        match &self.auto_backend {
            Ok(b) => writeln!(f, "backend:    {b}{env}")?,
            Err(e) => writeln!(f, "backend:    none: {e}{env}")?,
        }
        for p in &self.paths {
            writeln!(f, "\npath:       {}", p.path.display())?;
            if let Some(e) = &p.error {
                writeln!(f, "  error:    {e}")?;
                if p.fs_magic == 0 {
                    continue;
                }
            }
            writeln!(
                f,
                "  fs:       {} (magic 0x{:x}), device {}:{}",
                p.fs_type, p.fs_magic, p.device.0, p.device.1
            )?;
            if let Some(t) = &p.tested_file
                && t != &p.path
            {
                writeln!(f, "  tried:    {}", t.display())?;
            }
            writeln!(f, "  O_DIRECT: {}", p.direct_summary())?;
            match &p.block {
                Some(b) => writeln!(
                    f,
                    "  device:   {}: nr_requests {}, read_ahead_kb {}, rotational {}, logical block {}",
                    b.name,
                    jopt(b.nr_requests),
                    jopt(b.read_ahead_kb),
                    jopt(b.rotational),
                    jopt(b.logical_block_size)
                )?,
                None => writeln!(
                    f,
                    "  device:   no block device in sysfs (virtual or network file system)"
                )?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        assert_eq!(js("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(kernel_version("x"), None);
    }

    #[test]
    fn reasons_follow_the_machine() {
        let c = |e, s, d, r| classify(e, "io_uring_setup", s, d, r).0;
        assert_eq!(c(libc::EPERM, Some(0), Some(2), "6.6.0"), Reason::Sysctl);
        assert_eq!(c(libc::EPERM, Some(2), Some(0), "6.6.0"), Reason::Seccomp);
        assert_eq!(c(libc::ENOSYS, Some(2), None, "5.10.0"), Reason::Seccomp);
        assert_eq!(c(libc::ENOSYS, Some(0), None, "4.19.0"), Reason::Kernel);
        assert_eq!(c(libc::EINVAL, Some(0), None, "5.4.0"), Reason::Kernel);
        assert_eq!(c(libc::ENOMEM, Some(0), None, "5.10.0"), Reason::Memlock);
        assert_eq!(c(libc::EPERM, Some(0), Some(0), "6.6.0"), Reason::Other);
    }

    #[test]
    fn probes_this_machine() {
        let p = probe(&["/", "/does/not/exist"]);
        assert_eq!(p.uring.opcodes.len(), NEEDED_OPCODES.len());
        assert!(p.paths[1].error.is_some());
        assert!(p.paths[0].error.is_none(), "{:?}", p.paths[0]);
        assert_ne!(p.paths[0].fs_magic, 0);
        let j = p.to_json();
        assert!(j.starts_with('{') && j.ends_with('}'));
        assert!(p.to_string().contains("io_uring:"));
    }
}
