//! `type=disk`: a bootable GPT disk image (raw or qcow2) made from the
//! image alone, as a product ships it to a device or a VM.
//!
//! Two partitions: an EFI system partition (FAT32, [`esp`]) holding
//! systemd-boot, the image's kernel and initrd and a Boot Loader
//! Specification entry ([`boot`]); and the root partition, the output of
//! the ext4 or erofs exporter written at its offset ([`gpt`]). Partition
//! types follow the Discoverable Partitions Specification, so
//! systemd-gpt-auto-generator finds the root by itself; the entry names it
//! by PARTUUID anyway, for initramfs-tools. Every identifier (disk and
//! partition GUIDs, the filesystem UUID, the FAT volume id) is derived from
//! the image digest and every time is the epoch, so the disk is a function
//! of the image and the options, byte for byte. No loop device, no mount,
//! no root: the tools write regular files.

mod boot;
mod esp;
mod gpt;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ext4::{self, derive_uuid};
use super::tool::{Tool, FATLABEL, MCOPY, MKE2FS, QEMU_IMG, SFDISK};
use super::{ErofsExporter, ExportContext, ExportError, Exporter, Ext4Exporter, OutputKind};
use boot::{Arch, Boot};
use gpt::{Ids, Layout, MIB};

/// The file format of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// The root partition's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootFs {
    Ext4,
    Erofs,
}

/// `type=disk`.
#[derive(Debug, Clone)]
pub struct DiskExporter {
    pub format: DiskFormat,
    /// The whole disk's size; the root partition gets what the ESP leaves.
    /// `None`: just large enough (the ext4 default size).
    pub size: Option<u64>,
    pub rootfs: RootFs,
    /// Added to the kernel command line after the image's own.
    pub cmdline: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("the image has no kernel (/boot/vmlinuz-*) to boot; add `INSTALL {package}` to the Buildfile")]
    NoKernel { package: String },
    #[error("the image has /boot/vmlinuz-{version} but no /boot/initrd.img-{version}; add `INSTALL initramfs-tools` before the kernel package")]
    NoInitrd { version: String },
    #[error("the image has no systemd-boot EFI binary (/{path}); add `INSTALL systemd-boot-efi` to the Buildfile")]
    NoBootloader { path: &'static str },
    #[error("a disk image for architecture {arch:?} is not supported (amd64 and arm64 are)")]
    UnsupportedArch { arch: String },
    #[error("/{path} in the image is a symlink or not a regular file; a disk image is made only from regular files")]
    Unsafe { path: String },
    #[error("size={size} is too small for the disk {dest}: it needs at least {needed} bytes")]
    TooSmall {
        dest: PathBuf,
        size: u64,
        needed: u64,
    },
    #[error(transparent)]
    Io(std::io::Error),
}

impl DiskExporter {
    fn ids(ctx: &ExportContext) -> Ids {
        Ids {
            disk: derive_uuid("gpt-disk", &ctx.image),
            esp: derive_uuid("gpt-esp", &ctx.image),
            root: derive_uuid("gpt-root", &ctx.image),
        }
    }

    /// Where the partitions go. An ext4 root is as large as the ext4
    /// exporter would make it, or fills `size=`; an erofs root is made
    /// first (into `scratch`) since only then is its size known.
    fn layout(
        &self,
        rootfs: &Path,
        ctx: &ExportContext,
        esp_size: u64,
        scratch: &Path,
        dest: &Path,
    ) -> Result<(Layout, Option<PathBuf>), ExportError> {
        let too_small = |total: u64, root: u64| DiskError::TooSmall {
            dest: dest.to_path_buf(),
            size: total,
            needed: Layout::fit(esp_size, root).total,
        };
        let sized = match self.size {
            Some(total) => Some(
                Layout::sized(esp_size, total)
                    .ok_or_else(|| too_small(total, ctx.stats.block_bytes))?,
            ),
            None => None,
        };
        match self.rootfs {
            RootFs::Ext4 => Ok((
                sized.unwrap_or_else(|| Layout::fit(esp_size, ext4::default_size(&ctx.stats))),
                None,
            )),
            RootFs::Erofs => {
                let image = scratch.join("root.erofs");
                ErofsExporter {
                    compression: "lz4hc".into(),
                }
                .export(rootfs, ctx, &image)?;
                let len = fs_err::metadata(&image)?.len();
                let layout = match sized {
                    Some(l) if len > l.root_size => return Err(too_small(l.total, len).into()),
                    Some(l) => l,
                    None => Layout::fit(esp_size, len),
                };
                Ok((layout, Some(image)))
            }
        }
    }
}

impl Exporter for DiskExporter {
    fn kind(&self) -> OutputKind {
        OutputKind::Disk
    }

    fn key_options(&self) -> Result<BTreeMap<String, String>, ExportError> {
        let version = |t: &Tool, args: &[&str]| t.version(args).unwrap_or_else(|| "none".into());
        let mut o = BTreeMap::new();
        o.insert("format".into(), self.format.as_str().into());
        o.insert(
            "size".into(),
            self.size.map_or("default".into(), |s| s.to_string()),
        );
        o.insert("rootfs".into(), self.rootfs.as_str().into());
        o.insert("cmdline".into(), self.cmdline.clone().unwrap_or_default());
        o.insert("sfdisk".into(), version(&SFDISK, &["--version"]));
        o.insert("dosfstools".into(), version(&FATLABEL, &["--version"]));
        o.insert("mtools".into(), version(&MCOPY, &["--version"]));
        let root_tool = match self.rootfs {
            RootFs::Ext4 => version(&MKE2FS, &["-V"]),
            RootFs::Erofs => ErofsExporter {
                compression: "lz4hc".into(),
            }
            .key_options()?
            .remove("tool")
            .unwrap_or_default(),
        };
        o.insert("rootfs-tool".into(), root_tool);
        if self.format == DiskFormat::Qcow2 {
            o.insert("qemu-img".into(), version(&QEMU_IMG, &["--version"]));
        }
        Ok(o)
    }

    fn export(&self, rootfs: &Path, ctx: &ExportContext, dest: &Path) -> Result<(), ExportError> {
        let arch = Arch::from_oci(&ctx.arch)?;
        let boot = Boot::find(rootfs, arch)?;
        let ids = Self::ids(ctx);
        let options = boot::command_line(
            rootfs,
            &ids.root,
            self.rootfs == RootFs::Erofs,
            self.cmdline.as_deref(),
        )?;
        let esp_size = esp::esp_size(esp::content_size(&boot)?);
        // Beside the destination: the parts are as large as the disk.
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let scratch = tempfile::Builder::new()
            .prefix(".disk-parts-")
            .tempdir_in(parent)?;
        let (layout, erofs) = self.layout(rootfs, ctx, esp_size, scratch.path(), dest)?;
        let esp_img = scratch.path().join("esp.img");
        let volume_id = u32::from_str_radix(&derive_uuid("fat-volume-id", &ctx.image)[..8], 16)
            .expect("a derived uuid starts with 8 hex digits");
        esp::make(
            &esp::Esp {
                boot: &boot,
                arch,
                options: &options,
                volume_id,
                epoch: ctx.epoch,
                size: layout.esp_size,
            },
            &esp_img,
            &ctx.tmp_dir,
        )?;
        let raw = match self.format {
            DiskFormat::Raw => dest.to_path_buf(),
            DiskFormat::Qcow2 => scratch.path().join("disk.raw"),
        };
        let disk = gpt::create(&raw, layout.total)?;
        match &erofs {
            Some(image) => gpt::copy_at(image, &disk, layout.root_start, layout.root_size)?,
            // Made in place: the filesystem is not copied again.
            None => Ext4Exporter {
                size: Some(layout.root_size),
                label: "root".into(),
                inodes: None,
            }
            .make_at(rootfs, ctx, &raw, layout.root_start)?,
        }
        gpt::copy_at(&esp_img, &disk, layout.esp_start, layout.esp_size)?;
        gpt::partition(&raw, &layout, &ids, arch.root_type)?;
        disk.sync_all()?;
        if self.format == DiskFormat::Qcow2 {
            let mut cmd = QEMU_IMG.command()?;
            cmd.args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&raw)
                .arg(dest);
            QEMU_IMG.run(cmd, dest)?;
        }
        tracing::debug!(
            kernel = %boot.version,
            esp_mib = layout.esp_size / MIB,
            root_mib = layout.root_size / MIB,
            "disk made"
        );
        Ok(())
    }

    fn label(&self) -> String {
        format!(
            "disk ({}, {} root)",
            self.format.as_str(),
            self.rootfs.as_str()
        )
    }
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl RootFs {
    pub fn as_str(self) -> &'static str {
        match self {
            RootFs::Ext4 => "ext4",
            RootFs::Erofs => "erofs",
        }
    }
}

impl From<DiskError> for ExportError {
    fn from(e: DiskError) -> Self {
        match e {
            DiskError::Io(e) => ExportError::Io(e),
            e => ExportError::Disk(e),
        }
    }
}
