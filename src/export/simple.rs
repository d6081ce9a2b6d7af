//! The two outputs that need no mkfs tool: the flattened tree as one
//! deterministic tarball, and the tree itself.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::{ExportContext, ExportError, Exporter, OutputKind};
use crate::layer::{self, Hygiene, LayerOptions};
use crate::oci::Compression;

/// `type=tar`: [`layer::write_dir`] over the flattened tree, so the tar has
/// the same canonical form as a layer (sorted, numeric owners, mtimes
/// clamped to the epoch) and never a `.wh.` entry — the tree has none.
#[derive(Debug, Clone)]
pub struct TarExporter {
    pub compression: Compression,
}

impl TarExporter {
    pub fn new(compression: Option<&str>) -> Self {
        let compression = match compression {
            Some("gzip") => Compression::Gzip,
            Some("zstd") => Compression::Zstd,
            _ => Compression::None,
        };
        TarExporter { compression }
    }

    fn compression_name(&self) -> &'static str {
        match self.compression {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

impl Exporter for TarExporter {
    fn kind(&self) -> OutputKind {
        OutputKind::Tar
    }

    fn key_options(&self) -> Result<BTreeMap<String, String>, ExportError> {
        Ok([("compression".into(), self.compression_name().into())].into())
    }

    fn export(&self, rootfs: &Path, ctx: &ExportContext, dest: &Path) -> Result<(), ExportError> {
        let opts = LayerOptions {
            epoch: Some(ctx.epoch),
            compression: self.compression,
            // An export is the image as it is: what to drop was decided
            // when its layers were written.
            drop_volatile: false,
            hygiene: Hygiene::keep_all(),
            exclude: Vec::new(),
        };
        let file = fs_err::File::create(dest)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        layer::write_dir(rootfs, &mut out, &opts).map_err(ExportError::Tar)?;
        out.flush()?;
        Ok(())
    }

    fn label(&self) -> String {
        match self.compression {
            Compression::None => "tar".into(),
            _ => format!("tar+{}", self.compression_name()),
        }
    }
}

/// `type=dir`: the flattened tree moved into place. It is the one output
/// that consumes the tree, so [`super::export_all`] runs it last, and
/// hands it the final destination (checked to be absent, empty, or
/// `force`d) rather than a temp name: the move itself is atomic, and the
/// tree must be on the destination's filesystem.
#[derive(Debug, Clone, Copy)]
pub struct DirExporter;

impl Exporter for DirExporter {
    fn kind(&self) -> OutputKind {
        OutputKind::Dir
    }

    fn key_options(&self) -> Result<BTreeMap<String, String>, ExportError> {
        Ok(BTreeMap::new())
    }

    fn export(&self, rootfs: &Path, _ctx: &ExportContext, dest: &Path) -> Result<(), ExportError> {
        super::place::persist_dir(rootfs, dest)
    }
}
