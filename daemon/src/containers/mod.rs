//! Containers as toted records them and runs them: the records (with their
//! sandboxes) and the OCI spec made from an image and the user's settings.

pub mod record;
pub mod spec;
