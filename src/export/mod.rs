//! Exports: turning a finished [`Image`](crate::image::Image) into what a
//! product ships — a tarball, a directory tree, an ext4 / erofs / squashfs
//! filesystem image, a bootable GPT disk (`disk`), or an OCI layout.
//!
//! `build` and the `export` subcommand hand [`export_all`] an image whose
//! layer blobs are already in the [`Store`](crate::store::Store) and the
//! parsed `-o` specs ([`OutputSpec`]). Rootfs outputs read one flattened
//! tree, made at most once per call by applying the layers with
//! [`crate::layer::apply_layer`] (the security-critical part lives there);
//! each output is then produced by an [`Exporter`] — ext4 by our own
//! writer (`ext4w`), the other filesystem images by Debian's own mkfs
//! tools, run with every flag that makes their output a function of the
//! tree, the image digest and the epoch (DESIGN.md invariant 2). Times: the tar, the directory and ext4 keep each file's
//! mtime, clamped to the epoch; erofs and squashfs set every time to the
//! epoch (their reproducible modes). Single-file outputs are cached under
//! `store.exports_dir()` by a key over exactly those inputs, so a no-op
//! rebuild only copies (reflinks where it can) the cached file into place.
//! Nothing is half-written at a destination: outputs are made under a temp
//! name beside it and renamed when complete.

mod cache;
mod disk;
mod erofs;
mod ext4;
pub(crate) mod ext4w;
mod flatten;
mod place;
mod run;
mod simple;
mod spec;
mod squashfs;
mod stats;
mod tool;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::oci::Digest;

pub use cache::{export_key, ExportKeyInputs, EXPORT_FORMAT};
pub use disk::{DiskError, DiskExporter, DiskFormat, DiskLayout, RootFs};
pub use erofs::ErofsExporter;
pub use ext4::{derive_uuid, Ext4Exporter};
pub use flatten::flatten;
pub use place::copy_file;
pub use run::{check_dests, export_all};
pub use simple::{DirExporter, TarExporter};
pub use spec::{parse_size, OutputSpec, SpecError};
pub use squashfs::SquashfsExporter;
pub use stats::TreeStats;

/// The kinds of output `-o type=…` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutputKind {
    Tar,
    Dir,
    Ext4,
    Erofs,
    Squashfs,
    Disk,
    Oci,
    /// The image's SBOM as a file (`format=spdx|cyclonedx`); written by
    /// whoever knows the image's steps (see `crate::sbom::write_file`),
    /// not by [`export_all`].
    Sbom,
}

impl OutputKind {
    pub const ALL: [OutputKind; 8] = [
        OutputKind::Tar,
        OutputKind::Dir,
        OutputKind::Ext4,
        OutputKind::Erofs,
        OutputKind::Squashfs,
        OutputKind::Disk,
        OutputKind::Oci,
        OutputKind::Sbom,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Tar => "tar",
            OutputKind::Dir => "dir",
            OutputKind::Ext4 => "ext4",
            OutputKind::Erofs => "erofs",
            OutputKind::Squashfs => "squashfs",
            OutputKind::Disk => "disk",
            OutputKind::Oci => "oci",
            OutputKind::Sbom => "sbom",
        }
    }

    /// Whether this output is read from a flattened root filesystem.
    pub fn needs_rootfs(self) -> bool {
        !matches!(self, OutputKind::Oci | OutputKind::Sbom)
    }

    /// Whether the output is one file that the export cache can keep.
    pub fn is_file(self) -> bool {
        !matches!(self, OutputKind::Dir | OutputKind::Oci | OutputKind::Sbom)
    }
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one output came to.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub kind: OutputKind,
    pub dest: PathBuf,
    /// Size of the output (apparent size for files, content for trees).
    pub bytes: u64,
    /// True if the output was copied from the export cache.
    pub cached: bool,
    pub seconds: f64,
    /// One line for humans, e.g. `ext4, 412 MiB, 10,296 files`.
    pub summary: String,
}

/// What an exporter may know besides the tree it reads.
#[derive(Debug, Clone)]
pub struct ExportContext {
    /// The manifest digest of the image being exported; fixed identifiers
    /// (filesystem UUIDs, hash seeds) are derived from it.
    pub image: Digest,
    /// `SOURCE_DATE_EPOCH`: every timestamp a tool would take from the
    /// clock is this instead.
    pub epoch: i64,
    /// Scratch space on the store's filesystem (tool config files).
    pub tmp_dir: PathBuf,
    /// Counts and sizes of the flattened tree (ext4's default size).
    pub stats: TreeStats,
    /// The image's OCI architecture (`amd64`, `arm64`): what a disk boots.
    pub arch: String,
}

/// Writes one kind of output from a flattened root filesystem. Exporters
/// are values built from a validated [`OutputSpec`] (see
/// [`OutputSpec::exporter`]), so their options are already checked.
pub trait Exporter {
    fn kind(&self) -> OutputKind;

    /// Every option that decides the output's bytes, with defaults filled
    /// in and the tool's version, for the export cache key. Options that
    /// only say where or how to place the output (`dest`, `force`) are not
    /// inputs.
    fn key_options(&self) -> Result<BTreeMap<String, String>, ExportError>;

    /// Write the output for `rootfs` to `dest`: a temp path beside the
    /// final destination, except for `dir` (see [`DirExporter`]).
    fn export(&self, rootfs: &Path, ctx: &ExportContext, dest: &Path) -> Result<(), ExportError>;

    /// A short name for the summary line, e.g. `tar+zstd`.
    fn label(&self) -> String {
        self.kind().to_string()
    }
}

impl ExportError {
    /// Name the user's destination, not the temp file an exporter wrote.
    pub(crate) fn for_dest(self, user_dest: &Path) -> Self {
        match self {
            ExportError::TooSmall { size, needed, .. } => ExportError::TooSmall {
                dest: user_dest.to_path_buf(),
                size,
                needed,
            },
            ExportError::ToolFailed {
                tool,
                status,
                stderr,
                ..
            } => ExportError::ToolFailed {
                tool,
                dest: user_dest.to_path_buf(),
                status,
                stderr,
            },
            e => e,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("flattening layer {layer} of {image}")]
    Flatten {
        image: String,
        layer: Digest,
        #[source]
        source: crate::layer::LayerError,
    },
    #[error("reading layer {layer} from the store")]
    Blob {
        layer: Digest,
        #[source]
        source: crate::store::StoreError,
    },
    #[error("writing the layer tar of the flattened rootfs")]
    Tar(#[source] crate::layer::LayerError),
    #[error("writing the OCI layout {dest}")]
    Layout {
        dest: PathBuf,
        #[source]
        source: Box<crate::transfer::TransferError>,
    },
    #[error("{tool} is not installed (looked in PATH, /usr/sbin and /sbin); install the Debian package {package}")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed ({status}) making {dest}: {stderr}")]
    ToolFailed {
        tool: &'static str,
        dest: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("running {tool}")]
    ToolSpawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Unexpected { what: String },
    #[error("cannot write {dest}: {dir} does not take new files")]
    NotWritable {
        dest: PathBuf,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("two outputs write to {dest}")]
    DuplicateDest { dest: PathBuf },
    #[error("{dest} is a non-empty directory; pass force=true to replace it")]
    DestNotEmpty { dest: PathBuf },
    #[error("{dest} is a directory; a {kind} output is a file")]
    DestIsDir { dest: PathBuf, kind: OutputKind },
    #[error("{dest} exists and is not a directory")]
    DestNotDir { dest: PathBuf },
    #[error("size={} is too small for {dest}: the content needs at least {} ({needed} bytes); leave size= out to fit the content, or give at least size={}M", crate::human::human_size(*size), crate::human::human_size(*needed), needed.div_ceil(1024 * 1024))]
    TooSmall {
        dest: PathBuf,
        size: u64,
        needed: u64,
    },
    #[error(transparent)]
    Disk(DiskError),
    #[error("export cache entry {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `1,234,567`: counts in summaries are read by people.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `412 MiB`, `3.1 GiB`, `812 KiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f >= K * K * K {
        format!("{:.1} GiB", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.0} MiB", f / (K * K))
    } else if f >= K {
        format!("{:.0} KiB", f / K)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits_for_summaries() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(10296), "10,296");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn human_bytes_picks_a_readable_unit() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(412 * 1024 * 1024), "412 MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
