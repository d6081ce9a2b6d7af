//! `type=erofs`: `mkfs.erofs` over the flattened tree. erofs-utils 1.5
//! takes the filesystem time from the clock unless `-T` fixes it (which
//! also sets every inode's time, as `SOURCE_DATE_EPOCH` builds expect) and
//! a random UUID unless `-U` gives one; directories are read sorted, so
//! nothing else of the machine leaks in. Owners are kept (no `--all-root`).

use std::collections::BTreeMap;
use std::path::Path;

use super::ext4::derive_uuid;
use super::tool::{Tool, MKFS_EROFS};
use super::{ExportContext, ExportError, Exporter, OutputKind};

/// erofs-utils has no version flag on mkfs.erofs; fsck.erofs (same
/// package) has.
const FSCK_EROFS: Tool = Tool {
    name: "fsck.erofs",
    package: "erofs-utils",
};

/// `type=erofs`.
#[derive(Debug, Clone)]
pub struct ErofsExporter {
    /// `lz4`, `lz4hc` or `none`.
    pub compression: String,
}

impl Exporter for ErofsExporter {
    fn kind(&self) -> OutputKind {
        OutputKind::Erofs
    }

    fn key_options(&self) -> Result<BTreeMap<String, String>, ExportError> {
        Ok([
            ("compression".into(), self.compression.clone()),
            (
                "tool".into(),
                FSCK_EROFS.version(&["-V"]).unwrap_or_else(|| "none".into()),
            ),
        ]
        .into())
    }

    fn export(&self, rootfs: &Path, ctx: &ExportContext, dest: &Path) -> Result<(), ExportError> {
        let mut cmd = MKFS_EROFS.command()?;
        cmd.arg(format!("-T{}", ctx.epoch))
            .arg(format!("-U{}", derive_uuid("erofs-uuid", &ctx.image)))
            .arg("--quiet");
        if self.compression != "none" {
            cmd.arg(format!("-z{}", self.compression));
        }
        cmd.arg(dest).arg(rootfs);
        MKFS_EROFS.run(cmd, dest)?;
        Ok(())
    }

    fn label(&self) -> String {
        match self.compression.as_str() {
            "none" => "erofs".into(),
            c => format!("erofs+{c}"),
        }
    }
}
