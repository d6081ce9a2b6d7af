//! `type=squashfs`: `mksquashfs` over the flattened tree, with its
//! reproducible mode (ordered output from the parallel compressors) and
//! every timestamp — file times and the superblock's — set to the epoch.
//! Owners, device nodes and xattrs are kept.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use super::tool::MKSQUASHFS;
use super::{ExportContext, ExportError, Exporter, OutputKind};

/// `type=squashfs`.
#[derive(Debug, Clone)]
pub struct SquashfsExporter {
    /// `gzip`, `xz`, `zstd`, `lz4`; `None`: zstd if this mksquashfs has it,
    /// else xz.
    pub compression: Option<String>,
}

impl SquashfsExporter {
    fn compression(&self) -> String {
        if let Some(c) = &self.compression {
            return c.clone();
        }
        static HAS_ZSTD: OnceLock<bool> = OnceLock::new();
        let zstd = *HAS_ZSTD.get_or_init(|| {
            MKSQUASHFS
                .command()
                .ok()
                .and_then(|mut c| c.arg("-help").output().ok())
                .map(|o| {
                    let text = String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).into_owned();
                    compressors(&text).iter().any(|c| c == "zstd")
                })
                .unwrap_or(false)
        });
        if zstd { "zstd" } else { "xz" }.into()
    }
}

/// The names under "Compressors available" in `mksquashfs -help`.
fn compressors(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.contains("Compressors available"))
        .skip(1)
        .take_while(|l| l.starts_with(char::is_whitespace) && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| !w.starts_with('-'))
        .map(str::to_string)
        .collect()
}

impl Exporter for SquashfsExporter {
    fn kind(&self) -> OutputKind {
        OutputKind::Squashfs
    }

    fn key_options(&self) -> Result<BTreeMap<String, String>, ExportError> {
        Ok([
            ("compression".into(), self.compression()),
            (
                "tool".into(),
                MKSQUASHFS
                    .version(&["-version"])
                    .unwrap_or_else(|| "none".into()),
            ),
        ]
        .into())
    }

    fn export(&self, rootfs: &Path, ctx: &ExportContext, dest: &Path) -> Result<(), ExportError> {
        let epoch = ctx.epoch.to_string();
        let mut cmd = MKSQUASHFS.command()?;
        cmd.arg(rootfs)
            .arg(dest)
            .args([
                "-noappend",
                "-reproducible",
                "-xattrs",
                "-no-progress",
                "-quiet",
            ])
            .args(["-all-time", &epoch, "-mkfs-time", &epoch])
            .args(["-comp", &self.compression()]);
        MKSQUASHFS.run(cmd, dest)?;
        Ok(())
    }

    fn label(&self) -> String {
        format!("squashfs+{}", self.compression())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressors_are_read_from_the_help_text() {
        let help = "\
-comp <comp>\t\tselect <comp> compression
\t\t\tCompressors available:
\t\t\t\tgzip (default)
\t\t\t\tlzo
\t\t\t\tzstd
-b <block_size>\t\tset data block
";
        assert_eq!(compressors(help), vec!["gzip", "lzo", "zstd"]);
    }
}
