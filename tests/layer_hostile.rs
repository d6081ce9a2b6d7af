//! Hostile layers: one test per known attack or semantic trap, named after
//! the CVE or bug shape it mirrors. Every test builds its tars by hand with
//! the `tar` crate's `Header` API (so nothing sanitizes them on the way),
//! applies them with `apply_layer` under `bed/dest`, and checks that the
//! rest of `bed/` (a directory `outside/` with a secret) is byte for byte
//! and bit for bit what it was. Then it checks what happened inside.
//!
//! Needs root (owners, device nodes, trusted.* xattrs); without it, each
//! test says so and passes.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};
use tplbuild::layer::{apply_layer, ApplyReport, LayerError};

// ---------------------------------------------------------------- the bed

struct Bed {
    _tmp: tempfile::TempDir,
    top: PathBuf,
    dest: PathBuf,
    outside: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

fn bed() -> Option<Bed> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: hostile-layer tests need root");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().to_path_buf();
    let dest = top.join("dest");
    let outside = top.join("outside");
    fs_err::create_dir(&dest).unwrap();
    fs_err::create_dir_all(outside.join("dir")).unwrap();
    fs_err::write(outside.join("secret"), b"the host's secret").unwrap();
    fs_err::write(outside.join("dir/inner"), b"inner").unwrap();
    fs_err::set_permissions(
        outside.join("secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let before = snapshot(&top, &dest);
    Some(Bed {
        _tmp: tmp,
        top,
        dest,
        outside,
        before,
    })
}

/// Everything under `top` except `dest` and below: type, mode, owner,
/// size, mtime, content, link target.
fn snapshot(top: &Path, dest: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![top.to_path_buf()];
    let m = fs_err::symlink_metadata(top).unwrap();
    out.insert(top.to_path_buf(), describe(top, &m));
    while let Some(dir) = stack.pop() {
        for e in fs_err::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p == dest {
                continue;
            }
            let m = fs_err::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p.clone(), describe(&p, &m));
        }
    }
    out
}

fn describe(p: &Path, m: &std::fs::Metadata) -> String {
    let content = if m.is_file() {
        format!("{:?}", fs_err::read(p).unwrap())
    } else if m.file_type().is_symlink() {
        format!("-> {:?}", fs_err::read_link(p).unwrap())
    } else {
        String::new()
    };
    format!(
        "mode={:o} uid={} gid={} size={} mtime={}.{} nlink={} {content}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.nlink()
    )
}

impl Bed {
    fn apply(&self, layer: Vec<u8>) -> Result<ApplyReport, LayerError> {
        let r = apply_layer(&layer[..], &self.dest);
        self.assert_outside_unchanged();
        r
    }

    fn assert_outside_unchanged(&self) {
        let after = snapshot(&self.top, &self.dest);
        assert_eq!(self.before, after, "something outside dest changed");
    }

    fn abs_outside(&self) -> Vec<u8> {
        self.outside.as_os_str().as_bytes().to_vec()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dest.join(rel)
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        fs_err::read(self.path(rel)).unwrap()
    }

    fn lstat(&self, rel: &str) -> Option<std::fs::Metadata> {
        std::fs::symlink_metadata(self.path(rel)).ok()
    }
}

fn refused(r: Result<ApplyReport, LayerError>, entry: &str) {
    match r {
        Err(LayerError::Refused { entry: e, reason }) => {
            assert!(
                e.contains(entry),
                "refused {e:?} ({reason}), expected {entry:?}"
            )
        }
        other => panic!("expected entry {entry:?} to be refused, got {other:?}"),
    }
}

// ------------------------------------------------------------ tar helpers

/// A tar built header by header, names written as raw bytes.
struct Tar {
    b: tar::Builder<Vec<u8>>,
}

fn tar() -> Tar {
    Tar {
        b: tar::Builder::new(Vec::new()),
    }
}

fn header(path: &[u8], ty: EntryType, mode: u32) -> Header {
    let mut h = Header::new_ustar();
    assert!(path.len() <= 100, "use pax_path for long names");
    h.as_old_mut().name[..path.len()].copy_from_slice(path);
    h.set_entry_type(ty);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(0);
    h
}

impl Tar {
    fn raw(mut self, mut h: Header, data: &[u8]) -> Self {
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let base = k.len() + v.len() + 3;
            let mut len = base + 1;
            while base + len.to_string().len() != len {
                len = base + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let h = header(b"././@PaxHeader", EntryType::XHeader, 0o644);
        self.raw(h, &body)
    }

    fn file(self, path: &[u8], data: &[u8]) -> Self {
        self.raw(header(path, EntryType::Regular, 0o644), data)
    }

    fn dir(self, path: &[u8]) -> Self {
        self.raw(header(path, EntryType::Directory, 0o755), b"")
    }

    fn symlink(self, path: &[u8], target: &[u8]) -> Self {
        let mut h = header(path, EntryType::Symlink, 0o777);
        h.set_link_name_literal(target).unwrap();
        self.raw(h, b"")
    }

    fn hardlink(self, path: &[u8], target: &[u8]) -> Self {
        let mut h = header(path, EntryType::Link, 0o644);
        h.set_link_name_literal(target).unwrap();
        self.raw(h, b"")
    }

    fn done(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

// ------------------------------------------------------- escapes by path

#[test]
fn cve_2018_15664_symlink_parent_escape() {
    // A symlink that climbs out, then a file "through" it.
    let Some(bed) = bed() else { return };
    let r = bed.apply(
        tar()
            .symlink(b"escape", b"../outside")
            .file(b"escape/secret", b"pwned")
            .done(),
    );
    // Resolved inside the root, ../../../outside is dest/outside, which does
    // not exist; "escape" is a dangling link, so no parent can be made.
    assert!(matches!(r, Err(LayerError::Apply { .. })), "{r:?}");
    assert!(!bed.path("outside").exists());
}

#[test]
fn cve_2018_15664_symlink_parent_resolves_inside_the_root() {
    // The same shape where the in-root target exists: the file lands there.
    let Some(bed) = bed() else { return };
    bed.apply(
        tar()
            .dir(b"etc")
            .symlink(b"escape", b"../../../../etc")
            .file(b"escape/passwd", b"inside")
            .done(),
    )
    .unwrap();
    assert_eq!(bed.read("etc/passwd"), b"inside");
}

#[test]
fn cve_2019_14271_absolute_symlink_to_host_path_then_write_through() {
    // The container's library directory points at a host path; a later
    // entry writes a library through it.
    let Some(bed) = bed() else { return };
    let mut abs_dir = bed.abs_outside();
    abs_dir.extend_from_slice(b"/dir");
    let r = bed.apply(
        tar()
            .symlink(b"lib", &abs_dir)
            .file(b"lib/inner", b"pwned")
            .file(b"lib/libnss_files.so.2", b"pwned")
            .done(),
    );
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        fs_err::read(bed.outside.join("dir/inner")).unwrap(),
        b"inner"
    );
}

#[test]
fn zip_slip_dotdot() {
    let Some(bed) = bed() else { return };
    refused(
        bed.apply(tar().file(b"../outside/secret", b"pwned").done()),
        "../outside/secret",
    );
    refused(
        bed.apply(
            tar()
                .dir(b"a")
                .file(b"a/../../outside/new", b"pwned")
                .done(),
        ),
        "a/../../outside/new",
    );
    refused(
        bed.apply(tar().dir(b"../outside/dir").done()),
        "../outside/dir",
    );
}

#[test]
fn absolute_path() {
    let Some(bed) = bed() else { return };
    let mut p = bed.abs_outside();
    p.extend_from_slice(b"/secret");
    bed.apply(tar().file(&p, b"pwned").done()).unwrap();
    // Taken relative to the root, as Docker does.
    let inside = bed
        .dest
        .join(bed.outside.strip_prefix("/").unwrap())
        .join("secret");
    assert_eq!(fs_err::read(inside).unwrap(), b"pwned");
}

#[test]
fn symlink_then_file_through_it() {
    // A symlink to a host file, then a regular file of the same name: the
    // link is replaced, never written through.
    let Some(bed) = bed() else { return };
    let mut target = bed.abs_outside();
    target.extend_from_slice(b"/secret");
    bed.apply(tar().symlink(b"s", &target).file(b"s", b"pwned").done())
        .unwrap();
    assert!(bed.lstat("s").unwrap().is_file());
    assert_eq!(bed.read("s"), b"pwned");
}

#[test]
fn symlink_named_dot() {
    // "." as a symlink would turn the root (or a directory) into a link.
    let Some(bed) = bed() else { return };
    let abs = bed.abs_outside();
    refused(
        bed.apply(tar().symlink(b".", &abs).file(b"x", b"pwned").done()),
        ".",
    );
    refused(
        bed.apply(
            tar()
                .dir(b"d")
                .symlink(b"d/.", &abs)
                .file(b"d/x", b"pwned")
                .done(),
        ),
        "d/.",
    );
    refused(bed.apply(tar().symlink(b"d/", &abs).done()), "d/");
    assert!(bed.lstat("d").unwrap().is_dir());
    assert!(!bed.path("x").exists());
}

// ------------------------------------------------------- escapes by link

#[test]
fn hardlink_to_outside_target() {
    let Some(bed) = bed() else { return };
    let mut abs = bed.abs_outside();
    abs.extend_from_slice(b"/secret");
    refused(bed.apply(tar().hardlink(b"h", &abs).done()), "h");
    refused(
        bed.apply(tar().hardlink(b"h", b"../outside/secret").done()),
        "h",
    );
    assert!(bed.lstat("h").is_none());
    assert_eq!(
        fs_err::metadata(bed.outside.join("secret"))
            .unwrap()
            .nlink(),
        1
    );
}

#[test]
fn hardlink_through_symlink() {
    let Some(bed) = bed() else { return };
    let abs = bed.abs_outside();
    refused(
        bed.apply(tar().symlink(b"l", &abs).hardlink(b"h", b"l/secret").done()),
        "h",
    );
    // A symlink whose in-root target exists: the link is made inside.
    bed.apply(
        tar()
            .dir(b"etc")
            .file(b"etc/passwd", b"root:x:0:0")
            .symlink(b"up", b"/../../..")
            .hardlink(b"h2", b"up/etc/passwd")
            .done(),
    )
    .unwrap();
    let a = bed.lstat("etc/passwd").unwrap();
    let b = bed.lstat("h2").unwrap();
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn hardlink_to_a_symlink_links_the_symlink_itself() {
    let Some(bed) = bed() else { return };
    let mut abs = bed.abs_outside();
    abs.extend_from_slice(b"/secret");
    bed.apply(tar().symlink(b"s", &abs).hardlink(b"h", b"s").done())
        .unwrap();
    assert!(bed.lstat("h").unwrap().file_type().is_symlink());
}

#[test]
fn link_then_regular_file_same_name() {
    // Writing a file over a hardlink must not change the other name.
    let Some(bed) = bed() else { return };
    bed.apply(tar().file(b"target", b"orig").done()).unwrap();
    bed.apply(tar().hardlink(b"h", b"target").file(b"h", b"new").done())
        .unwrap();
    assert_eq!(bed.read("target"), b"orig");
    assert_eq!(bed.read("h"), b"new");
    assert_ne!(
        bed.lstat("h").unwrap().ino(),
        bed.lstat("target").unwrap().ino()
    );
}

#[test]
fn symlink_then_directory_same_name() {
    // A directory entry over a symlink to a host directory must not chmod
    // the host directory, and files below it must stay inside.
    let Some(bed) = bed() else { return };
    let mut abs = bed.abs_outside();
    abs.extend_from_slice(b"/dir");
    let mut d = header(b"d", EntryType::Directory, 0o777);
    d.set_uid(1234);
    bed.apply(
        tar()
            .symlink(b"d", &abs)
            .raw(d, b"")
            .file(b"d/inner", b"pwned")
            .done(),
    )
    .unwrap();
    let m = bed.lstat("d").unwrap();
    assert!(m.is_dir());
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o777, 1234));
    assert_eq!(bed.read("d/inner"), b"pwned");
}

#[test]
fn directory_replaced_by_symlink_then_file_below() {
    let Some(bed) = bed() else { return };
    bed.apply(tar().dir(b"d").file(b"d/a", b"a").done())
        .unwrap();
    let abs = bed.abs_outside();
    let r = bed.apply(tar().symlink(b"d", &abs).file(b"d/secret", b"pwned").done());
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn device_node_through_symlink_parent() {
    let Some(bed) = bed() else { return };
    let abs = bed.abs_outside();
    let mut h = header(b"dev/null", EntryType::Char, 0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    let r = bed.apply(tar().symlink(b"dev", &abs).raw(h, b"").done());
    assert!(r.is_err(), "{r:?}");
}

// ------------------------------------------------------------- whiteouts

#[test]
fn whiteout_through_symlink_parent_removes_nothing_outside() {
    let Some(bed) = bed() else { return };
    let abs = bed.abs_outside();
    bed.apply(
        tar()
            .symlink(b"l", &abs)
            .file(b"l/.wh.secret", b"")
            .file(b"l/.wh..wh..opq", b"")
            .done(),
    )
    .unwrap();
    assert!(bed.outside.join("secret").exists());
}

#[test]
fn whiteout_of_dot_or_dotdot_is_refused() {
    let Some(bed) = bed() else { return };
    bed.apply(tar().dir(b"d").file(b"d/f", b"x").done())
        .unwrap();
    refused(bed.apply(tar().file(b"d/.wh...", b"").done()), "d/.wh...");
    refused(bed.apply(tar().file(b"d/.wh..", b"").done()), "d/.wh..");
    refused(bed.apply(tar().file(b".wh.", b"").done()), ".wh.");
    assert_eq!(bed.read("d/f"), b"x");
}

#[test]
fn whiteout_prefix_is_not_opaque() {
    // `.wh..wh..opqX` hides a file named `.wh..opqX`; it does not make the
    // directory opaque.
    let Some(bed) = bed() else { return };
    bed.apply(tar().dir(b"d").file(b"d/keep", b"k").done())
        .unwrap();
    bed.apply(tar().file(b"d/.wh..wh..opqX", b"").done())
        .unwrap();
    assert_eq!(bed.read("d/keep"), b"k");
}

#[test]
fn whiteout_removes_lower_file_and_directory_tree() {
    let Some(bed) = bed() else { return };
    bed.apply(
        tar()
            .dir(b"d")
            .dir(b"d/sub")
            .file(b"d/sub/x", b"x")
            .file(b"f", b"f")
            .done(),
    )
    .unwrap();
    let r = bed
        .apply(tar().file(b".wh.d", b"").file(b".wh.f", b"").done())
        .unwrap();
    assert_eq!(r.whiteouts, 2);
    assert!(bed.lstat("d").is_none());
    assert!(bed.lstat("f").is_none());
}

#[test]
fn opaque_after_entries_in_same_layer() {
    // The opaque marker hides lower contents only, even when it comes after
    // this layer's own entries in the directory.
    let Some(bed) = bed() else { return };
    bed.apply(
        tar()
            .dir(b"d")
            .file(b"d/old", b"old")
            .dir(b"d/sub")
            .file(b"d/sub/old", b"old")
            .done(),
    )
    .unwrap();
    bed.apply(
        tar()
            .dir(b"d")
            .file(b"d/new", b"new")
            .file(b"d/sub/new", b"new")
            .file(b"d/.wh..wh..opq", b"")
            .done(),
    )
    .unwrap();
    assert_eq!(bed.read("d/new"), b"new");
    assert_eq!(bed.read("d/sub/new"), b"new");
    assert!(bed.lstat("d/old").is_none());
    assert!(
        bed.lstat("d/sub/old").is_none(),
        "lower content below an opaque dir goes too"
    );
}

#[test]
fn opaque_before_entries_in_same_layer() {
    let Some(bed) = bed() else { return };
    bed.apply(tar().dir(b"d").file(b"d/old", b"old").done())
        .unwrap();
    bed.apply(
        tar()
            .dir(b"d")
            .file(b"d/.wh..wh..opq", b"")
            .file(b"d/new", b"new")
            .done(),
    )
    .unwrap();
    assert_eq!(bed.read("d/new"), b"new");
    assert!(bed.lstat("d/old").is_none());
}

#[test]
fn whiteout_after_same_name_in_same_layer_hides_only_lower() {
    let Some(bed) = bed() else { return };
    bed.apply(
        tar()
            .dir(b"d")
            .file(b"d/old", b"old")
            .file(b"f", b"1")
            .done(),
    )
    .unwrap();
    bed.apply(
        tar()
            .dir(b"d")
            .file(b"d/new", b"new")
            .file(b"f", b"2")
            .file(b".wh.d", b"")
            .file(b".wh.f", b"")
            .done(),
    )
    .unwrap();
    assert_eq!(bed.read("d/new"), b"new");
    assert!(bed.lstat("d/old").is_none());
    assert_eq!(bed.read("f"), b"2");
}

#[test]
fn dir_deleted_then_recreated_next_layer() {
    let Some(bed) = bed() else { return };
    bed.apply(tar().dir(b"d").file(b"d/a", b"a").done())
        .unwrap();
    bed.apply(tar().file(b".wh.d", b"").done()).unwrap();
    assert!(bed.lstat("d").is_none());
    bed.apply(tar().dir(b"d").file(b"d/b", b"b").done())
        .unwrap();
    assert!(bed.lstat("d/a").is_none());
    assert_eq!(bed.read("d/b"), b"b");
}

#[test]
fn hardlink_target_in_lower_layer() {
    // Docker 20.10 and Podman 4.3 both fail on this; it is a valid layer.
    let Some(bed) = bed() else { return };
    bed.apply(tar().dir(b"usr").file(b"usr/a", b"data").done())
        .unwrap();
    bed.apply(tar().hardlink(b"usr/b", b"usr/a").done())
        .unwrap();
    assert_eq!(
        bed.lstat("usr/a").unwrap().ino(),
        bed.lstat("usr/b").unwrap().ino()
    );
    assert_eq!(bed.read("usr/b"), b"data");
}

// ------------------------------------------------------- what must survive

#[test]
fn device_nodes_and_fifos() {
    let Some(bed) = bed() else { return };
    let mut null = header(b"dev/null", EntryType::Char, 0o666);
    null.set_device_major(1).unwrap();
    null.set_device_minor(3).unwrap();
    let mut sda = header(b"dev/sda", EntryType::Block, 0o660);
    sda.set_device_major(8).unwrap();
    sda.set_device_minor(0).unwrap();
    sda.set_gid(6);
    let fifo = header(b"run/initctl", EntryType::Fifo, 0o600);
    bed.apply(
        tar()
            .dir(b"dev")
            .raw(null, b"")
            .raw(sda, b"")
            .raw(fifo, b"")
            .done(),
    )
    .unwrap();
    let n = bed.lstat("dev/null").unwrap();
    assert!(n.file_type().is_char_device());
    assert_eq!(
        (n.rdev(), n.mode() & 0o7777),
        (rustix::fs::makedev(1, 3), 0o666)
    );
    let s = bed.lstat("dev/sda").unwrap();
    assert!(s.file_type().is_block_device());
    assert_eq!(
        (s.rdev(), s.gid(), s.mode() & 0o7777),
        (rustix::fs::makedev(8, 0), 6, 0o660)
    );
    assert!(bed.lstat("run/initctl").unwrap().file_type().is_fifo());
}

#[test]
fn setuid_setgid_and_sticky_bits_survive_chown() {
    let Some(bed) = bed() else { return };
    let mut su = header(b"usr/bin/su", EntryType::Regular, 0o4755);
    su.set_uid(1000);
    let mut wall = header(b"usr/bin/wall", EntryType::Regular, 0o2755);
    wall.set_gid(5);
    let tmp = header(b"tmp", EntryType::Directory, 0o1777);
    bed.apply(tar().raw(su, b"su").raw(wall, b"wall").raw(tmp, b"").done())
        .unwrap();
    let m = bed.lstat("usr/bin/su").unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o4755, 1000));
    let m = bed.lstat("usr/bin/wall").unwrap();
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o2755, 5));
    assert_eq!(bed.lstat("tmp").unwrap().mode() & 0o7777, 0o1777);
    // Implicit parents are plain 0755 root directories.
    assert_eq!(bed.lstat("usr/bin").unwrap().mode() & 0o7777, 0o755);
}

/// cap_net_bind_service+ep, as `setcap` writes it (VFS_CAP_REVISION_2).
const CAP_NET_BIND: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[test]
fn security_capability_xattr_survives_chown() {
    let Some(bed) = bed() else { return };
    let mut ping = header(b"bin/ping", EntryType::Regular, 0o755);
    ping.set_uid(1000);
    ping.set_gid(1000);
    bed.apply(
        tar()
            .pax(&[
                ("SCHILY.xattr.security.capability", &CAP_NET_BIND),
                ("SCHILY.xattr.user.origin", b"layer"),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ])
            .raw(ping, b"ping")
            .done(),
    )
    .unwrap();
    let p = bed.path("bin/ping");
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(&p, "security.capability", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], &CAP_NET_BIND);
    let n = rustix::fs::lgetxattr(&p, "user.origin", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"layer");
    assert!(
        rustix::fs::lgetxattr(&p, "trusted.overlay.opaque", &mut buf[..]).is_err(),
        "overlay's private xattrs are never applied"
    );
    assert_eq!(bed.lstat("bin/ping").unwrap().uid(), 1000);
}

#[test]
fn long_names_pax_and_gnu() {
    let Some(bed) = bed() else { return };
    let long_dir = "d".repeat(120);
    let pax_name = format!("{long_dir}/{}", "p".repeat(150));
    let gnu_name = format!("{long_dir}/{}", "g".repeat(150));
    let link_target = format!("/{}", "t".repeat(200));
    let mut t = tar()
        .pax(&[("path", pax_name.as_bytes())])
        .file(b"truncated-in-header", b"pax");
    // GNU long name: a 'L' entry whose data is the name of the next entry.
    let mut l = header(b"././@LongLink", EntryType::GNULongName, 0o644);
    let mut gname = gnu_name.clone().into_bytes();
    gname.push(0);
    l.set_size(gname.len() as u64);
    t = t.raw(l, &gname).file(b"short", b"gnu");
    t = t
        .pax(&[("linkpath", link_target.as_bytes())])
        .symlink(b"longlink", b"x");
    bed.apply(t.done()).unwrap();
    assert_eq!(bed.read(&pax_name), b"pax");
    assert_eq!(bed.read(&gnu_name), b"gnu");
    assert_eq!(
        fs_err::read_link(bed.path("longlink"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        link_target.as_bytes()
    );
    assert!(bed.lstat("truncated-in-header").is_none());
}

#[test]
fn non_utf8_names() {
    let Some(bed) = bed() else { return };
    bed.apply(
        tar()
            .file(b"caf\xe9", b"latin1")
            .symlink(b"l\xff", b"caf\xe9")
            .done(),
    )
    .unwrap();
    let p = bed.dest.join(OsStr::from_bytes(b"caf\xe9"));
    assert_eq!(fs_err::read(&p).unwrap(), b"latin1");
    let l = bed.dest.join(OsStr::from_bytes(b"l\xff"));
    assert_eq!(fs_err::read(&l).unwrap(), b"latin1");
}

#[test]
fn directory_mtimes_are_set_after_their_contents() {
    let Some(bed) = bed() else { return };
    let mut d = header(b"d", EntryType::Directory, 0o755);
    d.set_mtime(1_000_000_000);
    let mut f = header(b"d/f", EntryType::Regular, 0o644);
    f.set_mtime(1_100_000_000);
    let mut l = header(b"d/l", EntryType::Symlink, 0o777);
    l.set_link_name_literal(b"f").unwrap();
    l.set_mtime(1_200_000_000);
    bed.apply(tar().raw(d, b"").raw(f, b"x").raw(l, b"").done())
        .unwrap();
    assert_eq!(bed.lstat("d").unwrap().mtime(), 1_000_000_000);
    assert_eq!(bed.lstat("d/f").unwrap().mtime(), 1_100_000_000);
    assert_eq!(bed.lstat("d/l").unwrap().mtime(), 1_200_000_000);
}

#[test]
fn root_entry_sets_root_metadata_but_cannot_be_replaced() {
    let Some(bed) = bed() else { return };
    bed.apply(
        tar()
            .raw(header(b"./", EntryType::Directory, 0o750), b"")
            .done(),
    )
    .unwrap();
    assert_eq!(fs_err::metadata(&bed.dest).unwrap().mode() & 0o7777, 0o750);
    let fifo = header(b".", EntryType::Fifo, 0o644);
    refused(bed.apply(tar().raw(fifo, b"").done()), ".");
    refused(bed.apply(tar().symlink(b"/", b"/tmp").done()), "/");
    assert!(fs_err::symlink_metadata(&bed.dest).unwrap().is_dir());
}

#[test]
fn v7_directory_is_a_regular_entry_with_a_trailing_slash() {
    let Some(bed) = bed() else { return };
    bed.apply(tar().file(b"olddir/", b"").file(b"olddir/f", b"f").done())
        .unwrap();
    assert!(bed.lstat("olddir").unwrap().is_dir());
}

#[test]
fn unsupported_entry_types_are_refused_by_name() {
    let Some(bed) = bed() else { return };
    let h = header(b"weird", EntryType::new(b'Z'), 0o644);
    refused(bed.apply(tar().raw(h, b"").done()), "weird");
}

#[test]
fn truncated_tar_is_an_error() {
    let Some(bed) = bed() else { return };
    let mut t = tar().file(b"big", &[7u8; 4096]).done();
    t.truncate(1024);
    let r = bed.apply(t);
    assert!(r.is_err(), "{r:?}");
}
