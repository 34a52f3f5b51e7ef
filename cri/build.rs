//! Compiles cri-api's proto/api.proto (v0.36.3, unchanged) with protox, so
//! building Tote needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    // Calls not implemented yet answer Unimplemented, as the CRI expects
    // of a runtime without a feature (the kubelet and critest check).
    tonic_prost_build::configure().generate_default_stubs(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
