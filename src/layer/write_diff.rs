//! Writing a step's layer from a [`ChangeSet`]: made canonical against the
//! parent ([`super::canonical`]), framed by the deterministic tar encoder,
//! compressed on a second thread, and indexed on the way (the next step's
//! parent index needs it, so nobody reads the blob back for it).

use std::io::{self, Read, Write};
use std::sync::mpsc::sync_channel;

use sha2::{Digest as _, Sha256};

use super::canonical::{canonical, Bytes, Out};
use super::changeset::ChangeSet;
use super::compress::{media_type, BlobSink};
use super::index::{IndexEntry, LayerIndex, NodeKind, TreeIndex};
use super::ustar::{EntryMeta, Kind, TarWriter};
use super::write::ChunkWriter;
use super::{LayerError, LayerOptions, LayerReport, WrittenLayer};
use crate::oci::DigestWriter;

/// Write the layer for `set` on top of `parent`; returns it with its index.
pub fn write_changes(
    set: &ChangeSet,
    parent: &TreeIndex,
    out: impl Write,
    opts: &LayerOptions,
) -> Result<(WrittenLayer, LayerIndex), LayerError> {
    let mut report = LayerReport::default();
    let entries = canonical(set, parent, opts, &mut report)?;
    let mut blob = BlobSink::new(out, opts.compression).map_err(LayerError::Write)?;
    let (tx, rx) = sync_channel::<Vec<u8>>(4);
    let (produced, consumed) = std::thread::scope(|s| {
        let producer = s.spawn(move || -> Result<_, LayerError> {
            let mut tar = TarWriter::new(DigestWriter::new(ChunkWriter::new(tx)));
            let mut index = LayerIndex::default();
            for e in entries {
                match e {
                    Out::Whiteout(p) => {
                        tar.append(&EntryMeta::marker(p.clone()), None)
                            .map_err(LayerError::Write)?;
                        report.whiteouts += 1;
                        index.whiteouts.push(hidden_path(&p));
                    }
                    Out::Node { meta, bytes } => {
                        let mut hasher = Sha256::new();
                        let mut data: Box<dyn Read> = match &bytes {
                            Bytes::None => Box::new(io::empty()),
                            Bytes::Owned(b) => Box::new(io::Cursor::new(b.clone())),
                            Bytes::Candidate(p) => {
                                set.open(&set.nodes[p]).map_err(|e| LayerError::Source {
                                    op: "reading",
                                    path: super::index::show(p).into(),
                                    source: e,
                                })?
                            }
                        };
                        let mut tee = Tee {
                            inner: &mut data,
                            hasher: &mut hasher,
                        };
                        tar.append(&meta, Some(&mut tee)).map_err(|e| {
                            if e.kind() == io::ErrorKind::UnexpectedEof {
                                LayerError::Source {
                                    op: "reading",
                                    path: super::index::show(&meta.path).into(),
                                    source: e,
                                }
                            } else {
                                LayerError::Write(e)
                            }
                        })?;
                        index
                            .entries
                            .push((meta.path.clone(), index_entry(&meta, hasher)));
                    }
                }
            }
            report.entries = tar.entries();
            let hashed = tar.finish().map_err(LayerError::Write)?;
            let (mut chunks, diff_id, tar_size) = hashed.finish();
            chunks.flush().map_err(LayerError::Write)?;
            Ok((report, index, diff_id, tar_size))
        });
        let mut consumed = Ok(());
        for chunk in &rx {
            if let Err(e) = blob.write_all(&chunk) {
                consumed = Err(e);
                break;
            }
        }
        drop(rx);
        (producer.join(), consumed)
    });
    let produced = produced.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    consumed.map_err(LayerError::Write)?;
    let (report, index, diff_id, tar_size) = produced?;
    let (digest, size) = blob.finish().map_err(LayerError::Write)?;
    Ok((
        WrittenLayer {
            digest,
            diff_id,
            size,
            uncompressed_size: tar_size,
            media_type: media_type(opts.compression).to_string(),
            report,
        },
        index,
    ))
}

/// `a/.wh.b` → `a/b`.
fn hidden_path(wh: &[u8]) -> Vec<u8> {
    let (dir, name) = super::index::split_parent(wh);
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(&name[super::walk::WHITEOUT_PREFIX.len()..]);
    p
}

fn index_entry(meta: &EntryMeta, hasher: Sha256) -> IndexEntry {
    let kind = match &meta.kind {
        Kind::Regular { size } => NodeKind::File {
            size: *size,
            sha256: hasher.finalize().into(),
        },
        Kind::Dir => NodeKind::Dir,
        Kind::Symlink { target } => NodeKind::Symlink {
            target: target.clone(),
        },
        Kind::Hardlink { target } => NodeKind::Hardlink {
            target: target.clone(),
        },
        Kind::Char { major, minor } => NodeKind::Char {
            major: *major,
            minor: *minor,
        },
        Kind::Block { major, minor } => NodeKind::Block {
            major: *major,
            minor: *minor,
        },
        Kind::Fifo => NodeKind::Fifo,
    };
    IndexEntry {
        kind,
        mode: meta.mode,
        uid: meta.uid,
        gid: meta.gid,
        mtime: meta.mtime,
        xattrs: meta.xattrs.clone(),
    }
}

/// Hashes what is read through it.
struct Tee<'a> {
    inner: &'a mut dyn Read,
    hasher: &'a mut Sha256,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
