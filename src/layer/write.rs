//! Writing a deterministic layer blob from a tree on disk: a full root
//! filesystem (template import, flattening) or an overlay upper directory
//! (a step's diff). Equal trees give byte-identical blobs.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use fs_err::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::compress::{media_type, LayerSink};
use super::ustar::{EntryMeta, Kind, TarWriter};
use super::volatile::{clamp_shadow, Verdict};
use super::walk::{collect, Source, What};
use super::{LayerError, LayerOptions, LayerReport, WrittenLayer};

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
    write_tree(root, Source::Dir, out, opts)
}

/// Like [`write_dir`], for an overlayfs upper directory: a char device 0/0
/// becomes a `.wh.NAME` whiteout, a directory with `trusted.overlay.opaque=y`
/// (or `user.overlay.opaque`) gets a `.wh..wh..opq` entry right after it;
/// overlay's own xattrs are not copied. An upper directory written with
/// `metacopy` or `redirect_dir` is refused ([`LayerError::Overlay`]): its
/// diff is not all in the upper directory.
pub fn write_overlay_upper(
    upper: &Path,
    out: impl Write,
    opts: &LayerOptions,
) -> Result<WrittenLayer, LayerError> {
    write_tree(upper, Source::OverlayUpper, out, opts)
}

fn write_tree(
    root: &Path,
    source: Source,
    out: impl Write,
    opts: &LayerOptions,
) -> Result<WrittenLayer, LayerError> {
    let mut report = LayerReport::default();
    let nodes = collect(root, source, opts, &mut report)?;
    let sink = LayerSink::new(out, opts.compression).map_err(LayerError::Write)?;
    let mut tar = TarWriter::new(sink);
    let mut first_of_inode: HashMap<(u64, u64), Vec<u8>> = HashMap::new();

    for node in nodes {
        let (rel, what) = node.into_parts();
        match what {
            What::Whiteout | What::Opaque => {
                tar.append(&EntryMeta::marker(rel), None)
                    .map_err(LayerError::Write)?;
                report.whiteouts += 1;
            }
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
                let mut data: Option<Box<dyn Read>> = None;
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
                } else if let Some(target) =
                    hardlink_target(&meta, &entry.path, &mut first_of_inode)
                {
                    entry.kind = Kind::Hardlink { target };
                } else if ft.is_file() {
                    let (size, reader) = file_data(&path, &meta, verdict, opts.epoch)?;
                    entry.kind = Kind::Regular { size };
                    data = reader;
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
                tar.append(&entry, data.as_mut().map(|d| d as &mut dyn Read))
                    .map_err(|e| {
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            source_err("reading", &path, e)
                        } else {
                            LayerError::Write(e)
                        }
                    })?;
            }
        }
    }
    report.entries = tar.entries();
    let sink = tar.finish().map_err(LayerError::Write)?;
    let d = sink.finish().map_err(LayerError::Write)?;
    Ok(WrittenLayer {
        digest: d.digest,
        diff_id: d.diff_id,
        size: d.size,
        uncompressed_size: d.tar_size,
        media_type: media_type(opts.compression).to_string(),
        report,
    })
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
