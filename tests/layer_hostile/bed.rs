//! The test bed (a destination beside a directory that must not change)
//! and a tar builder that writes names as raw bytes.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};
use tplbuild::layer::{apply_layer, ApplyReport, LayerError};

// ---------------------------------------------------------------- the bed

pub struct Bed {
    _tmp: tempfile::TempDir,
    top: PathBuf,
    pub dest: PathBuf,
    pub outside: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

pub fn bed() -> Option<Bed> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: hostile-layer tests need root");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().to_path_buf();
    let dest = top.join("dest");
    let outside = top.join("outside");
    fs_err::create_dir(&dest).unwrap();
    fs_err::create_dir_all(outside.join("dir")).unwrap();
    fs_err::write(outside.join("secret"), b"the host's secret").unwrap();
    fs_err::write(outside.join("dir/inner"), b"inner").unwrap();
    fs_err::set_permissions(
        outside.join("secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let before = snapshot(&top, &dest);
    Some(Bed {
        _tmp: tmp,
        top,
        dest,
        outside,
        before,
    })
}

/// Everything under `top` except `dest` and below: type, mode, owner,
/// size, mtime, content, link target.
fn snapshot(top: &Path, dest: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![top.to_path_buf()];
    let m = fs_err::symlink_metadata(top).unwrap();
    out.insert(top.to_path_buf(), describe(top, &m));
    while let Some(dir) = stack.pop() {
        for e in fs_err::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p == dest {
                continue;
            }
            let m = fs_err::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p.clone(), describe(&p, &m));
        }
    }
    out
}

fn describe(p: &Path, m: &std::fs::Metadata) -> String {
    let content = if m.is_file() {
        format!("{:?}", fs_err::read(p).unwrap())
    } else if m.file_type().is_symlink() {
        format!("-> {:?}", fs_err::read_link(p).unwrap())
    } else {
        String::new()
    };
    format!(
        "mode={:o} uid={} gid={} size={} mtime={}.{} nlink={} {content}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.nlink()
    )
}

impl Bed {
    pub fn apply(&self, layer: Vec<u8>) -> Result<ApplyReport, LayerError> {
        let r = apply_layer(&layer[..], &self.dest);
        self.assert_outside_unchanged();
        r
    }

    pub fn assert_outside_unchanged(&self) {
        let after = snapshot(&self.top, &self.dest);
        assert_eq!(self.before, after, "something outside dest changed");
    }

    pub fn abs_outside(&self) -> Vec<u8> {
        self.outside.as_os_str().as_bytes().to_vec()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dest.join(rel)
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        fs_err::read(self.path(rel)).unwrap()
    }

    pub fn lstat(&self, rel: &str) -> Option<std::fs::Metadata> {
        std::fs::symlink_metadata(self.path(rel)).ok()
    }
}

pub fn refused(r: Result<ApplyReport, LayerError>, entry: &str) {
    match r {
        Err(LayerError::Refused { entry: e, reason }) => {
            assert!(
                e.contains(entry),
                "refused {e:?} ({reason}), expected {entry:?}"
            )
        }
        other => panic!("expected entry {entry:?} to be refused, got {other:?}"),
    }
}

// ------------------------------------------------------------ tar helpers

/// A tar built header by header, names written as raw bytes.
pub struct Tar {
    b: tar::Builder<Vec<u8>>,
}

pub fn tar() -> Tar {
    Tar {
        b: tar::Builder::new(Vec::new()),
    }
}

pub fn header(path: &[u8], ty: EntryType, mode: u32) -> Header {
    let mut h = Header::new_ustar();
    assert!(path.len() <= 100, "use pax_path for long names");
    h.as_old_mut().name[..path.len()].copy_from_slice(path);
    h.set_entry_type(ty);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(0);
    h
}

impl Tar {
    pub fn raw(mut self, mut h: Header, data: &[u8]) -> Self {
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let base = k.len() + v.len() + 3;
            let mut len = base + 1;
            while base + len.to_string().len() != len {
                len = base + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let h = header(b"././@PaxHeader", EntryType::XHeader, 0o644);
        self.raw(h, &body)
    }

    pub fn file(self, path: &[u8], data: &[u8]) -> Self {
        self.raw(header(path, EntryType::Regular, 0o644), data)
    }

    pub fn dir(self, path: &[u8]) -> Self {
        self.raw(header(path, EntryType::Directory, 0o755), b"")
    }

    pub fn symlink(self, path: &[u8], target: &[u8]) -> Self {
        let mut h = header(path, EntryType::Symlink, 0o777);
        h.set_link_name_literal(target).unwrap();
        self.raw(h, b"")
    }

    pub fn hardlink(self, path: &[u8], target: &[u8]) -> Self {
        let mut h = header(path, EntryType::Link, 0o644);
        h.set_link_name_literal(target).unwrap();
        self.raw(h, b"")
    }

    pub fn done(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}
