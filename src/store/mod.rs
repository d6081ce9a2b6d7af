//! The local content store: an OCI image layout plus tplbuild's own indexes.
//!
//! ```text
//! $TPLBUILD_HOME/                      (default $XDG_CACHE_HOME/tplbuild)
//! └── store-v1/
//!     ├── oci-layout                   {"imageLayoutVersion":"1.0.0"}
//!     ├── index.json                   named images (org.opencontainers.image.ref.name)
//!     ├── blobs/sha256/<hex>           every blob, verified before it lands here
//!     ├── steps-v1/<key hex>.json      step key → layer descriptor + the inputs of the key
//!     ├── exports-v1/<key hex>/…       cached rootfs exports (ext4, erofs, …)
//!     ├── tmp/                         in-flight writes, renamed into place when verified
//!     ├── lock                         flock held while index.json is rewritten
//!     └── users.lock                   flock: shared by every process using the store, exclusive for a prune
//! ```
//!
//! Blobs are written to `tmp/`, hashed and counted while they stream,
//! fsynced, compared with the expected digest and size, then renamed into
//! place (and the directory fsynced): a reader never sees a partial blob
//! under a digest. A blob that no longer matches its digest when read (disk
//! corruption, a truncated copy) is deleted and reported as missing so that
//! the caller fetches it again. Two processes may share a store: blob and
//! step writes are atomic renames; `index.json` is rewritten under `lock`.
//! The `-v1` suffixes version the on-disk format; a new format gets a new
//! folder instead of misreading an old one.

mod blobs;
pub mod index;
pub mod prune;
pub mod steps;

use std::path::{Path, PathBuf};

pub use blobs::{BlobWriter, VerifyingReader};
pub use prune::{parse_age, PruneReport};
pub use steps::StepRecord;

use crate::oci::{Digest, DigestError};

/// A file in a store that `tplbuild bundle` made (see `tplbuild prune`).
pub const BUNDLE_MARKER: &str = "bundle";

/// The name of the store folder; bump the suffix when the format changes.
pub const STORE_DIR: &str = "store-v1";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("blob {digest} is not in the store")]
    Missing { digest: Digest },
    #[error("blob {digest} in the store is corrupt (its content no longer matches its digest); it was removed and must be fetched again")]
    Corrupt { digest: Digest },
    #[error("content does not match: expected {expected} ({expected_size} bytes), got {actual} ({actual_size} bytes)")]
    Mismatch {
        expected: Digest,
        expected_size: u64,
        actual: Digest,
        actual_size: u64,
    },
    #[error("malformed {what} at {path}: {source}")]
    Json {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A handle to the store folder. Cheap to clone. While any clone lives,
/// the process holds a shared lock on `users.lock` (see [`prune`]).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    _users: std::sync::Arc<fs_err::File>,
}

impl Store {
    /// The store at `$TPLBUILD_HOME`, else `$XDG_CACHE_HOME/tplbuild`, else
    /// `~/.cache/tplbuild`.
    pub fn default_home() -> PathBuf {
        if let Some(h) = std::env::var_os("TPLBUILD_HOME").filter(|h| !h.is_empty()) {
            return PathBuf::from(h);
        }
        if let Some(c) = std::env::var_os("XDG_CACHE_HOME").filter(|h| !h.is_empty()) {
            return PathBuf::from(c).join("tplbuild");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache").join("tplbuild")
    }

    /// Open (creating if needed) the store under `home`, shared with other
    /// processes. Waits while a prune holds it.
    pub fn open(home: &Path) -> Result<Self, StoreError> {
        Self::open_with(home, rustix::fs::FlockOperation::LockShared, || {
            eprintln!(
                "waiting for the tplbuild prune of {} to finish …",
                home.display()
            )
        })
    }

    /// Open the store under `home` for this process alone (for a prune);
    /// `on_wait` is called once if other processes have it open, and then
    /// this waits until they are done.
    pub fn open_exclusive(home: &Path, on_wait: impl FnOnce()) -> Result<Self, StoreError> {
        Self::open_with(home, rustix::fs::FlockOperation::LockExclusive, on_wait)
    }

    fn open_with(
        home: &Path,
        how: rustix::fs::FlockOperation,
        on_wait: impl FnOnce(),
    ) -> Result<Self, StoreError> {
        let root = Self::create(home)?;
        // Read and write: NFS turns a shared flock into a read lock, which
        // needs a readable descriptor.
        let users = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(root.join("users.lock"))?;
        let nonblocking = match how {
            rustix::fs::FlockOperation::LockShared => {
                rustix::fs::FlockOperation::NonBlockingLockShared
            }
            _ => rustix::fs::FlockOperation::NonBlockingLockExclusive,
        };
        match rustix::fs::flock(&users, nonblocking) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                on_wait();
                rustix::fs::flock(&users, how).map_err(std::io::Error::from)?;
            }
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
        Ok(Store {
            root,
            _users: std::sync::Arc::new(users),
        })
    }

    /// Make the store's folders and files under `home` if they are missing.
    fn create(home: &Path) -> Result<PathBuf, StoreError> {
        let root = home.join(STORE_DIR);
        for sub in ["blobs/sha256", "tmp", "steps-v1", "exports-v1"] {
            fs_err::create_dir_all(root.join(sub))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&root, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            write_atomic(
                &root,
                &index,
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
            )?;
        }
        Ok(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn exports_dir(&self) -> PathBuf {
        self.root.join("exports-v1")
    }
}

/// Write `bytes` to `path` via a temp file in `root/tmp`, fsync, rename,
/// fsync the parent directory.
pub(crate) fn write_atomic(root: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp_dir = root.join("tmp");
    fs_err::create_dir_all(&tmp_dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_parent(path)
}

pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    // A bare name (`-o x.tar`) has the empty path as its parent: the
    // working directory.
    let parent = match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Ok(()),
    };
    fs_err::File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_file_name_syncs_the_working_directory() {
        sync_parent(Path::new("x.tar")).unwrap();
        sync_parent(Path::new("/")).unwrap();
    }

    #[test]
    fn open_creates_an_oci_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layout = fs_err::read_to_string(store.root().join("oci-layout")).unwrap();
        assert!(layout.contains("1.0.0"));
        assert!(store.root().join("index.json").is_file());
        // Opening again keeps what is there.
        Store::open(dir.path()).unwrap();
    }
}
