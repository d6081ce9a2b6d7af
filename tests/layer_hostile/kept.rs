//! What a layer must carry through intact: devices, special bits,
//! capabilities, long and odd names, times; and what it must not smuggle.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use tar::EntryType;

use crate::bed::{bed, header, refused, tar};

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

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
