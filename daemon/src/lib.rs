//! toted's core: images (references, the registry client, the content
//! store, layer unpacking, overlayfs snapshots), containers and their
//! sandboxes (the engine), networking, volumes, events, and Tote's
//! management API on top.

pub mod archive;
pub mod config;
pub mod connections;
pub mod containers;
pub mod content;
pub mod crashpoint;
pub mod delegation;
pub mod digest;
pub mod engine;
pub mod events;
pub mod fuse_overlay;
pub mod images;
pub mod manifest;
pub mod metadata;
pub mod monitor;
pub mod network;
pub mod privilege;
pub mod reference;
pub mod registry;
pub mod rootless;
pub mod service;
pub mod snapshots;
pub mod unpack;
pub mod usage;
pub mod volumes;
