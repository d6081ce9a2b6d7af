//! Whiteouts and opaque directories: what they hide, and what they must not.

use std::os::unix::fs::MetadataExt;

use crate::bed::{bed, refused, tar};

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
