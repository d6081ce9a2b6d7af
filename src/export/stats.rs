//! Counting a flattened tree — how many entries and inodes it has and how
//! much room it takes, for ext4's default size and the summary line — and,
//! in the same walk, clamping mtimes to the epoch as the tar export does,
//! so that every output of an image carries the same times (layers built
//! elsewhere, by `docker build`, may hold later ones).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Counts of a tree, the root itself not included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Paths of every type (a hardlinked file counts once per name).
    pub entries: u64,
    /// Distinct inodes.
    pub inodes: u64,
    /// Apparent size of the regular files, each inode once.
    pub file_bytes: u64,
    /// Room the tree needs in 4 KiB blocks: file data rounded up per file,
    /// a block per directory and per symlink too long to inline, and the
    /// xattrs that do not fit in an inode.
    pub block_bytes: u64,
}

const BLOCK: u64 = 4096;

impl TreeStats {
    /// Walk `root` without following symlinks.
    pub fn of(root: &Path) -> std::io::Result<TreeStats> {
        Self::scan(root, None)
    }

    /// [`TreeStats::of`], setting every mtime later than `clamp` to it.
    pub fn scan(root: &Path, clamp: Option<i64>) -> std::io::Result<TreeStats> {
        let mut stats = TreeStats::default();
        let mut seen = HashSet::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            stats.block_bytes += BLOCK;
            for entry in fs_err::read_dir(&dir)? {
                let entry = entry?;
                let path = entry.path();
                let meta = fs_err::symlink_metadata(&path)?;
                if let Some(epoch) = clamp.filter(|e| meta.mtime() > *e) {
                    clamp_mtime(&path, &meta, epoch)?;
                }
                stats.entries += 1;
                let ft = meta.file_type();
                if ft.is_dir() {
                    stats.inodes += 1;
                    stack.push(path);
                    continue;
                }
                if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                stats.inodes += 1;
                if ft.is_file() {
                    stats.file_bytes += meta.len();
                    stats.block_bytes += meta.len().div_ceil(BLOCK) * BLOCK;
                } else if ft.is_symlink() && meta.len() >= 60 {
                    // ext4 keeps targets shorter than 60 bytes in the inode.
                    stats.block_bytes += BLOCK;
                }
            }
        }
        if let Some(epoch) = clamp {
            let meta = fs_err::symlink_metadata(root)?;
            if meta.mtime() > epoch {
                clamp_mtime(root, &meta, epoch)?;
            }
        }
        Ok(stats)
    }
}

/// Set `path`'s mtime to `epoch`, keeping its atime, not following a link.
fn clamp_mtime(path: &Path, meta: &std::fs::Metadata, epoch: i64) -> std::io::Result<()> {
    use rustix::fs::{Timespec, Timestamps};
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: epoch,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("clamping the mtime of {}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardlinks_count_once_as_inodes_and_bytes_but_twice_as_entries() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs_err::create_dir(r.join("d")).unwrap();
        fs_err::write(r.join("d/a"), vec![1u8; 5000]).unwrap();
        fs_err::hard_link(r.join("d/a"), r.join("b")).unwrap();
        std::os::unix::fs::symlink("d/a", r.join("l")).unwrap();
        let s = TreeStats::of(r).unwrap();
        assert_eq!(s.entries, 4); // d, d/a, b, l
        assert_eq!(s.inodes, 3);
        assert_eq!(s.file_bytes, 5000);
        // Two directories (root and d) plus two blocks of data.
        assert_eq!(s.block_bytes, 4 * 4096);
    }

    #[test]
    fn scan_clamps_later_mtimes_to_the_epoch_and_keeps_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs_err::write(r.join("new"), b"x").unwrap();
        fs_err::write(r.join("old"), b"x").unwrap();
        std::os::unix::fs::symlink("new", r.join("link")).unwrap();
        let old = std::fs::FileTimes::new()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000));
        fs_err::File::options()
            .write(true)
            .open(r.join("old"))
            .unwrap()
            .set_times(old)
            .unwrap();
        TreeStats::scan(r, Some(5000)).unwrap();
        let mtime = |p: &str| fs_err::symlink_metadata(r.join(p)).unwrap().mtime();
        assert_eq!(mtime("new"), 5000);
        assert_eq!(mtime("link"), 5000);
        assert_eq!(mtime("old"), 1000);
        assert_eq!(fs_err::metadata(r).unwrap().mtime(), 5000);
    }
}
