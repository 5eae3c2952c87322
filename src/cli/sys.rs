//! Small system helpers for the bench: clocks, CPU time, the page cache,
//! and a description of the machine.

use std::io::Write;

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;
use nix::unistd::{SysconfVar, sysconf};

pub use asyncloader::process::now_ns;

/// User and system CPU seconds of one `getrusage` target (zeros if it
/// fails, which it does not for these targets).
fn rusage_secs(who: UsageWho) -> (f64, f64) {
    let tv = |t: TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
    getrusage(who)
        .map(|ru| (tv(ru.user_time()), tv(ru.system_time())))
        .unwrap_or((0.0, 0.0))
}

/// CPU time of the whole process tree so far: this process (all threads)
/// plus every child that has been waited for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub user: f64,
    pub sys: f64,
}

impl Cpu {
    pub fn now() -> Cpu {
        let (su, ss) = rusage_secs(UsageWho::RUSAGE_SELF);
        let (cu, cs) = rusage_secs(UsageWho::RUSAGE_CHILDREN);
        Cpu {
            user: su + cu,
            sys: ss + cs,
        }
    }

    pub fn since(self, start: Cpu) -> Cpu {
        Cpu {
            user: self.user - start.user,
            sys: self.sys - start.sys,
        }
    }

    pub fn total(self) -> f64 {
        self.user + self.sys
    }
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`. Needs root (and a /proc/sys
/// that is writable, which some containers do not give).
pub fn drop_page_cache() -> std::io::Result<()> {
    nix::unistd::sync();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")?;
    f.write_all(b"3\n")
}

/// Online cores.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// "Linux 6.18.0 x86_64" from uname.
pub fn kernel() -> String {
    match nix::sys::utsname::uname() {
        Ok(u) => format!(
            "{} {} {}",
            u.sysname().to_string_lossy(),
            u.release().to_string_lossy(),
            u.machine().to_string_lossy()
        ),
        Err(_) => "unknown".into(),
    }
}

/// The CPU model from /proc/cpuinfo, if it says.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// File system type and device of the mount that holds `path` (from
/// /proc/self/mountinfo, longest matching mount point).
pub fn filesystem_of(path: &std::path::Path) -> String {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "unknown".into();
    };
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|&x| x == "-") else {
            continue;
        };
        if f.len() < 5 || f.len() < sep + 3 {
            continue;
        }
        let mp = f[4];
        if path.starts_with(mp) && best.as_ref().is_none_or(|(l, _)| mp.len() > *l) {
            best = Some((
                mp.len(),
                format!("{} on {} ({})", f[sep + 1], f[sep + 2], mp),
            ));
        }
    }
    best.map(|b| b.1).unwrap_or_else(|| "unknown".into())
}

/// Bytes an unprivileged user may still write on the file system holding
/// `path` (`statvfs`: `f_bavail * f_frsize`), `None` when it cannot say.
pub fn free_space(path: &std::path::Path) -> Option<u64> {
    // A path with a NUL byte or that does not exist: an error, `None`.
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Memory this process can still use, in bytes, and where the figure comes
/// from: `MemAvailable` of /proc/meminfo, lowered to the room left under
/// this process's cgroup limit (v2 `memory.max - memory.current`, v1
/// `memory.limit_in_bytes - memory.usage_in_bytes`) when there is one. A
/// container often sees the whole machine's MemAvailable but is killed at
/// its cgroup's limit.
pub fn available_memory() -> (u64, String) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    let (mut avail, mut source) = match meminfo {
        Some(b) => (b, "MemAvailable".to_string()),
        None => {
            let conf = |v: SysconfVar| sysconf(v).ok().flatten().unwrap_or(0).max(0) as u64;
            let pages = conf(SysconfVar::_AVPHYS_PAGES);
            let page = conf(SysconfVar::PAGE_SIZE);
            (pages * page, "free physical pages".to_string())
        }
    };
    if let Some(room) = cgroup_room()
        && room < avail
    {
        avail = room;
        source = "the cgroup's memory limit".to_string();
    }
    (avail, source)
}

/// Room left under this process's cgroup memory limit, if it has one.
fn cgroup_room() -> Option<u64> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |p: String| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let mut best: Option<u64> = None;
    for line in groups.lines() {
        let mut f = line.splitn(3, ':');
        let (id, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        // The cgroup's own directory, and the mount's root (what a cgroup
        // namespace shows).
        let (dir, max, cur) = if id == "0" && ctrl.is_empty() {
            ("/sys/fs/cgroup", "memory.max", "memory.current")
        } else if ctrl.split(',').any(|c| c == "memory") {
            (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        for base in [format!("{dir}{path}"), dir.to_string()] {
            // "max" (v2) does not parse: no limit.
            if let (Some(m), Some(c)) =
                (read(format!("{base}/{max}")), read(format!("{base}/{cur}")))
            {
                let room = m.saturating_sub(c);
                best = Some(best.map_or(room, |b| b.min(room)));
                break;
            }
        }
    }
    best
}

/// A fast 64-bit hash of a byte string (FNV-style over 8-byte words), used
/// to compare sampled files with what `std::fs::read` returns.
pub fn hash_bytes(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ data.len() as u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    for &b in chunks.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Value at quantile `q` (0..=1) of sorted `v` (nearest rank), 0 if empty.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn available_memory_and_free_space_are_plausible() {
        let (m, source) = available_memory();
        assert!(m > 16 << 20, "{m} bytes from {source}");
        assert!(free_space(std::path::Path::new("/")).is_some());
        assert!(free_space(std::path::Path::new("/no/such/dir")).is_none());
    }

    #[test]
    fn hash_sees_every_byte() {
        let a = vec![7u8; 4099];
        let mut b = a.clone();
        b[4098] = 8;
        assert_ne!(hash_bytes(&a), hash_bytes(&b));
        b[4098] = 7;
        b[3] = 0;
        assert_ne!(hash_bytes(&a), hash_bytes(&b));
        assert_ne!(hash_bytes(&a[..8]), hash_bytes(&a[..9]));
    }
}
