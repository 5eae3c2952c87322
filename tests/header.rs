//! The checked-in `include/asyncloader.h` must equal the header that
//! `build.rs` just generated with cbindgen (into `OUT_DIR`).
//!
//! To update it after changing `src/ffi/` or `cbindgen.toml`:
//! `AL_UPDATE_HEADER=1 cargo build`.

#[test]
fn checked_in_header_is_up_to_date() {
    let fresh = std::fs::read_to_string(concat!(env!("OUT_DIR"), "/asyncloader.h"))
        .expect("build.rs writes $OUT_DIR/asyncloader.h");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/asyncloader.h");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    if fresh != checked_in {
        let line = fresh
            .lines()
            .zip(checked_in.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "the end".to_owned(), |i| format!("line {}", i + 1));
        panic!(
            "include/asyncloader.h is stale (first difference at {line}); \
             regenerate it with `AL_UPDATE_HEADER=1 cargo build` and commit it"
        );
    }
}

#[test]
fn header_versions_match_cargo_toml() {
    let h = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/include/asyncloader.h"
    ))
    .unwrap();
    for (name, v) in [
        (
            "AL_VERSION_MAJOR",
            env!("CARGO_PKG_VERSION_MAJOR").to_owned(),
        ),
        (
            "AL_VERSION_MINOR",
            env!("CARGO_PKG_VERSION_MINOR").to_owned(),
        ),
        (
            "AL_VERSION_PATCH",
            env!("CARGO_PKG_VERSION_PATCH").to_owned(),
        ),
        (
            "AL_VERSION_STRING",
            format!("\"{}\"", env!("CARGO_PKG_VERSION")),
        ),
        (
            "AL_ABI_VERSION",
            asyncloader::ffi::AL_ABI_VERSION.to_string(),
        ),
    ] {
        let want = format!("#define {name} {v}\n");
        assert!(h.contains(&want), "header lacks `{}`", want.trim());
    }
}
