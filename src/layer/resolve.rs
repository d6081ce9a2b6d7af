//! Path resolution and removal confined to a destination root, for
//! applying hostile layers.
//!
//! Directories are opened by the kernel with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`: a symlink met on the way (`etc -> /`, `x ->
//! ../../..`) is resolved as if the root were `/`, so it can never lead out.
//! Everything after that works on a directory fd plus ONE name with the
//! `*at` calls and no-follow flags, so the last component is never followed
//! either. Nothing here compares path strings to decide safety. Where
//! `openat2` is missing (Linux < 5.6, some seccomp profiles) the same
//! resolution is done one component at a time.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{
    mkdirat, openat, openat2, readlinkat, statat, unlinkat, AtFlags, Dir, FileType, Mode, OFlags,
    ResolveFlags, Stat,
};
use rustix::io::Errno;

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

/// The destination root, held open so that it cannot be swapped.
pub(crate) struct Root {
    fd: OwnedFd,
}

impl Root {
    /// The caller names the root, so a symlink there is followed (the
    /// layer's own symlinks never are).
    pub fn open(path: &Path) -> io::Result<Root> {
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let fd = openat(rustix::fs::CWD, path, flags, Mode::empty())?;
        Ok(Root { fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Open the directory at `rel` (`a/b`; empty for the root) inside the root.
    pub fn open_dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        if rel.is_empty() {
            return Ok(openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?);
        }
        if HAVE_OPENAT2.load(Ordering::Relaxed) {
            let mut tries = 0;
            loop {
                match openat2(
                    &self.fd,
                    OsStr::from_bytes(rel),
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
                ) {
                    // The kernel asks for a retry when a rename raced a `..`.
                    Err(Errno::AGAIN) if tries < 16 => tries += 1,
                    // Before Linux 5.6, or hidden by a seccomp profile.
                    Err(Errno::NOSYS) | Err(Errno::PERM) if tries == 0 => {
                        HAVE_OPENAT2.store(false, Ordering::Relaxed);
                        break;
                    }
                    r => return Ok(r?),
                }
            }
        }
        self.open_dir_walk(rel)
    }

    /// `RESOLVE_IN_ROOT` done by hand, one component at a time: each
    /// directory is opened with `O_NOFOLLOW` relative to the last, symlinks
    /// are read and their targets walked from the root (absolute) or the
    /// current directory (relative), and `..` pops our own stack of open
    /// directories, so it stops at the root and cannot be raced by a rename.
    fn open_dir_walk(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut todo: VecDeque<Vec<u8>> = components(rel).collect();
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            if c == b".." {
                stack.pop();
                continue;
            }
            let cur = stack.last().map_or(self.fd.as_fd(), |f| f.as_fd());
            match openat(cur, os(&c), DIR_FLAGS, Mode::empty()) {
                Ok(fd) => stack.push(fd),
                Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                    let st = statat(cur, os(&c), AtFlags::SYMLINK_NOFOLLOW)?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                        return Err(e.into());
                    }
                    links += 1;
                    if links > 40 {
                        return Err(Errno::LOOP.into());
                    }
                    let target = readlinkat(cur, os(&c), Vec::new())?;
                    let target = target.as_bytes();
                    if target.starts_with(b"/") {
                        stack.clear();
                    }
                    for t in components(target).collect::<Vec<_>>().into_iter().rev() {
                        todo.push_front(t);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        match stack.pop() {
            Some(fd) => Ok(fd),
            None => Ok(openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?),
        }
    }

    /// Like [`Root::open_dir`], creating missing directories (0755, owned
    /// by the caller) the way a tar without parent entries expects.
    pub fn create_dir_all(&self, comps: &[&[u8]]) -> io::Result<OwnedFd> {
        match self.open_dir(&comps.join(&b'/')) {
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
            r => return r,
        }
        let mut fd = self.open_dir(b"")?;
        for i in 0..comps.len() {
            let prefix = comps[..=i].join(&b'/');
            fd = match self.open_dir(&prefix) {
                Ok(next) => next,
                Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                    let name = OsStr::from_bytes(comps[i]);
                    mkdirat(&fd, name, Mode::from_raw_mode(0o700))?;
                    let next = openat(&fd, name, DIR_FLAGS, Mode::empty())?;
                    rustix::fs::fchmod(&next, Mode::from_raw_mode(0o755))?;
                    next
                }
                Err(e) => return Err(e),
            };
        }
        Ok(fd)
    }
}

/// Whether `openat2` works here; cleared the first time it does not.
static HAVE_OPENAT2: AtomicBool = AtomicBool::new(true);

fn components(path: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
}

pub(crate) fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

/// `lstat` of one name in a directory; `None` if it does not exist.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Stat>> {
    match statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// Open a subdirectory by one name, refusing a symlink.
pub(crate) fn open_subdir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(openat(dir, os(name), DIR_FLAGS, Mode::empty())?)
}

/// The names in a directory, without `.` and `..`.
pub(crate) fn dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    let mut d = Dir::read_from(dir)?;
    while let Some(ent) = d.read() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    Ok(names)
}

/// Remove one name and, for a directory, everything below it; symlinks are
/// removed, never followed. A missing name is not an error.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
    let Some(st) = stat_at(dir, name)? else {
        return Ok(false);
    };
    if is_dir(&st) {
        let sub = open_subdir(dir, name)?;
        for child in dir_names(sub.as_fd())? {
            remove_all_at(sub.as_fd(), &child)?;
        }
        unlinkat(dir, os(name), AtFlags::REMOVEDIR)?;
    } else {
        unlinkat(dir, os(name), AtFlags::empty())?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &OwnedFd, b: &Path) -> bool {
        let x = rustix::fs::fstat(a).unwrap();
        let y = rustix::fs::stat(b).unwrap();
        (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)
    }

    #[test]
    fn the_portable_walk_resolves_like_resolve_in_root() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs_err::create_dir_all(root.join("etc/ssh")).unwrap();
        fs_err::create_dir_all(outer.path().join("etc/ssh")).unwrap();
        fs_err::write(root.join("file"), b"").unwrap();
        let ln = |t: &str, l: &str| std::os::unix::fs::symlink(t, root.join(l)).unwrap();
        ln("/etc", "abs");
        ln("../../../..", "up");
        ln("up/etc/../etc", "chain");
        ln("loop2", "loop1");
        ln("loop1", "loop2");
        ln("file", "tofile");
        let r = Root::open(&root).unwrap();
        for (rel, want) in [
            ("abs/ssh", "etc/ssh"),
            ("up", ""),
            ("up/up/etc", "etc"),
            ("chain/ssh", "etc/ssh"),
            ("etc/../../../etc", "etc"),
        ] {
            let fd = r.open_dir_walk(rel.as_bytes()).unwrap();
            assert!(same(&fd, &root.join(want)), "{rel}");
            let fd = r.open_dir(rel.as_bytes()).unwrap();
            assert!(same(&fd, &root.join(want)), "openat2 {rel}");
        }
        let err = r.open_dir_walk(b"loop1").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        let err = r.open_dir_walk(b"tofile").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
        let err = r.open_dir_walk(b"abs/missing").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn an_absolute_symlink_parent_resolves_inside_the_root() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs_err::create_dir_all(root.join("etc")).unwrap();
        fs_err::create_dir_all(outer.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("up")).unwrap();
        let r = Root::open(&root).unwrap();
        let fd = r.open_dir(b"link").unwrap();
        let inside = rustix::fs::fstat(&fd).unwrap();
        let want = rustix::fs::stat(root.join("etc")).unwrap();
        assert_eq!((inside.st_dev, inside.st_ino), (want.st_dev, want.st_ino));
        let fd = r.open_dir(b"up").unwrap();
        let up = rustix::fs::fstat(&fd).unwrap();
        let want = rustix::fs::stat(&root).unwrap();
        assert_eq!((up.st_dev, up.st_ino), (want.st_dev, want.st_ino));
    }

    #[test]
    fn remove_all_removes_a_symlink_not_its_target() {
        let outer = tempfile::tempdir().unwrap();
        let keep = outer.path().join("keep");
        fs_err::create_dir_all(&keep).unwrap();
        fs_err::write(keep.join("f"), b"x").unwrap();
        let root = outer.path().join("root");
        fs_err::create_dir_all(root.join("d")).unwrap();
        std::os::unix::fs::symlink(&keep, root.join("d/l")).unwrap();
        let r = Root::open(&root).unwrap();
        assert!(remove_all_at(r.fd(), b"d").unwrap());
        assert!(!root.join("d").exists());
        assert!(keep.join("f").exists());
    }
}
