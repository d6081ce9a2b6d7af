//! Putting outputs in place: made under a temp name beside the destination
//! (same filesystem, so the final rename is atomic), fsynced, renamed.
//! A failed or interrupted export leaves the destination as it was.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::{ExportError, OutputKind};

/// A temp path beside `dest`, removed on drop unless persisted.
pub(super) fn temp_beside(dest: &Path) -> io::Result<tempfile::TempPath> {
    let parent = parent_of(dest);
    fs_err::create_dir_all(&parent)?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Mode as any new file (0666 less the umask), not the private 0600 of
    // a temp file: the output is the user's file.
    Ok(tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tplbuild-tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(&parent)?
        .into_temp_path())
}

/// A fresh, empty temp directory beside `dest`, removed on drop unless kept.
pub(super) fn temp_dir_beside(dest: &Path) -> io::Result<tempfile::TempDir> {
    let parent = parent_of(dest);
    fs_err::create_dir_all(&parent)?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A rootfs's top directory is 0755 unless a layer says otherwise.
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tplbuild-tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .tempdir_in(&parent)
}

fn parent_of(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Refuse a destination whose folder cannot take a new file, before any
/// work: the nearest folder of `dest` that exists (the export makes the
/// rest) must let a file be made in it, as the export's temp file will be.
pub(super) fn check_writable(dest: &Path) -> Result<(), ExportError> {
    let mut dir = parent_of(dest);
    while fs_err::symlink_metadata(&dir).is_err() {
        dir = parent_of(&dir);
        if dir == Path::new(".") {
            break;
        }
    }
    // std's OpenOptions: its error is the bare OS error, and the message
    // names the user's path rather than the probe's.
    let probe = dir.join(format!(".tplbuild-probe.{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = fs_err::remove_file(&probe);
            Ok(())
        }
        Err(source) => Err(ExportError::NotWritable {
            dest: dest.to_path_buf(),
            dir,
            source,
        }),
    }
}

/// Refuse a file output over a directory before any work is done.
pub(super) fn check_file_dest(dest: &Path, kind: OutputKind) -> Result<(), ExportError> {
    match fs_err::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => Err(ExportError::DestIsDir {
            dest: dest.to_path_buf(),
            kind,
        }),
        _ => Ok(()),
    }
}

/// A `dir` destination must not exist, or be an empty directory, or
/// `force` must be given.
pub(super) fn check_dir_dest(dest: &Path, force: bool) -> Result<(), ExportError> {
    match fs_err::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
        Ok(m) if !m.is_dir() => Err(ExportError::DestNotDir {
            dest: dest.to_path_buf(),
        }),
        Ok(_) => {
            let empty = fs_err::read_dir(dest)?.next().is_none();
            if empty || force {
                Ok(())
            } else {
                Err(ExportError::DestNotEmpty {
                    dest: dest.to_path_buf(),
                })
            }
        }
    }
}

/// Fsync a finished file and rename it over `dest`.
pub(super) fn persist_file(tmp: tempfile::TempPath, dest: &Path) -> Result<(), ExportError> {
    fs_err::File::open(&*tmp)?.sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    crate::store::sync_parent(dest)?;
    Ok(())
}

/// Move a finished tree to `dest`: over an empty directory directly (rename
/// allows that), over a non-empty one (checked `force` before) by moving
/// the old one aside first and removing it after.
pub(super) fn persist_dir(tree: &Path, dest: &Path) -> Result<(), ExportError> {
    let aside = match fs_err::symlink_metadata(dest) {
        Ok(m) if m.is_dir() && fs_err::read_dir(dest)?.next().is_some() => {
            let aside = temp_dir_beside(dest)?.keep();
            fs_err::rename(dest, aside.join("old"))?;
            Some(aside)
        }
        _ => None,
    };
    fs_err::rename(tree, dest)?;
    crate::store::sync_parent(dest)?;
    if let Some(aside) = aside {
        fs_err::remove_dir_all(&aside)?;
    }
    Ok(())
}

/// Copy `src` to a new file `dst`: a reflink where the filesystem can
/// share extents (btrfs, xfs), else a sparse-aware copy, so a mostly
/// empty disk image stays mostly holes. Never a hardlink: the user may
/// change the copy.
pub fn copy_file(src: &Path, dst: &Path) -> io::Result<()> {
    let from = fs_err::File::open(src)?;
    let to = fs_err::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)?;
    if rustix::fs::ioctl_ficlone(to.as_fd(), from.as_fd()).is_ok() {
        return Ok(());
    }
    let len = from.metadata()?.len();
    let err = |e: rustix::io::Errno| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("copying {} to {}: {e}", src.display(), dst.display()),
        )
    };
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(from.as_fd(), rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(err(e)),
        };
        let hole = rustix::fs::seek(from.as_fd(), rustix::fs::SeekFrom::Hole(data))
            .map_err(err)?
            .min(len);
        copy_range(&from, &to, data, hole).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("copying {} to {}: {e}", src.display(), dst.display()),
            )
        })?;
        pos = hole;
    }
    to.set_len(len)?;
    Ok(())
}

/// Copy bytes `start..end` at the same offsets: in the kernel where it
/// can, else through a buffer (older kernels refuse `copy_file_range`
/// across filesystems).
fn copy_range(from: &fs_err::File, to: &fs_err::File, start: u64, end: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut off_in = start;
    let mut off_out = start;
    while off_in < end {
        let want = usize::try_from(end - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(
            from.as_fd(),
            Some(&mut off_in),
            to.as_fd(),
            Some(&mut off_out),
            want,
        ) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the source shrank while being copied",
                ))
            }
            Ok(_) => {}
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::INVAL,
            ) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    while off_in < end {
        let want = usize::try_from(end - off_in)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = from.file().read_at(&mut buf[..want], off_in)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the source shrank while being copied",
            ));
        }
        to.file().write_all_at(&buf[..n], off_in)?;
        off_in += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copy_file_keeps_holes_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut f = fs_err::File::create(&src).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        f.set_len(128 << 20).unwrap();
        drop(f);
        let dst = dir.path().join("dst");
        copy_file(&src, &dst).unwrap();
        let a = fs_err::read(&src).unwrap();
        let b = fs_err::read(&dst).unwrap();
        assert_eq!(a.len(), b.len());
        assert!(a == b);
        // 128 MiB apparent, a few blocks allocated.
        let m = fs_err::metadata(&dst).unwrap();
        assert!(
            m.blocks() * 512 < 1 << 20,
            "copy is not sparse: {} blocks",
            m.blocks()
        );
        // A copy, not a link: changing it leaves the source alone.
        fs_err::write(&dst, b"changed").unwrap();
        assert_eq!(&fs_err::read(&src).unwrap()[..4], b"head");
    }

    #[test]
    fn copy_file_works_across_filesystems() {
        // A store on one filesystem, the destination on another: the
        // kernel may refuse copy_file_range (EXDEV) and the buffer path runs.
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let src = shm.path().join("src");
        let mut f = fs_err::File::create(&src).unwrap();
        f.write_all(&[7u8; 100_000]).unwrap();
        f.set_len(8 << 20).unwrap();
        drop(f);
        let dst = dir.path().join("dst");
        copy_file(&src, &dst).unwrap();
        assert!(fs_err::read(&src).unwrap() == fs_err::read(&dst).unwrap());
    }

    #[test]
    fn a_non_empty_dir_dest_needs_force() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        check_dir_dest(&dest, false).unwrap();
        fs_err::create_dir(&dest).unwrap();
        check_dir_dest(&dest, false).unwrap();
        fs_err::write(dest.join("keep"), b"x").unwrap();
        assert!(matches!(
            check_dir_dest(&dest, false),
            Err(ExportError::DestNotEmpty { .. })
        ));
        check_dir_dest(&dest, true).unwrap();
        fs_err::write(dir.path().join("file"), b"x").unwrap();
        assert!(matches!(
            check_dir_dest(&dir.path().join("file"), true),
            Err(ExportError::DestNotDir { .. })
        ));
    }

    #[test]
    fn persist_dir_replaces_a_forced_dest_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        fs_err::create_dir(&dest).unwrap();
        fs_err::write(dest.join("old"), b"x").unwrap();
        let tree = temp_dir_beside(&dest).unwrap().keep();
        fs_err::write(tree.join("new"), b"y").unwrap();
        persist_dir(&tree, &dest).unwrap();
        assert!(dest.join("new").exists() && !dest.join("old").exists());
        let names: Vec<_> = fs_err::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out")]);
    }

    #[test]
    fn a_dropped_temp_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("root.img");
        let tmp = temp_beside(&dest).unwrap();
        fs_err::write(&*tmp, b"half").unwrap();
        drop(tmp);
        assert_eq!(fs_err::read_dir(dir.path()).unwrap().count(), 0);
    }
}
