//! `asyncloader info [PATH...] [--json]`: what this machine can do for the
//! loader (see `asyncloader::probe`).

use std::path::PathBuf;

/// Prints the probe of this machine and of `paths`; exit code 0, or 1 when
/// the backend asked for (`ASYNCLOADER_BACKEND=io_uring`) cannot run here.
pub fn run(paths: &[PathBuf], json: bool) -> u8 {
    let p = asyncloader::probe::probe(paths);
    if json {
        // The library writes compact JSON; pretty-print it for people.
        let text = p.to_json();
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or(text.clone())
            ),
            Err(_) => println!("{text}"),
        }
    } else {
        print!("{p}");
    }
    u8::from(p.auto_backend.is_err())
}
