//! TEMPORARY placeholder: the layer unpacker is being written separately and
//! replaces this file. Every layer is refused until then.

use std::io::Read;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn from_media_type(_media_type: &str) -> Option<Compression> {
        None
    }
    pub fn sniff(_head: &[u8]) -> Compression {
        Compression::None
    }
}

pub fn decompress<'a, R: Read + 'a>(reader: R, _compression: Compression) -> std::io::Result<Box<dyn Read + 'a>> {
    Ok(Box::new(reader))
}

pub enum WhiteoutStyle {
    Trusted,
    UserXattr,
}
pub enum DevicePolicy {
    Create,
    Skip,
    Refuse,
}
pub struct UnpackOptions {
    pub whiteouts: WhiteoutStyle,
    pub devices: DevicePolicy,
    pub preserve_owners: bool,
}
pub struct LayerStats {
    pub entries: u64,
    pub bytes: u64,
}
#[derive(Debug, thiserror::Error)]
#[error("layer unpacking is not available yet")]
pub struct UnpackError;

pub fn apply_layer<R: Read>(_tar: R, _root: &Path, _opts: &UnpackOptions) -> Result<LayerStats, UnpackError> {
    Err(UnpackError)
}
