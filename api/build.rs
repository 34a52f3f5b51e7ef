//! Compiles proto/tote.proto with protox (a protobuf compiler in Rust), so
//! building Tote needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tote.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    // Default stubs answer Unimplemented, so tests can fake just the calls they need.
    tonic_prost_build::configure().generate_default_stubs(true).compile_fds(descriptors)?;
    Ok(())
}
