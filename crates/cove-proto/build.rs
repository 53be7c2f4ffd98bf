//! Compiles `proto/` with a pure-Rust protobuf compiler (no `protoc` needed) into prost
//! message types plus pbjson serde impls for the proto3 JSON mapping the E2B SDKs use.

use std::{env, fs, path::PathBuf};

use protox::prost::Message;

const PROTOS: &[&str] = &["filesystem/filesystem.proto", "process/process.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let descriptor_bytes = descriptors.encode_to_vec();
    fs::write(out.join("descriptors.bin"), &descriptor_bytes)?;

    prost_build::Config::new()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .bytes(["."])
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        // Newer clients may send fields we do not know yet; proto3 JSON readers skip them.
        .ignore_unknown_fields()
        .build(&[".filesystem", ".process"])?;
    Ok(())
}
