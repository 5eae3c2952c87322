//! The files of a bench run and the memory its asyncloader buffers may
//! take.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use asyncloader::config::{BUF_ALIGN, buffer_size, limits};

use super::Res;
use crate::cli::datagen::{self, human};
use crate::cli::sys;

/// Share of the available memory the loader's buffers may take: a quarter.
/// The rest stays for what a warm bench also needs: the page cache holding
/// the data set (which `MemAvailable` counts as available), the `pool`
/// row's per-thread read buffers, the worker processes, and the rest of
/// the machine. The loader's buffers are all resident during a row (they
/// are prefaulted), so this bounds the bench's own memory.
const MEMORY_SHARE: u64 = 4;

/// How large one asyncloader entry's buffer may be.
#[derive(Clone, Debug)]
pub(super) struct Budget {
    /// Memory available to this process, bytes, and where that came from.
    pub(super) available: u64,
    pub(super) source: String,
    /// How `total` was chosen, for the output.
    pub(super) how: String,
    /// `--memory-budget`, else `available / MEMORY_SHARE`: all buffers of a
    /// loader together.
    pub(super) total: u64,
    /// `workers x queue_depth`.
    pub(super) entries: u64,
    /// How `entries` was counted, for the output.
    pub(super) entries_how: String,
    /// Largest file loaded: `total / entries` in whole 4 KiB pages, less
    /// one page (the buffer holds one byte more than `max_file_size` to
    /// detect a larger file), at most `limits::MAX_FILE_SIZE`.
    pub(super) cap: u64,
}

impl Budget {
    /// `queue_depth`: the one given, or for an automatic one the deepest
    /// it may pick (`auto_qd`), as the cap is chosen before the files are
    /// listed.
    pub(super) fn new(
        workers: u32,
        queue_depth: u32,
        auto_qd: bool,
        chosen: Option<u64>,
    ) -> Res<Budget> {
        let (available, source) = sys::available_memory();
        let total = chosen.unwrap_or(available / MEMORY_SHARE);
        let how = match chosen {
            Some(_) => "--memory-budget".to_string(),
            None => format!("{source} {} / {MEMORY_SHARE}", human(available)),
        };
        let entries = workers as u64 * queue_depth as u64;
        let entries_how = if auto_qd {
            format!(
                "{workers} workers x queue_depth {queue_depth}, the deepest an automatic queue_depth picks"
            )
        } else {
            format!("{workers} workers x queue_depth {queue_depth}")
        };
        // A whole number of pages per entry; the cap is one page less, a
        // round figure whose buffer (one byte more, rounded up to a page,
        // see `config::buffer_size`) is exactly `per_entry`.
        let per_entry = total / entries / BUF_ALIGN * BUF_ALIGN;
        if per_entry < 2 * BUF_ALIGN {
            return Err(format!(
                "--workers {workers} x --queue-depth {queue_depth} = {entries} buffers do not fit in the \
                 memory budget of {} ({how}) with even {} files in them; lower --workers or --queue-depth",
                human(total),
                human(BUF_ALIGN)
            ));
        }
        let cap = (per_entry - BUF_ALIGN).min(limits::MAX_FILE_SIZE);
        debug_assert!(buffer_size(cap) <= per_entry);
        Ok(Budget {
            available,
            source,
            how,
            total,
            entries,
            entries_how,
            cap,
        })
    }

    /// Why the cap is what it is, for the output.
    pub(super) fn explain(&self) -> String {
        format!(
            "asyncloader buffers capped at {} per entry: the smaller of {} (the largest file the library loads, \
             config::limits::MAX_FILE_SIZE) and a memory budget of {} ({}) over {} entries ({})",
            human(self.cap),
            human(limits::MAX_FILE_SIZE),
            human(self.total),
            self.how,
            self.entries,
            self.entries_how
        )
    }
}

/// Files of the listing larger than the buffer cap, left out of every row.
#[derive(Clone, Debug, Default)]
pub(super) struct LeftOut {
    pub(super) files: u64,
    pub(super) bytes: u64,
    pub(super) largest: u64,
}

/// The files of one run.
pub(super) struct DataSet {
    pub(super) root: PathBuf,
    pub(super) files: Vec<PathBuf>,
    /// Size of each file in `files` when it was listed (`metadata`).
    pub(super) sizes: Vec<u64>,
    pub(super) total: u64,
    pub(super) max: u64,
    /// Files over `cap`, not in `files`.
    pub(super) left_out: LeftOut,
    pub(super) cap: u64,
    /// Indices whose bytes are checked: every 97th, the first and the last.
    pub(super) sample: Vec<u32>,
}

impl DataSet {
    /// Regular files under `root` (recursively, sorted; the first `limit`),
    /// except those larger than `cap`, which are counted in `left_out`.
    pub(super) fn list(
        root: &Path,
        ext: Option<&str>,
        limit: Option<usize>,
        cap: u64,
    ) -> Res<DataSet> {
        let root = root
            .canonicalize()
            .map_err(|e| format!("{}: {e}", root.display()))?;
        // Not following symlinks (a symlinked directory is not entered; a
        // symlink to a regular file is kept: `metadata` below follows it).
        let mut files = Vec::new();
        for e in walkdir::WalkDir::new(&root) {
            let e = e.map_err(|e| e.to_string())?;
            if e.file_type().is_dir() {
                continue;
            }
            if e.file_name() == datagen::MARKER {
                continue;
            }
            if let Some(x) = ext
                && !e.file_name().as_bytes().ends_with(x.as_bytes())
            {
                continue;
            }
            files.push(e.into_path());
        }
        files.sort();
        if let Some(n) = limit {
            files.truncate(n);
        }
        let mut keep = Vec::with_capacity(files.len());
        let mut sizes = Vec::with_capacity(files.len());
        let (mut total, mut max) = (0u64, 0u64);
        let mut left_out = LeftOut::default();
        for p in files {
            // Regular files only (symlinks to them count).
            match std::fs::metadata(&p) {
                Ok(m) if m.is_file() && m.len() > cap => {
                    left_out.files += 1;
                    left_out.bytes += m.len();
                    left_out.largest = left_out.largest.max(m.len());
                }
                Ok(m) if m.is_file() => {
                    total += m.len();
                    max = max.max(m.len());
                    keep.push(p);
                    sizes.push(m.len());
                }
                _ => {}
            }
        }
        if keep.is_empty() && left_out.files > 0 {
            return Err(format!(
                "all {} files under {} are larger than {}, the largest this bench loads",
                left_out.files,
                root.display(),
                human(cap)
            ));
        }
        if keep.is_empty() {
            return Err(format!(
                "no regular files{} under {}",
                ext.map(|x| format!(" ending in {x:?}")).unwrap_or_default(),
                root.display()
            ));
        }
        let n = keep.len() as u32;
        let mut sample: Vec<u32> = (0..n).step_by(97).collect();
        if sample.last() != Some(&(n - 1)) {
            sample.push(n - 1);
        }
        Ok(DataSet {
            root,
            files: keep,
            sizes,
            total,
            max,
            left_out,
            cap,
            sample,
        })
    }
}
