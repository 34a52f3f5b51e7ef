//! toted's core. Today: images — references, the registry client, the
//! content store, layer unpacking and overlayfs snapshots. The daemon,
//! containers, pods and the APIs come in later issues.

pub mod archive;
pub mod content;
pub mod digest;
pub mod images;
pub mod manifest;
pub mod metadata;
pub mod network;
pub mod reference;
pub mod registry;
pub mod snapshots;
pub mod unpack;
