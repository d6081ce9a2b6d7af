//! What a layer, and a stack of layers, holds path by path, without the
//! file data: kind, owner, mode, mtime, xattrs and each file's sha256.
//!
//! A step's diff is made canonical against its parent's [`TreeIndex`]
//! (see [`super::canonical`]): whatever the engine reported as changed but
//! is equal to the parent is left out, and a replaced directory becomes
//! explicit whiteouts for exactly what the parent had in it. That is what
//! makes the overlay upper dir and the engine's API give the same layer.
//!
//! A [`LayerIndex`] is computed once per layer (while the layer is written,
//! or by reading its blob) and encoded compactly so the store can keep it.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;

use sha2::{Digest as _, Sha256};

use super::walk::{OPAQUE_NAME, WHITEOUT_PREFIX};

/// A node's kind, with what only that kind carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    File {
        size: u64,
        sha256: [u8; 32],
    },
    Dir,
    Symlink {
        target: Vec<u8>,
    },
    Char {
        major: u32,
        minor: u32,
    },
    Block {
        major: u32,
        minor: u32,
    },
    Fifo,
    /// Only inside a [`LayerIndex`]: another name of a file; a
    /// [`TreeIndex`] resolves it to the file.
    Hardlink {
        target: Vec<u8>,
    },
}

/// One path's metadata as a layer holds it (mtimes already clamped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    /// Sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One layer's entries, whiteouts and opaque directories, in layer order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerIndex {
    pub entries: Vec<(Vec<u8>, IndexEntry)>,
    /// Paths that `.wh.NAME` entries delete.
    pub whiteouts: Vec<Vec<u8>>,
    /// Directories whose lower contents `.wh..wh..opq` hides.
    pub opaque: Vec<Vec<u8>>,
}

/// A relative tar path: no leading `./` or `/`, no trailing `/`.
pub(crate) fn clean_path(raw: &[u8]) -> Vec<u8> {
    let mut p = raw;
    loop {
        if let Some(rest) = p.strip_prefix(b"./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix(b"/") {
            p = rest;
        } else {
            break;
        }
    }
    let mut p = p.to_vec();
    while p.last() == Some(&b'/') {
        p.pop();
    }
    if p == b"." {
        p.clear();
    }
    p
}

/// Split `a/b/c` into (`a/b`, `c`); a top-level name has the parent `""`.
pub(crate) fn split_parent(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&b""[..], p),
    }
}

/// Whether `p` is strictly below the directory `dir` (`""` is the root).
pub(crate) fn is_below(p: &[u8], dir: &[u8]) -> bool {
    if dir.is_empty() {
        return !p.is_empty();
    }
    p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/'
}

/// Paths below the engine's virtual filesystems: their directories and
/// files are the engine's (Docker's init layer makes some), not the step's.
pub(crate) fn is_virtual(p: &[u8]) -> bool {
    [&b"dev"[..], b"proc", b"sys"]
        .iter()
        .any(|v| p == *v || is_below(p, v))
}

impl LayerIndex {
    /// Read an uncompressed layer tar.
    pub fn read(tar: impl Read) -> io::Result<Self> {
        Ok(Self::read_capturing(tar, &|_| false)?.0)
    }

    /// [`LayerIndex::read`], also keeping the bytes of the regular files
    /// whose paths `keep` picks (the SBOM reads dpkg's database from the
    /// same pass that hashes every file).
    #[allow(clippy::type_complexity)]
    pub fn read_capturing(
        tar: impl Read,
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> io::Result<(Self, Vec<(Vec<u8>, Vec<u8>)>)> {
        let mut out = LayerIndex::default();
        let mut kept = Vec::new();
        let mut ar = tar::Archive::new(tar);
        for entry in ar.entries()? {
            let mut e = entry?;
            let path = clean_path(&e.path_bytes());
            if path.is_empty() {
                continue;
            }
            let (parent, name) = split_parent(&path);
            if name == OPAQUE_NAME {
                out.opaque.push(parent.to_vec());
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let mut p = parent.to_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(hidden);
                out.whiteouts.push(p);
                continue;
            }
            let (uid, gid, xattrs) = pax_owner_and_xattrs(&mut e)?;
            let h = e.header().clone();
            let h = &h;
            let mode = h.mode()? & 0o7777;
            let mtime = h.mtime()? as i64;
            let dev = |h: &tar::Header| -> io::Result<(u32, u32)> {
                Ok((
                    h.device_major()?.unwrap_or(0),
                    h.device_minor()?.unwrap_or(0),
                ))
            };
            let link = || {
                e.link_name_bytes()
                    .map(|l| clean_path(&l))
                    .unwrap_or_default()
            };
            let kind = match h.entry_type() {
                tar::EntryType::Directory => NodeKind::Dir,
                tar::EntryType::Symlink => NodeKind::Symlink {
                    target: e.link_name_bytes().map(|l| l.to_vec()).unwrap_or_default(),
                },
                tar::EntryType::Link => NodeKind::Hardlink { target: link() },
                tar::EntryType::Char => {
                    let (major, minor) = dev(h)?;
                    NodeKind::Char { major, minor }
                }
                tar::EntryType::Block => {
                    let (major, minor) = dev(h)?;
                    NodeKind::Block { major, minor }
                }
                tar::EntryType::Fifo => NodeKind::Fifo,
                _ if keep(&path) => {
                    let mut bytes = Vec::new();
                    e.read_to_end(&mut bytes)?;
                    let sha256 = Sha256::digest(&bytes).into();
                    let size = bytes.len() as u64;
                    kept.push((path.clone(), bytes));
                    NodeKind::File { size, sha256 }
                }
                _ => {
                    let mut hasher = Sha256::new();
                    let size = io::copy(&mut e, &mut HashWriter(&mut hasher))?;
                    NodeKind::File {
                        size,
                        sha256: hasher.finalize().into(),
                    }
                }
            };
            out.entries.push((
                path,
                IndexEntry {
                    kind,
                    mode,
                    uid: uid.unwrap_or(u64::from(h.uid()? as u32)),
                    gid: gid.unwrap_or(u64::from(h.gid()? as u32)),
                    mtime,
                    xattrs,
                },
            ));
        }
        Ok((out, kept))
    }
}

/// PAX `uid`/`gid` (for ids too big for the header) and `SCHILY.xattr.*`.
#[allow(clippy::type_complexity)]
pub(crate) fn pax_owner_and_xattrs<R: Read>(
    e: &mut tar::Entry<'_, R>,
) -> io::Result<(Option<u64>, Option<u64>, Vec<(Vec<u8>, Vec<u8>)>)> {
    let (mut uid, mut gid, mut xattrs) = (None, None, Vec::new());
    if let Some(exts) = e.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let key = ext.key_bytes();
            let num = || std::str::from_utf8(ext.value_bytes()).ok()?.parse().ok();
            match key {
                b"uid" => uid = num(),
                b"gid" => gid = num(),
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        if super::walk::carried_xattr(name) {
                            xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
    }
    xattrs.sort();
    Ok((uid, gid, xattrs))
}

/// Feeds written bytes to a hasher.
pub(crate) struct HashWriter<'a>(pub &'a mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The tree a stack of layers makes, as metadata.
#[derive(Debug, Clone, Default)]
pub struct TreeIndex {
    map: BTreeMap<Vec<u8>, IndexEntry>,
}

impl TreeIndex {
    /// Apply one more layer on top, with the OCI rules: whiteouts and
    /// opaque markers hide only what lower layers put there.
    pub fn apply(&mut self, layer: &LayerIndex) {
        for dir in &layer.opaque {
            self.remove_below(dir);
        }
        for p in &layer.whiteouts {
            self.map.remove(p);
            self.remove_below(p);
        }
        for (path, entry) in &layer.entries {
            let mut entry = entry.clone();
            if let NodeKind::Hardlink { target } = &entry.kind {
                match self.map.get(target) {
                    Some(t) => entry.kind = t.kind.clone(),
                    // A dangling link applies as nothing.
                    None => continue,
                }
            }
            if entry.kind != NodeKind::Dir {
                self.remove_below(path);
            }
            self.map.insert(path.clone(), entry);
        }
    }

    fn remove_below(&mut self, dir: &[u8]) {
        let below: Vec<Vec<u8>> = self.below(dir).map(|(p, _)| p.to_vec()).collect();
        for p in below {
            self.map.remove(&p);
        }
    }

    pub fn get(&self, path: &[u8]) -> Option<&IndexEntry> {
        self.map.get(path)
    }

    pub fn is_dir(&self, path: &[u8]) -> bool {
        path.is_empty() || self.get(path).is_some_and(|e| e.kind == NodeKind::Dir)
    }

    /// Every path strictly below `dir`, in byte order.
    pub fn below<'a>(&'a self, dir: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a IndexEntry)> {
        let mut start = dir.to_vec();
        if !start.is_empty() {
            start.push(b'/');
        }
        self.map
            .range(start.clone()..)
            .take_while(move |(p, _)| p.starts_with(&start))
            .map(|(p, e)| (p.as_slice(), e))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

// A compact encoding for the store: a magic line, then per record a tag
// byte and length-prefixed fields. Any change needs a new magic.
const MAGIC: &[u8] = b"tplbuild-layer-index-v1\n";

impl LayerIndex {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for p in &self.whiteouts {
            out.push(b'W');
            put(&mut out, p);
        }
        for p in &self.opaque {
            out.push(b'O');
            put(&mut out, p);
        }
        for (p, e) in &self.entries {
            out.push(b'E');
            put(&mut out, p);
            let (tag, a, b, bytes): (u8, u64, u64, &[u8]) = match &e.kind {
                NodeKind::File { size, sha256 } => (b'f', *size, 0, sha256),
                NodeKind::Dir => (b'd', 0, 0, b""),
                NodeKind::Symlink { target } => (b's', 0, 0, target),
                NodeKind::Hardlink { target } => (b'h', 0, 0, target),
                NodeKind::Char { major, minor } => (b'c', (*major).into(), (*minor).into(), b""),
                NodeKind::Block { major, minor } => (b'b', (*major).into(), (*minor).into(), b""),
                NodeKind::Fifo => (b'p', 0, 0, b""),
            };
            out.push(tag);
            for n in [a, b, e.mode.into(), e.uid, e.gid, e.mtime as u64] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            put(&mut out, bytes);
            out.extend_from_slice(&(e.xattrs.len() as u32).to_le_bytes());
            for (k, v) in &e.xattrs {
                put(&mut out, k);
                put(&mut out, v);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> io::Result<Self> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a layer index");
        let mut r = bytes.strip_prefix(MAGIC).ok_or_else(bad)?;
        let mut out = LayerIndex::default();
        while let Some((&tag, rest)) = r.split_first() {
            r = rest;
            match tag {
                b'W' => out.whiteouts.push(get(&mut r).ok_or_else(bad)?),
                b'O' => out.opaque.push(get(&mut r).ok_or_else(bad)?),
                b'E' => {
                    let path = get(&mut r).ok_or_else(bad)?;
                    let (&kind, rest) = r.split_first().ok_or_else(bad)?;
                    r = rest;
                    let mut n = [0u64; 6];
                    for x in &mut n {
                        *x = u64::from_le_bytes(
                            take(&mut r, 8)
                                .ok_or_else(bad)?
                                .try_into()
                                .map_err(|_| bad())?,
                        );
                    }
                    let bytes = get(&mut r).ok_or_else(bad)?;
                    let count = u32::from_le_bytes(
                        take(&mut r, 4)
                            .ok_or_else(bad)?
                            .try_into()
                            .map_err(|_| bad())?,
                    );
                    let mut xattrs = Vec::new();
                    for _ in 0..count {
                        let k = get(&mut r).ok_or_else(bad)?;
                        let v = get(&mut r).ok_or_else(bad)?;
                        xattrs.push((k, v));
                    }
                    let kind = match kind {
                        b'f' => NodeKind::File {
                            size: n[0],
                            sha256: bytes.try_into().map_err(|_| bad())?,
                        },
                        b'd' => NodeKind::Dir,
                        b's' => NodeKind::Symlink { target: bytes },
                        b'h' => NodeKind::Hardlink { target: bytes },
                        b'c' => NodeKind::Char {
                            major: n[0] as u32,
                            minor: n[1] as u32,
                        },
                        b'b' => NodeKind::Block {
                            major: n[0] as u32,
                            minor: n[1] as u32,
                        },
                        b'p' => NodeKind::Fifo,
                        _ => return Err(bad()),
                    };
                    out.entries.push((
                        path,
                        IndexEntry {
                            kind,
                            mode: n[2] as u32,
                            uid: n[3],
                            gid: n[4],
                            mtime: n[5] as i64,
                            xattrs,
                        },
                    ));
                }
                _ => return Err(bad()),
            }
        }
        Ok(out)
    }
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (a, b) = r.split_at(n);
    *r = b;
    Some(a)
}

fn get(r: &mut &[u8]) -> Option<Vec<u8>> {
    let len = u32::from_le_bytes(take(r, 4)?.try_into().ok()?) as usize;
    take(r, len).map(<[u8]>::to_vec)
}

/// For messages: a path as text.
pub(crate) fn show(p: &[u8]) -> String {
    std::ffi::OsStr::from_bytes(p)
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &[u8]) -> IndexEntry {
        IndexEntry {
            kind: NodeKind::File {
                size: content.len() as u64,
                sha256: Sha256::digest(content).into(),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            xattrs: vec![],
        }
    }

    fn link(target: &[u8]) -> IndexEntry {
        IndexEntry {
            kind: NodeKind::Hardlink {
                target: target.to_vec(),
            },
            ..file(b"")
        }
    }

    fn dir() -> IndexEntry {
        IndexEntry {
            kind: NodeKind::Dir,
            mode: 0o755,
            ..file(b"")
        }
    }

    #[test]
    fn whiteouts_and_opaque_markers_hide_only_lower_content() {
        let mut t = TreeIndex::default();
        t.apply(&LayerIndex {
            entries: vec![
                (b"a".to_vec(), dir()),
                (b"a/old".to_vec(), file(b"1")),
                (b"b".to_vec(), file(b"2")),
                (b"c".to_vec(), dir()),
                (b"c/x".to_vec(), file(b"3")),
            ],
            ..Default::default()
        });
        t.apply(&LayerIndex {
            entries: vec![
                (b"a/new".to_vec(), file(b"4")),
                (b"a/new2".to_vec(), link(b"a/new")),
                // Whiteouts apply first: its target is gone, so is the link.
                (b"b2".to_vec(), link(b"b")),
            ],
            whiteouts: vec![b"b".to_vec(), b"c".to_vec()],
            opaque: vec![b"a".to_vec()],
        });
        let paths: Vec<String> = t.below(b"").map(|(p, _)| show(p)).collect();
        assert_eq!(paths, ["a", "a/new", "a/new2"]);
        assert_eq!(t.get(b"a/new2").unwrap().kind, file(b"4").kind);
    }

    #[test]
    fn encoding_round_trips() {
        let l = LayerIndex {
            entries: vec![
                (b"d".to_vec(), dir()),
                (
                    b"d/f".to_vec(),
                    IndexEntry {
                        xattrs: vec![(b"security.capability".to_vec(), vec![1, 2])],
                        ..file(b"x")
                    },
                ),
                (
                    b"d/l".to_vec(),
                    IndexEntry {
                        kind: NodeKind::Symlink {
                            target: b"../f".to_vec(),
                        },
                        ..file(b"")
                    },
                ),
                (
                    b"d/c".to_vec(),
                    IndexEntry {
                        kind: NodeKind::Char { major: 1, minor: 3 },
                        mtime: -5,
                        ..file(b"")
                    },
                ),
            ],
            whiteouts: vec![b"gone".to_vec()],
            opaque: vec![b"d".to_vec()],
        };
        assert_eq!(LayerIndex::decode(&l.encode()).unwrap(), l);
        assert!(LayerIndex::decode(b"junk").is_err());
        let mut cut = l.encode();
        cut.truncate(cut.len() - 3);
        assert!(LayerIndex::decode(&cut).is_err());
    }

    #[test]
    fn paths_are_cleaned_and_below_is_strict() {
        assert_eq!(clean_path(b"./etc/ssh/"), b"etc/ssh");
        assert_eq!(clean_path(b"/./x"), b"x");
        assert!(is_below(b"etc/ssh", b"etc"));
        assert!(!is_below(b"etcx", b"etc"));
        assert!(!is_below(b"etc", b"etc"));
        assert!(is_below(b"etc", b""));
    }
}
