//! The `asyncloader` binary's subcommands: `gen` (synthetic data sets),
//! `bench` (asyncloader against `std::fs::read` baselines) and `info`
//! (what this machine can do for the loader).

pub mod bench;
pub mod datagen;
pub mod info;
pub mod progress;
pub mod sys;
