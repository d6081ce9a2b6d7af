//! Listing a source tree for a new layer: every node with its metadata and
//! the extended attributes a layer carries, filtered by the volatile and
//! hygiene rules, in the order the layer lists them.
//!
//! The order is the byte order of the relative paths (a parent is a prefix
//! of its children, so it comes first), except that an opaque directory's
//! marker comes straight after the directory. Symlinks are never followed.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::overlay::is_overlay_private;
use super::volatile::{classify, NodeType, Verdict};
use super::{LayerError, LayerOptions, LayerReport};

pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub(crate) const OPAQUE_NAME: &[u8] = b".wh..wh..opq";

pub(crate) enum What {
    /// A node to copy; the verdict is `Keep`, `Emptied` or `Shadow`.
    Node {
        meta: Box<Metadata>,
        verdict: Verdict,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

pub(crate) struct Node {
    /// The tar path: relative, no trailing slash.
    rel: Vec<u8>,
    what: What,
}

impl Node {
    pub fn into_parts(self) -> (Vec<u8>, What) {
        (self.rel, self.what)
    }
}

/// List `root` (which itself is not an entry).
pub(crate) fn collect(
    root: &Path,
    opts: &LayerOptions,
    report: &mut LayerReport,
) -> Result<Vec<Node>, LayerError> {
    let mut nodes = Vec::new();
    let mut w = Walker {
        root,
        opts,
        report,
        nodes: &mut nodes,
        excluded: 0,
    };
    w.walk()?;
    nodes.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
    report.removed_secrets.sort();
    report.dropped_volatile.sort();
    Ok(nodes)
}

struct Walker<'a> {
    root: &'a Path,
    opts: &'a LayerOptions,
    report: &'a mut LayerReport,
    nodes: &'a mut Vec<Node>,
    /// How many excluded nodes were seen so far.
    excluded: usize,
}

impl Walker<'_> {
    fn path(&self, rel: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(rel))
    }

    /// Every node below the root. A stack of open listings, not
    /// recursion: a tree can be ~2,000 directories deep, and this runs on a
    /// 2 MiB thread stack.
    fn walk(&mut self) -> Result<(), LayerError> {
        let mut rel = Vec::new();
        let mut stack = vec![self.list(&rel)?];
        while let Some((read, dir_len, dir_path)) = stack.last_mut() {
            let Some(entry) = read.next() else {
                stack.pop();
                continue;
            };
            let entry = entry.map_err(|e| source_err("listing", dir_path, e))?;
            let name = entry.file_name();
            rel.truncate(*dir_len);
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            if self.node(&rel, name.as_bytes())? {
                stack.push(self.list(&rel)?);
            }
        }
        Ok(())
    }

    /// The listing of directory `rel`, with the length of `rel`.
    fn list(&self, rel: &[u8]) -> Result<(fs_err::ReadDir, usize, PathBuf), LayerError> {
        let dir_path = self.path(rel);
        let read = fs_err::read_dir(&dir_path).map_err(|e| source_err("listing", &dir_path, e))?;
        Ok((read, rel.len(), dir_path))
    }

    /// Record the node at `rel`; true if it is a directory to list.
    fn node(&mut self, rel: &[u8], name: &[u8]) -> Result<bool, LayerError> {
        let path = self.path(rel);
        let meta = fs_err::symlink_metadata(&path).map_err(|e| source_err("reading", &path, e))?;
        let all_xattrs =
            read_xattrs(&path).map_err(|e| source_err("reading xattrs of", &path, e))?;

        let ty = if meta.is_dir() {
            NodeType::Dir
        } else if meta.is_file() {
            NodeType::Regular { size: meta.len() }
        } else {
            NodeType::Other
        };
        let verdict = classify(rel, ty, self.opts);

        if name.starts_with(WHITEOUT_PREFIX) {
            return Err(LayerError::ReservedName { path });
        }
        match verdict {
            Verdict::Excluded => {
                self.excluded += 1;
                return Ok(false);
            }
            Verdict::Volatile => {
                self.report
                    .dropped_volatile
                    .push(String::from_utf8_lossy(rel).into_owned());
                return Ok(false);
            }
            Verdict::Secret => {
                self.report
                    .removed_secrets
                    .push(String::from_utf8_lossy(rel).into_owned());
                return Ok(false);
            }
            Verdict::Emptied => {
                self.report
                    .removed_secrets
                    .push(String::from_utf8_lossy(rel).into_owned());
            }
            Verdict::Keep | Verdict::Shadow => {}
        }

        let is_dir = meta.is_dir();
        let mut xattrs: Vec<_> = all_xattrs
            .into_iter()
            .filter(|(k, _)| carried_xattr(k))
            .collect();
        xattrs.sort();
        self.nodes.push(Node {
            rel: rel.to_vec(),
            what: What::Node {
                meta: Box::new(meta),
                verdict,
                xattrs,
            },
        });
        Ok(is_dir)
    }
}

fn source_err(op: &'static str, path: &Path, e: io::Error) -> LayerError {
    LayerError::Source {
        op,
        path: path.to_path_buf(),
        source: e,
    }
}

/// The attributes a layer keeps: file capabilities, user and trusted
/// attributes, never overlay's own. SELinux labels and ACLs are left to
/// the target system's policy.
pub(crate) fn carried_xattr(name: &[u8]) -> bool {
    (name == b"security.capability" || name.starts_with(b"user.") || name.starts_with(b"trusted."))
        && !is_overlay_private(name)
        && !name.contains(&b'=')
}

/// All extended attributes of `path` itself (a symlink is not followed).
pub(crate) fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(n) => n,
            Err(rustix::io::Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            Err(rustix::io::Errno::RANGE) => continue, // grew meanwhile
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = OsStr::from_bytes(name);
        let value = loop {
            let size = match rustix::fs::lgetxattr_query(path, cname) {
                Ok(n) => n,
                Err(rustix::io::Errno::NODATA) => break None, // removed meanwhile
                Err(e) => return Err(e.into()),
            };
            let mut buf = vec![0u8; size];
            match rustix::fs::lgetxattr(path, cname, &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    break Some(buf);
                }
                Err(rustix::io::Errno::RANGE) => continue,
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(v) = value {
            out.push((name.to_vec(), v));
        }
    }
    Ok(out)
}
