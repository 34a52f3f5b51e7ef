//! The CRI v1 protocol and service for toted. Specified in a later issue; this
//! crate only reserves its place in the workspace.
