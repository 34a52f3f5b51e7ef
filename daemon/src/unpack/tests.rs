//! Tests of the layer applier. Layers are built in memory; malicious ones
//! with hand-written headers, since `tar::Builder` refuses their paths.
//!
//! Tests that need root (mknod, chown, `trusted.*` xattrs, mounts) say so
//! with `require_root`, which fails them when not run as root.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use tar::{EntryType, Header};

use super::apply::apply_layer_with;
use super::*;

const T1: u64 = 1_600_000_000;
const T2: u64 = 1_500_000_000;

fn require_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} needs root (mknod, chown, trusted.* xattrs or mounts): run the unpack tests as root"
    );
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let template = std::env::temp_dir().join(format!("tote-unpack-{tag}-XXXXXX"));
        Self(nix::unistd::mkdtemp(&template).expect("mkdtemp"))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, path: &str) -> PathBuf {
        self.0.join(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A PAX extended header's records.
fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let body = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        write!(out, "{len} {key}=").unwrap();
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// Builds a layer in memory.
struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Self {
        Self { builder: tar::Builder::new(Vec::new()) }
    }

    fn header(kind: EntryType, mode: u32) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(T1);
        header.set_size(0);
        header
    }

    fn append(&mut self, mut header: Header, path: &str, data: &[u8]) -> &mut Self {
        header.set_size(data.len() as u64);
        self.builder.append_data(&mut header, path, data).unwrap();
        self
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.append(Self::header(EntryType::Regular, 0o644), path, data)
    }

    fn file_owned(&mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64, mtime: u64) -> &mut Self {
        let mut header = Self::header(EntryType::Regular, mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(mtime);
        self.append(header, path, data)
    }

    fn dir(&mut self, path: &str) -> &mut Self {
        self.dir_with(path, 0o755, 0, 0, T1)
    }

    fn dir_with(&mut self, path: &str, mode: u32, uid: u64, gid: u64, mtime: u64) -> &mut Self {
        let mut header = Self::header(EntryType::Directory, mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(mtime);
        self.append(header, path, &[])
    }

    fn link(&mut self, kind: EntryType, path: &str, target: &str, uid: u64, mtime: u64) -> &mut Self {
        let mut header = Self::header(kind, 0o777);
        header.set_uid(uid);
        header.set_gid(uid);
        header.set_mtime(mtime);
        self.builder.append_link(&mut header, path, target).unwrap();
        self
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(EntryType::Symlink, path, target, 0, T1)
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(EntryType::Link, path, target, 0, T1)
    }

    fn node(&mut self, kind: EntryType, path: &str, major: u32, minor: u32, mode: u32) -> &mut Self {
        let mut header = Self::header(kind, mode);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        self.append(header, path, &[])
    }

    /// A PAX header describing the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let data = pax_records(records);
        let mut header = Self::header(EntryType::XHeader, 0o644);
        header.set_size(data.len() as u64);
        self.builder.append_data(&mut header, "PaxHeaders/entry", data.as_slice()).unwrap();
        self
    }

    /// An entry whose name and link name are written into the header as
    /// they are, bypassing the builder's checks.
    fn raw(&mut self, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> &mut Self {
        let mut header = Self::header(kind, 0o644);
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name = [0; 100];
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname = [0; 100];
        gnu.linkname[..link.len()].copy_from_slice(link);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        self.builder.finish().unwrap();
        self.builder.get_ref().clone()
    }
}

fn opts(whiteouts: WhiteoutStyle) -> UnpackOptions {
    UnpackOptions { whiteouts, devices: DevicePolicy::Create, preserve_owners: true, keep_kinds: false }
}

/// Options that need no privilege.
fn unprivileged() -> UnpackOptions {
    UnpackOptions {
        whiteouts: WhiteoutStyle::UserXattr,
        devices: DevicePolicy::Skip,
        preserve_owners: false,
        keep_kinds: false,
    }
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and `buf` has `buf.len()`
    // writable bytes; the kernel writes at most that many.
    let len = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let len = usize::try_from(len).ok()?;
    buf.truncate(len);
    Some(buf)
}

fn lstat(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    lstat(path).mode() & 0o7777
}

fn is_whiteout_device(path: &Path) -> bool {
    let meta = lstat(path);
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Every path under `root`, relative, directories with a trailing `/`.
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| (*p).to_owned()).collect()
}

/// A directory outside the layer root that no entry may touch.
struct Sentinel {
    dir: TempDir,
}

impl Sentinel {
    fn new() -> Self {
        let dir = TempDir::new("sentinel");
        fs::write(dir.join("target"), b"original").unwrap();
        fs::set_permissions(dir.join("target"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o750)).unwrap();
        Self { dir }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn assert_untouched(&self) {
        assert_eq!(tree(self.dir.path()), set(&["target"]), "the sentinel directory changed");
        assert_eq!(fs::read(self.dir.join("target")).unwrap(), b"original");
        assert_eq!(mode(&self.dir.join("target")), 0o640);
        assert_eq!(lstat(&self.dir.join("target")).nlink(), 1);
        assert_eq!(mode(self.dir.path()), 0o750);
        assert_eq!(xattr(self.dir.path(), "user.overlay.opaque"), None);
    }
}

/// Applies `layer` into a fresh directory and expects it to fail, naming
/// `entry`; the sentinel must be untouched.
fn expect_refused(layer: &[u8], entry: &str, sentinel: &Sentinel) -> (UnpackError, TempDir) {
    let root = TempDir::new("root");
    let err = apply_layer(layer, root.path(), &unprivileged()).expect_err("the layer must be refused");
    assert_eq!(err.entry(), Some(entry), "error names the wrong entry: {err}");
    assert!(err.to_string().contains(&format!("{entry:?}")), "message does not name {entry:?}: {err}");
    sentinel.assert_untouched();
    (err, root)
}

// --- compression ---

#[test]
fn media_types() {
    use Compression::*;
    let cases = [
        ("application/vnd.oci.image.layer.v1.tar", Some(None)),
        ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Gzip)),
        ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Zstd)),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Some(Gzip)),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", Some(Zstd)),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar", Some(None)),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", Some(Gzip)),
        ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Some(Gzip)),
        ("Application/VND.oci.image.layer.v1.tar+gzip; foo=bar", Some(Gzip)),
        ("application/vnd.oci.image.layer.v1.tar+bzip2", Option::None),
        ("application/vnd.oci.image.config.v1+json", Option::None),
        ("", Option::None),
    ];
    for (media_type, expected) in cases {
        assert_eq!(Compression::from_media_type(media_type), expected, "{media_type}");
    }
}

#[test]
fn sniffing() {
    assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
    assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
    assert_eq!(Compression::sniff(&[0x5e, 0x2a, 0x4d, 0x18]), Compression::Zstd);
    assert_eq!(Compression::sniff(b"etc/passwd\0\0"), Compression::None);
    assert_eq!(Compression::sniff(&[0x1f]), Compression::None);
    assert_eq!(Compression::sniff(&[]), Compression::None);

    let tar = Layer::new().file("f", b"hello").finish();
    assert_eq!(Compression::sniff(&gzip(&tar)), Compression::Gzip);
    assert_eq!(Compression::sniff(&zstd::encode_all(tar.as_slice(), 3).unwrap()), Compression::Zstd);
    assert_eq!(Compression::sniff(&tar), Compression::None);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Incompressible bytes, so that corrupting the compressed stream corrupts
/// the data.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn gzip_and_zstd_round_trips() {
    let content = noise(3 * 1024 * 1024 + 17);
    let tar = Layer::new().dir("d").file("d/big", &content).file("d/small", b"x").finish();
    let compressed = [
        (Compression::None, tar.clone()),
        (Compression::Gzip, gzip(&tar)),
        (Compression::Zstd, zstd::encode_all(tar.as_slice(), 3).unwrap()),
    ];
    for (compression, blob) in compressed {
        for sniffed in [false, true] {
            let root = TempDir::new("roundtrip");
            let reader = if sniffed {
                decompress_sniffed(blob.as_slice()).unwrap()
            } else {
                decompress(blob.as_slice(), compression).unwrap()
            };
            let stats = apply_layer(reader, root.path(), &unprivileged()).unwrap();
            assert_eq!(stats, LayerStats { entries: 3, bytes: content.len() as u64 + 1 }, "{compression:?}");
            assert_eq!(fs::read(root.join("d/big")).unwrap(), content, "{compression:?}");
            assert_eq!(fs::read(root.join("d/small")).unwrap(), b"x");
        }
    }
}

#[test]
fn multi_member_gzip_and_multi_frame_zstd() {
    let tar = Layer::new().file("a", &noise(100_000)).file("b", b"bee").finish();
    let (first, second) = tar.split_at(70_000);
    let mut gz = gzip(first);
    gz.extend(gzip(second));
    let mut zst = zstd::encode_all(first, 1).unwrap();
    zst.extend(zstd::encode_all(second, 1).unwrap());
    for (compression, blob) in [(Compression::Gzip, gz), (Compression::Zstd, zst)] {
        let root = TempDir::new("members");
        apply_layer(decompress(blob.as_slice(), compression).unwrap(), root.path(), &unprivileged()).unwrap();
        assert_eq!(fs::read(root.join("b")).unwrap(), b"bee", "{compression:?}");
    }
}

#[test]
fn corrupt_gzip_is_an_error() {
    let tar = Layer::new().file("first", b"1").file("data", &noise(200_000)).file("last", b"2").finish();
    let good = gzip(&tar);

    // Garbage in the middle of the deflate stream.
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    for byte in &mut bad[middle..middle + 64] {
        *byte ^= 0x5a;
    }
    let root = TempDir::new("corrupt");
    let err = apply_layer(decompress(bad.as_slice(), Compression::Gzip).unwrap(), root.path(), &unprivileged())
        .expect_err("corrupt gzip must fail");
    assert!(matches!(err, UnpackError::Data { .. } | UnpackError::Archive { .. }), "{err}");
    assert!(err.entry().is_some(), "{err}");

    // A wrong CRC in the trailer: only noticed by reading to the end.
    let mut bad = good.clone();
    let crc = bad.len() - 8;
    bad[crc] ^= 0xff;
    let root = TempDir::new("corrupt");
    let err = apply_layer(decompress(bad.as_slice(), Compression::Gzip).unwrap(), root.path(), &unprivileged())
        .expect_err("a bad gzip CRC must fail");
    assert!(matches!(err, UnpackError::Archive { .. }), "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");

    // A gzip stream cut short.
    let cut = &good[..good.len() / 2];
    let root = TempDir::new("corrupt");
    let err = apply_layer(decompress(cut, Compression::Gzip).unwrap(), root.path(), &unprivileged())
        .expect_err("truncated gzip must fail");
    assert!(matches!(err, UnpackError::Data { .. } | UnpackError::Archive { .. }), "{err}");
}

#[test]
fn truncated_tar_is_an_error() {
    let tar = Layer::new().file("first", b"1").file("second", &noise(10_000)).finish();
    // first: header + 1 block; second: header at 1024, content from 1536.
    let cut = &tar[..1536 + 5000];
    let root = TempDir::new("truncated");
    let err = apply_layer(cut, root.path(), &unprivileged()).expect_err("truncated content must fail");
    match &err {
        UnpackError::Truncated { path, expected, written } => {
            assert_eq!((path.as_str(), *expected, *written), ("second", 10_000, 5000));
        }
        other => panic!("expected Truncated, got {other}"),
    }
    assert!(err.to_string().contains("\"second\""), "{err}");

    // Cut inside the second header.
    let cut = &tar[..1024 + 200];
    let err = apply_layer(cut, TempDir::new("truncated").path(), &unprivileged()).expect_err("cut header");
    assert!(matches!(&err, UnpackError::Archive { after: Some(after), .. } if after == "first"), "{err}");
    assert!(err.to_string().contains("after entry \"first\""), "{err}");

    // A corrupt header checksum.
    let mut bad = tar.clone();
    bad[1024 + 10] ^= 1;
    let err = apply_layer(bad.as_slice(), TempDir::new("truncated").path(), &unprivileged()).expect_err("checksum");
    assert!(matches!(&err, UnpackError::Archive { .. }), "{err}");
}

/// `umoci insert` of umoci 0.4.7 ends its layers right after the last
/// file's content: no padding, no end-of-archive blocks. Go's archive/tar
/// (docker, containerd, podman) takes that as the end, and so does Tote.
#[test]
fn a_layer_ending_right_after_its_last_content_is_complete() {
    let tar = Layer::new().raw(EntryType::Directory, b"/", b"", b"").dir("etc/").file("etc/motd", b"hello\n").finish();
    // Three headers, then the six bytes of content.
    let unpadded = &tar[..512 * 3 + 6];
    let root = TempDir::new("unpadded");
    let stats = apply_layer(unpadded, root.path(), &unprivileged()).unwrap();
    assert_eq!(stats.entries, 3);
    assert_eq!(fs::read(root.join("etc/motd")).unwrap(), b"hello\n");
    // The padding but no end blocks.
    let root = TempDir::new("unpadded");
    apply_layer(&tar[..512 * 4], root.path(), &unprivileged()).unwrap();
    assert_eq!(fs::read(root.join("etc/motd")).unwrap(), b"hello\n");
    // Compressed, through the pipeline: the hash sees the stream as it is.
    let root = TempDir::new("unpadded");
    let (result, seen) = pipelined(&gzip(unpadded), Compression::Gzip, root.path());
    result.unwrap();
    assert_eq!(seen, unpadded);
    assert_eq!(fs::read(root.join("etc/motd")).unwrap(), b"hello\n");
    // A last entry whose content is skipped rather than read.
    let tar = Layer::new().file("f", b"f").file(".wh..wh.plnk/1.2", b"aufs").finish();
    let root = TempDir::new("unpadded");
    apply_layer(&tar[..512 * 3 + 4], root.path(), &unprivileged()).unwrap();
    assert_eq!(tree(root.path()), set(&["f"]));
}

#[test]
fn a_layer_ending_inside_content_or_padding_is_truncated() {
    let tar = Layer::new().dir("etc/").file("etc/motd", b"hello\n").finish();
    let root = TempDir::new("unpadded");
    let err = apply_layer(&tar[..512 * 2 + 3], root.path(), &unprivileged()).expect_err("inside the content");
    assert!(matches!(&err, UnpackError::Truncated { expected: 6, written: 3, .. }), "{err}");
    let root = TempDir::new("unpadded");
    let err = apply_layer(&tar[..512 * 2 + 7], root.path(), &unprivileged()).expect_err("inside the padding");
    assert!(matches!(&err, UnpackError::Archive { after: Some(after), .. } if after == "etc/motd"), "{err}");
}

// --- a normal layer ---

/// A version 2 `security.capability`: cap_net_bind_service, effective.
const CAPABILITY: [u8; 20] = [0x01, 0, 0, 0x02, 0, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn applies_every_entry_type_with_metadata() {
    require_root("applies_every_entry_type_with_metadata");
    let long_dir = format!("long/{}", "d".repeat(120));
    let long_file = format!("{long_dir}/{}", "f".repeat(100));
    let long_target = format!("../{}", "t".repeat(150));
    let pax_name = format!("pax/{}", "p".repeat(200));
    let mut layer = Layer::new();
    layer
        .dir_with("etc/", 0o755, 0, 0, T2)
        .file_owned("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, 0, 0, T1)
        .dir("bin/")
        .file_owned("bin/su", b"#!su", 0o6755, 1000, 1001, T1)
        .hardlink("bin/su2", "bin/su")
        .link(EntryType::Symlink, "bin/sh", "busybox", 1000, T2)
        .pax(&[
            ("SCHILY.xattr.security.capability", &CAPABILITY),
            ("SCHILY.xattr.user.comment", b"ping me"),
            ("mtime", b"1700000000.25"),
        ])
        .file("bin/ping", b"ping")
        .dir_with("tmp/", 0o1777, 0, 0, T1)
        .pax(&[("SCHILY.xattr.trusted.tote", b"dir-xattr")])
        .dir_with("srv/", 0o2775, 33, 34, T1)
        .file_owned("srv/data", b"data", 0o640, 33, 34, T1)
        .dir("dev/")
        .node(EntryType::Char, "dev/null", 1, 3, 0o666)
        .node(EntryType::Block, "dev/loop0", 7, 0, 0o660)
        .node(EntryType::Fifo, "run/fifo", 0, 0, 0o600)
        .file(&long_file, b"long")
        .symlink("long/link", &long_target)
        .pax(&[("path", pax_name.as_bytes())])
        .file("ignored-name", b"pax path")
        .dir_with("locked/", 0o500, 0, 0, T1)
        .file("locked/inside", b"in");
    let tar = layer.finish();
    let root = TempDir::new("every");
    let stats = apply_layer(tar.as_slice(), root.path(), &opts(WhiteoutStyle::Trusted)).unwrap();
    assert_eq!(stats.entries, 19);
    let content: usize = [26, 4, 4, 4, 4, 8, 2].iter().sum();
    assert_eq!(stats.bytes, content as u64);

    let p = |rel: &str| root.join(rel);
    assert_eq!(fs::read(p("etc/passwd")).unwrap(), b"root:x:0:0::/root:/bin/sh\n");
    // Directory mtimes survive the creation of their children.
    assert_eq!(lstat(&p("etc")).mtime(), T2 as i64);
    assert_eq!(lstat(&p("etc/passwd")).mtime(), T1 as i64);

    // setuid/setgid set after the chown that would clear them.
    let su = lstat(&p("bin/su"));
    assert_eq!((su.uid(), su.gid(), su.mode() & 0o7777), (1000, 1001, 0o6755));
    let su2 = lstat(&p("bin/su2"));
    assert_eq!((su2.ino(), su2.nlink()), (su.ino(), 2));

    let sh = lstat(&p("bin/sh"));
    assert!(sh.file_type().is_symlink());
    assert_eq!(fs::read_link(p("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!((sh.uid(), sh.gid(), sh.mtime()), (1000, 1000, T2 as i64));

    let ping = lstat(&p("bin/ping"));
    assert_eq!((ping.mtime(), ping.mtime_nsec()), (1_700_000_000, 250_000_000));
    assert_eq!(xattr(&p("bin/ping"), "security.capability").as_deref(), Some(&CAPABILITY[..]));
    assert_eq!(xattr(&p("bin/ping"), "user.comment").as_deref(), Some(&b"ping me"[..]));

    assert_eq!(mode(&p("tmp")), 0o1777);
    let srv = lstat(&p("srv"));
    assert_eq!((srv.uid(), srv.gid(), srv.mode() & 0o7777), (33, 34, 0o2775));
    assert_eq!(xattr(&p("srv"), "trusted.tote").as_deref(), Some(&b"dir-xattr"[..]));
    assert_eq!(mode(&p("srv/data")), 0o640);

    let null = lstat(&p("dev/null"));
    assert!(null.file_type().is_char_device());
    assert_eq!((nix::sys::stat::major(null.rdev()), nix::sys::stat::minor(null.rdev())), (1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let lo = lstat(&p("dev/loop0"));
    assert!(lo.file_type().is_block_device());
    assert_eq!((nix::sys::stat::major(lo.rdev()), nix::sys::stat::minor(lo.rdev())), (7, 0));
    assert!(lstat(&p("run/fifo")).file_type().is_fifo());
    assert_eq!(mode(&p("run/fifo")), 0o600);
    // `run/` was implied by its child: created 0755.
    assert_eq!(mode(&p("run")), 0o755);

    assert_eq!(fs::read(p(&long_file)).unwrap(), b"long");
    assert_eq!(fs::read_link(p("long/link")).unwrap(), Path::new(&long_target));
    assert_eq!(fs::read(p(&pax_name)).unwrap(), b"pax path");
    assert!(!p("ignored-name").exists());

    // A read-only directory still gets its children: its mode comes last.
    assert_eq!(mode(&p("locked")), 0o500);
    assert_eq!(fs::read(p("locked/inside")).unwrap(), b"in");
}

#[test]
fn sparse_files() {
    let src = TempDir::new("sparse-src");
    let file = src.join("sparse");
    {
        let mut f = fs::File::create(&file).unwrap();
        f.set_len(8 * 1024 * 1024).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(4 * 1024 * 1024)).unwrap();
        f.write_all(b"middle").unwrap();
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder.sparse(true);
    builder.append_path_with_name(&file, "sparse").unwrap();
    let tar = builder.into_inner().unwrap();
    assert!(tar.len() < 1024 * 1024, "the archive should hold the file sparsely");
    let root = TempDir::new("sparse");
    let stats = apply_layer(tar.as_slice(), root.path(), &unprivileged()).unwrap();
    assert_eq!(stats.bytes, 8 * 1024 * 1024);
    assert!(fs::read(root.join("sparse")).unwrap() == fs::read(&file).unwrap());
}

#[test]
fn ids_beyond_32_bits_are_invalid_when_owners_are_kept() {
    let tar = Layer::new().pax(&[("uid", b"4294967296")]).file("f", b"").finish();
    let err = apply_layer(tar.as_slice(), TempDir::new("ids").path(), &opts(WhiteoutStyle::UserXattr))
        .expect_err("uid out of range");
    assert!(matches!(&err, UnpackError::InvalidHeader { path, .. } if path == "f"), "{err}");
    // Without owners, the ids do not matter.
    apply_layer(tar.as_slice(), TempDir::new("ids").path(), &unprivileged()).unwrap();
}

#[test]
fn owners_are_kept_only_when_asked() {
    let tar = Layer::new().file_owned("f", b"x", 0o4755, 1234, 5678, T1).finish();
    let root = TempDir::new("owners");
    apply_layer(tar.as_slice(), root.path(), &unprivileged()).unwrap();
    let meta = lstat(&root.join("f"));
    assert_eq!((meta.uid(), meta.gid()), (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()));
    assert_eq!(meta.mode() & 0o7777, 0o4755);
}

#[test]
fn overlay_xattrs_in_the_archive_are_escaped() {
    require_root("overlay_xattrs_in_the_archive_are_escaped");
    let tar = Layer::new()
        .pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y"), ("SCHILY.xattr.trusted.overlay.redirect", b"/x")])
        .dir("d/")
        .pax(&[("SCHILY.xattr.user.overlay.whiteout", b"y")])
        .file("d/f", b"")
        .finish();
    let root = TempDir::new("escape");
    apply_layer(tar.as_slice(), root.path(), &opts(WhiteoutStyle::Trusted)).unwrap();
    assert_eq!(xattr(&root.join("d"), "trusted.overlay.opaque"), None);
    assert_eq!(xattr(&root.join("d"), "trusted.overlay.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(xattr(&root.join("d"), "trusted.overlay.overlay.redirect").as_deref(), Some(&b"/x"[..]));
    assert_eq!(xattr(&root.join("d/f"), "user.overlay.whiteout"), None);
    assert_eq!(xattr(&root.join("d/f"), "user.overlay.overlay.whiteout").as_deref(), Some(&b"y"[..]));
}

#[test]
fn later_entries_replace_earlier_ones() {
    let tar = Layer::new()
        .file("f", b"one")
        .file("f", b"two")
        .dir_with("d/", 0o700, 0, 0, T1)
        .file("d/child", b"kept")
        .dir_with("d/", 0o751, 0, 0, T2)
        .dir("x/")
        .file("x/child", b"gone")
        .dir("x/sub/")
        .file("x", b"file over a directory")
        .file("y", b"file")
        .dir("y/")
        .symlink("z", "a")
        .symlink("z", "b")
        .dir("w/")
        .symlink("w", "elsewhere")
        .file("h", b"hard")
        .hardlink("h2", "h")
        .file("h2", b"not linked any more")
        .finish();
    let root = TempDir::new("replace");
    apply_layer(tar.as_slice(), root.path(), &unprivileged()).unwrap();
    let p = |rel: &str| root.join(rel);
    assert_eq!(fs::read(p("f")).unwrap(), b"two");
    assert_eq!(fs::read(p("d/child")).unwrap(), b"kept");
    assert_eq!((mode(&p("d")), lstat(&p("d")).mtime()), (0o751, T2 as i64));
    assert_eq!(fs::read(p("x")).unwrap(), b"file over a directory");
    assert!(lstat(&p("y")).is_dir());
    assert_eq!(fs::read_link(p("z")).unwrap(), Path::new("b"));
    assert_eq!(fs::read_link(p("w")).unwrap(), Path::new("elsewhere"));
    assert_eq!(fs::read(p("h")).unwrap(), b"hard");
    assert_eq!(fs::read(p("h2")).unwrap(), b"not linked any more");
    assert_eq!(lstat(&p("h")).nlink(), 1);
}

#[test]
fn symlinks_inside_the_layer_are_followed_as_parents() {
    let tar = Layer::new()
        .dir("usr/")
        .dir("usr/lib/")
        .symlink("lib", "usr/lib")
        .file("lib/libc.so", b"libc")
        .dir("a/")
        .symlink("a/up", "../usr")
        .file("a/up/via-dotdot", b"ok")
        .file("z", b"z")
        .hardlink("lib/z-link", "z")
        .finish();
    let root = TempDir::new("inside");
    apply_layer(tar.as_slice(), root.path(), &unprivileged()).unwrap();
    assert_eq!(fs::read(root.join("usr/lib/libc.so")).unwrap(), b"libc");
    assert_eq!(fs::read(root.join("usr/via-dotdot")).unwrap(), b"ok");
    assert_eq!(lstat(&root.join("usr/lib/z-link")).ino(), lstat(&root.join("z")).ino());
}

#[test]
fn hardlink_to_a_symlink_links_the_symlink() {
    let tar = Layer::new().symlink("s", "/etc/passwd").hardlink("h", "s").finish();
    let root = TempDir::new("hardsym");
    apply_layer(tar.as_slice(), root.path(), &unprivileged()).unwrap();
    let h = lstat(&root.join("h"));
    assert!(h.file_type().is_symlink());
    assert_eq!(h.ino(), lstat(&root.join("s")).ino());
}

#[test]
fn devices_follow_the_policy() {
    let tar = Layer::new().node(EntryType::Char, "dev/null", 1, 3, 0o666).file("after", b"a").finish();
    let root = TempDir::new("skip");
    let stats = apply_layer(tar.as_slice(), root.path(), &unprivileged()).unwrap();
    assert_eq!(stats.entries, 2);
    assert_eq!(tree(root.path()), set(&["after"]));

    let refuse = UnpackOptions { devices: DevicePolicy::Refuse, ..unprivileged() };
    let root = TempDir::new("refuse");
    let err = apply_layer(tar.as_slice(), root.path(), &refuse).expect_err("devices refused");
    assert!(matches!(&err, UnpackError::DeviceRefused { path, kind: "character" } if path == "dev/null"), "{err}");
    assert!(tree(root.path()).is_empty(), "nothing may be created for a refused device");

    let block = Layer::new().node(EntryType::Block, "sda", 8, 0, 0o600).finish();
    let err = apply_layer(block.as_slice(), TempDir::new("refuse").path(), &refuse).expect_err("devices refused");
    assert!(matches!(&err, UnpackError::DeviceRefused { kind: "block", .. }), "{err}");
    // Fifos are no devices.
    let fifo = Layer::new().node(EntryType::Fifo, "fifo", 0, 0, 0o644).finish();
    let root = TempDir::new("refuse");
    apply_layer(fifo.as_slice(), root.path(), &refuse).unwrap();
    assert!(lstat(&root.join("fifo")).file_type().is_fifo());
}

#[test]
fn blank_device_fields_read_as_zero() {
    // Some writers leave the device fields of fifos (and even devices)
    // blank rather than zero.
    let mut layer = Layer::new();
    for (kind, name) in [(EntryType::Fifo, "fifo"), (EntryType::Char, "whiteout-like")] {
        let mut header = Layer::header(kind, 0o644);
        let ustar = header.as_gnu_mut().unwrap();
        ustar.dev_major = [0; 8];
        ustar.dev_minor = *b"       \0";
        layer.append(header, name, &[]);
    }
    let tar = layer.finish();
    let root = TempDir::new("blankdev");
    let opts = UnpackOptions { devices: DevicePolicy::Create, ..unprivileged() };
    // (0:0 is the one device Linux lets anyone create.)
    apply_layer(tar.as_slice(), root.path(), &opts).unwrap();
    assert!(is_whiteout_device(&root.join("whiteout-like")));
    assert!(lstat(&root.join("fifo")).file_type().is_fifo());
}

#[test]
fn unsupported_entry_types_are_errors() {
    let tar = Layer::new().file("ok", b"").raw(EntryType::new(b'V'), b"volume-label", b"", b"").finish();
    let err = apply_layer(tar.as_slice(), TempDir::new("unsupported").path(), &unprivileged()).expect_err("type V");
    assert!(matches!(&err, UnpackError::Unsupported { path, type_flag: 'V' } if path == "volume-label"), "{err}");
}

#[test]
fn the_root_entry_and_global_headers_are_ignored() {
    let tar = Layer::new()
        .raw(EntryType::XGlobalHeader, b"pax_global_header", b"", &pax_records(&[("comment", b"x")]))
        .dir_with("./", 0o700, 0, 0, T2)
        .file("./f", b"f")
        .finish();
    let root = TempDir::new("rootentry");
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let stats = apply_layer(tar.as_slice(), root.path(), &unprivileged()).unwrap();
    assert_eq!(stats.entries, 3);
    assert_eq!(mode(root.path()), 0o755);
    assert_eq!(tree(root.path()), set(&["f"]));
}

#[test]
fn a_missing_root_is_an_error() {
    let root = TempDir::new("missing");
    let err = apply_layer(&[][..], &root.join("nope"), &unprivileged()).expect_err("missing root");
    assert!(matches!(err, UnpackError::Root { .. }), "{err}");
}

// --- whiteouts ---

/// A layer exercising every whiteout form.
fn whiteout_layer() -> Vec<u8> {
    Layer::new()
        .dir("a/")
        .file("a/.wh.gone", b"")
        .file("a/keep", b"keep")
        .dir("b/")
        .file("b/.wh..wh..opq", b"")
        .file("b/new", b"new")
        .file(".wh.topgone", b"")
        .dir("c/")
        .file("c/made", b"made earlier in this layer")
        .file("c/.wh.made", b"")
        .dir("d/")
        .dir("d/sub/")
        .file("d/sub/x", b"x")
        .file(".wh.d", b"")
        .dir(".wh..wh.plnk/")
        .file(".wh..wh.plnk/123", b"aufs")
        .file("e/.wh..wh.aufs", b"")
        .file("missing/.wh.x", b"")
        .file("f/.wh.g", b"")
        .dir("f/g/")
        .file("f/g/h", b"h")
        .finish()
}

fn check_whiteout_layer(root: &Path, opaque_xattr: &str) {
    let tree = tree(root);
    assert!(tree.iter().all(|p| !p.contains(".wh.")), "whiteout entries appeared as files: {tree:?}");
    for whiteout in ["a/gone", "topgone", "c/made", "d", "missing/x"] {
        assert!(is_whiteout_device(&root.join(whiteout)), "{whiteout} is not a 0:0 device");
    }
    assert_eq!(fs::read(root.join("a/keep")).unwrap(), b"keep");
    assert_eq!(xattr(&root.join("b"), opaque_xattr).as_deref(), Some(&b"y"[..]));
    assert_eq!(xattr(&root.join("a"), opaque_xattr), None);
    assert_eq!(fs::read(root.join("b/new")).unwrap(), b"new");
    // Whited out, then created again: opaque.
    assert_eq!(xattr(&root.join("f/g"), opaque_xattr).as_deref(), Some(&b"y"[..]));
    assert_eq!(fs::read(root.join("f/g/h")).unwrap(), b"h");
}

#[test]
fn trusted_whiteouts() {
    require_root("trusted_whiteouts");
    let root = TempDir::new("wh-trusted");
    apply_layer(whiteout_layer().as_slice(), root.path(), &opts(WhiteoutStyle::Trusted)).unwrap();
    check_whiteout_layer(root.path(), "trusted.overlay.opaque");
    assert_eq!(xattr(&root.join("b"), "user.overlay.opaque"), None);
}

#[test]
fn user_xattr_whiteouts() {
    let root = TempDir::new("wh-user");
    apply_layer(whiteout_layer().as_slice(), root.path(), &unprivileged()).unwrap();
    check_whiteout_layer(root.path(), "user.overlay.opaque");
    assert_eq!(xattr(&root.join("b"), "trusted.overlay.opaque"), None);
}

#[test]
fn user_xattr_whiteouts_in_their_xattr_form() {
    let tar = Layer::new()
        .dir("a/")
        .file("a/.wh.gone", b"")
        .file("a/.wh.also", b"")
        .file("a/keep", b"keep")
        // Opaque first: no whiteout needed.
        .file("b/.wh..wh..opq", b"")
        .file("b/.wh.foo", b"")
        // Opaque last: the whiteout goes again.
        .file("c/.wh.foo", b"")
        .file("c/.wh..wh..opq", b"")
        .file("c/new", b"")
        // Whited out and created again.
        .file("f/.wh.g", b"")
        .dir("f/g/")
        .file("f/.wh.file", b"")
        .file("f/file", b"back")
        // Opaque through a symlink, whiteout through the real path.
        .dir("usr/")
        .dir("usr/lib/")
        .symlink("lib", "usr/lib")
        .file("lib/.wh..wh..opq", b"")
        .file("usr/lib/.wh.x", b"")
        .finish();
    let root = TempDir::new("wh-xattr");
    apply_layer_with(tar.as_slice(), root.path(), &unprivileged(), true).unwrap();
    let p = |rel: &str| root.join(rel);
    for whiteout in ["a/gone", "a/also"] {
        let meta = lstat(&p(whiteout));
        assert!(meta.is_file() && meta.len() == 0, "{whiteout} is not an empty file");
        assert_eq!(xattr(&p(whiteout), "user.overlay.whiteout").as_deref(), Some(&b"y"[..]));
    }
    assert_eq!(xattr(&p("a"), "user.overlay.opaque").as_deref(), Some(&b"x"[..]));
    assert_eq!(tree(&p("b")), set(&[]));
    assert_eq!(xattr(&p("b"), "user.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(tree(&p("c")), set(&["new"]));
    assert_eq!(xattr(&p("c"), "user.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(xattr(&p("f/g"), "user.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(fs::read(p("f/file")).unwrap(), b"back");
    assert_eq!(xattr(&p("f/file"), "user.overlay.whiteout"), None);
    assert_eq!(tree(&p("usr/lib")), set(&[]));
    assert_eq!(xattr(&p("usr/lib"), "user.overlay.opaque").as_deref(), Some(&b"y"[..]));
}

#[test]
fn whiteout_names_must_name_a_file() {
    for name in [".wh.", "a/.wh..", "a/.wh..."] {
        let tar = Layer::new().raw(EntryType::Regular, name.as_bytes(), b"", b"").finish();
        let err = apply_layer(tar.as_slice(), TempDir::new("whname").path(), &unprivileged()).expect_err(name);
        assert!(matches!(&err, UnpackError::UnsafePath { path, .. } if path == name), "{err}");
    }
}

// --- overlayfs, for real ---

/// Runs `f` on a thread of its own in a private mount namespace, so that
/// its mounts can never leak into the host's.
fn in_private_mount_namespace(f: impl FnOnce() + Send + 'static) {
    let result = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; it moves this thread (which
        // shares nothing else we rely on) into a new mount namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
        nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .expect("making / private");
        f();
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Unmounts on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(source: &str, target: &Path, fstype: &str, data: &str) -> Self {
        nix::mount::mount(Some(source), target, Some(fstype), MsFlags::empty(), Some(data))
            .unwrap_or_else(|e| panic!("mount {fstype} on {} ({data}): {e}", target.display()));
        Self(target.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.0, MntFlags::empty()) {
            eprintln!("umount {}: {e}", self.0.display());
            let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// Two layers applied on a tmpfs and mounted as overlayfs: the upper one's
/// whiteouts and opaque directory hide what they must. `xattr_form`: the
/// style's fallback for when `mknod` is refused, from the start (xattr
/// whiteouts; OCI names for fuse-overlayfs).
fn overlay_check(whiteouts: WhiteoutStyle, xattr_form: bool) {
    overlay_check_with(whiteouts, xattr_form, false);
}

/// [`overlay_check`], mounted by fuse-overlayfs or by the kernel.
fn overlay_check_with(whiteouts: WhiteoutStyle, xattr_form: bool, fuse: bool) {
    let base = TempDir::new("overlay");
    let base_path = base.path().to_path_buf();
    in_private_mount_namespace(move || {
        let _tmpfs = Mount::new("tmpfs", &base_path, "tmpfs", "mode=0755");
        let (lower, upper, merged) = (base_path.join("lower"), base_path.join("upper"), base_path.join("merged"));
        for dir in [&lower, &upper, &merged] {
            fs::create_dir(dir).unwrap();
        }
        let lower_tar = Layer::new()
            .file("keep", b"keep")
            .file("gone", b"gone")
            .dir("dir/")
            .file("dir/old", b"old")
            .file("dir/stays", b"stays")
            .dir("opq/")
            .file("opq/old", b"old")
            .dir("opq/sub/")
            .file("opq/sub/deep", b"deep")
            .dir("merge/")
            .file("merge/old", b"old")
            .dir("gonedir/")
            .file("gonedir/f", b"f")
            .finish();
        let upper_tar = Layer::new()
            .file(".wh.gone", b"")
            .file(".wh.gonedir", b"")
            .dir("dir/")
            .file("dir/.wh.old", b"")
            .dir("opq/")
            .file("opq/.wh..wh..opq", b"")
            .file("opq/new", b"new")
            .dir("merge/")
            .file("merge/new", b"new")
            .finish();
        let opts = opts(whiteouts);
        apply_layer_with(lower_tar.as_slice(), &lower, &opts, xattr_form).unwrap();
        apply_layer_with(upper_tar.as_slice(), &upper, &opts, xattr_form).unwrap();
        match (whiteouts, xattr_form) {
            (WhiteoutStyle::FuseOverlayfs, true) => {
                assert!(lstat(&upper.join(".wh.gone")).is_file(), "expected OCI whiteout names");
                assert!(!upper.join("gone").exists());
                // (tmpfs takes user xattrs: the opaque directory has one.)
                assert_eq!(xattr(&upper.join("opq"), "user.overlay.opaque").as_deref(), Some(&b"y"[..]));
            }
            (WhiteoutStyle::FuseOverlayfs, false) => {
                assert!(is_whiteout_device(&upper.join("gone")));
                assert_eq!(xattr(&upper.join("opq"), "user.overlay.opaque").as_deref(), Some(&b"y"[..]));
                assert!(!upper.join("opq/.wh..wh..opq").exists(), "the xattr says it all");
            }
            (_, true) => assert!(lstat(&upper.join("gone")).is_file(), "expected the xattr form of whiteouts"),
            (_, false) => assert!(is_whiteout_device(&upper.join("gone"))),
        }

        let mut data = format!("lowerdir={}:{}", upper.display(), lower.display());
        let _overlay = if fuse {
            let out = std::process::Command::new("fuse-overlayfs")
                .args(["-o", &data])
                .arg(&merged)
                .output()
                .unwrap_or_else(|e| panic!("run fuse-overlayfs (Debian's fuse-overlayfs package): {e}"));
            assert!(out.status.success(), "fuse-overlayfs -o {data}: {}", String::from_utf8_lossy(&out.stderr));
            Mount(merged.clone())
        } else {
            if whiteouts != WhiteoutStyle::Trusted {
                data.push_str(",userxattr");
            }
            Mount::new("overlay", &merged, "overlay", &data)
        };
        assert_eq!(names(&merged), set(&["keep", "dir", "opq", "merge"]));
        assert!(!merged.join("gone").exists() && !merged.join("gonedir").exists());
        assert_eq!(fs::read(merged.join("keep")).unwrap(), b"keep");
        assert_eq!(names(&merged.join("dir")), set(&["stays"]));
        assert!(!merged.join("dir/old").exists());
        assert_eq!(names(&merged.join("opq")), set(&["new"]));
        assert!(!merged.join("opq/old").exists() && !merged.join("opq/sub").exists());
        assert_eq!(names(&merged.join("merge")), set(&["old", "new"]));
    });
}

#[test]
fn overlayfs_honours_trusted_whiteouts() {
    require_root("overlayfs_honours_trusted_whiteouts");
    overlay_check(WhiteoutStyle::Trusted, false);
}

#[test]
fn overlayfs_honours_user_xattr_whiteouts() {
    require_root("overlayfs_honours_user_xattr_whiteouts");
    overlay_check(WhiteoutStyle::UserXattr, false);
}

#[test]
fn overlayfs_honours_user_xattr_whiteouts_in_their_xattr_form() {
    require_root("overlayfs_honours_user_xattr_whiteouts_in_their_xattr_form");
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut version = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
    assert!((major, minor) >= (6, 7), "xattr whiteouts need Linux 6.7+, this is {release}");
    overlay_check(WhiteoutStyle::UserXattr, true);
}

/// What the unpacker writes for fuse-overlayfs, read by the installed
/// fuse-overlayfs: 0:0 devices and `user.overlay.opaque=y`.
#[test]
fn fuse_overlayfs_honours_its_whiteouts() {
    require_root("fuse_overlayfs_honours_its_whiteouts");
    overlay_check_with(WhiteoutStyle::FuseOverlayfs, false, true);
}

/// ... and its whiteouts where `mknod` is refused: the OCI names kept as
/// they are.
#[test]
fn fuse_overlayfs_honours_its_whiteouts_as_oci_names() {
    require_root("fuse_overlayfs_honours_its_whiteouts_as_oci_names");
    overlay_check_with(WhiteoutStyle::FuseOverlayfs, true, true);
}

/// The kernel reads the main form too: a layer unpacked for fuse-overlayfs
/// serves a later toted that finds the kernel able.
#[test]
fn overlayfs_honours_the_fuse_overlayfs_style() {
    require_root("overlayfs_honours_the_fuse_overlayfs_style");
    overlay_check_with(WhiteoutStyle::FuseOverlayfs, false, false);
}

// --- malicious layers ---

#[test]
fn refuses_dotdot_paths() {
    let sentinel = Sentinel::new();
    let climbing = format!("/..{}/pwned", sentinel.path());
    for name in ["../escape", "a/../../x", "a/../b", "./../x", "/../escape", "/a/../../x", climbing.as_str()] {
        let tar = Layer::new().file("fine", b"").raw(EntryType::Regular, name.as_bytes(), b"", b"pwned").finish();
        let (err, root) = expect_refused(&tar, name, &sentinel);
        assert!(matches!(err, UnpackError::UnsafePath { .. }), "{err}");
        assert_eq!(tree(root.path()), set(&["fine"]));
    }
    // The same for directories, symlinks and hardlinks.
    for kind in [EntryType::Directory, EntryType::Symlink, EntryType::Link] {
        for name in ["../escape", "/../escape"] {
            let tar = Layer::new().raw(kind, name.as_bytes(), b"target", b"").finish();
            expect_refused(&tar, name, &sentinel);
        }
    }
}

/// `umoci insert DIR /` starts its layer with a `/` entry; GNU tar `-P` writes absolute
/// member names and hardlink targets. A leading `/` is the layer root, as
/// in docker and containerd: even the absolute path of a host directory
/// lands inside the layer.
#[test]
fn absolute_paths_name_the_layer_root() {
    let sentinel = Sentinel::new();
    let outside = format!("{}/pwned", sentinel.path());
    let tar = Layer::new()
        .raw(EntryType::Directory, b"/", b"", b"")
        .raw(EntryType::Directory, b"/etc/", b"", b"")
        .raw(EntryType::Regular, b"/etc/passwd", b"", b"root:x:0:0::/root:/bin/sh\n")
        .raw(EntryType::Regular, outside.as_bytes(), b"", b"inside")
        .raw(EntryType::Link, b"/etc/hard", b"/etc/passwd", b"")
        .raw(EntryType::Link, b"//twice", b"//etc//passwd", b"")
        .raw(EntryType::Symlink, b"/etc/link", b"/etc/passwd", b"")
        .raw(EntryType::Regular, b"/.wh.gone", b"", b"")
        .finish();
    let root = TempDir::new("absolute");
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    apply_layer(tar.as_slice(), root.path(), &unprivileged()).unwrap();
    sentinel.assert_untouched();
    assert_eq!(mode(root.path()), 0o755, "the `/` entry is the layer root: its metadata is not applied");
    assert_eq!(fs::read(root.join("etc/passwd")).unwrap(), b"root:x:0:0::/root:/bin/sh\n");
    assert_eq!(fs::read(root.path().join(outside.trim_start_matches('/'))).unwrap(), b"inside");
    let passwd = lstat(&root.join("etc/passwd")).ino();
    assert_eq!(lstat(&root.join("etc/hard")).ino(), passwd, "an absolute hardlink target is the layer's file");
    assert_eq!(lstat(&root.join("twice")).ino(), passwd);
    // A symlink's target is stored as written: it resolves in the container.
    assert_eq!(fs::read_link(root.join("etc/link")).unwrap(), Path::new("/etc/passwd"));
    assert!(is_whiteout_device(&root.join("gone")));
}

#[test]
fn refuses_nul_in_names() {
    let sentinel = Sentinel::new();
    let tar = Layer::new().pax(&[("path", b"a\0b")]).file("x", b"").finish();
    let (err, _root) = expect_refused(&tar, "a\0b", &sentinel);
    assert!(matches!(err, UnpackError::UnsafePath { .. }), "{err}");
}

#[test]
fn refuses_writing_through_an_absolute_symlink() {
    let sentinel = Sentinel::new();
    let tar = Layer::new().symlink("evil", sentinel.path()).file("evil/file", b"pwned").finish();
    let (err, root) = expect_refused(&tar, "evil/file", &sentinel);
    assert!(matches!(&err, UnpackError::OutsideRoot { parent, .. } if parent == "evil"), "{err}");
    assert_eq!(tree(root.path()), set(&["evil"]));

    // Even one that points back inside: RESOLVE_BENEATH refuses absolute links.
    let tar = Layer::new().dir("usr/").symlink("abs", "/usr").file("abs/x", b"").finish();
    let (err, _root) = expect_refused(&tar, "abs/x", &sentinel);
    assert!(matches!(err, UnpackError::OutsideRoot { .. }), "{err}");
}

#[test]
fn refuses_writing_through_a_relative_symlink_that_climbs_out() {
    let sentinel = Sentinel::new();
    let tar = Layer::new().symlink("up", "../../..").file("up/x", b"pwned").finish();
    let (err, _root) = expect_refused(&tar, "up/x", &sentinel);
    assert!(matches!(err, UnpackError::OutsideRoot { .. }), "{err}");

    // Through a chain: a/b -> .. -> fine, a/b/c -> ../../.. escapes.
    let tar = Layer::new().dir("a/").symlink("a/b", "..").symlink("c", "a/b/..").file("c/x", b"pwned").finish();
    let (err, _root) = expect_refused(&tar, "c/x", &sentinel);
    assert!(matches!(err, UnpackError::OutsideRoot { .. }), "{err}");

    // Deep entries beneath the escaping link, and a directory entry.
    let tar = Layer::new().symlink("up", "../../..").dir("up/tmp/newdir/").finish();
    expect_refused(&tar, "up/tmp/newdir/", &sentinel);
}

#[test]
fn refuses_hardlinks_out_of_the_layer() {
    let sentinel = Sentinel::new();
    let target = format!("{}/target", sentinel.path());
    let cases: [(&str, &[u8]); 3] = [("l1", b"../../etc/passwd"), ("l2", b"a/../../target"), ("l3", b"/../etc/passwd")];
    for (name, link) in cases {
        let tar = Layer::new().raw(EntryType::Link, name.as_bytes(), link, b"").finish();
        let (err, root) = expect_refused(&tar, name, &sentinel);
        assert!(matches!(err, UnpackError::Hardlink { .. }), "{err}");
        assert!(tree(root.path()).is_empty());
    }
    // Absolute targets are looked up in the layer, where these do not
    // exist: never the host's /etc/passwd or the sentinel's file.
    let cases: [(&str, &[u8]); 2] = [("l4", b"/etc/passwd"), ("l5", target.as_bytes())];
    for (name, link) in cases {
        let tar = Layer::new().raw(EntryType::Link, name.as_bytes(), link, b"").finish();
        let (err, root) = expect_refused(&tar, name, &sentinel);
        assert!(matches!(&err, UnpackError::Hardlink { reason, .. } if reason.contains("does not exist")), "{err}");
        assert!(tree(root.path()).is_empty());
    }
}

#[test]
fn absolute_names_do_not_pass_symlinks_leading_out() {
    let sentinel = Sentinel::new();
    // An absolute entry beneath an absolute symlink to the host.
    let tar = Layer::new()
        .raw(EntryType::Symlink, b"/evil", sentinel.path().as_bytes(), b"")
        .raw(EntryType::Regular, b"/evil/target", b"", b"pwned")
        .finish();
    let (err, root) = expect_refused(&tar, "/evil/target", &sentinel);
    assert!(matches!(&err, UnpackError::OutsideRoot { parent, .. } if parent == "evil"), "{err}");
    assert_eq!(tree(root.path()), set(&["evil"]));

    // An absolute hardlink target through that symlink.
    let tar = Layer::new()
        .raw(EntryType::Symlink, b"/evil", sentinel.path().as_bytes(), b"")
        .raw(EntryType::Link, b"/stolen", b"/evil/target", b"")
        .finish();
    let (err, _root) = expect_refused(&tar, "/stolen", &sentinel);
    assert!(matches!(&err, UnpackError::Hardlink { reason, .. } if reason.contains("outside")), "{err}");

    // Through a relative symlink that climbs out.
    let name = Path::new(sentinel.path()).file_name().unwrap().to_string_lossy().into_owned();
    let tar = Layer::new()
        .raw(EntryType::Directory, b"/a/", b"", b"")
        .raw(EntryType::Symlink, b"/a/up", b"../../../../../../../..", b"")
        .raw(EntryType::Link, b"/stolen", format!("/a/up/tmp/{name}/target").as_bytes(), b"")
        .finish();
    expect_refused(&tar, "/stolen", &sentinel);
}

#[test]
fn refuses_hardlinks_through_a_symlink_leading_out() {
    let sentinel = Sentinel::new();
    let tar = Layer::new().symlink("evil", sentinel.path()).hardlink("stolen", "evil/target").finish();
    let (err, root) = expect_refused(&tar, "stolen", &sentinel);
    assert!(matches!(&err, UnpackError::Hardlink { target, .. } if target == "evil/target"), "{err}");
    assert_eq!(tree(root.path()), set(&["evil"]));

    let tar = Layer::new()
        .dir("a/")
        .symlink("a/b", "../..")
        .hardlink(
            "stolen",
            &format!("a/b/{}/target", Path::new(sentinel.path()).file_name().unwrap().to_string_lossy()),
        )
        .finish();
    expect_refused(&tar, "stolen", &sentinel);
}

#[test]
fn entries_replace_symlinks_instead_of_writing_through_them() {
    let sentinel = Sentinel::new();
    let outside_file = format!("{}/target", sentinel.path());
    let tar = Layer::new()
        .symlink("s", &outside_file)
        .file("s", b"replaced")
        .symlink("d", sentinel.path())
        .dir_with("d/", 0o777, 0, 0, T1)
        .symlink("h", &outside_file)
        .file("real", b"real")
        .hardlink("h", "real")
        .symlink("f", &outside_file)
        .node(EntryType::Fifo, "f", 0, 0, 0o666)
        .symlink("l", &outside_file)
        .symlink("l", "harmless")
        .finish();
    let root = TempDir::new("replace-links");
    apply_layer(tar.as_slice(), root.path(), &unprivileged()).unwrap();
    sentinel.assert_untouched();
    assert_eq!(fs::read(root.join("s")).unwrap(), b"replaced");
    assert!(lstat(&root.join("s")).is_file());
    assert!(lstat(&root.join("d")).is_dir());
    assert_eq!(mode(&root.join("d")), 0o777);
    assert_eq!(lstat(&root.join("h")).ino(), lstat(&root.join("real")).ino());
    assert!(lstat(&root.join("f")).file_type().is_fifo());
    assert_eq!(fs::read_link(root.join("l")).unwrap(), Path::new("harmless"));
}

#[test]
fn a_directory_replaced_by_a_symlink_is_not_reused() {
    // The parent descriptor cached for d/f1 must not serve d/f2 once d is a
    // symlink leading out.
    let sentinel = Sentinel::new();
    let tar = Layer::new().dir("d/").file("d/f1", b"1").symlink("d", sentinel.path()).file("d/f2", b"pwned").finish();
    let (err, _root) = expect_refused(&tar, "d/f2", &sentinel);
    assert!(matches!(err, UnpackError::OutsideRoot { .. }), "{err}");

    // The same through a whiteout removing d.
    let tar = Layer::new()
        .dir("d/")
        .file("d/f1", b"1")
        .file(".wh.d", b"")
        .symlink("d", sentinel.path())
        .file("d/f2", b"pwned")
        .finish();
    expect_refused(&tar, "d/f2", &sentinel);
}

#[test]
fn whiteouts_and_opaque_markers_do_not_pass_symlinks_out() {
    let sentinel = Sentinel::new();
    let tar = Layer::new().symlink("evil", sentinel.path()).file("evil/.wh.target", b"").finish();
    let (err, _root) = expect_refused(&tar, "evil/.wh.target", &sentinel);
    assert!(matches!(err, UnpackError::OutsideRoot { .. }), "{err}");

    let tar = Layer::new().symlink("evil", sentinel.path()).file("evil/.wh..wh..opq", b"").finish();
    let (err, _root) = expect_refused(&tar, "evil/.wh..wh..opq", &sentinel);
    assert!(matches!(err, UnpackError::OutsideRoot { .. }), "{err}");

    // A whiteout of a symlink removes the symlink, not what it points to.
    let tar = Layer::new().symlink("evil", &format!("{}/target", sentinel.path())).file(".wh.evil", b"").finish();
    let root = TempDir::new("wh-symlink");
    apply_layer(tar.as_slice(), root.path(), &unprivileged()).unwrap();
    sentinel.assert_untouched();
    assert!(is_whiteout_device(&root.join("evil")));
}

#[test]
fn refuses_device_nodes_under_refuse() {
    let sentinel = Sentinel::new();
    let tar = Layer::new().file("ok", b"").node(EntryType::Block, "dev/sda", 8, 0, 0o660).finish();
    let root = TempDir::new("refuse");
    let refuse = UnpackOptions { devices: DevicePolicy::Refuse, ..unprivileged() };
    let err = apply_layer(tar.as_slice(), root.path(), &refuse).expect_err("device refused");
    assert_eq!(err.entry(), Some("dev/sda"));
    assert!(err.to_string().contains("\"dev/sda\""), "{err}");
    assert_eq!(tree(root.path()), set(&["ok"]));
    sentinel.assert_untouched();
}

#[test]
fn a_big_layer_streams() {
    // Many small files in few directories, and one big one: exercises the
    // parent cache and the copy loop.
    let mut layer = Layer::new();
    for d in 0..20 {
        layer.dir(&format!("d{d}/"));
        for f in 0..200 {
            layer.file(&format!("d{d}/f{f}"), format!("{d}/{f}").as_bytes());
        }
    }
    let big = noise(5 * 1024 * 1024);
    layer.file("d3/big", &big);
    let tar = layer.finish();
    let root = TempDir::new("big");
    let stats = apply_layer(tar.as_slice(), root.path(), &unprivileged()).unwrap();
    assert_eq!(stats.entries, 20 + 20 * 200 + 1);
    assert_eq!(fs::read(root.join("d7/f123")).unwrap(), b"7/123");
    let mut file = fs::File::open(root.join("d3/big")).unwrap();
    let mut read = Vec::new();
    file.read_to_end(&mut read).unwrap();
    assert!(read == big);
}

// --- pipelined: decoded on a helper thread ---

/// Applies `blob` pipelined; returns the stats and every byte `observe` saw.
fn pipelined(blob: &[u8], compression: Compression, root: &Path) -> (Result<LayerStats, UnpackError>, Vec<u8>) {
    let mut seen = Vec::new();
    let result = apply_layer_pipelined(blob, compression, root, &unprivileged(), |chunk| seen.extend_from_slice(chunk));
    (result, seen)
}

#[test]
fn pipelined_layers_of_every_compression() {
    let content = noise(2 * 1024 * 1024 + 3);
    let tar = Layer::new().dir("d").file("d/big", &content).symlink("d/link", "big").finish();
    let blobs = [
        (Compression::None, tar.clone()),
        (Compression::Gzip, gzip(&tar)),
        (Compression::Zstd, zstd::encode_all(tar.as_slice(), 3).unwrap()),
    ];
    for (compression, blob) in blobs {
        let root = TempDir::new("pipelined");
        let (stats, seen) = pipelined(&blob, compression, root.path());
        assert_eq!(stats.unwrap(), LayerStats { entries: 3, bytes: content.len() as u64 });
        assert!(fs::read(root.join("d/big")).unwrap() == content);
        // The observer saw the whole tar, end-of-archive padding included.
        assert!(seen == tar, "{compression:?}: observed {} of {} bytes", seen.len(), tar.len());
    }
    let root = TempDir::new("pipelined");
    assert_eq!(pipelined(&[], Compression::None, root.path()).0.unwrap(), LayerStats::default());
}

#[test]
fn corrupt_pipelined_layers_are_errors() {
    let tar = Layer::new().file("a", &noise(500_000)).file("b", &noise(500_000)).finish();
    let good = gzip(&tar);
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    for byte in &mut bad[middle..middle + 64] {
        *byte ^= 0xa5;
    }
    let err = pipelined(&bad, Compression::Gzip, TempDir::new("pipelined").path()).0.expect_err("corrupt");
    assert!(matches!(err, UnpackError::Data { .. } | UnpackError::Archive { .. }), "{err}");

    let mut bad = good.clone();
    let crc = bad.len() - 8;
    bad[crc] ^= 1;
    let err = pipelined(&bad, Compression::Gzip, TempDir::new("pipelined").path()).0.expect_err("bad crc");
    assert!(matches!(err, UnpackError::Archive { .. }), "{err}");

    let cut = &good[..good.len() - 100];
    let err = pipelined(cut, Compression::Gzip, TempDir::new("pipelined").path()).0.expect_err("truncated");
    assert!(matches!(err, UnpackError::Data { .. } | UnpackError::Archive { .. }), "{err}");

    // The media type said gzip; the blob is not.
    let err = pipelined(&tar, Compression::Gzip, TempDir::new("pipelined").path()).0.expect_err("not gzip");
    assert!(matches!(err, UnpackError::Archive { after: None, .. }), "{err}");
}

#[test]
fn an_early_bad_entry_stops_the_decoder() {
    // The refusal comes while the helper thread still has most of the blob
    // to decode: the call must return promptly, nothing written after it.
    let sentinel = Sentinel::new();
    let mut layer = Layer::new();
    layer.symlink("evil", sentinel.path()).file("evil/x", b"pwned");
    for i in 0..200 {
        layer.file(&format!("f{i}"), &noise(100_000));
    }
    let blob = gzip(&layer.finish());
    let root = TempDir::new("pipelined");
    let (result, seen) = pipelined(&blob, Compression::Gzip, root.path());
    let err = result.expect_err("refused");
    assert_eq!(err.entry(), Some("evil/x"));
    assert_eq!(tree(root.path()), set(&["evil"]));
    assert!(seen.len() < 10_000_000, "the decoder went on to decode {} bytes", seen.len());
    sentinel.assert_untouched();
}

/// What `tote cp` asks of the applier: archive content, not a changeset.
fn copy_options() -> UnpackOptions {
    UnpackOptions {
        whiteouts: WhiteoutStyle::Literal,
        devices: DevicePolicy::Skip,
        preserve_owners: false,
        keep_kinds: true,
    }
}

/// A directory held open, as `tote cp` holds its destination.
fn open_dir(path: &Path) -> std::os::fd::OwnedFd {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(path).unwrap().into()
}

fn apply_at(layer: &[u8], root: &Path, opts: &UnpackOptions) -> Result<LayerStats, UnpackError> {
    super::apply_layer_at(layer, open_dir(root), opts)
}

#[test]
fn literal_whiteout_names_are_plain_files() {
    let root = TempDir::new("literal");
    fs::write(root.join("kept"), b"still here").unwrap();
    let layer = Layer::new().file(".wh.kept", b"a file").dir("d").file("d/.wh..wh..opq", b"also a file").finish();
    apply_at(&layer, root.path(), &copy_options()).unwrap();
    assert_eq!(fs::read(root.join("kept")).unwrap(), b"still here");
    assert_eq!(fs::read(root.join(".wh.kept")).unwrap(), b"a file");
    assert_eq!(fs::read(root.join("d/.wh..wh..opq")).unwrap(), b"also a file");
}

#[test]
fn kept_kinds_refuse_to_replace_a_directory_by_a_file_and_the_reverse() {
    let root = TempDir::new("kinds");
    fs::create_dir_all(root.join("etc/deep")).unwrap();
    fs::write(root.join("etc/deep/precious"), b"keep me").unwrap();
    fs::write(root.join("plain"), b"a file").unwrap();
    let over_dir = Layer::new().file("etc", b"not a directory").finish();
    let err = apply_at(&over_dir, root.path(), &copy_options()).unwrap_err();
    assert_eq!(err.to_string(), "cannot overwrite directory \"etc\" with non-directory");
    assert_eq!(fs::read(root.join("etc/deep/precious")).unwrap(), b"keep me");
    let over_file = Layer::new().dir("plain").finish();
    let err = apply_at(&over_file, root.path(), &copy_options()).unwrap_err();
    assert_eq!(err.to_string(), "cannot overwrite non-directory \"plain\" with directory");
    let over_link = Layer::new().symlink("etc", "/elsewhere").finish();
    assert!(matches!(apply_at(&over_link, root.path(), &copy_options()), Err(UnpackError::KindChange { .. })));
    // Same kinds replace and merge as ever.
    let same = Layer::new().file("plain", b"new").dir("etc").file("etc/more", b"x").finish();
    apply_at(&same, root.path(), &copy_options()).unwrap();
    assert_eq!(fs::read(root.join("plain")).unwrap(), b"new");
    assert_eq!(fs::read(root.join("etc/deep/precious")).unwrap(), b"keep me");
    // A layer replaces whatever is there.
    apply_at(&over_dir, root.path(), &unprivileged()).unwrap();
    assert_eq!(fs::read(root.join("etc")).unwrap(), b"not a directory");
}

#[test]
fn a_held_root_is_written_whatever_its_path_becomes() {
    let base = TempDir::new("held");
    let dest = base.join("dest");
    fs::create_dir_all(&dest).unwrap();
    let fd = open_dir(&dest);
    // The path now names something else: a symlink to another directory.
    fs::rename(&dest, base.join("moved")).unwrap();
    fs::create_dir_all(base.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(base.join("elsewhere"), &dest).unwrap();
    let layer = Layer::new().dir("sub").file("sub/f", b"data").finish();
    super::apply_layer_at(layer.as_slice(), fd, &copy_options()).unwrap();
    assert_eq!(fs::read(base.join("moved/sub/f")).unwrap(), b"data");
    assert!(tree(&base.join("elsewhere")).is_empty());
}
