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
//! Modules, one per concern: [`config`], [`error`], `region` (the shared
//! memory layout), `ring` (the lock-free rings), `futex`, `engine` (the
//! loader loop), `backend` (io_uring), [`loader`] and [`worker`] (the API),
//! [`ffi`] (the C ABI of `include/asyncloader.h`).
#![deny(unsafe_op_in_unsafe_fn)]

pub mod backend;
pub mod config;
pub(crate) mod engine;
pub mod error;
pub mod ffi;
pub mod futex;
pub mod loader;
pub mod region;
pub mod ring;
pub mod worker;

pub use config::{BackendKind, Config, ConfigError};
pub use error::{Error, ErrorKind, Result};
pub use loader::{Loader, Stats};
pub use worker::{Entry, Worker};
