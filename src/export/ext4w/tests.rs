//! Checked with the real tools: `e2fsck -fn` must find nothing, and what
//! `debugfs` reads back must be the source tree.

use super::*;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const EPOCH: i64 = 1_700_000_000;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn set_mtime(p: &Path, secs: i64) {
    let ts = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

fn mknod(p: &Path, mode: u32, major: u32, minor: u32) {
    let dev = libc::makedev(major, minor);
    let r = unsafe { libc::mknod(c(p).as_ptr(), mode, dev) };
    assert_eq!(r, 0, "mknod {}", p.display());
}

fn setx(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

fn pseudo(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Every kind of entry the writer handles.
fn synthetic_tree(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        fs_err::create_dir_all(p.parent().unwrap()).unwrap();
        fs_err::write(&p, data).unwrap();
        p
    };
    w("empty", b"");
    w("one", b"1");
    w("block", &pseudo(4096, 1));
    w("block1", &pseudo(4097, 2));
    w("big", &pseudo(300_000, 3));
    w("a/b/c/deep", b"deep\n");
    let big_dir = root.join("many");
    fs_err::create_dir(&big_dir).unwrap();
    for i in 0..400 {
        let name = format!("{i:04}-{}", "n".repeat(100));
        fs_err::write(big_dir.join(name), format!("{i}")).unwrap();
    }
    // Symlinks: fast (< 60 bytes) and in a block.
    std::os::unix::fs::symlink("one", root.join("short-link")).unwrap();
    let long = format!("/{}/target", "x".repeat(200));
    std::os::unix::fs::symlink(&long, root.join("long-link")).unwrap();
    std::os::unix::fs::symlink("a/b", root.join("a/dirlink")).unwrap();
    // Hard links across directories.
    let hl = w("hl1", b"hard\n");
    fs_err::hard_link(&hl, root.join("a/hl2")).unwrap();
    fs_err::hard_link(&hl, root.join("many/hl3")).unwrap();
    // Devices, fifo, socket.
    fs_err::create_dir(root.join("dev")).unwrap();
    mknod(&root.join("dev/null"), libc::S_IFCHR | 0o666, 1, 3);
    mknod(&root.join("dev/sda1"), libc::S_IFBLK | 0o660, 8, 1);
    mknod(&root.join("dev/wide"), libc::S_IFCHR | 0o600, 300, 70000);
    let r = unsafe { libc::mkfifo(c(&root.join("dev/fifo")).as_ptr(), 0o644) };
    assert_eq!(r, 0);
    drop(std::os::unix::net::UnixListener::bind(root.join("dev/sock")).unwrap());
    // Modes and owners.
    let suid = w("suid", b"#!/bin/sh\n");
    fs_err::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let tmp = root.join("tmp");
    fs_err::create_dir(&tmp).unwrap();
    fs_err::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sgid = root.join("sgid");
    fs_err::create_dir(&sgid).unwrap();
    std::os::unix::fs::chown(&sgid, Some(0), Some(50)).unwrap();
    fs_err::set_permissions(&sgid, std::fs::Permissions::from_mode(0o2775)).unwrap();
    let user = w("home/user/file", b"mine\n");
    std::os::unix::fs::chown(&user, Some(1000), Some(1000)).unwrap();
    let wide = w("wide-owner", b"x");
    std::os::unix::fs::chown(&wide, Some(70000), Some(70001)).unwrap();
    std::os::unix::fs::lchown(root.join("short-link"), Some(5), Some(6)).unwrap();
    // Xattrs: a capability in the inode, a big value in a block.
    let ping = w("ping", b"\x7fELF");
    setx(
        &ping,
        "security.capability",
        &[
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    let fat = w("fat", b"fat\n");
    setx(&fat, "user.big", &pseudo(2000, 9));
    setx(&fat, "trusted.t", b"small");
    setx(
        &fat,
        "security.capability",
        &[1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    let emp = w("emptyx", b"");
    setx(&emp, "user.empty", b"");
    setx(&root.join("a"), "user.dir", b"on a dir");
    // A POSIX ACL, where the source filesystem takes one: the host's, not
    // the image's (no layer carries one), so it is left out.
    let acl = w("acl", b"acl\n");
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    let _ = rustix::fs::lsetxattr(
        &acl,
        "system.posix_acl_access",
        &v,
        rustix::fs::XattrFlags::empty(),
    );
    // Times: everything at a fixed mtime but a few.
    let mut all = vec![root.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        let p = all[i].clone();
        if fs_err::symlink_metadata(&p).unwrap().is_dir() {
            for e in fs_err::read_dir(&p).unwrap() {
                all.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    for p in all.iter().rev() {
        set_mtime(p, 1_600_000_000);
    }
    set_mtime(&root.join("one"), 1_234_567_890);
    set_mtime(&root.join("a/b"), 1_000);
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn fsck(img: &Path) {
    let (ok, text) = run(Command::new("e2fsck").arg("-fn").arg(img));
    assert!(ok, "e2fsck -fn {}:\n{text}", img.display());
    // -n answers "no" to a fix and may still exit 0: any line besides the
    // banner, the passes and the summary is a finding.
    for line in text.lines() {
        let fine = line.starts_with("e2fsck ")
            || line.starts_with("Pass ")
            || line.contains(" files (") && line.contains(" blocks");
        assert!(fine, "e2fsck -fn {}:\n{text}", img.display());
    }
}

fn params(size: u64) -> Params<'static> {
    let uuid = parse_uuid("11111111-2222-4333-8444-555555555555").unwrap();
    Params::new("ext4w-test", uuid, size, EPOCH)
}

/// Source paths in walk order (the root first), relative.
fn entries(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::new()];
    let mut i = 0;
    while i < out.len() {
        let rel = out[i].clone();
        let p = root.join(&rel);
        if fs_err::symlink_metadata(&p).unwrap().is_dir() {
            let mut names: Vec<_> = fs_err::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                out.push(rel.join(n));
            }
        }
        i += 1;
    }
    out
}

fn fs_path(rel: &Path) -> String {
    format!("/{}", rel.display())
}

/// One `debugfs` run of many commands; the output of each.
fn debugfs(img: &Path, cmds: &[String], scratch: &Path) -> Vec<String> {
    let script = scratch.join("debugfs.cmds");
    fs_err::write(&script, cmds.join("\n") + "\n").unwrap();
    let out = Command::new("debugfs")
        .arg("-f")
        .arg(&script)
        .arg(img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let parts: Vec<String> = text
        .split("debugfs: ")
        .skip(1)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(parts.len(), cmds.len(), "debugfs output:\n{text}");
    parts
}

fn field<'a>(stat: &'a str, key: &str) -> &'a str {
    let at = stat
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in\n{stat}"));
    stat[at + key.len()..].split_whitespace().next().unwrap()
}

/// The image holds what the tree holds: types, modes, owners, mtimes,
/// sizes, contents, link targets, devices, hard links and xattrs.
fn compare(root: &Path, img: &Path, scratch: &Path) {
    let rels = entries(root);
    let cmds: Vec<String> = rels
        .iter()
        .map(|r| format!("stat \"{}\"", fs_path(r)))
        .collect();
    let stats = debugfs(img, &cmds, scratch);
    let mut by_src_ino: HashMap<(u64, u64), String> = HashMap::new();
    let mut xattr_cmds = Vec::new();
    let mut xattr_expect = Vec::new();
    for (rel, stat) in rels.iter().zip(&stats) {
        let p = root.join(rel);
        let m = fs_err::symlink_metadata(&p).unwrap();
        let what = fs_path(rel);
        assert!(stat.contains("Inode: "), "{what}: {stat}");
        let mode = u32::from_str_radix(field(stat, "Mode:"), 8).unwrap();
        assert_eq!(mode, m.mode() & 0o7777, "{what} mode");
        assert_eq!(
            field(stat, "User:").parse::<u32>().unwrap(),
            m.uid(),
            "{what} uid"
        );
        assert_eq!(
            field(stat, "Group:").parse::<u32>().unwrap(),
            m.gid(),
            "{what} gid"
        );
        let ty = field(stat, "Type:");
        let want_ty = match m.mode() & S_IFMT {
            S_IFREG => "regular",
            S_IFDIR => "directory",
            S_IFLNK => "symlink",
            S_IFCHR => "character",
            S_IFBLK => "block",
            S_IFIFO => "FIFO",
            S_IFSOCK => "socket",
            _ => unreachable!(),
        };
        assert_eq!(ty, want_ty, "{what} type");
        let mtime = field(stat, "mtime: 0x").split(':').next().unwrap();
        assert_eq!(
            i64::from_str_radix(mtime, 16).unwrap(),
            m.mtime(),
            "{what} mtime"
        );
        let atime = field(stat, "atime: 0x").split(':').next().unwrap();
        assert_eq!(
            i64::from_str_radix(atime, 16).unwrap(),
            EPOCH,
            "{what} atime"
        );
        if !rel.as_os_str().is_empty() && !m.is_dir() {
            let ino = field(stat, "Inode:").to_string();
            let links = field(stat, "Links:").parse::<u64>().unwrap();
            assert_eq!(links, m.nlink(), "{what} links");
            if let Some(prev) = by_src_ino.insert((m.dev(), m.ino()), ino.clone()) {
                assert_eq!(prev, ino, "{what}: hard links share an inode");
            }
        }
        match m.mode() & S_IFMT {
            S_IFREG => {
                assert_eq!(
                    field(stat, "Size:").parse::<u64>().unwrap(),
                    m.len(),
                    "{what}"
                )
            }
            S_IFLNK => {
                let target = fs_err::read_link(&p).unwrap();
                let t = target.as_os_str().as_bytes();
                if t.len() < 60 {
                    let want = format!("Fast link dest: \"{}\"", target.display());
                    assert!(stat.contains(&want), "{what}: {stat}");
                }
                assert_eq!(field(stat, "Size:").parse::<usize>().unwrap(), t.len());
            }
            S_IFCHR | S_IFBLK => {
                let dev = field(stat, "Device major/minor number:");
                let (ma, mi) = dev.split_once(':').unwrap();
                assert_eq!(
                    ma.parse::<u32>().unwrap(),
                    rustix::fs::major(m.rdev()),
                    "{what}"
                );
                assert_eq!(
                    mi.parse::<u32>().unwrap(),
                    rustix::fs::minor(m.rdev()),
                    "{what}"
                );
            }
            _ => {}
        }
        let len = rustix::fs::llistxattr_query(&p).unwrap();
        let mut list = vec![0u8; len];
        let n = rustix::fs::llistxattr(&p, &mut list[..]).unwrap();
        list.truncate(n);
        for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            // Only what a layer carries (not the ACL, not a host label).
            if !crate::layer::carried_xattr(name) {
                continue;
            }
            let name = String::from_utf8(name.to_vec()).unwrap();
            let vlen = rustix::fs::lgetxattr_query(&p, name.as_str()).unwrap();
            let mut v = vec![0u8; vlen];
            let n = rustix::fs::lgetxattr(&p, name.as_str(), &mut v[..]).unwrap();
            v.truncate(n);
            let out = scratch.join(format!("x{}", xattr_cmds.len()));
            xattr_cmds.push(format!(
                "ea_get -f {} \"{}\" {name}",
                out.display(),
                fs_path(rel)
            ));
            xattr_expect.push((out, v, format!("{what} {name}")));
        }
    }
    if !xattr_cmds.is_empty() {
        debugfs(img, &xattr_cmds, scratch);
        for (out, want, what) in xattr_expect {
            let got = fs_err::read(&out).unwrap_or_else(|_| panic!("{what}: not read back"));
            assert_eq!(got, want, "{what}");
        }
    }
    // Contents and symlink targets: rdump and compare.
    let dump = scratch.join("dump");
    fs_err::create_dir(&dump).unwrap();
    let (ok, text) = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", dump.display()))
        .arg(img));
    assert!(ok, "{text}");
    for rel in &rels {
        let src = root.join(rel);
        let got = dump.join(rel);
        let m = fs_err::symlink_metadata(&src).unwrap();
        if m.is_file() {
            assert!(
                fs_err::read(&src).unwrap() == fs_err::read(&got).unwrap(),
                "{} content",
                rel.display()
            );
        } else if m.file_type().is_symlink() {
            assert_eq!(
                fs_err::read_link(&src).unwrap(),
                fs_err::read_link(&got).unwrap(),
                "{}",
                rel.display()
            );
        }
    }
}

fn shm_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/dev/shm")
        .unwrap()
}

/// The synthetic tree, and a scratch directory for images.
fn synthetic_and_scratch() -> (tempfile::TempDir, tempfile::TempDir) {
    let tree = shm_dir("ext4w-tree-");
    synthetic_tree(tree.path());
    (tree, shm_dir("ext4w-img-"))
}

#[test]
fn synthetic_tree_is_clean_and_reads_back() {
    if !is_root() {
        eprintln!("skipped: needs root for devices and owners");
        return;
    }
    let (tree, work) = synthetic_and_scratch();
    // 300 MiB: three groups, a backup superblock in group 1.
    let img = work.path().join("img");
    let made = make(tree.path(), &params(300 * MIB), &img, 0).unwrap();
    assert_eq!(made, 300 * 256);
    fsck(&img);
    compare(tree.path(), &img, work.path());
    if let Ok(keep) = std::env::var("EXT4W_KEEP") {
        fs_err::copy(&img, keep).unwrap();
    }
    let s = debugfs(
        &img,
        &["stat /fat".into(), "stat /ping".into()],
        work.path(),
    );
    assert_ne!(field(&s[0], "File ACL:"), "0", "xattrs of /fat in a block");
    let acl = debugfs(&img, &["ea_list /acl".into()], work.path());
    assert!(!acl[0].contains("posix_acl"), "{}", acl[0]);
    assert_eq!(
        field(&s[1], "File ACL:"),
        "0",
        "xattrs of /ping in the inode"
    );
    let (_, dump) = run(Command::new("dumpe2fs").arg("-h").arg(&img));
    for f in [
        "has_journal",
        "ext_attr",
        "dir_index",
        "filetype",
        "extent",
        "64bit",
        "flex_bg",
        "sparse_super",
        "large_file",
        "huge_file",
        "dir_nlink",
        "extra_isize",
        "metadata_csum",
    ] {
        assert!(dump.contains(&format!(" {f}")), "{f} missing:\n{dump}");
    }
}

#[test]
fn many_extents_go_to_a_leaf_block() {
    if !is_root() {
        return;
    }
    let (tree, work) = synthetic_and_scratch();
    let img = work.path().join("img");
    let mut p = params(64 * MIB);
    p.max_extent = 4;
    make(tree.path(), &p, &img, 0).unwrap();
    fsck(&img);
    let s = debugfs(&img, &["stat /big".into()], work.path());
    assert!(s[0].contains("(ETB0)"), "no extent tree:\n{}", s[0]);
    compare(tree.path(), &img, work.path());
}

#[test]
fn at_an_offset_and_twice_the_same_bytes() {
    if !is_root() {
        return;
    }
    let (tree, work) = synthetic_and_scratch();
    let a = work.path().join("a");
    let b = work.path().join("b");
    make(tree.path(), &params(200 * MIB), &a, 0).unwrap();
    // At an offset of a larger file, as a disk's partition.
    fs_err::File::create(&b)
        .unwrap()
        .set_len(300 * MIB)
        .unwrap();
    make(tree.path(), &params(200 * MIB), &b, MIB).unwrap();
    // Over old contents: the same bytes, and only the range is touched.
    let d = work.path().join("d");
    fs_err::write(&d, vec![0xAAu8; (300 * MIB) as usize]).unwrap();
    make(tree.path(), &params(200 * MIB), &d, MIB).unwrap();
    let a = fs_err::read(&a).unwrap();
    let b = fs_err::read(&b).unwrap();
    assert_eq!(b.len() as u64, 300 * MIB);
    assert!(
        a[..] == b[MIB as usize..(MIB + 200 * MIB) as usize],
        "not the same bytes"
    );
    let d = fs_err::read(&d).unwrap();
    assert!(
        a[..] == d[MIB as usize..(MIB + 200 * MIB) as usize],
        "old bytes show through"
    );
    assert!(d[..MIB as usize].iter().all(|b| *b == 0xAA));
    assert!(d[(201 * MIB) as usize..].iter().all(|b| *b == 0xAA));
}

#[test]
fn geometry_follows_mke2fs() {
    // 1 GiB: 8 groups of 8192 inodes (ratio 16384), 32 MiB journal.
    let g = geometry(1024 * MIB, None).unwrap();
    assert_eq!((g.blocks, g.groups, g.ipg, g.itb), (262144, 8, 8192, 512));
    assert_eq!(journal_blocks(g.blocks), 8192);
    // A last group too small for its metadata is dropped.
    let g = geometry(128 * MIB + 100 * BS, None).unwrap();
    assert_eq!(g.blocks, 32768);
    assert!(has_super(0) && has_super(1) && has_super(9) && has_super(25) && has_super(49));
    assert!(!has_super(2) && !has_super(10) && !has_super(15));
}

/// The test bed's Debian minbase rootfs (`TPLBUILD_TEST_ROOTFS_TAR`, set
/// by `scripts/testbed env`): clean, the same bytes twice, and every
/// entry read back equal. `bench/disk.sh` has the times.
#[test]
fn a_debian_rootfs_is_clean_reproducible_and_reads_back() {
    let Ok(tar) = std::env::var("TPLBUILD_TEST_ROOTFS_TAR") else {
        eprintln!("skipped: TPLBUILD_TEST_ROOTFS_TAR not set (scripts/testbed env)");
        return;
    };
    if !is_root() {
        eprintln!("skipped: needs root for the rootfs' owners and devices");
        return;
    }
    let tree = shm_dir("ext4w-rootfs-");
    let (ok, text) = run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-xpf", &tar, "-C"])
        .arg(tree.path()));
    assert!(ok, "{text}");
    let stats = crate::export::TreeStats::of(tree.path()).unwrap();
    let size = crate::export::ext4::default_size(&stats);
    let work = shm_dir("ext4w-img-");
    let img = work.path().join("a.img");
    let mut p = params(size);
    p.inodes = crate::export::ext4::inode_count(size, &stats, None);
    make(tree.path(), &p, &img, 0).unwrap();
    let img2 = work.path().join("b.img");
    make(tree.path(), &p, &img2, 0).unwrap();
    assert!(
        fs_err::read(&img).unwrap() == fs_err::read(&img2).unwrap(),
        "not reproducible"
    );
    fs_err::remove_file(&img2).unwrap();
    fsck(&img);
    compare(tree.path(), &img, work.path());
}

/// Sizes that are not whole groups, a tiny one, and one whose metadata
/// runs past group 0 over backup superblocks (sparse files in /dev/shm).
#[test]
fn odd_and_large_sizes_are_clean() {
    if !is_root() {
        return;
    }
    let (tree, work) = synthetic_and_scratch();
    for size in [16 * MIB, 100 * MIB + 12345, 5 * 1024 * MIB, 64 * 1024 * MIB] {
        let img = work.path().join(format!("img-{size}"));
        let made = make(tree.path(), &params(size), &img, 0).unwrap();
        assert!(made * BS <= size, "{size}");
        fsck(&img);
        fs_err::remove_file(&img).unwrap();
    }
}

/// No resize_inode: growing still works. `resize2fs` offline, past what
/// the one descriptor block of a small filesystem can describe (64 MiB →
/// 20 GiB: 1 → 3 descriptor blocks), leaves a clean filesystem with the
/// tree intact. (Online growth, the kernel's switch to meta_bg, needs
/// CAP_SYS_RESOURCE: `tests/disk_boot_e2e.rs` tests it in a VM.)
#[test]
fn resize2fs_grows_it_offline_past_its_descriptor_block() {
    if !is_root() {
        return;
    }
    let (tree, work) = synthetic_and_scratch();
    let img = work.path().join("img");
    make(tree.path(), &params(64 * MIB), &img, 0).unwrap();
    fs_err::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(20 * 1024 * MIB)
        .unwrap();
    let (ok, text) = run(Command::new("resize2fs").arg(&img));
    assert!(ok, "resize2fs:\n{text}");
    let (_, dump) = run(Command::new("dumpe2fs").arg("-h").arg(&img));
    assert!(
        dump.lines()
            .any(|l| l.starts_with("Block count:") && l.ends_with(" 5242880")),
        "not grown:\n{dump}"
    );
    fsck(&img);
    compare(tree.path(), &img, work.path());
}

/// Past one leaf of 340 extents: up to four leaves indexed from the
/// inode; past that a clear error, nothing written over.
#[test]
fn four_extent_leaves_then_a_clear_refusal() {
    if !is_root() {
        return;
    }
    let tree = shm_dir("ext4w-tree-");
    fs_err::write(tree.path().join("long"), pseudo(1200 * BSU, 5)).unwrap();
    let work = shm_dir("ext4w-img-");
    let img = work.path().join("img");
    let mut p = params(64 * MIB);
    p.max_extent = 1;
    make(tree.path(), &p, &img, 0).unwrap();
    fsck(&img);
    let s = debugfs(&img, &["stat /long".into()], work.path());
    assert!(s[0].contains("(ETB0)"), "no extent tree:\n{}", s[0]);
    compare(tree.path(), &img, work.path());

    fs_err::write(tree.path().join("longer"), pseudo(1400 * BSU, 6)).unwrap();
    let e = make(tree.path(), &p, &work.path().join("img2"), 0).unwrap_err();
    let what = layout_problem(&e).expect("a layout problem");
    assert!(what.contains("needs more extents"), "{what}");
}

#[test]
fn times_are_clamped_to_what_ext4_holds() {
    assert_eq!(time_parts(0), (0, 0));
    assert_eq!(time_parts(-1), (u32::MAX, 0));
    assert_eq!(time_parts(1 << 31), (1 << 31, 1));
    // Before 1901 and after 2446: the ends of the range.
    assert_eq!(time_parts(i64::MIN), time_parts(i32::MIN as i64));
    assert_eq!(time_parts(i32::MIN as i64), (1 << 31, 0));
    assert_eq!(time_parts(i64::MAX), (i32::MAX as u32, 3));
}

/// A tree as deep as a path can name (~2,000 directories), walked on a
/// 2 MiB stack, as exports run on a blocking thread of the runtime.
#[test]
fn a_tree_two_thousand_deep_on_a_small_stack() {
    let tree = shm_dir("ext4w-deep-");
    let mut p = tree.path().to_path_buf();
    while p.as_os_str().len() < 4000 {
        p.push("a");
    }
    fs_err::create_dir_all(&p).unwrap();
    fs_err::write(p.join("f"), b"deep").unwrap();
    let work = shm_dir("ext4w-img-");
    let img = work.path().join("img");
    let (root, at) = (tree.path().to_path_buf(), img.clone());
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || make(&root, &params(64 * MIB), &at, 0).unwrap())
        .unwrap()
        .join()
        .unwrap();
    fsck(&img);
}
