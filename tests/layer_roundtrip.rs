//! Round trip of a real Debian root filesystem through the layer module:
//! mmdebstrap tarball --apply_layer--> tree A --write_dir--> layer
//! --apply_layer--> tree B, then A and B compared entry by entry.
//!
//! Needs the test bed's rootfs (`TPLBUILD_TEST_ROOTFS_TAR`, default
//! /var/lib/tplbuild-testbed/cache/bookworm-minbase.tar) and root (owners,
//! device nodes); without them the test says why and passes. When that
//! path is a directory (what mmdebstrap makes of a name it does not
//! recognise), the directory itself is tree A.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest as _, Sha256};
use tplbuild::layer::{apply_layer, decompress, write_dir, Hygiene, LayerOptions};
use tplbuild::oci::Compression;

const EPOCH: i64 = 1_700_000_000;

fn rootfs_tar() -> Option<PathBuf> {
    let p = std::env::var_os("TPLBUILD_TEST_ROOTFS_TAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/tplbuild-testbed/cache/bookworm-minbase.tar".into());
    if !p.exists() {
        eprintln!("skipped: rootfs tarball {} not found", p.display());
        return None;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root for owners and device nodes");
        return None;
    }
    Some(p)
}

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    content: String,
    link: Vec<u8>,
    rdev: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    mtime: i64,
    /// Index of the first path sharing this inode, for hardlinks.
    inode_group: Option<Vec<u8>>,
}

fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut names[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"security.selinux") {
            continue;
        }
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(p, std::ffi::OsStr::from_bytes(name), &mut v[..]).unwrap();
        out.push((name.to_vec(), v[..len].to_vec()));
    }
    out.sort();
    out
}

/// Every node below `root`, keyed by relative path.
fn snapshot(root: &Path, clamp: Option<i64>) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in fs_err::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = fs_err::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            all.push((p, m));
        }
    }
    all.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    for (p, m) in all {
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let content = if ft.is_file() {
            let mut h = Sha256::new();
            let mut f = BufReader::new(fs_err::File::open(&p).unwrap());
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            hex::encode(h.finalize())
        } else {
            String::new()
        };
        let link = if ft.is_symlink() {
            fs_err::read_link(&p)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec()
        } else {
            Vec::new()
        };
        let inode_group = (!ft.is_dir() && m.nlink() > 1).then(|| {
            inodes
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        });
        let mtime = match clamp {
            Some(e) if m.mtime() > e => e,
            _ => m.mtime(),
        };
        out.insert(
            rel,
            Node {
                kind,
                mode: if ft.is_symlink() {
                    0
                } else {
                    m.mode() & 0o7777
                },
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_file() { m.len() } else { 0 },
                content,
                link,
                rdev: m.rdev(),
                xattrs: xattrs(&p),
                mtime,
                inode_group,
            },
        );
    }
    out
}

fn keep_everything(compression: Compression) -> LayerOptions {
    LayerOptions {
        epoch: Some(EPOCH),
        compression,
        drop_volatile: false,
        hygiene: Hygiene::keep_all(),
        exclude: Vec::new(),
    }
}

#[test]
fn mmdebstrap_rootfs_survives_apply_write_apply_unchanged() {
    let Some(tar) = rootfs_tar() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("b");
    fs_err::create_dir(&b).unwrap();
    let a = if tar.is_dir() {
        tar.clone()
    } else {
        let a = tmp.path().join("a");
        fs_err::create_dir(&a).unwrap();
        apply_source_tar(&tar, &a);
        a
    };

    let layer = tmp.path().join("layer.tar.gz");
    let t = Instant::now();
    let w = write_dir(
        &a,
        fs_err::File::create(&layer).unwrap(),
        &keep_everything(Compression::Gzip),
    )
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let bytes = w.uncompressed_size;
    eprintln!(
        "write_dir: {} entries, {:.1} MB tar, {:.1} MB gzip, {:.2}s, {:.1} MB/s of tar",
        w.report.entries,
        bytes as f64 / 1e6,
        w.size as f64 / 1e6,
        secs,
        bytes as f64 / 1e6 / secs
    );
    assert_eq!(w.size, fs_err::metadata(&layer).unwrap().len());

    apply_layer(decompress(fs_err::File::open(&layer).unwrap()).unwrap(), &b).unwrap();
    let snap_a = snapshot(&a, Some(EPOCH));
    let snap_b = snapshot(&b, None);
    assert_eq!(snap_a.len(), snap_b.len());
    for (path, na) in &snap_a {
        let nb = snap_b
            .get(path)
            .unwrap_or_else(|| panic!("{} missing in B", String::from_utf8_lossy(path)));
        if path == b"etc/shadow" || path == b"etc/shadow-" {
            // Rewritten on purpose: password-change days clamped to the epoch.
            let text = fs_err::read_to_string(b.join(std::ffi::OsStr::from_bytes(path))).unwrap();
            for line in text.lines() {
                let day: u64 = line.split(':').nth(2).unwrap().parse().unwrap_or(0);
                assert!(day <= EPOCH as u64 / 86_400, "{line}");
            }
            assert_eq!(
                (na.mode, na.uid, na.gid, na.mtime),
                (nb.mode, nb.uid, nb.gid, nb.mtime)
            );
            continue;
        }
        assert_eq!(na, nb, "{}", String::from_utf8_lossy(path));
    }

    // Writing the same tree again gives the same bytes.
    let again = write_dir(&a, std::io::sink(), &keep_everything(Compression::Gzip)).unwrap();
    assert_eq!(again.digest, w.digest);
    assert_eq!(again.diff_id, w.diff_id);
    let again_b = write_dir(&b, std::io::sink(), &keep_everything(Compression::None)).unwrap();
    assert_eq!(
        again_b.diff_id, w.diff_id,
        "the applied copy writes the same layer"
    );
}

fn apply_source_tar(tar: &Path, a: &Path) {
    let t = Instant::now();
    let rep = apply_layer(BufReader::new(fs_err::File::open(tar).unwrap()), a).unwrap();
    eprintln!(
        "apply_layer: {} entries, {:.1} MB in {:.2}s",
        rep.entries,
        rep.bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    // Every entry of the source tarball is in tree A as the tarball says.
    let mut ar = tar::Archive::new(BufReader::new(fs_err::File::open(tar).unwrap()));
    let snap_a = snapshot(a, None);
    let mut checked = 0;
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let raw = e.path_bytes().into_owned();
        let rel: Vec<u8> = raw
            .strip_prefix(b"./")
            .unwrap_or(&raw)
            .strip_suffix(b"/")
            .unwrap_or(raw.strip_prefix(b"./").unwrap_or(&raw))
            .to_vec();
        if rel.is_empty() || rel == b"." {
            continue;
        }
        let n = snap_a
            .get(&rel)
            .unwrap_or_else(|| panic!("{} missing", String::from_utf8_lossy(&rel)));
        let h = e.header();
        assert_eq!(
            n.uid as u64,
            h.uid().unwrap(),
            "{}",
            String::from_utf8_lossy(&rel)
        );
        assert_eq!(n.gid as u64, h.gid().unwrap());
        if n.kind != "symlink" {
            assert_eq!(
                n.mode,
                h.mode().unwrap() & 0o7777,
                "{}",
                String::from_utf8_lossy(&rel)
            );
        }
        if n.kind == "file" && h.entry_type() == tar::EntryType::Regular {
            assert_eq!(n.size, h.size().unwrap());
        }
        assert_eq!(
            n.mtime as u64,
            h.mtime().unwrap(),
            "{}",
            String::from_utf8_lossy(&rel)
        );
        checked += 1;
    }
    assert!(checked > 1000, "only {checked} entries");
}
