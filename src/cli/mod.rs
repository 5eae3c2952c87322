//! The `asyncloader` binary's subcommands: `gen` (synthetic data sets) and
//! `bench` (asyncloader against `std::fs::read` baselines).

pub mod bench;
pub mod datagen;
pub mod progress;
pub mod sys;
