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
//! Byte ranges of large files, and files of any size into memory of the
//! caller's (the arena shared by every process, or memory registered by
//! one):
//!
//! ```no_run
//! use asyncloader::{ARENA, Config, Dest, Loader};
//!
//! let loader = Loader::new(Config { arena_size: 1 << 30, ..Config::default() })?;
//! loader.start()?;
//! let w = loader.worker(0)?;
//! w.request_range("/data/shard-0000.tar", 512, 4096)?; // a member, by its index
//! let e = w.wait_get()?;
//! assert_eq!((e.offset(), e.len()), (512, 4096)); // fewer at end of file
//! e.release();
//! // SAFETY: nothing else reads or writes the arena's first GiB meanwhile.
//! unsafe { w.request_into(b"/data/video.mp4", 0, 1 << 30, Dest { mem: ARENA, offset: 0 }, 0)? };
//! let e = w.wait_get()?; // e.data() is the arena's first e.len() bytes
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
#[cfg(not(loom))]
pub use worker::{Dest, Entry, Worker};
