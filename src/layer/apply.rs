//! Applying one layer tar onto a root directory, treating it as hostile.
//!
//! Each entry's path is cleaned lexically (leading `/` and `.` dropped, `..`
//! refused), its parent is opened inside the root by [`super::resolve`],
//! and the entry itself is made with `*at` calls on that one name, removing
//! whatever was there first (never writing through an existing file, which
//! may be a link). Whiteouts follow the OCI rules: `.wh.NAME` and the
//! opaque marker hide only what LOWER layers put there, whatever the order
//! of entries in this layer. Owners are set before modes (chown clears
//! setuid bits) and xattrs after both (chown clears `security.capability`);
//! directory mtimes are set once the whole layer is in.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{
    chownat, fchown, fsetxattr, futimens, linkat, mknodat, openat, symlinkat, utimensat, AtFlags,
    FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use tar::EntryType;

use super::resolve::{is_dir, open_subdir, os, remove_all_at, stat_at, Root};
use super::walk::{carried_xattr, OPAQUE_NAME, WHITEOUT_PREFIX};
use super::LayerError;

/// What applying a layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Entries applied, whiteouts included.
    pub entries: u64,
    /// `.wh.NAME` and opaque markers among them.
    pub whiteouts: u64,
    /// Regular file bytes written.
    pub bytes: u64,
}

/// Apply one layer (an uncompressed tar stream, see [`super::decompress`])
/// onto `dest`, in order, safely: no entry can create, change, chmod, chown
/// or remove anything outside `dest` (an entry that tries is refused with
/// [`LayerError::Refused`], or, for absolute paths and symlinked parents,
/// kept inside). Handles whiteouts (`.wh.NAME`; `.wh..wh..opq` clears the
/// directory's contents from lower layers, before this layer's own entries
/// whatever their order), hardlinks (target resolved inside `dest`, and it
/// may come from a lower layer), device nodes, fifos, setuid/setgid/sticky
/// bits, numeric ownership, xattrs, and mtimes (directories last).
pub fn apply_layer(tar: impl Read, dest: &Path) -> Result<ApplyReport, LayerError> {
    let root = Root::open(dest).map_err(|source| LayerError::Dest {
        path: dest.to_path_buf(),
        source,
    })?;
    let mut a = Applier {
        root,
        created: HashSet::new(),
        dir_times: Vec::new(),
        parent_cache: None,
        report: ApplyReport::default(),
        buf: vec![0u8; 256 * 1024],
    };
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(LayerError::ReadTar)? {
        let mut entry = entry.map_err(LayerError::ReadTar)?;
        a.entry(&mut entry)?;
    }
    a.set_dir_times()?;
    Ok(a.report)
}

struct Applier {
    root: Root,
    /// Paths this layer made, and their ancestors: what whiteouts and
    /// opaque markers in the same layer must leave alone.
    created: HashSet<Vec<u8>>,
    dir_times: Vec<(Vec<u8>, i64)>,
    /// The last parent directory opened (entries come sorted, so most share
    /// it); dropped whenever anything is removed.
    parent_cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    report: ApplyReport,
    buf: Vec<u8>,
}

/// Metadata common to every entry kind.
struct Meta {
    uid: Uid,
    gid: Gid,
    mode: Mode,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Split a tar path into clean components: `/`, `.` and empty components
/// are dropped (an absolute path is taken as relative to the root, as
/// Docker does), and `..` is refused.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("'..' would leave the root".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Applier {
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw = e.path_bytes().into_owned();
        let mut ty = e.header().entry_type();
        if ty == EntryType::Regular && raw.ends_with(b"/") {
            ty = EntryType::Directory; // how pre-POSIX (v7) tars mark directories
        }
        if ty.is_pax_global_extensions() {
            return Ok(()); // only ever seen carrying a comment
        }
        let comps = components(&raw).map_err(|r| LayerError::refused(&raw, r))?;
        self.report.entries += 1;
        let Some((name, parent)) = comps.split_last() else {
            return self.root_entry(e, &raw, ty);
        };
        let last_raw = raw.rsplit(|&b| b == b'/').find(|c| !c.is_empty());
        if !ty.is_dir() && (raw.ends_with(b"/") || last_raw == Some(b".")) {
            return Err(LayerError::refused(
                &raw,
                "a non-directory entry names a directory",
            ));
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            self.report.whiteouts += 1;
            self.invalidate();
            return if *name == OPAQUE_NAME {
                self.opaque(&raw, parent)
            } else {
                if matches!(hidden, b"" | b"." | b"..") {
                    return Err(LayerError::refused(&raw, "whiteout of no name"));
                }
                self.whiteout(&raw, parent, hidden)
            };
        }

        let rel = comps.join(&b'/');
        self.mark_created(&rel);
        let meta = read_meta(e, &raw)?;
        let parent_fd = self.parent(parent).map_err(|err| {
            LayerError::apply(&raw, "opening the parent directory inside the root", err)
        })?;
        let dir = parent_fd.as_fd();
        let raw_ref: &[u8] = &raw;
        let fail = |op: &'static str| move |err: io::Error| LayerError::apply(raw_ref, op, err);

        match ty {
            EntryType::Directory => {
                let existing = stat_at(dir, name).map_err(fail("inspecting"))?;
                match existing {
                    Some(st) if is_dir(&st) => {}
                    other => {
                        if other.is_some() {
                            self.invalidate();
                            remove_all_at(dir, name).map_err(fail("replacing"))?;
                        }
                        rustix::fs::mkdirat(dir, os(name), Mode::from_raw_mode(0o700))
                            .map_err(|e| fail("creating directory")(e.into()))?;
                    }
                }
                let fd = open_subdir(dir, name).map_err(fail("opening directory"))?;
                set_owner_mode_xattrs(&fd, &meta).map_err(fail("setting metadata"))?;
                self.dir_times.push((rel, meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.replace(dir, name).map_err(fail("replacing"))?;
                let fd = openat(
                    dir,
                    os(name),
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| fail("creating file")(e.into()))?;
                let mut file = std::fs::File::from(fd);
                let n = copy(e, &mut file, &mut self.buf).map_err(fail("writing file"))?;
                self.report.bytes += n;
                set_owner_mode_xattrs(&file, &meta).map_err(fail("setting metadata"))?;
                futimens(&file, &times(meta.mtime)).map_err(|e| fail("setting mtime")(e.into()))?;
            }
            EntryType::Symlink => {
                let target = e.link_name_bytes().unwrap_or_default().into_owned();
                if target.is_empty() {
                    return Err(LayerError::refused(&raw, "symlink without a target"));
                }
                self.replace(dir, name).map_err(fail("replacing"))?;
                symlinkat(os(&target), dir, os(name))
                    .map_err(|e| fail("creating symlink")(e.into()))?;
                chownat(
                    dir,
                    os(name),
                    Some(meta.uid),
                    Some(meta.gid),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| fail("setting owner")(e.into()))?;
                utimensat(dir, os(name), &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| fail("setting mtime")(e.into()))?;
            }
            EntryType::Link => {
                let target = e.link_name_bytes().unwrap_or_default().into_owned();
                self.hardlink(&raw, &comps, &target, dir, name)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (ft, dev) = match ty {
                    EntryType::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let h = e.header();
                        let major = h.device_major().ok().flatten().unwrap_or(0);
                        let minor = h.device_minor().ok().flatten().unwrap_or(0);
                        let ft = if ty == EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                };
                self.replace(dir, name).map_err(fail("replacing"))?;
                mknodat(dir, os(name), ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| fail("creating device node")(e.into()))?;
                chownat(
                    dir,
                    os(name),
                    Some(meta.uid),
                    Some(meta.gid),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| fail("setting owner")(e.into()))?;
                // An O_PATH handle does not open the device; its /proc
                // link reaches exactly the node made above.
                let node = openat(
                    dir,
                    os(name),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| fail("opening device node")(e.into()))?;
                let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&node));
                rustix::fs::chmod(proc.as_str(), meta.mode)
                    .map_err(|e| fail("setting mode")(e.into()))?;
                for (k, v) in &meta.xattrs {
                    rustix::fs::setxattr(proc.as_str(), os(k), v, XattrFlags::empty())
                        .map_err(|e| fail("setting xattr")(e.into()))?;
                }
                utimensat(dir, os(name), &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| fail("setting mtime")(e.into()))?;
            }
            other => {
                return Err(LayerError::refused(
                    &raw,
                    format!("unsupported entry type {other:?}"),
                ));
            }
        }
        Ok(())
    }

    /// `./` in a layer: the root's own owner, mode and xattrs.
    fn root_entry<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        raw: &[u8],
        ty: EntryType,
    ) -> Result<(), LayerError> {
        if !ty.is_dir() {
            return Err(LayerError::refused(
                raw,
                "only a directory can stand for the root",
            ));
        }
        let meta = read_meta(e, raw)?;
        set_owner_mode_xattrs(&self.root.fd(), &meta)
            .map_err(|err| LayerError::apply(raw, "setting metadata of the root", err))?;
        self.dir_times.push((Vec::new(), meta.mtime));
        Ok(())
    }

    fn hardlink(
        &mut self,
        raw: &[u8],
        comps: &[&[u8]],
        target_raw: &[u8],
        dir: std::os::fd::BorrowedFd<'_>,
        name: &[u8],
    ) -> Result<(), LayerError> {
        let target = components(target_raw)
            .map_err(|r| LayerError::refused(raw, format!("hardlink target: {r}")))?;
        let Some((tname, tparent)) = target.split_last() else {
            return Err(LayerError::refused(raw, "hardlink to the root"));
        };
        if target == comps {
            return Ok(()); // a link to itself: nothing to do
        }
        let missing = || LayerError::refused(raw, "hardlink target is not in the root");
        let tdir = match self.root.open_dir(&tparent.join(&b'/')) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Err(missing())
            }
            Err(e) => {
                return Err(LayerError::apply(
                    raw,
                    "opening the hardlink target's directory",
                    e,
                ))
            }
        };
        match stat_at(tdir.as_fd(), tname) {
            Ok(Some(st)) if is_dir(&st) => {
                return Err(LayerError::refused(raw, "hardlink to a directory"))
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err(missing()),
            Err(e) => return Err(LayerError::apply(raw, "inspecting the hardlink target", e)),
        }
        self.replace(dir, name)
            .map_err(|e| LayerError::apply(raw, "replacing", e))?;
        // No AT_SYMLINK_FOLLOW: a symlink target is linked as the symlink
        // itself, never as whatever it points to.
        linkat(tdir.as_fd(), os(tname), dir, os(name), AtFlags::empty())
            .map_err(|e| LayerError::apply(raw, "creating hardlink", e))?;
        Ok(())
    }

    fn whiteout(&mut self, raw: &[u8], parent: &[&[u8]], hidden: &[u8]) -> Result<(), LayerError> {
        let Some(dir) = self.existing_dir(raw, parent)? else {
            return Ok(());
        };
        let mut rel = parent.join(&b'/');
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(hidden);
        if self.created.contains(&rel) {
            // This layer's own entry stays; a directory of it loses only
            // what lower layers had in it.
            return match stat_at(dir.as_fd(), hidden) {
                Ok(Some(st)) if is_dir(&st) => {
                    let sub = open_subdir(dir.as_fd(), hidden)
                        .map_err(|e| LayerError::apply(raw, "opening whited-out directory", e))?;
                    self.clear_lower(sub.as_fd(), &rel)
                        .map_err(|e| LayerError::apply(raw, "applying whiteout", e))
                }
                Ok(_) => Ok(()),
                Err(e) => Err(LayerError::apply(raw, "inspecting whited-out path", e)),
            };
        }
        remove_all_at(dir.as_fd(), hidden)
            .map(|_| ())
            .map_err(|e| LayerError::apply(raw, "applying whiteout", e))
    }

    fn opaque(&mut self, raw: &[u8], dir_comps: &[&[u8]]) -> Result<(), LayerError> {
        let Some(dir) = self.existing_dir(raw, dir_comps)? else {
            return Ok(());
        };
        self.clear_lower(dir.as_fd(), &dir_comps.join(&b'/'))
            .map_err(|e| LayerError::apply(raw, "applying opaque directory", e))
    }

    /// Remove everything in `dir` (at `rel`) that this layer did not make.
    fn clear_lower(&self, dir: std::os::fd::BorrowedFd<'_>, rel: &[u8]) -> io::Result<()> {
        for name in super::resolve::dir_names(dir)? {
            let mut child = rel.to_vec();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(&name);
            if !self.created.contains(&child) {
                remove_all_at(dir, &name)?;
            } else if stat_at(dir, &name)?.is_some_and(|st| is_dir(&st)) {
                let sub = open_subdir(dir, &name)?;
                self.clear_lower(sub.as_fd(), &child)?;
            }
        }
        Ok(())
    }

    /// The directory at `comps` if it exists; whiteouts in missing
    /// directories have nothing to hide.
    fn existing_dir(&self, raw: &[u8], comps: &[&[u8]]) -> Result<Option<OwnedFd>, LayerError> {
        match self.root.open_dir(&comps.join(&b'/')) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
            Err(e) => Err(LayerError::apply(
                raw,
                "opening directory inside the root",
                e,
            )),
        }
    }

    fn mark_created(&mut self, rel: &[u8]) {
        let mut end = rel.len();
        loop {
            if !self.created.insert(rel[..end].to_vec()) {
                break; // its ancestors are in already
            }
            match rel[..end].iter().rposition(|&b| b == b'/') {
                Some(i) => end = i,
                None => break,
            }
        }
    }

    fn parent(&mut self, comps: &[&[u8]]) -> io::Result<Rc<OwnedFd>> {
        let rel = comps.join(&b'/');
        if let Some((cached, fd)) = &self.parent_cache {
            if *cached == rel {
                return Ok(fd.clone());
            }
        }
        let fd = Rc::new(if comps.is_empty() {
            self.root.open_dir(b"")?
        } else {
            self.root.create_dir_all(comps)?
        });
        self.parent_cache = Some((rel, fd.clone()));
        Ok(fd)
    }

    fn invalidate(&mut self) {
        self.parent_cache = None;
    }

    /// Remove whatever is at `name` before an entry takes its place.
    fn replace(&mut self, dir: std::os::fd::BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
        if remove_all_at(dir, name)? {
            self.invalidate();
        }
        Ok(())
    }

    fn set_dir_times(&self) -> Result<(), LayerError> {
        for (rel, mtime) in &self.dir_times {
            let fail = |e: io::Error| LayerError::apply(rel, "setting directory mtime", e);
            if rel.is_empty() {
                futimens(self.root.fd(), &times(*mtime)).map_err(|e| fail(e.into()))?;
                continue;
            }
            let comps: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
            let (name, parent) = comps.split_last().expect("non-empty");
            // Later entries may have replaced or removed it: skip those.
            let Ok(dir) = self.root.open_dir(&parent.join(&b'/')) else {
                continue;
            };
            if stat_at(dir.as_fd(), name)
                .map_err(fail)?
                .is_some_and(|st| is_dir(&st))
            {
                utimensat(&dir, os(name), &times(*mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| fail(e.into()))?;
            }
        }
        Ok(())
    }
}

fn read_meta<R: Read>(e: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Meta, LayerError> {
    let h = e.header();
    let bad = |what: &str| LayerError::refused(raw, format!("unreadable {what} in header"));
    let uid = h.uid().map_err(|_| bad("uid"))?;
    let gid = h.gid().map_err(|_| bad("gid"))?;
    let uid = u32::try_from(uid).map_err(|_| bad("uid"))?;
    let gid = u32::try_from(gid).map_err(|_| bad("gid"))?;
    let mode = h.mode().map_err(|_| bad("mode"))? & 0o7777;
    let mut mtime = h.mtime().map_err(|_| bad("mtime"))? as i64;
    let mut xattrs = Vec::new();
    if let Some(pax) = e.pax_extensions().map_err(LayerError::ReadTar)? {
        for ext in pax {
            let ext = ext.map_err(LayerError::ReadTar)?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                // Seconds, possibly fractional and negative; whole seconds kept.
                let v = String::from_utf8_lossy(ext.value_bytes());
                let whole = v.split('.').next().unwrap_or("");
                mtime = whole.parse().map_err(|_| bad("PAX mtime"))?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if carried_xattr(name) {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(Meta {
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        mode: Mode::from_raw_mode(mode),
        mtime,
        xattrs,
    })
}

/// Owner, then mode (chown clears setuid/setgid), then xattrs (chown clears
/// `security.capability`).
fn set_owner_mode_xattrs(fd: &impl AsFd, meta: &Meta) -> io::Result<()> {
    fchown(fd, Some(meta.uid), Some(meta.gid))?;
    rustix::fs::fchmod(fd, meta.mode)?;
    for (k, v) in &meta.xattrs {
        fsetxattr(fd, os(k), v, XattrFlags::empty())?;
    }
    Ok(())
}

fn times(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn copy(r: &mut impl Read, w: &mut impl Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}
