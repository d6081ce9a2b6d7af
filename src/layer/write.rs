//! Writing a deterministic layer blob from a whole tree on disk (template
//! import, flattening). Equal trees give byte-identical blobs. A step's
//! diff is written by `write_diff` from a change set instead.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use fs_err::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};

use super::compress::{media_type, BlobSink};
use super::ustar::{EntryMeta, Kind, TarWriter};
use super::volatile::{clamp_shadow, Verdict};
use super::walk::{collect, Node, What};
use super::{LayerError, LayerOptions, LayerReport, WrittenLayer};
use crate::oci::{Digest, DigestWriter};

/// Deterministic layer from a directory tree (template import from a dir,
/// and flattening to tar). Entries are sorted by path bytes, parents first;
/// owners are numeric only; mtimes are clamped to `opts.epoch`; hardlinks
/// are detected by (dev, ino) — the first path in sorted order is the file,
/// later ones are hardlink entries; symlinks, fifos, devices and xattrs
/// (`security.capability`, `user.*`, `trusted.*` but not overlay's own)
/// are kept; long and non-UTF-8 names go into PAX records. `root` itself is
/// not an entry. Sockets are skipped: a tar cannot hold them.
pub fn write_dir(
    root: &Path,
    out: impl Write,
    opts: &LayerOptions,
) -> Result<WrittenLayer, LayerError> {
    write_tree(root, out, opts)
}

fn write_tree(
    root: &Path,
    out: impl Write,
    opts: &LayerOptions,
) -> Result<WrittenLayer, LayerError> {
    let mut report = LayerReport::default();
    let nodes = collect(root, opts, &mut report)?;
    let mut blob = BlobSink::new(out, opts.compression).map_err(LayerError::Write)?;

    // Two threads, because compression costs about four times what reading,
    // framing and hashing do: this one compresses (and owns `out`, which
    // need not be Send); the other reads files into tar chunks.
    let (tx, rx) = sync_channel::<Vec<u8>>(4);
    let (produced, consumed) = std::thread::scope(|s| {
        let producer = s.spawn(move || produce(root, opts, nodes, report, tx));
        let mut consumed = Ok(());
        for chunk in &rx {
            if let Err(e) = blob.write_all(&chunk) {
                consumed = Err(e);
                break;
            }
        }
        drop(rx); // a producer still sending now stops with BrokenPipe
        (producer.join(), consumed)
    });
    let produced = produced.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    consumed.map_err(LayerError::Write)?;
    let (report, diff_id, tar_size) = produced?;
    let (digest, size) = blob.finish().map_err(LayerError::Write)?;
    Ok(WrittenLayer {
        digest,
        diff_id,
        size,
        uncompressed_size: tar_size,
        media_type: media_type(opts.compression).to_string(),
        report,
    })
}

/// The reading half: nodes in, tar chunks out; returns the report, the
/// diff_id and the tar's size.
fn produce(
    root: &Path,
    opts: &LayerOptions,
    nodes: Vec<Node>,
    mut report: LayerReport,
    tx: SyncSender<Vec<u8>>,
) -> Result<(LayerReport, Digest, u64), LayerError> {
    let chunks = ChunkWriter {
        buf: Vec::with_capacity(CHUNK + BLOCK_SLACK),
        tx,
    };
    let mut tar = TarWriter::new(DigestWriter::new(chunks));
    let mut first_of_inode: HashMap<(u64, u64), Vec<u8>> = HashMap::new();

    for node in nodes {
        let (rel, what) = node.into_parts();
        match what {
            What::Node {
                meta,
                verdict,
                xattrs,
            } => {
                let path = root.join(std::ffi::OsStr::from_bytes(&rel));
                let mut entry = EntryMeta {
                    path: rel,
                    kind: Kind::Dir,
                    mode: meta.mode() & 0o7777,
                    uid: u64::from(meta.uid()),
                    gid: u64::from(meta.gid()),
                    mtime: clamp(meta.mtime(), opts.epoch),
                    xattrs,
                };
                let ft = meta.file_type();
                let mut data: Option<Tracked> = None;
                if ft.is_dir() {
                    entry.kind = Kind::Dir;
                } else if ft.is_symlink() {
                    let target = fs_err::read_link(&path)
                        .map_err(|e| source_err("reading link", &path, e))?;
                    entry.kind = Kind::Symlink {
                        target: target.into_os_string().into_vec(),
                    };
                    // Link permissions mean nothing on Linux and differ by
                    // filesystem; fix them so equal trees stay equal.
                    entry.mode = 0o777;
                } else if let Some(target) = (verdict == Verdict::Keep)
                    .then(|| hardlink_target(&meta, &entry.path, &mut first_of_inode))
                    .flatten()
                {
                    // Only unchanged files share an inode in the layer: an
                    // emptied machine-id must not become a link to, or the
                    // target of, a name that still has the content.
                    entry.kind = Kind::Hardlink { target };
                } else if ft.is_file() {
                    let (size, reader) = file_data(&path, &meta, verdict, opts.epoch)?;
                    entry.kind = Kind::Regular { size };
                    data = reader.map(|inner| Tracked {
                        inner,
                        failed: false,
                    });
                } else if ft.is_char_device() || ft.is_block_device() {
                    let rdev = meta.rdev();
                    let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
                    entry.kind = if ft.is_char_device() {
                        Kind::Char { major, minor }
                    } else {
                        Kind::Block { major, minor }
                    };
                } else if ft.is_fifo() {
                    entry.kind = Kind::Fifo;
                } else {
                    continue; // a socket
                }
                let res = tar.append(&entry, data.as_mut().map(|d| d as &mut dyn Read));
                if let Err(e) = res {
                    let source_failed = data.as_ref().is_some_and(|d| d.failed);
                    return Err(
                        if source_failed || e.kind() == io::ErrorKind::UnexpectedEof {
                            source_err("reading", &path, e)
                        } else {
                            LayerError::Write(e)
                        },
                    );
                }
            }
        }
    }
    report.entries = tar.entries();
    let hashed = tar.finish().map_err(LayerError::Write)?;
    let (mut chunks, diff_id, tar_size) = hashed.finish();
    chunks.flush().map_err(LayerError::Write)?;
    Ok((report, diff_id, tar_size))
}

const CHUNK: usize = 1 << 20;
const BLOCK_SLACK: usize = 64 << 10;

/// Collects the tar into 1 MiB chunks for the compressing thread.
pub(crate) struct ChunkWriter {
    buf: Vec<u8>,
    tx: SyncSender<Vec<u8>>,
}

impl ChunkWriter {
    pub(crate) fn new(tx: SyncSender<Vec<u8>>) -> Self {
        ChunkWriter {
            buf: Vec::with_capacity(CHUNK + BLOCK_SLACK),
            tx,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + BLOCK_SLACK));
        self.tx
            .send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the layer writer stopped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

/// A source file reader that remembers whether reading failed, so that a
/// read error is reported against the file, not the blob being written.
struct Tracked {
    inner: Box<dyn Read>,
    failed: bool,
}

impl Read for Tracked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| self.failed = true)
    }
}

fn clamp(mtime: i64, epoch: Option<i64>) -> i64 {
    match epoch {
        Some(e) if mtime > e => e,
        _ => mtime,
    }
}

/// For a second (or later) name of a multiply linked inode, the first name.
fn hardlink_target(
    meta: &Metadata,
    rel: &[u8],
    first: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Option<Vec<u8>> {
    if meta.is_dir() || meta.nlink() < 2 {
        return None;
    }
    match first.entry((meta.dev(), meta.ino())) {
        std::collections::hash_map::Entry::Occupied(o) => Some(o.get().clone()),
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(rel.to_vec());
            None
        }
    }
}

/// A regular file's size and content as the layer has them.
fn file_data(
    path: &Path,
    meta: &Metadata,
    verdict: Verdict,
    epoch: Option<i64>,
) -> Result<(u64, Option<Box<dyn Read>>), LayerError> {
    match (verdict, epoch) {
        (Verdict::Emptied, _) => Ok((0, None)),
        (Verdict::Shadow, Some(epoch)) if meta.len() <= 16 << 20 => {
            let content = fs_err::read(path).map_err(|e| source_err("reading", path, e))?;
            let content = clamp_shadow(&content, epoch);
            Ok((
                content.len() as u64,
                Some(Box::new(io::Cursor::new(content))),
            ))
        }
        _ if meta.len() == 0 => Ok((0, None)),
        _ => {
            // O_NOFOLLOW: if the file was swapped for a symlink since it was
            // listed, fail rather than read whatever the link points to.
            let file = fs_err::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| source_err("opening", path, e))?;
            Ok((meta.len(), Some(Box::new(file))))
        }
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
#[path = "write_tests.rs"]
mod tests;
