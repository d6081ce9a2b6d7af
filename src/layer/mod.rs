//! Layers: turning directory trees into deterministic OCI layer blobs, and
//! applying (possibly hostile) layer tars onto a root filesystem.
//!
//! The `build` module meets this one twice: after a step runs it reads the
//! container's changes into a [`ChangeSet`] (from the overlay upper dir, or
//! from the engine's `changes` and `export`), and [`write_changes`] makes
//! them a canonical layer against the parent's [`TreeIndex`]; to flatten an image or to import a template
//! it streams each blob through [`decompress`] into [`apply_layer`]. The
//! writer is where determinism (DESIGN.md invariant 2) and hygiene
//! (invariant 3) are enforced; the applier is security code (invariant 4):
//! every path is resolved inside the destination root by the kernel
//! (`openat2` with `RESOLVE_IN_ROOT`), and the last component is never
//! followed.

mod apply;
mod canonical;
mod changeset;
mod compress;
mod index;
mod members;
mod overlay;
mod resolve;
mod ustar;
mod volatile;
mod walk;
mod write;
mod write_diff;

use std::io;
use std::path::PathBuf;

use crate::oci::{Compression, Digest};

pub use apply::{apply_layer, ApplyReport};
pub use changeset::{ChangeKind, ChangeSet};
pub use compress::decompress;
pub(crate) use compress::Shared;
pub(crate) use index::clean_path;
pub use index::{IndexEntry, LayerIndex, NodeKind, TreeIndex};
pub(crate) use walk::{carried_xattr, read_xattrs};
pub use write::write_dir;
pub use write_diff::write_changes;

/// How a layer is written. `Default` is what a build uses without a
/// Buildfile saying otherwise: gzip, volatile files dropped, every secret
/// removed, no epoch.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    /// Clamp mtimes later than this down to it (`SOURCE_DATE_EPOCH`).
    pub epoch: Option<i64>,
    pub compression: Compression,
    /// Drop the files apt and dpkg rewrite on every run (logs, caches, lists).
    pub drop_volatile: bool,
    pub hygiene: Hygiene,
    /// Relative paths (e.g. `run/.containerenv`) left out with everything below them.
    pub exclude: Vec<String>,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            epoch: None,
            compression: Compression::Gzip,
            drop_volatile: true,
            hygiene: Hygiene::default(),
            exclude: Vec::new(),
        }
    }
}

/// Which per-device secrets to remove; `true` means remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hygiene {
    /// `etc/ssh/ssh_host_*`.
    pub ssh_host_keys: bool,
    /// `etc/machine-id` is kept as an empty file (systemd then makes a new
    /// one on first boot); `var/lib/dbus/machine-id` is removed when it is a
    /// regular file rather than the usual symlink.
    pub machine_id: bool,
    /// `var/lib/systemd/random-seed` and `var/lib/systemd/credential.secret`.
    pub random_seed: bool,
}

impl Default for Hygiene {
    fn default() -> Self {
        Hygiene {
            ssh_host_keys: true,
            machine_id: true,
            random_seed: true,
        }
    }
}

impl Hygiene {
    /// Keep everything: for trees that are known to hold no secrets.
    pub fn keep_all() -> Self {
        Hygiene {
            ssh_host_keys: false,
            machine_id: false,
            random_seed: false,
        }
    }
}

/// What writing a layer left out or changed, so the build can say so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerReport {
    /// Tar entries written (PAX extension headers not counted).
    pub entries: u64,
    /// Relative paths removed or emptied for hygiene.
    pub removed_secrets: Vec<String>,
    /// Relative paths dropped as volatile (a dropped directory stands for its contents).
    pub dropped_volatile: Vec<String>,
    /// Whiteout and opaque-directory markers written.
    pub whiteouts: u64,
}

/// A layer blob that was written, with what a manifest and config need.
#[derive(Debug, Clone)]
pub struct WrittenLayer {
    /// Digest of the compressed bytes written.
    pub digest: Digest,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Compressed size in bytes.
    pub size: u64,
    /// Size of the uncompressed tar, so nobody has to decompress to learn it.
    pub uncompressed_size: u64,
    /// OCI layer media type for the compression used.
    pub media_type: String,
    pub report: LayerReport,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading the source tree for a new layer.
    #[error("{op} {path}")]
    Source {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The overlay upper directory uses a feature whose diff cannot be read
    /// from the upper directory alone.
    #[error("overlay upper {path}: {reason}")]
    Overlay { path: PathBuf, reason: String },
    #[error("{path}: names starting with .wh. are reserved for layer whiteouts")]
    ReservedName { path: PathBuf },
    #[error("writing the layer blob")]
    Write(#[source] io::Error),
    #[error("reading the tar stream")]
    ReadTar(#[source] io::Error),
    #[error("opening the destination root {path}")]
    Dest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An entry that would leave the root, or that makes no sense; nothing
    /// of it was applied.
    #[error("refusing layer entry {entry:?}: {reason}")]
    Refused { entry: String, reason: String },
    /// An entry that was fine but could not be applied.
    #[error("applying layer entry {entry:?}: {op}")]
    Apply {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl LayerError {
    pub(crate) fn refused(entry: &[u8], reason: impl Into<String>) -> Self {
        LayerError::Refused {
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn apply(entry: &[u8], op: &'static str, source: impl Into<io::Error>) -> Self {
        LayerError::Apply {
            entry: String::from_utf8_lossy(entry).into_owned(),
            op,
            source: source.into(),
        }
    }
}
