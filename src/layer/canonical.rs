//! Turning a [`ChangeSet`] into the layer's entries, the same whichever
//! source (upper dir or engine API) and engine produced it.
//!
//! The rules, all decided against the parent's [`TreeIndex`]:
//! - a node equal to the parent's (kind, bytes, owner, mode, clamped
//!   mtime, xattrs) is left out: an engine may or may not show a file it
//!   copied up without changing it;
//! - a directory is kept when it is new, when its owner, mode or xattrs
//!   changed, or when something below it is kept (its mtime alone does not
//!   count: Podman touches `/etc` for its mount points);
//! - deletions are explicit `.wh.NAME` entries for the topmost paths the
//!   parent had and the step removed; a replaced directory becomes
//!   whiteouts for exactly what it lost, never an opaque marker (overlayfs
//!   marks directories opaque for reasons of its own, and the API cannot
//!   see the mark at all);
//! - names of one inode become hardlinks to the first kept name;
//! - the volatile, hygiene and exclude rules of [`super::volatile`] apply.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::changeset::{ancestors, Candidate, ChangeSet};
use super::index::{split_parent, IndexEntry, NodeKind, TreeIndex};
use super::ustar::{EntryMeta, Kind};
use super::volatile::{clamp_shadow, classify, NodeType, Verdict};
use super::walk::WHITEOUT_PREFIX;
use super::{LayerError, LayerOptions, LayerReport};

/// Where an entry's bytes come from.
#[derive(Debug, Clone)]
pub(crate) enum Bytes {
    None,
    /// The candidate at this path in the change set.
    Candidate(Vec<u8>),
    Owned(Vec<u8>),
}

#[derive(Debug, Clone)]
pub(crate) enum Out {
    Node { meta: EntryMeta, bytes: Bytes },
    Whiteout(Vec<u8>),
}

/// The layer's entries in order.
pub(crate) fn canonical(
    set: &ChangeSet,
    parent: &TreeIndex,
    opts: &LayerOptions,
    report: &mut LayerReport,
) -> Result<Vec<Out>, LayerError> {
    let read_err = |path: &[u8]| {
        let path = super::index::show(path);
        move |e| LayerError::Source {
            op: "reading",
            path: path.into(),
            source: e,
        }
    };
    let mut kept: BTreeMap<Vec<u8>, Out> = BTreeMap::new();
    let mut groups: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    // Directories: their entry, and whether they stay on their own.
    let mut dirs: BTreeMap<Vec<u8>, (EntryMeta, bool)> = BTreeMap::new();
    let mut has_excluded: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut skipped: Option<Vec<u8>> = None;

    for (path, c) in &set.nodes {
        if let Some(s) = &skipped {
            if super::index::is_below(path, s) {
                continue;
            }
            skipped = None;
        }
        let ty = match c.kind {
            Kind::Dir => NodeType::Dir,
            Kind::Regular { size } => NodeType::Regular { size },
            _ => NodeType::Other,
        };
        let verdict = classify(path, ty, opts);
        let name = split_parent(path).1;
        if name.starts_with(WHITEOUT_PREFIX) {
            return Err(LayerError::ReservedName {
                path: super::index::show(path).into(),
            });
        }
        match verdict {
            Verdict::Excluded => {
                has_excluded.extend(ancestors(path).map(<[u8]>::to_vec));
                skipped = Some(path.clone());
                continue;
            }
            Verdict::Volatile | Verdict::Secret => {
                let list = if verdict == Verdict::Volatile {
                    &mut report.dropped_volatile
                } else {
                    &mut report.removed_secrets
                };
                list.push(super::index::show(path));
                skipped = Some(path.clone());
                continue;
            }
            Verdict::Emptied => report.removed_secrets.push(super::index::show(path)),
            Verdict::Keep | Verdict::Shadow => {}
        }
        let (meta, bytes) = entry(set, path, c, verdict, opts).map_err(read_err(path))?;
        let old = parent.get(path);
        if c.kind == Kind::Dir {
            let own = match old {
                Some(o) if o.kind == NodeKind::Dir => {
                    o.mode != meta.mode
                        || o.uid != meta.uid
                        || o.gid != meta.gid
                        || o.xattrs != meta.xattrs
                }
                // New, or replacing something else: decided below.
                _ => true,
            };
            dirs.insert(path.clone(), (meta, own));
            continue;
        }
        if let Some(o) = old {
            if unchanged(set, &meta, &bytes, o).map_err(read_err(path))? {
                continue;
            }
        }
        if verdict == Verdict::Keep {
            if let Some(g) = c.inode {
                groups.insert(path.clone(), g);
            }
        }
        kept.insert(path.clone(), Out::Node { meta, bytes });
    }
    // A directory the engine did not list whose owner, mode or xattrs
    // differ from the parent's all the same.
    for (path, c) in &set.dirs {
        if set.nodes.contains_key(path) || super::index::is_virtual(path) {
            continue;
        }
        if let Some(o) = parent.get(path).filter(|o| o.kind == NodeKind::Dir) {
            if (o.mode, o.uid, o.gid, &o.xattrs) != (c.mode, c.uid, c.gid, &c.xattrs)
                && classify(path, NodeType::Dir, opts) == Verdict::Keep
            {
                let (meta, _) = entry(set, path, c, Verdict::Keep, opts).map_err(read_err(path))?;
                dirs.insert(path.clone(), (meta, true));
            }
        }
    }
    // A new directory that holds excluded nodes (an engine's mount
    // points) stays only if something else below it does.
    for (path, (_, own)) in dirs.iter_mut() {
        if has_excluded.contains(path) && parent.get(path).is_none_or(|o| o.kind != NodeKind::Dir) {
            *own = false;
        }
    }

    for wh in whiteouts(set, parent, opts) {
        let (dir, name) = split_parent(&wh);
        let mut p = dir.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(WHITEOUT_PREFIX);
        p.extend_from_slice(name);
        kept.insert(p.clone(), Out::Whiteout(p));
    }

    // Names of one inode: the first kept one is the file.
    let mut first: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (path, g) in &groups {
        match first.get(g) {
            Some(target) => {
                if let Some(Out::Node { meta, bytes }) = kept.get_mut(path) {
                    meta.kind = Kind::Hardlink {
                        target: target.clone(),
                    };
                    *bytes = Bytes::None;
                }
            }
            None => {
                first.insert(*g, path.clone());
            }
        }
    }

    // Directories: those that stay on their own, and every parent of a
    // kept entry.
    let mut needed: BTreeSet<Vec<u8>> = dirs
        .iter()
        .filter(|(_, (_, own))| *own)
        .map(|(p, _)| p.clone())
        .collect();
    let mut roots: Vec<Vec<u8>> = kept.keys().cloned().collect();
    roots.extend(needed.iter().cloned());
    for p in &roots {
        needed.extend(ancestors(p).map(<[u8]>::to_vec));
    }
    for p in needed {
        let meta = match dirs.remove(&p) {
            Some((meta, _)) => meta,
            None => match set.dirs.get(&p) {
                Some(c) => {
                    entry(set, &p, c, Verdict::Keep, opts)
                        .map_err(read_err(&p))?
                        .0
                }
                None => match parent.get(&p) {
                    Some(o) if o.kind == NodeKind::Dir => EntryMeta {
                        path: p.clone(),
                        kind: Kind::Dir,
                        mode: o.mode,
                        uid: o.uid,
                        gid: o.gid,
                        mtime: o.mtime,
                        xattrs: o.xattrs.clone(),
                    },
                    _ => continue,
                },
            },
        };
        kept.insert(
            p,
            Out::Node {
                meta,
                bytes: Bytes::None,
            },
        );
    }
    report.removed_secrets.sort();
    report.dropped_volatile.sort();
    Ok(kept.into_values().collect())
}

/// The topmost paths the parent had that the step deleted.
fn whiteouts(set: &ChangeSet, parent: &TreeIndex, opts: &LayerOptions) -> Vec<Vec<u8>> {
    let mut deleted: BTreeSet<Vec<u8>> = set.deleted.clone();
    for r in &set.replaced {
        if parent.is_dir(r) {
            for (q, _) in parent.below(r) {
                if !set.nodes.contains_key(q) {
                    deleted.insert(q.to_vec());
                }
            }
        }
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for d in deleted {
        if set.nodes.contains_key(&d) || parent.get(&d).is_none() {
            continue;
        }
        let covered = ancestors(&d).any(|a| {
            out.binary_search_by(|x| x.as_slice().cmp(a)).is_ok()
                || set.nodes.get(a).is_some_and(|c| c.kind != Kind::Dir)
        });
        if covered || classify(&d, NodeType::Other, opts) == Verdict::Excluded {
            continue;
        }
        out.push(d);
    }
    out
}

/// The entry a candidate becomes: mtime clamped, link mode fixed, secret
/// and shadow rules applied.
fn entry(
    set: &ChangeSet,
    path: &[u8],
    c: &Candidate,
    verdict: Verdict,
    opts: &LayerOptions,
) -> io::Result<(EntryMeta, Bytes)> {
    let mut meta = EntryMeta {
        path: path.to_vec(),
        kind: c.kind.clone(),
        mode: c.mode,
        uid: c.uid,
        gid: c.gid,
        mtime: match opts.epoch {
            Some(e) if c.mtime > e => e,
            _ => c.mtime,
        },
        xattrs: c.xattrs.clone(),
    };
    let mut bytes = match c.kind {
        Kind::Regular { size } if size > 0 => Bytes::Candidate(path.to_vec()),
        _ => Bytes::None,
    };
    match (&c.kind, verdict, opts.epoch) {
        // Link permissions mean nothing on Linux and differ by filesystem.
        (Kind::Symlink { .. }, _, _) => meta.mode = 0o777,
        (Kind::Regular { .. }, Verdict::Emptied, _) => {
            meta.kind = Kind::Regular { size: 0 };
            bytes = Bytes::None;
        }
        (Kind::Regular { size }, Verdict::Shadow, Some(epoch)) if *size <= 16 << 20 => {
            let mut content = Vec::new();
            set.open(c)?.read_to_end(&mut content)?;
            let content = clamp_shadow(&content, epoch);
            meta.kind = Kind::Regular {
                size: content.len() as u64,
            };
            bytes = Bytes::Owned(content);
        }
        _ => {}
    }
    Ok((meta, bytes))
}

/// Whether a non-directory entry is what the parent already has.
fn unchanged(
    set: &ChangeSet,
    meta: &EntryMeta,
    bytes: &Bytes,
    old: &IndexEntry,
) -> io::Result<bool> {
    if old.mode != meta.mode
        || old.uid != meta.uid
        || old.gid != meta.gid
        || old.mtime != meta.mtime
        || old.xattrs != meta.xattrs
    {
        return Ok(false);
    }
    Ok(match (&meta.kind, &old.kind) {
        (
            Kind::Regular { size },
            NodeKind::File {
                size: old_size,
                sha256,
            },
        ) => {
            if size != old_size {
                return Ok(false);
            }
            let mut h = Sha256::new();
            let mut w = super::index::HashWriter(&mut h);
            match bytes {
                Bytes::None => {}
                Bytes::Owned(b) => io::Write::write_all(&mut w, b)?,
                Bytes::Candidate(p) => {
                    let c = &set.nodes[p];
                    io::copy(&mut set.open(c)?, &mut w)?;
                }
            }
            let got: [u8; 32] = h.finalize().into();
            got == *sha256
        }
        (Kind::Symlink { target }, NodeKind::Symlink { target: t }) => target == t,
        (Kind::Char { major, minor }, NodeKind::Char { major: a, minor: b })
        | (Kind::Block { major, minor }, NodeKind::Block { major: a, minor: b }) => {
            major == a && minor == b
        }
        (Kind::Fifo, NodeKind::Fifo) => true,
        _ => false,
    })
}
