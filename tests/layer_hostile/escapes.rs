//! Entries that try to reach outside the root, by path or by link.

use std::os::unix::fs::MetadataExt;

use tar::EntryType;
use tplbuild::layer::LayerError;

use crate::bed::{bed, header, refused, tar};

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
