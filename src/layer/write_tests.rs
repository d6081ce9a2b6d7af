//! Tests of `write_dir`, and of a step's layer from an overlay upper dir
//! (`ChangeSet::from_upper` + `write_changes`), on small trees made on
//! the spot. Device nodes, owners and trusted.* xattrs need root; the tests
//! that need them say so and pass without it.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;

use rustix::fs::{FileType, Mode};

use super::*;
use crate::layer::{apply_layer, decompress, Hygiene, LayerError, LayerOptions};
use crate::oci::{Compression, Digest, MediaType};

const EPOCH: i64 = 1_700_000_000;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn opts() -> LayerOptions {
    LayerOptions {
        epoch: Some(EPOCH),
        compression: Compression::None,
        drop_volatile: true,
        hygiene: Hygiene::default(),
        exclude: Vec::new(),
    }
}

#[derive(Debug)]
struct Read_ {
    path: Vec<u8>,
    ty: tar::EntryType,
    mode: u32,
    uid: u64,
    mtime: u64,
    size: u64,
    link: Option<Vec<u8>>,
    xattrs: Vec<(String, Vec<u8>)>,
    data: Vec<u8>,
}

fn entries(tar_bytes: &[u8]) -> Vec<Read_> {
    let mut ar = tar::Archive::new(tar_bytes);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut xattrs = Vec::new();
            if let Some(pax) = e.pax_extensions().unwrap() {
                for x in pax {
                    let x = x.unwrap();
                    if let Some(k) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                        xattrs.push((k.to_string(), x.value_bytes().to_vec()));
                    }
                }
            }
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            Read_ {
                path: e.path_bytes().into_owned(),
                ty: h.entry_type(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                mtime: h.mtime().unwrap(),
                size: h.size().unwrap(),
                link: e.link_name_bytes().map(|l| l.into_owned()),
                xattrs,
                data,
            }
        })
        .collect()
}

fn write(root: &Path, o: &LayerOptions) -> (Vec<u8>, WrittenLayer) {
    let mut out = Vec::new();
    let w = write_dir(root, &mut out, o).unwrap();
    (out, w)
}

/// A step's layer from the upper dir `u` over the tree `lower` (if any).
fn write_upper(
    u: &Path,
    lower: Option<&Path>,
    o: &LayerOptions,
) -> Result<(Vec<u8>, WrittenLayer), LayerError> {
    let mut parent = crate::layer::TreeIndex::default();
    if let Some(l) = lower {
        let (tar, _) = write(
            l,
            &LayerOptions {
                epoch: None,
                ..o.clone()
            },
        );
        parent.apply(&crate::layer::LayerIndex::read(&tar[..]).unwrap());
    }
    let set = crate::layer::ChangeSet::from_upper(u)?;
    let mut out = Vec::new();
    let (w, _) = crate::layer::write_changes(&set, &parent, &mut out, o)?;
    Ok((out, w))
}

fn paths(es: &[Read_]) -> Vec<String> {
    es.iter()
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect()
}

fn put(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs_err::create_dir_all(p.parent().unwrap()).unwrap();
    fs_err::write(p, data).unwrap();
}

#[test]
fn entries_are_in_path_byte_order_and_output_is_byte_identical() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    // Same tree, made in different orders.
    for (root, order) in [
        (a.path(), ["a/b", "a-b", "B", "a/c"]),
        (b.path(), ["a/c", "B", "a-b", "a/b"]),
    ] {
        for rel in order {
            put(root, rel, rel.as_bytes());
        }
        for rel in ["a/b", "a-b", "B", "a/c", "a"] {
            let t = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: 1_600_000_000,
                    tv_nsec: 0,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: 1_600_000_000,
                    tv_nsec: 0,
                },
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                root.join(rel),
                &t,
                rustix::fs::AtFlags::empty(),
            )
            .unwrap();
        }
    }
    let (ta, wa) = write(a.path(), &opts());
    let (tb, wb) = write(b.path(), &opts());
    assert_eq!(ta, tb);
    assert_eq!(wa.digest, wb.digest);
    assert_eq!(wa.digest, wa.diff_id, "uncompressed: digest is the diff_id");
    assert_eq!(wa.media_type, MediaType::OCI_LAYER_TAR);
    assert_eq!(wa.uncompressed_size, ta.len() as u64);
    let es = entries(&ta);
    assert_eq!(paths(&es), ["B", "a/", "a-b", "a/b", "a/c"]);
    assert_eq!(es[1].ty, tar::EntryType::Directory);
    assert_eq!(es[1].size, 0);
    assert_eq!(es[3].data, b"a/b");
    assert_eq!(wa.report.entries, 5);
}

#[test]
fn mtimes_after_the_epoch_are_clamped_and_earlier_ones_kept() {
    let d = tempfile::tempdir().unwrap();
    put(d.path(), "new", b"");
    put(d.path(), "old", b"");
    let t = |s| rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: s,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: s,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        d.path().join("old"),
        &t(1000),
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    let es = entries(&write(d.path(), &opts()).0);
    assert_eq!((es[0].mtime, es[1].mtime), (EPOCH as u64, 1000));
    let no_epoch = LayerOptions {
        epoch: None,
        ..opts()
    };
    let es = entries(&write(d.path(), &no_epoch).0);
    assert!(es[0].mtime > EPOCH as u64);
}

#[test]
fn first_sorted_path_of_an_inode_is_the_file_and_later_ones_link_to_it() {
    let d = tempfile::tempdir().unwrap();
    put(d.path(), "z", b"data");
    fs_err::hard_link(d.path().join("z"), d.path().join("a")).unwrap();
    let es = entries(&write(d.path(), &opts()).0);
    assert_eq!(paths(&es), ["a", "z"]);
    assert_eq!(
        (es[0].ty, es[0].data.as_slice()),
        (tar::EntryType::Regular, &b"data"[..])
    );
    assert_eq!(es[1].ty, tar::EntryType::Link);
    assert_eq!(es[1].link.as_deref(), Some(&b"a"[..]));
}

#[test]
fn an_emptied_secret_is_never_a_hardlink_to_its_content() {
    let d = tempfile::tempdir().unwrap();
    put(d.path(), "etc/machine-id", b"0123456789abcdef\n");
    fs_err::create_dir_all(d.path().join("boot")).unwrap();
    fs_err::hard_link(d.path().join("etc/machine-id"), d.path().join("boot/id")).unwrap();
    fs_err::hard_link(d.path().join("etc/machine-id"), d.path().join("etc/zz")).unwrap();
    let es = entries(&write(d.path(), &opts()).0);
    let mid = es.iter().find(|e| e.path == b"etc/machine-id").unwrap();
    assert_eq!((mid.ty, mid.size), (tar::EntryType::Regular, 0));
    let zz = es.iter().find(|e| e.path == b"etc/zz").unwrap();
    assert_eq!(zz.link.as_deref(), Some(&b"boot/id"[..]));
}

#[test]
fn symlinks_devices_fifos_long_and_odd_names_are_kept_and_sockets_skipped() {
    if !is_root() {
        eprintln!("skipped: needs root for device nodes");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    symlink("/etc/passwd", r.join("link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("sda"),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o660),
        rustix::fs::makedev(8, 1),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(r.join("sock")).unwrap();
    let long = format!("{}/{}", "d".repeat(90), "f".repeat(90));
    put(r, &long, b"long");
    fs_err::write(r.join(OsStr::from_bytes(b"caf\xe9")), b"odd").unwrap();
    rustix::fs::chmod(r.join("null"), Mode::from_raw_mode(0o666)).unwrap();

    let es = entries(&write(r, &opts()).0);
    let by = |p: &[u8]| {
        es.iter()
            .find(|e| e.path == p)
            .unwrap_or_else(|| panic!("{p:?}"))
    };
    assert_eq!(by(b"link").link.as_deref(), Some(&b"/etc/passwd"[..]));
    let null = by(b"null");
    assert_eq!((null.ty, null.mode), (tar::EntryType::Char, 0o666));
    assert!(by(b"sda").ty == tar::EntryType::Block);
    assert!(by(b"fifo").ty == tar::EntryType::Fifo);
    assert_eq!(by(long.as_bytes()).data, b"long");
    assert_eq!(by(b"caf\xe9").data, b"odd");
    assert!(es.iter().all(|e| e.path != b"sock"));

    // And back: the applied tree has the same device numbers.
    let back = tempfile::tempdir().unwrap();
    let (bytes, _) = write(r, &opts());
    apply_layer(&bytes[..], back.path()).unwrap();
    let st = rustix::fs::lstat(back.path().join("sda")).unwrap();
    assert_eq!(st.st_rdev, rustix::fs::makedev(8, 1));
}

#[test]
fn layer_xattrs_are_capabilities_user_and_trusted_but_never_overlay() {
    if !is_root() {
        eprintln!("skipped: needs root for trusted.* xattrs");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    put(d.path(), "f", b"x");
    let f = d.path().join("f");
    let set = |k: &str, v: &[u8]| {
        rustix::fs::setxattr(&f, k, v, rustix::fs::XattrFlags::empty()).unwrap()
    };
    set("user.b", b"2");
    set("user.a", b"1");
    set("trusted.t", b"t");
    set("trusted.overlay.origin", b"o");
    set("user.overlay.origin", b"o");
    let es = entries(&write(d.path(), &opts()).0);
    let names: Vec<&str> = es[0].xattrs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["trusted.t", "user.a", "user.b"]);
}

#[test]
fn secrets_are_removed_or_emptied_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    put(r, "etc/ssh/ssh_host_ed25519_key", b"private");
    put(r, "etc/ssh/ssh_host_ed25519_key.pub", b"public");
    put(r, "etc/ssh/sshd_config", b"Port 22");
    put(r, "etc/machine-id", b"0123456789abcdef\n");
    put(r, "var/lib/dbus/machine-id", b"0123456789abcdef\n");
    put(r, "var/lib/systemd/random-seed", b"random");
    put(r, "var/lib/systemd/credential.secret", b"random");
    let (bytes, w) = write(r, &opts());
    let es = entries(&bytes);
    let ps = paths(&es);
    assert!(ps.contains(&"etc/ssh/sshd_config".to_string()));
    assert!(!ps.iter().any(|p| p.contains("ssh_host_")
        || p.contains("dbus/machine-id")
        || p.contains("random-seed")
        || p.contains("credential.secret")));
    let mid = es.iter().find(|e| e.path == b"etc/machine-id").unwrap();
    assert_eq!((mid.size, mid.data.len()), (0, 0));
    assert_eq!(
        w.report.removed_secrets,
        [
            "etc/machine-id",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/ssh_host_ed25519_key.pub",
            "var/lib/dbus/machine-id",
            "var/lib/systemd/credential.secret",
            "var/lib/systemd/random-seed",
        ]
    );
    let keep = LayerOptions {
        hygiene: Hygiene::keep_all(),
        ..opts()
    };
    let (_, w) = write(r, &keep);
    assert!(w.report.removed_secrets.is_empty());
}

#[test]
fn apt_volatile_files_are_dropped_directories_kept_and_shadow_dates_clamped() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    put(r, "var/log/apt/history.log", b"Start-Date: today");
    put(r, "var/log/dpkg.log", b"today");
    put(r, "var/cache/apt/pkgcache.bin", b"bin");
    put(r, "var/lib/apt/lists/lock", b"");
    put(r, "var/lib/apt/lists/partial/x", b"x");
    put(r, "var/lib/dpkg/status", b"Package: x");
    put(r, "var/lib/dpkg/status-old", b"Package: x");
    put(r, "tmp/sub/junk", b"junk");
    put(r, "etc/shadow", b"root:*:20000:0:99999:7:::\n");
    let o = LayerOptions {
        exclude: vec!["run/.containerenv".into()],
        ..opts()
    };
    put(r, "run/.containerenv", b"engine=podman");
    let (bytes, w) = write(r, &o);
    let es = entries(&bytes);
    assert_eq!(
        paths(&es),
        [
            "etc/",
            "etc/shadow",
            "run/",
            "tmp/",
            "var/",
            "var/cache/",
            "var/cache/apt/",
            "var/lib/",
            "var/lib/apt/",
            "var/lib/apt/lists/",
            "var/lib/apt/lists/partial/",
            "var/lib/dpkg/",
            "var/lib/dpkg/status",
            "var/log/",
            "var/log/apt/",
        ]
    );
    assert_eq!(es[1].data, b"root:*:19675:0:99999:7:::\n");
    assert_eq!(
        w.report.dropped_volatile,
        [
            "tmp/sub",
            "var/cache/apt/pkgcache.bin",
            "var/lib/apt/lists/lock",
            "var/lib/apt/lists/partial/x",
            "var/lib/dpkg/status-old",
            "var/log/apt/history.log",
            "var/log/dpkg.log",
        ]
    );
}

#[test]
fn a_name_that_looks_like_a_whiteout_is_refused() {
    let d = tempfile::tempdir().unwrap();
    put(d.path(), "etc/.wh.passwd", b"");
    let err = write_dir(d.path(), std::io::sink(), &opts()).unwrap_err();
    assert!(matches!(err, LayerError::ReservedName { .. }), "{err}");
}

#[test]
fn gzip_and_zstd_blobs_are_stable_and_decompress_to_the_diff() {
    let d = tempfile::tempdir().unwrap();
    put(d.path(), "f", &b"abc".repeat(10_000));
    for (c, mt) in [
        (Compression::Gzip, MediaType::OCI_LAYER_GZIP),
        (Compression::Zstd, MediaType::OCI_LAYER_ZSTD),
    ] {
        let o = LayerOptions {
            compression: c,
            ..opts()
        };
        let (blob, w) = write(d.path(), &o);
        let (blob2, _) = write(d.path(), &o);
        assert_eq!(blob, blob2);
        assert_eq!(w.media_type, mt);
        assert_eq!(
            (w.digest.clone(), w.size),
            (Digest::of(&blob), blob.len() as u64)
        );
        let mut tar_bytes = Vec::new();
        decompress(std::io::Cursor::new(blob))
            .unwrap()
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(w.diff_id, Digest::of(&tar_bytes));
        assert_eq!(w.uncompressed_size, tar_bytes.len() as u64);
    }
}

// ----------------------------------------------------------- overlay upper

fn whiteout_device(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        FileType::CharacterDevice,
        Mode::empty(),
        0,
    )
    .unwrap();
}

#[test]
fn overlay_upper_deletions_and_a_replaced_dir_become_whiteouts_for_what_the_parent_had() {
    if !is_root() {
        eprintln!("skipped: needs root for 0/0 devices and trusted.* xattrs");
        return;
    }
    let lower = tempfile::tempdir().unwrap();
    let l = lower.path();
    put(l, "etc/gone", b"old");
    put(l, "etc/kept", b"kept");
    put(l, "opq/old", b"old");
    put(l, "opq/sub/deep", b"old");
    put(l, "xw", b"old");

    let up = tempfile::tempdir().unwrap();
    let u = up.path();
    fs_err::create_dir_all(u.join("etc")).unwrap();
    whiteout_device(&u.join("etc/gone"));
    whiteout_device(&u.join("etc/never-was"));
    let set = |p: &Path, k: &str, v: &[u8]| {
        rustix::fs::setxattr(p, k, v, rustix::fs::XattrFlags::empty()).unwrap()
    };
    fs_err::create_dir_all(u.join("opq/sub")).unwrap();
    set(&u.join("opq"), "trusted.overlay.opaque", b"y");
    put(u, "opq/-first", b"sorts before .wh.");
    put(u, "opq/new", b"new");
    // A new directory overlayfs marked opaque (dpkg renames do that).
    fs_err::create_dir_all(u.join("fresh")).unwrap();
    set(&u.join("fresh"), "trusted.overlay.opaque", b"y");
    put(u, "xw", b"");
    set(&u.join("xw"), "user.overlay.whiteout", b"");
    set(&u.join("etc"), "trusted.overlay.origin", b"whatever");

    let (out, w) = write_upper(u, Some(l), &opts()).unwrap();
    let es = entries(&out);
    assert_eq!(
        paths(&es),
        [
            ".wh.xw",
            "etc/",
            "etc/.wh.gone", // not etc/never-was: the parent had no such file
            "fresh/",       // no marker: nothing was below it
            "opq/",
            "opq/-first",
            "opq/.wh.old", // what the replaced dir lost, and nothing more
            "opq/new",
            "opq/sub/",
            "opq/sub/.wh.deep",
        ]
    );
    assert!(
        es.iter().all(|e| e.xattrs.is_empty()),
        "overlay xattrs are not copied"
    );
    let wh = &es[2];
    assert_eq!(
        (wh.ty, wh.size, wh.mode, wh.uid, wh.mtime),
        (tar::EntryType::Regular, 0, 0, 0, 0)
    );
    assert_eq!(w.report.whiteouts, 4);

    // The layer applied on the lower tree gives the merged view.
    apply_layer(&out[..], l).unwrap();
    assert!(!l.join("etc/gone").exists());
    assert!(l.join("etc/kept").exists());
    assert!(!l.join("opq/old").exists());
    assert!(!l.join("opq/sub/deep").exists());
    assert!(l.join("opq/new").exists());
    assert!(!l.join("xw").exists());
}

#[test]
fn an_upper_file_equal_to_the_parents_is_left_out_and_a_changed_one_kept() {
    let lower = tempfile::tempdir().unwrap();
    let l = lower.path();
    put(l, "etc/group", b"root:x:0:\n");
    put(l, "etc/group-", b"root:x:0:\n");
    let up = tempfile::tempdir().unwrap();
    let u = up.path();
    // Copied up unchanged (same bytes, same mtime), and changed in place
    // with the same size and mtime: only the bytes tell.
    put(u, "etc/group", b"root:x:0:\n");
    put(u, "etc/group-", b"root:x:1:\n");
    let same = |rel: &str| {
        let t = fs_err::metadata(l.join(rel)).unwrap().modified().unwrap();
        fs_err::File::options()
            .write(true)
            .open(u.join(rel))
            .unwrap()
            .set_modified(t)
            .unwrap();
    };
    same("etc/group");
    same("etc/group-");
    let dir_time = fs_err::metadata(l.join("etc")).unwrap().modified().unwrap();
    fs_err::File::open(u.join("etc"))
        .unwrap()
        .set_modified(dir_time)
        .unwrap();
    let (out, _) = write_upper(
        u,
        Some(l),
        &LayerOptions {
            epoch: None,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(paths(&entries(&out)), ["etc/", "etc/group-"]);
}

#[test]
fn overlay_upper_with_metacopy_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root for trusted.* xattrs");
        return;
    }
    let up = tempfile::tempdir().unwrap();
    put(up.path(), "usr/bin/x", b"");
    rustix::fs::setxattr(
        up.path().join("usr/bin/x"),
        "trusted.overlay.metacopy",
        b"",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let err = write_upper(up.path(), None, &opts()).unwrap_err();
    assert!(matches!(err, LayerError::Overlay { .. }), "{err}");
}

#[test]
fn in_write_dir_a_0_0_device_is_a_device_not_a_whiteout() {
    if !is_root() {
        eprintln!("skipped: needs root for device nodes");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    whiteout_device(&d.path().join("c"));
    let es = entries(&write(d.path(), &opts()).0);
    assert_eq!(
        (paths(&es), es[0].ty),
        (vec!["c".to_string()], tar::EntryType::Char)
    );
}

#[test]
fn overlay_dirs_holding_only_excluded_engine_files_are_left_out() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    // Podman copies run/ and etc/ up for its own files; the step wrote usr/.
    put(r, "run/.containerenv", b"engine=podman");
    put(r, "etc/hostname", b"");
    put(r, "usr/bin/tool", b"x");
    let o = LayerOptions {
        exclude: vec!["run/.containerenv".into(), "etc/hostname".into()],
        ..opts()
    };
    let (out, w) = write_upper(r, None, &o).unwrap();
    let es = entries(&out);
    assert_eq!(paths(&es), ["usr/", "usr/bin/", "usr/bin/tool"]);
    assert_eq!(w.report.entries, 3);
    // A directory with real content next to an excluded file stays.
    put(r, "etc/app.conf", b"y");
    let (out, _) = write_upper(r, None, &o).unwrap();
    let es = entries(&out);
    assert_eq!(
        paths(&es),
        ["etc/", "etc/app.conf", "usr/", "usr/bin/", "usr/bin/tool"]
    );
}

#[test]
fn nested_upper_directories_holding_only_excluded_paths_go_too_but_not_in_a_full_tree() {
    let up = tempfile::tempdir().unwrap();
    let u = up.path();
    put(u, "a/b/.containerenv", b"x");
    put(u, "etc/greeting", b"hello");
    let o = LayerOptions {
        exclude: vec!["a/b/.containerenv".into()],
        ..opts()
    };
    let (out, _) = write_upper(u, None, &o).unwrap();
    assert_eq!(paths(&entries(&out)), ["etc/", "etc/greeting"]);
    // In a full tree the directories are content and stay.
    assert_eq!(
        paths(&entries(&write(u, &o).0)),
        ["a/", "a/b/", "etc/", "etc/greeting"]
    );
}

/// A tree as deep as a path can name (~2,000 directories) on a 2 MiB
/// stack, as layers are written on a blocking thread of the runtime.
#[test]
fn a_tree_two_thousand_deep_is_written_on_a_small_stack() {
    let dir = tempfile::tempdir().unwrap();
    let mut rel = String::from("a");
    while rel.len() < 3900 {
        rel.push_str("/a");
    }
    put(dir.path(), &format!("{rel}/f"), b"deep");
    let root = dir.path().to_path_buf();
    let (tar, _) = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || write(&root, &opts()))
        .unwrap()
        .join()
        .unwrap();
    let es = entries(&tar);
    assert_eq!(es.len(), 1952, "1,951 directories and the file");
    assert!(paths(&es).last().unwrap().ends_with("/a/f"));
}
