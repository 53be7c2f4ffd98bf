//! Builds the statx shim gVisor sandboxes preload (`resources/statx_shim.c`, see
//! `src/gvisor/statx.rs`) as a shared library in `OUT_DIR`, for `include_bytes!`.

use std::{env, path::PathBuf};

fn main() {
    let source = "resources/statx_shim.c";
    println!("cargo:rerun-if-changed={source}");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let library = out.join("libcove_statx.so");
    let compiler = cc::Build::new().get_compiler();
    let status = compiler
        .to_command()
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&library)
        .arg(source)
        .status()
        .expect("cannot run the C compiler (Debian package gcc)");
    assert!(status.success(), "cannot build {source}: {status}");
}
