//! Generates the C header with cbindgen and a pkg-config file, into
//! `OUT_DIR` only (cargo's rule: a build script writes nowhere else).
//!
//! - The header is written to `$OUT_DIR/asyncloader.h`. The checked-in
//!   `include/asyncloader.h` is rewritten only when the developer asks for
//!   it with `AL_UPDATE_HEADER=1 cargo build`: that explicit opt-in is the
//!   one exception to the rule above, so a normal build never writes to the
//!   source tree. `tests/header.rs` compares the two and fails when they
//!   differ.
//! - `asyncloader.pc` is written to `$OUT_DIR/asyncloader.pc`
//!   (`target/<profile>/build/asyncloader-<hash>/out/`). Its `prefix` is
//!   this checkout (for `include/`) and its `libdir` the directory the
//!   library is built into. `scripts/pkgconfig.sh [--release]` builds the
//!   library and copies the file to `target/<profile>/pkgconfig/`, so that
//!   `PKG_CONFIG_PATH=target/release/pkgconfig pkg-config --cflags --libs asyncloader`
//!   works (see docs/c-api.md).

use std::path::{Path, PathBuf};

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=src/kinds.rs");
    println!("cargo:rerun-if-env-changed=AL_UPDATE_HEADER");

    header(&manifest, &out);
    pkg_config(&manifest, &out);
}

fn header(manifest: &Path, out: &Path) {
    let mut config = cbindgen::Config::from_file(manifest.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable and valid");
    // cbindgen cannot export string constants, and the version belongs to
    // Cargo.toml: write the version macros here.
    let v = |k: &str| std::env::var(k).expect("cargo sets CARGO_PKG_VERSION*");
    config.after_includes = Some(format!(
        "\n/** Library version, major (as al_version() reports at run time). */\n\
         #define AL_VERSION_MAJOR {}\n\
         /** Library version, minor. */\n\
         #define AL_VERSION_MINOR {}\n\
         /** Library version, patch. */\n\
         #define AL_VERSION_PATCH {}\n\
         /** Library version as a string; compare with al_version(). */\n\
         #define AL_VERSION_STRING \"{}\"",
        v("CARGO_PKG_VERSION_MAJOR"),
        v("CARGO_PKG_VERSION_MINOR"),
        v("CARGO_PKG_VERSION_PATCH"),
        v("CARGO_PKG_VERSION"),
    ));
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(manifest.join("src/ffi/mod.rs"))
        // The loader-state and backend enums (al_state, al_backend); that
        // file holds nothing else.
        .with_src(manifest.join("src/kinds.rs"))
        .generate()
        .expect("cbindgen generates the header from src/ffi");
    bindings.write_to_file(out.join("asyncloader.h"));
    let update = std::env::var("AL_UPDATE_HEADER").is_ok_and(|v| !v.is_empty() && v != "0");
    if update {
        bindings.write_to_file(manifest.join("include/asyncloader.h"));
    }
}

fn pkg_config(manifest: &Path, out: &Path) {
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out, and the
    // libraries land in <target>/<profile>.
    let Some(libdir) = out.ancestors().nth(3) else {
        return;
    };
    let pc = format!(
        "prefix={manifest}\n\
         includedir=${{prefix}}/include\n\
         libdir={libdir}\n\
         \n\
         Name: asyncloader\n\
         Description: Load whole files into shared memory with io_uring\n\
         Version: {version}\n\
         Cflags: -I${{includedir}}\n\
         Libs: -L${{libdir}} -Wl,-rpath,${{libdir}} -lasyncloader\n\
         Libs.private: -lpthread -ldl -lm\n",
        manifest = manifest.display(),
        libdir = libdir.display(),
        version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
    );
    std::fs::write(out.join("asyncloader.pc"), &pc).expect("OUT_DIR is writable");
}
