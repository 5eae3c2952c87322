//! `asyncloader gen`: deterministic synthetic data sets.
//!
//! A data set is fully determined by (distribution, file count, seed): file
//! `i` gets its size from one splitmix64 stream seeded by `seed`, and its
//! bytes from a stream seeded by `(seed, i)`, so the same arguments always
//! write byte-identical trees (and generation can run on several threads).
//!
//! Layouts:
//! - `imagenet`: log-normal sizes, median 110 KiB (sigma 0.5, mean ~125 KiB),
//!   clipped to 4 KiB..2 MiB, in 100 class directories `n00000000/` ..
//!   `n00000099/`, files `n000000CC_IIIIIIII.JPEG` (like ImageNet's train set).
//! - `small`: uniform 4..16 KiB, 20 directories `d000/` .., files `f........bin`.
//! - `uniform:LO-HI`: uniform LO..=HI bytes (suffixes K/M allowed), laid out
//!   like `small`.
//!
//! A marker file `.asyncloader-gen` written last records the arguments, so a
//! cached data set is reused only when it is complete and matches.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use asyncloader::config::limits;

use super::progress;

/// Name of the marker file written after the last data file.
pub const MARKER: &str = ".asyncloader-gen";

/// Most files in a data set (and most files `bench --files` takes): the
/// file sizes are drawn up front (8 bytes each), and ten million is eight
/// times ImageNet's training set.
pub const MAX_FILES: usize = 10_000_000;

/// Bytes written per `write` while generating a file: a multiple of 8, so
/// the generator's stream continues across chunks, and small enough that
/// generating threads hold little memory whatever the file sizes.
const CHUNK: usize = 1 << 20;

/// `--files`: a count in `1..=MAX_FILES`.
pub fn parse_files(s: &str) -> Result<usize, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a file count"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    if n > MAX_FILES as u64 {
        return Err(format!("{n} is more than {MAX_FILES}"));
    }
    Ok(n as usize)
}

/// `bytes` for people: "1 GiB", "46.8 MiB", "512 bytes".
pub fn human(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (u, name) in UNITS {
        if bytes >= u {
            return if bytes.is_multiple_of(u) {
                format!("{} {name}", bytes / u)
            } else {
                format!("{:.1} {name}", bytes as f64 / u as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

pub use asyncloader::testkit::SplitMix64;

/// How file sizes are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dist {
    ImageNet,
    Small,
    Uniform(u64, u64),
}

pub const IMAGENET_MEDIAN: f64 = 110.0 * 1024.0;
pub const IMAGENET_SIGMA: f64 = 0.5;
pub const IMAGENET_MIN: u64 = 4 << 10;
pub const IMAGENET_MAX: u64 = 2 << 20;
pub const IMAGENET_CLASSES: usize = 100;
pub const SMALL_MIN: u64 = 4 << 10;
pub const SMALL_MAX: u64 = 16 << 10;
pub const SMALL_DIRS: usize = 20;

/// `123`, `64K`, `16M`, `2G` (binary units) in bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("bad size {s:?}"))
}

impl FromStr for Dist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "imagenet" => Ok(Dist::ImageNet),
            "small" => Ok(Dist::Small),
            _ => {
                let r = s.strip_prefix("uniform:").ok_or_else(|| {
                    format!("unknown distribution {s:?} (imagenet, small, uniform:LO-HI)")
                })?;
                let (lo, hi) = r
                    .split_once('-')
                    .ok_or_else(|| format!("uniform needs LO-HI, got {r:?}"))?;
                let (lo, hi) = (parse_size(lo)?, parse_size(hi)?);
                if lo > hi {
                    return Err(format!("uniform: {lo} > {hi}"));
                }
                // Larger files could not be loaded, and each generating
                // thread would have to write them.
                if hi > limits::MAX_FILE_SIZE {
                    return Err(format!(
                        "uniform: HI = {hi} bytes is more than {} ({} bytes, \
                         asyncloader::config::limits::MAX_FILE_SIZE), the largest file asyncloader loads",
                        human(limits::MAX_FILE_SIZE),
                        limits::MAX_FILE_SIZE
                    ));
                }
                Ok(Dist::Uniform(lo, hi))
            }
        }
    }
}

impl std::fmt::Display for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dist::ImageNet => write!(f, "imagenet"),
            Dist::Small => write!(f, "small"),
            Dist::Uniform(lo, hi) => write!(f, "uniform:{lo}-{hi}"),
        }
    }
}

impl Dist {
    /// Draws one file size.
    pub fn sample(&self, rng: &mut SplitMix64) -> u64 {
        match *self {
            Dist::ImageNet => {
                let x = IMAGENET_MEDIAN * (IMAGENET_SIGMA * rng.normal()).exp();
                (x.round() as u64).clamp(IMAGENET_MIN, IMAGENET_MAX)
            }
            Dist::Small => rng.range(SMALL_MIN, SMALL_MAX),
            Dist::Uniform(lo, hi) => rng.range(lo, hi),
        }
    }

    /// Path of file `i`, relative to the data set's root.
    pub fn rel_path(&self, i: usize) -> PathBuf {
        match self {
            Dist::ImageNet => {
                let c = i % IMAGENET_CLASSES;
                PathBuf::from(format!("n{c:08}/n{c:08}_{i:08}.JPEG"))
            }
            _ => PathBuf::from(format!("d{:03}/f{i:08}.bin", i % SMALL_DIRS)),
        }
    }
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub dist: Dist,
    pub files: usize,
    pub seed: u64,
}

impl Spec {
    /// The sizes of all files, in file order.
    pub fn sizes(&self) -> Vec<u64> {
        let mut rng = SplitMix64::new(self.seed);
        (0..self.files)
            .map(|_| self.dist.sample(&mut rng))
            .collect()
    }

    /// Bytes of the whole data set.
    pub fn total_bytes(&self) -> u64 {
        self.sizes().iter().sum()
    }

    /// The marker's first lines, which identify the data set.
    fn marker_key(&self) -> String {
        format!(
            "asyncloader gen v1\ndist={}\nfiles={}\nseed={}\n",
            self.dist, self.files, self.seed
        )
    }

    /// What the marker file holds.
    pub fn marker_text(&self, total: u64) -> String {
        format!("{}bytes={total}\n", self.marker_key())
    }

    /// Directory name for this spec in the cache.
    pub fn cache_name(&self) -> String {
        let d = self.dist.to_string().replace(':', "-");
        format!("{d}-{}-s{}", self.files, self.seed)
    }
}

/// The generator of the bytes of file `i` of a data set seeded by `seed`.
fn file_rng(seed: u64, i: usize) -> SplitMix64 {
    SplitMix64::new(seed ^ (i as u64).wrapping_mul(0xd134_2543_de82_ef95))
}

/// Fills `buf` with the bytes of file `i` of a data set seeded by `seed`
/// (what [`write_file`] writes; the tests compare the two).
#[cfg(test)]
pub fn fill(buf: &mut [u8], seed: u64, i: usize) {
    fill_from(&mut file_rng(seed, i), buf);
}

/// Writes file `i` (`len` bytes, the same bytes as [`fill`]) in chunks of
/// [`CHUNK`], reusing `buf`.
fn write_file(
    path: &Path,
    len: u64,
    seed: u64,
    i: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let mut rng = file_rng(seed, i);
    let mut left = len;
    while left > 0 {
        // Every chunk but the last is a multiple of 8 bytes, so the stream
        // continues exactly as `fill` draws it.
        let n = left.min(CHUNK as u64) as usize;
        buf.resize(n, 0);
        fill_from(&mut rng, &mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn fill_from(rng: &mut SplitMix64, buf: &mut [u8]) {
    rng.fill(buf);
}

/// True when `dir` holds a complete data set made from `spec`.
pub fn is_complete(dir: &Path, spec: &Spec) -> bool {
    match std::fs::read_to_string(dir.join(MARKER)) {
        Ok(s) => s.starts_with(&spec.marker_key()),
        Err(_) => false,
    }
}

/// Summary of a generated set.
#[derive(Debug, Clone)]
pub struct Summary {
    pub files: usize,
    pub bytes: u64,
}

/// Refuses a data set of `total` bytes that would not fit in the free space
/// of the file system that will hold `dir` (its nearest existing ancestor).
pub fn check_space(dir: &Path, total: u64) -> Result<(), String> {
    let Some(existing) = dir.ancestors().find(|a| a.exists()) else {
        return Ok(());
    };
    let Some(free) = super::sys::free_space(existing) else {
        return Ok(());
    };
    if total > free {
        return Err(format!(
            "the data set is {total} bytes ({}) but the file system of {} has {free} bytes ({}) free",
            human(total),
            existing.display(),
            human(free)
        ));
    }
    Ok(())
}

/// Writes the data set `spec` under `dir` (created if needed), on all cores.
pub fn generate(dir: &Path, spec: &Spec, show_progress: bool) -> std::io::Result<Summary> {
    std::fs::create_dir_all(dir)?;
    // An old marker must not vouch for a half-rewritten tree.
    match std::fs::remove_file(dir.join(MARKER)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let sizes = spec.sizes();
    let total: u64 = sizes.iter().sum();
    let n_dirs = match spec.dist {
        Dist::ImageNet => IMAGENET_CLASSES,
        _ => SMALL_DIRS,
    };
    for i in 0..n_dirs.min(spec.files) {
        let p = dir.join(spec.dist.rel_path(i));
        std::fs::create_dir_all(p.parent().expect("files live in a directory"))?;
    }
    let pb = progress::bar(
        show_progress,
        spec.files as u64,
        &format!("gen {} files ({:.1} MB)", spec.files, total as f64 / 1e6),
    );
    let next = AtomicUsize::new(0);
    let threads = super::sys::cores().clamp(1, 8);
    std::thread::scope(|s| -> std::io::Result<()> {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> std::io::Result<()> {
                    let mut buf = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= spec.files {
                            return Ok(());
                        }
                        let path = dir.join(spec.dist.rel_path(i));
                        write_file(&path, sizes[i], spec.seed, i, &mut buf)?;
                        pb.inc(1);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().expect("generator thread panicked")?;
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    std::fs::write(dir.join(MARKER), spec.marker_text(total))?;
    Ok(Summary {
        files: spec.files,
        bytes: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
                    out.push((rel, std::fs::read(e.path()).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let t = tempfile::tempdir().unwrap();
        for dist in [Dist::Small, Dist::ImageNet, Dist::Uniform(0, 100)] {
            let spec = Spec {
                dist,
                files: 30,
                seed: 7,
            };
            let (a, b, c) = (
                t.path().join(format!("{}-a", spec.cache_name())),
                t.path().join(format!("{}-b", spec.cache_name())),
                t.path().join(format!("{}-c", spec.cache_name())),
            );
            generate(&a, &spec, false).unwrap();
            generate(&b, &spec, false).unwrap();
            let other = Spec {
                seed: 8,
                ..spec.clone()
            };
            generate(&c, &other, false).unwrap();
            let (ta, tb, tc) = (read_tree(&a), read_tree(&b), read_tree(&c));
            assert_eq!(ta.len(), 31, "30 files and the marker");
            assert_eq!(ta, tb, "{dist}: same seed, same tree");
            assert_ne!(ta, tc, "{dist}: another seed, other bytes");
            assert!(is_complete(&a, &spec));
            assert!(!is_complete(&a, &other));
        }
    }

    #[test]
    fn small_sizes_are_uniform_4_to_16_kib() {
        let spec = Spec {
            dist: Dist::Small,
            files: 20_000,
            seed: 1,
        };
        let s = spec.sizes();
        assert!(s.iter().all(|&x| (SMALL_MIN..=SMALL_MAX).contains(&x)));
        let mean = s.iter().sum::<u64>() as f64 / s.len() as f64;
        assert!((mean - 10240.0).abs() < 150.0, "mean {mean}");
        // Both ends are reached.
        assert!(s.iter().any(|&x| x < SMALL_MIN + 256));
        assert!(s.iter().any(|&x| x > SMALL_MAX - 256));
    }

    #[test]
    fn imagenet_sizes_are_lognormal_around_110_kib() {
        let spec = Spec {
            dist: Dist::ImageNet,
            files: 20_000,
            seed: 1,
        };
        let mut s = spec.sizes();
        s.sort_unstable();
        assert!(
            s.iter()
                .all(|&x| (IMAGENET_MIN..=IMAGENET_MAX).contains(&x))
        );
        let median = s[s.len() / 2] as f64;
        assert!(
            (median / IMAGENET_MEDIAN - 1.0).abs() < 0.05,
            "median {median}"
        );
        let total: u64 = s.iter().sum();
        // ~125 KiB mean: 20,000 files are ~2.5 GB.
        assert!((2.3e9..2.8e9).contains(&(total as f64)), "total {total}");
        // The log of the sizes has the configured spread.
        let logs: Vec<f64> = s.iter().map(|&x| (x as f64).ln()).collect();
        let m = logs.iter().sum::<f64>() / logs.len() as f64;
        let sd = (logs.iter().map(|l| (l - m).powi(2)).sum::<f64>() / logs.len() as f64).sqrt();
        assert!((sd - IMAGENET_SIGMA).abs() < 0.03, "sigma {sd}");
        // Nested class directories.
        assert_eq!(
            Dist::ImageNet.rel_path(1234),
            PathBuf::from("n00000034/n00000034_00001234.JPEG")
        );
    }

    #[test]
    fn parses_distributions() {
        assert_eq!("imagenet".parse::<Dist>(), Ok(Dist::ImageNet));
        assert_eq!("small".parse::<Dist>(), Ok(Dist::Small));
        assert_eq!(
            "uniform:1K-2M".parse::<Dist>(),
            Ok(Dist::Uniform(1024, 2 << 20))
        );
        assert!("uniform:5-1".parse::<Dist>().is_err());
        assert_eq!(
            "uniform:1G-1G".parse::<Dist>(),
            Ok(Dist::Uniform(1 << 30, 1 << 30))
        );
        // Over the largest loadable file, or past u64: refused, no panic.
        assert!("uniform:1-99999G".parse::<Dist>().is_err());
        assert!("uniform:1-99999999999999999G".parse::<Dist>().is_err());
        assert!("uniform:1-99999999999999999999".parse::<Dist>().is_err());
        assert!("zipf".parse::<Dist>().is_err());
        let d = Dist::Uniform(3, 9);
        assert_eq!(d.to_string().parse::<Dist>(), Ok(d));
    }

    #[test]
    fn fill_is_deterministic_and_covers_odd_lengths() {
        let mut a = vec![0u8; 13];
        let mut b = vec![0u8; 13];
        fill(&mut a, 1, 5);
        fill(&mut b, 1, 5);
        assert_eq!(a, b);
        fill(&mut b, 1, 6);
        assert_ne!(a, b);
        assert!(a[8..].iter().any(|&x| x != 0));
    }

    #[test]
    fn files_written_in_chunks_hold_the_bytes_of_fill() {
        let t = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        for len in [0, 5, CHUNK - 3, CHUNK, 2 * CHUNK + 13] {
            let p = t.path().join(format!("f{len}"));
            write_file(&p, len as u64, 9, 4, &mut buf).unwrap();
            let mut want = vec![0u8; len];
            fill(&mut want, 9, 4);
            assert!(std::fs::read(&p).unwrap() == want, "length {len}");
        }
    }

    #[test]
    fn parses_file_counts_in_range() {
        assert_eq!(parse_files("1"), Ok(1));
        assert_eq!(parse_files(&MAX_FILES.to_string()), Ok(MAX_FILES));
        for bad in [
            "0",
            "-1",
            "x",
            "18446744073709551615",
            "18446744073709551616",
        ] {
            assert!(parse_files(bad).is_err(), "{bad}");
        }
        assert!(parse_files(&(MAX_FILES + 1).to_string()).is_err());
    }
}
