//! asyncloader: an io_uring engine that loads whole files into shared
//! memory for many workers (threads or processes) at once.
//!
//! ```no_run
//! use asyncloader::{Config, Loader};
//!
//! let loader = Loader::new(Config { n_workers: 1, ..Config::default() })?;
//! loader.start()?; // loader threads in this process
//! let w = loader.worker(0)?;
//! w.request("/etc/hostname")?;
//! let e = w.wait_get()?;
//! println!("{} bytes of {}", e.data().len(), e.path().display());
//! e.release();
//! loader.shutdown()?;
//! # Ok::<(), asyncloader::Error>(())
//! ```
//!
//! Modules, one per concern: [`config`], [`error`], `kinds` (the
//! [`LoaderState`] and [`BackendKind`] enums, also the C header's), `region` (the shared
//! memory layout), `ring` (the lock-free rings), `futex`, `engine` (the
//! loader loop), `backend` (io_uring), [`loader`] and [`worker`] (the API),
//! [`ffi`] (the C ABI of `include/asyncloader.h`).
#![deny(unsafe_op_in_unsafe_fn)]

// Under `--cfg loom` only the rings are built, for the model checker
// (scripts/loom.sh); everything else needs the real atomics.
#[cfg(not(loom))]
pub(crate) mod backend;
#[cfg(not(loom))]
pub mod config;
#[cfg(not(loom))]
// Workers that load their own requests (Drive::Worker).
pub(crate) mod drive;
#[cfg(not(loom))]
pub(crate) mod engine;
#[cfg(not(loom))]
pub mod error;
#[cfg(not(loom))]
pub mod ffi;
#[cfg(not(loom))]
pub(crate) mod futex;
#[cfg(not(loom))]
mod kinds;
#[cfg(not(loom))]
pub mod loader;
#[cfg(not(loom))]
mod notify;

#[cfg(not(loom))]
pub mod probe;
#[cfg(not(loom))]
#[doc(hidden)] // for the tests: process liveness
pub mod process;
#[cfg(not(loom))]
pub(crate) mod region;
#[doc(hidden)] // for benches/ring.rs; safe to use (atomics only), not an API
pub mod ring;
pub(crate) mod stack;
#[cfg(not(loom))]
pub mod worker;

#[doc(hidden)] // helpers for tests and benches, not an API
pub mod testkit;

#[cfg(all(test, not(loom)))]
mod hostile_tests;

#[cfg(not(loom))]
pub use config::{BackendKind, Config, ConfigError, Drive};
#[cfg(not(loom))]
pub use error::{Error, ErrorKind, Result};
#[cfg(not(loom))]
pub use kinds::LoaderState;
#[cfg(not(loom))]
pub use loader::{Loader, Stats};
#[cfg(not(loom))]
pub use region::ARENA;
pub use worker::{Dest, Entry, Worker};
