//! What a step container changed, as the engine shows it, before it is
//! made canonical: candidate nodes (with where their bytes are), deleted
//! paths, and directories that were replaced as a whole.
//!
//! Two sources give one [`ChangeSet`]:
//! - [`ChangeSet::from_upper`]: the overlay upper dir (local, root): every
//!   node in it is a candidate, a 0/0 device or `overlay.whiteout` file is
//!   a deletion, an `overlay.opaque` directory was replaced;
//! - [`ChangeSet::from_export`]: the engine's `changes` list and its
//!   `export` tar (any engine, local or remote): listed paths are
//!   candidates, their bytes are spooled to a temp file; a path listed as
//!   deleted that the export still holds is a replaced directory (Podman's
//!   way of saying it), and everything below it is a candidate.
//!
//! Engines disagree on details (Docker leaves a copied-up but unchanged
//! file out of `changes`, Podman lists it); [`super::canonical`] compares
//! candidates with the parent so those details do not reach the layer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::index::{clean_path, pax_owner_and_xattrs, show, IndexEntry, NodeKind, TreeIndex};
use super::overlay::{classify_upper, UpperNode};
use super::ustar::Kind;
use super::walk::{carried_xattr, read_xattrs, WHITEOUT_PREFIX};
use super::LayerError;

/// Where a candidate regular file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Content {
    None,
    Disk(PathBuf),
    /// In the change set's spool file.
    Spool {
        offset: u64,
    },
}

/// One changed node. `kind` is never [`Kind::Hardlink`]: names of one
/// inode share an `inode` group instead.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    /// Only those a layer carries, sorted.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub content: Content,
    pub inode: Option<u64>,
}

/// A kind of change the engine's `changes` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Modified,
    Added,
    Deleted,
}

/// A step's changes, not yet canonical.
#[derive(Debug, Default)]
pub struct ChangeSet {
    pub(crate) nodes: BTreeMap<Vec<u8>, Candidate>,
    /// Paths that no longer exist (may include ones re-created since).
    pub(crate) deleted: BTreeSet<Vec<u8>>,
    /// Directories whose old contents are all gone (re-created ones
    /// included): everything the parent had below them and the change set
    /// lacks was deleted.
    pub(crate) replaced: BTreeSet<Vec<u8>>,
    /// Metadata of every directory the source showed, for parents that a
    /// kept node needs but the engine did not list.
    pub(crate) dirs: BTreeMap<Vec<u8>, Candidate>,
    pub(crate) spool: Option<File>,
    /// Candidates that name a file the export did not list as changed as
    /// their hardlink target: their bytes must be fetched separately.
    pub(crate) missing_content: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes read from the source: the export stream, or the upper dir's
    /// file contents.
    pub read_bytes: u64,
}

impl ChangeSet {
    /// The bytes of a candidate regular file.
    pub(crate) fn open(&self, c: &Candidate) -> io::Result<Box<dyn Read + '_>> {
        let size = match c.kind {
            Kind::Regular { size } => size,
            _ => 0,
        };
        match &c.content {
            Content::None => Ok(Box::new(io::empty())),
            Content::Disk(path) => {
                use fs_err::os::unix::fs::OpenOptionsExt;
                // O_NOFOLLOW: a file swapped for a link since it was listed
                // fails rather than reads whatever the link points to.
                let f = fs_err::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)?;
                Ok(Box::new(f.take(size)))
            }
            Content::Spool { offset } => {
                let spool = self
                    .spool
                    .as_ref()
                    .ok_or_else(|| io::Error::other("spooled content without a spool"))?;
                Ok(Box::new(SpoolReader {
                    file: spool,
                    pos: *offset,
                    left: size,
                }))
            }
        }
    }

    /// Read an overlay upper directory.
    pub fn from_upper(upper: &Path) -> Result<Self, LayerError> {
        let mut set = ChangeSet::default();
        let mut inodes: HashMap<(u64, u64), u64> = HashMap::new();
        let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(dir) = stack.pop() {
            let dir_path = upper.join(OsStr::from_bytes(&dir));
            let read =
                fs_err::read_dir(&dir_path).map_err(|e| source_err("listing", &dir_path, e))?;
            for entry in read {
                let entry = entry.map_err(|e| source_err("listing", &dir_path, e))?;
                let name = entry.file_name();
                let mut rel = dir.clone();
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(name.as_bytes());
                let path = upper.join(OsStr::from_bytes(&rel));
                let meta =
                    fs_err::symlink_metadata(&path).map_err(|e| source_err("reading", &path, e))?;
                let all =
                    read_xattrs(&path).map_err(|e| source_err("reading xattrs of", &path, e))?;
                let node = classify_upper(&meta, &all).map_err(|reason| LayerError::Overlay {
                    path: path.clone(),
                    reason,
                })?;
                if node == UpperNode::Whiteout {
                    set.deleted.insert(rel);
                    continue;
                }
                if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
                    return Err(LayerError::ReservedName { path });
                }
                if node == UpperNode::OpaqueDir {
                    set.replaced.insert(rel.clone());
                }
                let ft = meta.file_type();
                let kind = if ft.is_dir() {
                    stack.push(rel.clone());
                    Kind::Dir
                } else if ft.is_symlink() {
                    let target = fs_err::read_link(&path)
                        .map_err(|e| source_err("reading link", &path, e))?;
                    Kind::Symlink {
                        target: target.as_os_str().as_bytes().to_vec(),
                    }
                } else if ft.is_file() {
                    Kind::Regular { size: meta.len() }
                } else if ft.is_char_device() || ft.is_block_device() {
                    let rdev = meta.rdev();
                    let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
                    if ft.is_char_device() {
                        Kind::Char { major, minor }
                    } else {
                        Kind::Block { major, minor }
                    }
                } else if ft.is_fifo() {
                    Kind::Fifo
                } else {
                    continue; // a socket: a tar cannot hold it
                };
                let inode = (!ft.is_dir() && meta.nlink() > 1).then(|| {
                    let next = inodes.len() as u64;
                    *inodes.entry((meta.dev(), meta.ino())).or_insert(next)
                });
                let mut xattrs: Vec<_> =
                    all.into_iter().filter(|(k, _)| carried_xattr(k)).collect();
                xattrs.sort();
                if let Kind::Regular { size } = kind {
                    set.read_bytes += size;
                }
                let content = if matches!(kind, Kind::Regular { size } if size > 0) {
                    Content::Disk(path)
                } else {
                    Content::None
                };
                let cand = Candidate {
                    kind,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid().into(),
                    gid: meta.gid().into(),
                    mtime: meta.mtime(),
                    xattrs,
                    content,
                    inode,
                };
                if cand.kind == Kind::Dir {
                    set.dirs.insert(rel.clone(), cand.clone());
                }
                set.nodes.insert(rel, cand);
            }
        }
        Ok(set)
    }

    /// Read the engine's `changes` and its `export` of the container's
    /// whole filesystem (an uncompressed tar); the bytes of changed files
    /// go to a spool file in `spool_dir`. Paths in `changes` are absolute.
    ///
    /// `changes` is not trusted to be complete: Docker leaves out a file
    /// whose size, mode, owner and mtime match the image's even when its
    /// bytes differ (shadow-utils' `/etc/group-` backups do that), and
    /// Podman leaves out an owner change. So every node the parent has is
    /// compared with `parent` (metadata; and the sha256 for a file in a
    /// directory listed as changed) and kept if it differs. `epoch` clamps
    /// mtimes as the layer will.
    pub fn from_export(
        changes: &[(String, ChangeKind)],
        export: impl Read,
        spool_dir: &Path,
        parent: &TreeIndex,
        epoch: Option<i64>,
    ) -> Result<Self, LayerError> {
        let mut set = ChangeSet::default();
        let mut listed: HashMap<Vec<u8>, ChangeKind> = HashMap::new();
        let mut deleted_listed: BTreeSet<Vec<u8>> = BTreeSet::new();
        for (p, kind) in changes {
            let p = clean_path(p.as_bytes());
            if p.is_empty() {
                continue;
            }
            if *kind == ChangeKind::Deleted {
                deleted_listed.insert(p.clone());
            }
            listed.insert(p, *kind);
        }
        let spool_err = |e| LayerError::Write(e);
        let mut spool = tempfile::tempfile_in(spool_dir).map_err(spool_err)?;
        let mut spooled: u64 = 0;
        // Names seen as files in the export (candidates or not), for links.
        let mut group_of: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut groups = 0u64;
        let mut present_deleted: BTreeSet<Vec<u8>> = BTreeSet::new();

        let read_err = LayerError::ReadTar;
        let counted = Counted {
            inner: export,
            n: std::rc::Rc::new(std::cell::Cell::new(0)),
        };
        let read = counted.n.clone();
        let mut ar = tar::Archive::new(counted);
        for entry in ar.entries().map_err(read_err)? {
            let mut e = entry.map_err(read_err)?;
            let path = clean_path(&e.path_bytes());
            if path.is_empty() {
                continue;
            }
            let under_replaced = ancestors(&path).any(|a| present_deleted.contains(a));
            let is_listed = match listed.get(&path) {
                Some(ChangeKind::Deleted) => {
                    // Still there: removed and made again.
                    present_deleted.insert(path.clone());
                    set.replaced.insert(path.clone());
                    true
                }
                Some(_) => true,
                None => under_replaced,
            };
            let ty = e.header().entry_type();
            let old_file = || match parent.get(&path) {
                Some(IndexEntry {
                    kind: NodeKind::File { size, sha256 },
                    ..
                }) => Some((*size, *sha256)),
                _ => None,
            };
            // Not listed, but the parent had it: compare (see above).
            let compare = !is_listed
                && ty != tar::EntryType::Directory
                && ty != tar::EntryType::Link
                && !super::index::is_virtual(&path)
                && parent.get(&path).is_some();
            if !is_listed && !compare && ty != tar::EntryType::Directory {
                continue; // unchanged: its bytes are skipped, not read
            }
            let (uid, gid, xattrs) = pax_owner_and_xattrs(&mut e).map_err(read_err)?;
            let h = e.header().clone();
            let h = &h;
            let num = |r: io::Result<u64>| r.map_err(read_err);
            let mode = num(h.mode().map(u64::from))? as u32 & 0o7777;
            let uid = uid.unwrap_or(num(h.uid())?);
            let gid = gid.unwrap_or(num(h.gid())?);
            let mtime = num(h.mtime())? as i64;
            let mut check = false;
            if compare {
                let old = parent.get(&path).expect("compared above");
                let clamped = match epoch {
                    Some(ep) if mtime > ep => ep,
                    _ => mtime,
                };
                let link = e.link_name_bytes().map(|l| l.to_vec()).unwrap_or_default();
                let same_kind = match (&old.kind, ty) {
                    (
                        NodeKind::File { size, .. },
                        tar::EntryType::Regular | tar::EntryType::Continuous,
                    ) => Some(*size) == h.size().ok(),
                    (NodeKind::Symlink { target }, tar::EntryType::Symlink) => *target == link,
                    (NodeKind::Char { major, minor }, tar::EntryType::Char)
                    | (NodeKind::Block { major, minor }, tar::EntryType::Block) => {
                        h.device_major().ok().flatten() == Some(*major)
                            && h.device_minor().ok().flatten() == Some(*minor)
                    }
                    (NodeKind::Fifo, tar::EntryType::Fifo) => true,
                    _ => false,
                };
                let same_meta = same_kind
                    && old.mode == mode
                    && old.uid == uid
                    && old.gid == gid
                    && old.mtime == clamped
                    && old.xattrs == xattrs;
                if same_meta {
                    // Only the bytes can differ, and only a directory the
                    // engine listed is worth reading for that.
                    let dir = super::index::split_parent(&path).0;
                    let dir_listed = matches!(
                        listed.get(dir),
                        Some(ChangeKind::Modified | ChangeKind::Added)
                    );
                    if !(dir_listed && matches!(old.kind, NodeKind::File { .. })) {
                        continue;
                    }
                    check = true;
                }
            }
            let dev = || -> Result<(u32, u32), LayerError> {
                Ok((
                    h.device_major().map_err(read_err)?.unwrap_or(0),
                    h.device_minor().map_err(read_err)?.unwrap_or(0),
                ))
            };
            let mut inode = None;
            let mut content = Content::None;
            let kind = match ty {
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Symlink => Kind::Symlink {
                    target: e.link_name_bytes().map(|l| l.to_vec()).unwrap_or_default(),
                },
                tar::EntryType::Char => {
                    let (major, minor) = dev()?;
                    Kind::Char { major, minor }
                }
                tar::EntryType::Block => {
                    let (major, minor) = dev()?;
                    Kind::Block { major, minor }
                }
                tar::EntryType::Fifo => Kind::Fifo,
                tar::EntryType::Link => {
                    let target = clean_path(&e.link_name_bytes().unwrap_or_default());
                    let group = *group_of.entry(target.clone()).or_insert_with(|| {
                        groups += 1;
                        groups
                    });
                    inode = Some(group);
                    match set.nodes.get_mut(&target) {
                        Some(t) => {
                            t.inode = Some(group);
                            content = t.content.clone();
                            t.kind.clone()
                        }
                        None => {
                            // The first name was not changed; its bytes
                            // come separately.
                            set.missing_content.push((path.clone(), target));
                            Kind::Regular { size: 0 }
                        }
                    }
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let offset = spooled;
                    let mut hasher = Sha256::new();
                    // A failed read is the engine's stream; a failed write, our disk.
                    let mut n = 0u64;
                    let mut buf = [0u8; 64 * 1024];
                    loop {
                        let k = match e.read(&mut buf) {
                            Ok(0) => break,
                            Ok(k) => k,
                            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                            Err(err) => return Err(LayerError::ReadTar(err)),
                        };
                        spool.write_all(&buf[..k]).map_err(spool_err)?;
                        hasher.update(&buf[..k]);
                        n += k as u64;
                    }
                    if check {
                        // Metadata is equal (checked above); the bytes?
                        let same = old_file() == Some((n, hasher.finalize().into()));
                        if same {
                            // Not a change after all: forget its bytes.
                            spool.set_len(offset).map_err(spool_err)?;
                            spool.seek(io::SeekFrom::Start(offset)).map_err(spool_err)?;
                            continue;
                        }
                    }
                    spooled += n;
                    if n > 0 {
                        content = Content::Spool { offset };
                    }
                    Kind::Regular { size: n }
                }
                other => {
                    tracing::debug!("export: skipping {} of type {other:?}", show(&path));
                    continue;
                }
            };
            let cand = Candidate {
                kind,
                mode,
                uid,
                gid,
                mtime,
                xattrs,
                content,
                inode,
            };
            if cand.kind == Kind::Dir {
                set.dirs.insert(path.clone(), cand.clone());
            }
            if is_listed || compare {
                set.nodes.insert(path, cand);
            }
        }
        spool.flush().map_err(spool_err)?;
        set.spool = Some(spool);
        set.read_bytes = read.get();
        // Listed as deleted and not in the export: gone.
        for p in deleted_listed {
            if !present_deleted.contains(&p) {
                set.deleted.insert(p);
            }
        }
        Ok(set)
    }

    /// Give a candidate that hardlinks to an unchanged file its bytes,
    /// fetched by the caller (one regular file's tar, as the engine's
    /// archive API returns it).
    pub fn fill_missing(&mut self, path: &[u8], tar: impl Read) -> Result<(), LayerError> {
        let read_err = LayerError::ReadTar;
        let mut ar = tar::Archive::new(tar);
        let mut entries = ar.entries().map_err(read_err)?;
        let mut e = entries
            .next()
            .ok_or_else(|| {
                LayerError::ReadTar(io::Error::other("the engine sent an empty archive"))
            })?
            .map_err(read_err)?;
        let spool = self
            .spool
            .as_mut()
            .ok_or_else(|| LayerError::Write(io::Error::other("no spool")))?;
        let offset = spool
            .seek(io::SeekFrom::End(0))
            .map_err(LayerError::Write)?;
        let n = io::copy(&mut e, spool).map_err(LayerError::Write)?;
        if let Some(c) = self.nodes.get_mut(path) {
            c.kind = Kind::Regular { size: n };
            c.content = if n > 0 {
                Content::Spool { offset }
            } else {
                Content::None
            };
        }
        // Later names of the same group share the bytes.
        let group = self.nodes.get(path).and_then(|c| c.inode);
        if let Some(g) = group {
            for c in self.nodes.values_mut().filter(|c| c.inode == Some(g)) {
                c.kind = Kind::Regular { size: n };
                c.content = if n > 0 {
                    Content::Spool { offset }
                } else {
                    Content::None
                };
            }
        }
        Ok(())
    }

    /// The bytes of a changed regular file at `path`, if it is one (e.g.
    /// dpkg's status, for the image's package list).
    pub fn read_file(&self, path: &[u8]) -> Option<Vec<u8>> {
        let c = self.nodes.get(path)?;
        if !matches!(c.kind, Kind::Regular { .. }) {
            return None;
        }
        let mut out = Vec::new();
        self.open(c).ok()?.read_to_end(&mut out).ok()?;
        Some(out)
    }
}

/// `a/b/c` → `a/b`, `a` (not the root).
pub(crate) fn ancestors(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut end = p.len();
    std::iter::from_fn(move || {
        let i = p[..end].iter().rposition(|&b| b == b'/')?;
        end = i;
        Some(&p[..i])
    })
}

/// Counts what is read through it.
struct Counted<R> {
    inner: R,
    n: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.set(self.n.get() + k as u64);
        Ok(k)
    }
}

struct SpoolReader<'a> {
    file: &'a File,
    pos: u64,
    left: u64,
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = buf.len().min(self.left as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spool file too short",
            ));
        }
        self.pos += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

fn source_err(op: &'static str, path: &Path, e: io::Error) -> LayerError {
    LayerError::Source {
        op,
        path: path.to_path_buf(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{write_changes, LayerIndex, LayerOptions};
    use crate::oci::Compression;

    /// A tar as an engine exports it: (path, content or None for a dir,
    /// hardlink target).
    fn tar_of(entries: &[(&str, Option<&str>, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(100);
            h.set_uid(0);
            h.set_gid(0);
            match (content, link) {
                (_, Some(target)) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).unwrap();
                }
                (Some(c), None) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(c.len() as u64);
                    b.append_data(&mut h, path, c.as_bytes()).unwrap();
                }
                (None, None) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, path, std::io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn layer(set: &ChangeSet, parent: &TreeIndex) -> (Vec<u8>, Vec<String>) {
        let opts = LayerOptions {
            epoch: Some(1000),
            compression: Compression::None,
            ..Default::default()
        };
        let mut out = Vec::new();
        write_changes(set, parent, &mut out, &opts).unwrap();
        let mut ar = tar::Archive::new(&out[..]);
        let names = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e.link_name_bytes().map(|l| format!(" -> {}", show(&l)));
                format!("{}{}", show(&e.path_bytes()), link.unwrap_or_default())
            })
            .collect();
        (out, names)
    }

    #[test]
    fn docker_and_podman_ways_of_reporting_a_replaced_directory_give_one_layer() {
        let lower = tar_of(&[
            ("opt/", None, None),
            ("opt/a/", None, None),
            ("opt/a/b/", None, None),
            ("opt/a/b/f", Some("1"), None),
            ("opt/a/g", Some("2"), None),
            ("opt/k", Some("keep"), None),
        ]);
        let mut parent = TreeIndex::default();
        parent.apply(&LayerIndex::read(&lower[..]).unwrap());
        // After `rm -rf /opt/a && mkdir -p /opt/a/b && echo 3 > /opt/a/h &&
        // ln /opt/k /opt/k2 && ln /opt/a/h /opt/a/h2`.
        let export = tar_of(&[
            ("opt/", None, None),
            ("opt/a/", None, None),
            ("opt/a/b/", None, None),
            ("opt/a/h", Some("3"), None),
            ("opt/a/h2", None, Some("opt/a/h")),
            ("opt/k", Some("keep"), None),
            ("opt/k2", None, Some("opt/k")),
        ]);
        use ChangeKind::*;
        let docker: Vec<(String, ChangeKind)> = [
            ("/opt", Modified),
            ("/opt/a", Modified),
            ("/opt/a/b", Modified),
            ("/opt/a/b/f", Deleted),
            ("/opt/a/g", Deleted),
            ("/opt/a/h", Added),
            ("/opt/a/h2", Added),
            ("/opt/k2", Added),
        ]
        .iter()
        .map(|(p, k)| (p.to_string(), *k))
        .collect();
        let podman: Vec<(String, ChangeKind)> = [
            ("/opt", Modified),
            ("/opt/a", Deleted),
            ("/opt/a/b", Modified),
            ("/opt/a/h", Added),
            ("/opt/k", Modified),
            ("/opt/k2", Added),
        ]
        .iter()
        .map(|(p, k)| (p.to_string(), *k))
        .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut sets = vec![];
        for changes in [&docker, &podman] {
            let mut set =
                ChangeSet::from_export(changes, &export[..], dir.path(), &parent, Some(1000))
                    .unwrap();
            // The caller fetches the bytes of a link to an unchanged file.
            for (path, target) in std::mem::take(&mut set.missing_content) {
                assert_eq!(show(&target), "opt/k");
                set.fill_missing(&path, &tar_of(&[("k", Some("keep"), None)])[..])
                    .unwrap();
            }
            sets.push(set);
        }
        let (docker_layer, names) = layer(&sets[0], &parent);
        let (podman_layer, _) = layer(&sets[1], &parent);
        assert_eq!(
            names,
            [
                "opt/",
                "opt/a/",
                "opt/a/.wh.g",
                "opt/a/b/",
                "opt/a/b/.wh.f",
                "opt/a/h",
                "opt/a/h2 -> opt/a/h",
                // opt/k is unchanged, so its new name is a file of its own.
                "opt/k2",
            ]
        );
        assert_eq!(docker_layer, podman_layer);
    }
}
