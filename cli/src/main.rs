//! tote, the command line client of toted. It is specified in a later issue;
//! this crate only reserves its place in the workspace.

fn main() {
    eprintln!("tote: the CLI is not implemented yet; use tote-shim to run OCI bundles");
    std::process::exit(1);
}
