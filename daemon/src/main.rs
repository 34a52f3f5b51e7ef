//! toted, the Tote daemon. It is specified in a later issue; this crate only
//! reserves its place in the workspace.

fn main() {
    eprintln!("toted: the daemon is not implemented yet; use tote-shim to run OCI bundles");
    std::process::exit(1);
}
