//! The enums every layer names: the loader's state, the I/O backend and who
//! drives the loads.
//!
//! Defined here once, for all three languages: the Rust API uses them
//! directly ([`crate::LoaderState`], [`crate::BackendKind`]), the shared
//! region stores their `u32` values, the C header gets them from cbindgen
//! (`build.rs` parses this file: `enum al_state { AL_STATE_CREATED = 0, ... }`,
//! `enum al_backend { AL_BACKEND_AUTO = 0, ... }`), and the C ABI's
//! `al_state_name`/`al_backend_name` hand [`LoaderState::name`] and
//! [`BackendKind::name`] to the Python package, which restates nothing.
//!
//! This file holds nothing else: whatever it declares ends up in the header.

use std::ffi::CStr;

/// Which I/O backend the loader threads should use (Rust `Config::backend`,
/// C `al_config.backend`) or do use (`Stats::backend`, `al_stats.backend`:
/// `Auto` until a running loader chose one). Named by `BackendKind::name`
/// and `al_backend_name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum BackendKind {
    /// io_uring when the kernel allows it, otherwise the thread-pool
    /// fallback; in stats: no loader has chosen a backend yet.
    #[default]
    Auto = 0,
    /// io_uring only: starting fails when io_uring cannot be set up.
    IoUring = 1,
    /// The `pread` thread-pool fallback.
    Threads = 2,
}

/// Who takes a worker's requests to the kernel (Rust `Config::drive`, C
/// `al_config.drive`). Named by `Drive::name` and `al_drive_name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum Drive {
    /// `Worker` when the loader starts in this process (`start`) with at
    /// least one worker per online core, so that every core has a worker to
    /// drive it; `Loader` otherwise (fewer workers than cores leave cores
    /// that loader threads use; `spawn` and `become_loader` ask for a
    /// loader process or thread by name). The stats say what was chosen.
    #[default]
    Auto = 0,
    /// Loader threads (in this process, or in the process `spawn` forked)
    /// take requests from every worker's ring, load them and hand the
    /// entries back: loading goes on in the background while the worker's
    /// thread does something else.
    Loader = 1,
    /// Each worker loads its own requests, in the thread that calls it, on
    /// an io_uring of its own: `request` submits a batch once `dispatch_n`
    /// wait, `try_get` and `wait_get` submit the rest and reap. No loader
    /// thread runs and nothing is handed between threads: the fastest way
    /// on few cores (see docs/bench.md). The kernel reads cold data in the
    /// background meanwhile; steps that need the worker (a file the kernel
    /// could not read in one go) wait for its next call.
    Worker = 2,
}

/// Where a loader is in its life (Rust `Stats::state`, C `al_stats.state`).
/// Named by `LoaderState::name` and `al_state_name`.
///
/// ```text
/// CREATED ──start/spawn/become──▶ RUNNING ──shutdown──▶ STOPPING ──loader exits──▶ STOPPED
///    │                               │
///    └────────shutdown───────────────┼──────────────────────────────────────────▶ STOPPED
///                                    └──loader process or threads died──▶ DEAD
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum LoaderState {
    /// Created; no loader runs yet. Requests queue up.
    #[default]
    Created = 0,
    /// A loader runs (threads or a process).
    Running = 1,
    /// Shutdown requested: the loader finishes what is in flight and exits.
    Stopping = 2,
    /// The loader exited after a shutdown.
    Stopped = 3,
    /// The loader died (process killed, threads gone) without a shutdown.
    Dead = 4,
}

// Private (cbindgen exports only `pub` constants); `all()` hands them out.
const BACKENDS: [BackendKind; 3] = [
    BackendKind::Auto,
    BackendKind::IoUring,
    BackendKind::Threads,
];
const DRIVES: [Drive; 3] = [Drive::Auto, Drive::Loader, Drive::Worker];
const STATES: [LoaderState; 5] = [
    LoaderState::Created,
    LoaderState::Running,
    LoaderState::Stopping,
    LoaderState::Stopped,
    LoaderState::Dead,
];

impl BackendKind {
    /// Every value, in order of value (0, 1, ...).
    pub fn all() -> &'static [BackendKind] {
        &BACKENDS
    }

    /// The value for `v`, if it is one.
    pub fn from_u32(v: u32) -> Option<Self> {
        BACKENDS.get(v as usize).copied()
    }

    /// The value named `name` (exactly as [`BackendKind::name`] spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        BACKENDS.into_iter().find(|k| k.name() == name)
    }

    /// Short name, as shown in stats, logs and the Python package:
    /// "auto", "io_uring", "threads".
    pub fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or_default()
    }

    /// [`BackendKind::name`] NUL-terminated, for C (`al_backend_name`).
    pub fn c_name(self) -> &'static CStr {
        match self {
            BackendKind::Auto => c"auto",
            BackendKind::IoUring => c"io_uring",
            BackendKind::Threads => c"threads",
        }
    }
}

impl Drive {
    pub fn all() -> &'static [Drive] {
        &DRIVES
    }

    pub fn from_u32(v: u32) -> Option<Self> {
        DRIVES.get(v as usize).copied()
    }

    pub fn from_name(name: &str) -> Option<Self> {
        DRIVES.into_iter().find(|k| k.name() == name)
    }

    pub fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or_default()
    }

    pub fn c_name(self) -> &'static CStr {
        match self {
            Drive::Auto => c"auto",
            Drive::Loader => c"loader",
            Drive::Worker => c"worker",
        }
    }
}

impl LoaderState {
    /// Every value, in order of value (0, 1, ...).
    pub fn all() -> &'static [LoaderState] {
        &STATES
    }

    /// The value for `v`, if it is one.
    pub fn from_u32(v: u32) -> Option<Self> {
        STATES.get(v as usize).copied()
    }

    /// The value named `name` (exactly as [`LoaderState::name`] spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        STATES.into_iter().find(|k| k.name() == name)
    }

    /// Short name, as shown in stats and the Python package: "created",
    /// "running", "stopping", "stopped", "dead".
    pub fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or_default()
    }

    /// [`LoaderState::name`] NUL-terminated, for C (`al_state_name`).
    pub fn c_name(self) -> &'static CStr {
        match self {
            LoaderState::Created => c"created",
            LoaderState::Running => c"running",
            LoaderState::Stopping => c"stopping",
            LoaderState::Stopped => c"stopped",
            LoaderState::Dead => c"dead",
        }
    }
}

/// Display, `==` with a name (`stats.state == "running"`), for both enums.
macro_rules! named {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.name() == *other
            }
        }
        impl PartialEq<$t> for &str {
            fn eq(&self, other: &$t) -> bool {
                *self == other.name()
            }
        }
    };
}
named!(BackendKind);
named!(LoaderState);
named!(Drive);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_names_and_lookups_agree() {
        for (i, k) in BackendKind::all().iter().copied().enumerate() {
            assert_eq!(k as u32, i as u32);
            assert_eq!(BackendKind::from_u32(i as u32), Some(k));
            assert_eq!(BackendKind::from_name(k.name()), Some(k));
            assert_eq!(k.to_string(), k.name());
        }
        for (i, s) in LoaderState::all().iter().copied().enumerate() {
            assert_eq!(s as u32, i as u32);
            assert_eq!(LoaderState::from_u32(i as u32), Some(s));
            assert_eq!(LoaderState::from_name(s.name()), Some(s));
            assert_eq!(s, s.name());
        }
        for (i, d) in Drive::all().iter().copied().enumerate() {
            assert_eq!(d as u32, i as u32);
            assert_eq!(Drive::from_u32(i as u32), Some(d));
            assert_eq!(Drive::from_name(d.name()), Some(d));
        }
        assert_eq!(Drive::from_u32(3), None);
        assert_eq!(BackendKind::from_u32(3), None);
        assert_eq!(LoaderState::from_u32(5), None);
        assert_eq!(LoaderState::from_name("none"), None);
    }
}
