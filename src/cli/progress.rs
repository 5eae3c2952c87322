//! Progress bars on a terminal, nothing otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps titled `msg`; hidden unless `show` and stderr is a
/// terminal. Drawing happens in the thread that updates it (no ticker
/// thread), which keeps `fork` of the bench's worker processes safe.
pub fn bar(show: bool, len: u64, msg: &str) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:32} [{bar:30}] {pos}/{len} {per_sec:>12} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Steps of a bar, handed to it 64 at a time (drawing on every file would
/// cost more than a warm file load); the rest when it is dropped.
pub struct Ticks<'a> {
    pb: &'a ProgressBar,
    n: u64,
}

impl<'a> Ticks<'a> {
    pub fn new(pb: &'a ProgressBar) -> Self {
        Ticks { pb, n: 0 }
    }

    /// One more step.
    pub fn step(&mut self) {
        self.n += 1;
        if self.n >= 64 {
            self.pb.inc(self.n);
            self.n = 0;
        }
    }
}

impl Drop for Ticks<'_> {
    fn drop(&mut self) {
        if self.n > 0 {
            self.pb.inc(self.n);
        }
    }
}
