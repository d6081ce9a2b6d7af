//! Listings of a root filesystem — from a directory on disk or from a tar —
//! that can be compared entry for entry: path, type, permission bits,
//! owner, size, content digest, link target, device numbers, xattrs and
//! hardlink groups. Times are left out on purpose: erofs and squashfs set
//! every time to the epoch, the tar and directory keep clamped mtimes.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

/// One path of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits with setuid/setgid/sticky; 0 for symlinks.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Regular files: size and sha256 of the content.
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub target: Option<Vec<u8>>,
    pub rdev: Option<(u32, u32)>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For a file with several names: the first name in sorted order.
    pub link_group: Option<Vec<u8>>,
}

/// Path (relative, no leading `./`, no trailing `/`) → node.
pub type Listing = BTreeMap<Vec<u8>, Node>;

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Walk a directory tree without following symlinks; the root itself is
/// not listed.
pub fn of_dir(root: &Path) -> Listing {
    let mut out = Listing::new();
    let mut inodes: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut stack = vec![Vec::<u8>::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(OsStr::from_bytes(&rel));
        for e in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        {
            let e = e.unwrap();
            let mut p = rel.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(e.file_name().as_bytes());
            let full = root.join(OsStr::from_bytes(&p));
            let m = std::fs::symlink_metadata(&full).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_file() {
                Kind::File
            } else if ft.is_dir() {
                Kind::Dir
            } else if ft.is_symlink() {
                Kind::Symlink
            } else if ft.is_char_device() {
                Kind::Char
            } else if ft.is_block_device() {
                Kind::Block
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                Kind::Socket
            };
            let (size, sha256) = if kind == Kind::File {
                let mut f = fs_err::File::open(&full).unwrap();
                (Some(m.len()), Some(hash_reader(&mut f)))
            } else {
                (None, None)
            };
            let target = (kind == Kind::Symlink).then(|| {
                std::fs::read_link(&full)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            });
            let rdev = matches!(kind, Kind::Char | Kind::Block)
                .then(|| (rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev())));
            if kind == Kind::File && m.nlink() > 1 {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .push(p.clone());
            }
            if kind == Kind::Dir {
                stack.push(p.clone());
            }
            out.insert(
                p,
                Node {
                    kind,
                    mode: if kind == Kind::Symlink {
                        0
                    } else {
                        m.mode() & 0o7777
                    },
                    uid: u64::from(m.uid()),
                    gid: u64::from(m.gid()),
                    size,
                    sha256,
                    target,
                    rdev,
                    xattrs: xattrs(&full),
                    link_group: None,
                },
            );
        }
    }
    for names in inodes.into_values().filter(|n| n.len() > 1) {
        let first = names.iter().min().unwrap().clone();
        for n in names {
            out.get_mut(&n).unwrap().link_group = Some(first.clone());
        }
    }
    out
}

fn hash_reader(r: &mut impl Read) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Every xattr of `path` itself.
pub fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(path, &mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::OPNOTSUPP) => return out,
        Err(e) => panic!("listing xattrs of {}: {e}", path.display()),
    };
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 64 * 1024];
        let len = rustix::fs::lgetxattr(path, name, &mut value).unwrap();
        value.truncate(len);
        out.insert(name.to_vec(), value);
    }
    out
}

fn norm(p: &[u8]) -> Vec<u8> {
    let mut p = p;
    while let Some(rest) = p.strip_prefix(b"./") {
        p = rest;
    }
    while let Some(rest) = p.strip_suffix(b"/") {
        p = rest;
    }
    if p == b"." {
        p = b"";
    }
    p.to_vec()
}

/// List a tar stream (uncompressed). Hardlink entries become files with
/// their target's attributes and content, in the target's link group.
pub fn of_tar(r: impl Read) -> Listing {
    let mut out = Listing::new();
    let mut links: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut ar = tar::Archive::new(r);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = norm(&e.path_bytes());
        assert!(!path.is_empty(), "a tar export has a root entry");
        let h = e.header().clone();
        let mut xattrs = BTreeMap::new();
        if let Some(ext) = e.pax_extensions().unwrap() {
            for x in ext {
                let x = x.unwrap();
                if let Some(name) = x.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.insert(name.to_vec(), x.value_bytes().to_vec());
                }
            }
        }
        let et = h.entry_type();
        if et.is_hard_link() {
            links.push((path, norm(&e.link_name_bytes().unwrap())));
            continue;
        }
        let kind = match et {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink,
            tar::EntryType::Char => Kind::Char,
            tar::EntryType::Block => Kind::Block,
            tar::EntryType::Fifo => Kind::Fifo,
            other => panic!("unexpected tar entry type {other:?} for {}", show(&path)),
        };
        let (size, sha256) = if kind == Kind::File {
            (Some(e.size()), Some(hash_reader(&mut e)))
        } else {
            (None, None)
        };
        let node = Node {
            kind,
            mode: if kind == Kind::Symlink {
                0
            } else {
                h.mode().unwrap() & 0o7777
            },
            uid: e.header().uid().unwrap(),
            gid: e.header().gid().unwrap(),
            size,
            sha256,
            target: (kind == Kind::Symlink).then(|| e.link_name_bytes().unwrap().to_vec()),
            rdev: matches!(kind, Kind::Char | Kind::Block).then(|| {
                (
                    h.device_major().unwrap().unwrap(),
                    h.device_minor().unwrap().unwrap(),
                )
            }),
            xattrs,
            link_group: None,
        };
        assert!(
            out.insert(path.clone(), node).is_none(),
            "{} twice in the tar",
            show(&path)
        );
    }
    for (path, target) in links {
        let t = out
            .get_mut(&target)
            .unwrap_or_else(|| panic!("hardlink {} to missing {}", show(&path), show(&target)));
        let group = t.link_group.get_or_insert_with(|| target.clone()).clone();
        let mut node = t.clone();
        node.link_group = Some(group);
        out.insert(path, node);
    }
    // Name each group after its first member, as of_dir does.
    let mut groups: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for (p, n) in &out {
        if let Some(g) = &n.link_group {
            groups.entry(g.clone()).or_default().push(p.clone());
        }
    }
    for members in groups.into_values() {
        let first = members.iter().min().unwrap().clone();
        for m in members {
            out.get_mut(&m).unwrap().link_group = Some(first.clone());
        }
    }
    out
}

/// What to leave out of a comparison, for extractors that cannot restore
/// everything (checked another way by the caller).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ignore {
    /// Skip device nodes, fifos and sockets on the right-hand side's absence.
    pub special_files: bool,
    pub link_groups: bool,
    pub xattrs: bool,
    /// Compare modes without setuid/setgid (an extractor that chowns after
    /// chmod loses them).
    pub setid_bits: bool,
}

/// Every difference between two listings, one line each.
pub fn diff(
    left_name: &str,
    left: &Listing,
    right_name: &str,
    right: &Listing,
    ignore: Ignore,
) -> Vec<String> {
    let special = |n: &Node| matches!(n.kind, Kind::Char | Kind::Block | Kind::Fifo | Kind::Socket);
    let mut out = Vec::new();
    for (p, l) in left {
        match right.get(p) {
            None if ignore.special_files && special(l) => {}
            None => out.push(format!("{}: only in {left_name}", show(p))),
            Some(r) => {
                let mut l = l.clone();
                let mut r = r.clone();
                if ignore.link_groups {
                    l.link_group = None;
                    r.link_group = None;
                }
                if ignore.setid_bits {
                    l.mode &= !0o6000;
                    r.mode &= !0o6000;
                }
                if ignore.xattrs {
                    l.xattrs.clear();
                    r.xattrs.clear();
                }
                if l != r {
                    out.push(format!(
                        "{}: {left_name} {l:?} != {right_name} {r:?}",
                        show(p)
                    ));
                }
            }
        }
    }
    for p in right.keys().filter(|p| !left.contains_key(*p)) {
        out.push(format!("{}: only in {right_name}", show(p)));
    }
    out
}

/// Panic with every difference if the listings differ.
#[track_caller]
pub fn assert_same(
    left_name: &str,
    left: &Listing,
    right_name: &str,
    right: &Listing,
    ignore: Ignore,
) {
    let d = diff(left_name, left, right_name, right, ignore);
    assert!(
        d.is_empty(),
        "{left_name} and {right_name} differ:\n{}",
        d.join("\n")
    );
}
