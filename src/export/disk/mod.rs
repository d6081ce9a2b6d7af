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
mod layout;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ext4::Mke2fs;
use super::ext4::{self, derive_uuid};
use super::tool::{Tool, FATLABEL, MCOPY, MKE2FS, MKSWAP, QEMU_IMG, SFDISK};
use super::{ErofsExporter, ExportContext, ExportError, Exporter, Ext4Exporter, OutputKind};
use boot::{Arch, Boot};
use gpt::{Part, Table, ESP_TYPE, MIB};
pub use layout::DiskLayout;
use layout::{Contents, Filesystem};

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
    /// `layout=`: a layout file ([`DiskLayout`]), read when the disk is
    /// made (and checked before, when `-o` is parsed).
    pub layout: Option<PathBuf>,
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
    #[error("{}:{line}: {message}", file.display())]
    Layout {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("reading the layout file {}", file.display())]
    LayoutRead {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(std::io::Error),
}

/// The sizes of a disk's partitions, in bytes, before they are placed.
#[derive(Debug)]
struct Sizes {
    esp: u64,
    root: u64,
    /// One per [`DiskLayout::extra`].
    extra: Vec<u64>,
}

impl DiskExporter {
    fn layout_file(&self) -> Result<DiskLayout, DiskError> {
        match &self.layout {
            Some(p) => DiskLayout::load(p),
            None => Ok(DiskLayout::default()),
        }
    }

    /// The partition sizes. The root is `[root] size` if the layout gives
    /// one; else, with `size=`, it shares what the ESP and the other
    /// partitions leave with the root slots that take its size; else it is
    /// `root_fit` (ext4: as large as the ext4 exporter would make it;
    /// erofs: the image made). `root_min` is what the root's content needs.
    fn sizes(
        &self,
        layout: &DiskLayout,
        esp: u64,
        root_fit: u64,
        root_min: u64,
        dest: &Path,
    ) -> Result<Sizes, DiskError> {
        let esp = esp.div_ceil(MIB) * MIB;
        let slots = layout.extra.iter().filter(|e| e.size.is_none()).count() as u64;
        let fixed: u64 = layout
            .extra
            .iter()
            .filter_map(|e| e.size)
            .map(|s| s.bytes)
            .sum();
        let root_min = root_min.div_ceil(MIB) * MIB;
        let root = match (layout.root_size, self.size) {
            (Some(r), _) if r.bytes < root_min => {
                return Err(layout.error(
                    r.line,
                    format!(
                        "[root] size = {}M is smaller than the root filesystem needs ({}M); give at least size = \"{}M\" or leave it out",
                        r.bytes / MIB,
                        root_min / MIB,
                        root_min / MIB
                    ),
                ))
            }
            (Some(r), _) => r.bytes,
            (None, Some(total)) => {
                let room = (total / MIB * MIB).saturating_sub(2 * MIB + esp + fixed);
                let root = room / (1 + slots) / MIB * MIB;
                if root < root_min.max(MIB) {
                    return Err(DiskError::TooSmall {
                        dest: dest.to_path_buf(),
                        size: total,
                        needed: 2 * MIB + esp + fixed + root_min.max(MIB) * (1 + slots),
                    });
                }
                root
            }
            (None, None) => root_fit.div_ceil(MIB) * MIB,
        };
        let extra = layout
            .extra
            .iter()
            .map(|e| e.size.map_or(root, |s| s.bytes))
            .collect();
        Ok(Sizes { esp, root, extra })
    }

    /// Place the partitions: ESP, root, then the layout's, in its order.
    /// GUIDs are derived from the image digest; the default disk's are
    /// what they were before layout files.
    fn table(
        &self,
        ctx: &ExportContext,
        layout: &DiskLayout,
        sizes: &Sizes,
        arch: Arch,
        dest: &Path,
    ) -> Result<Table, DiskError> {
        let uuid = |purpose: &str| derive_uuid(purpose, &ctx.image);
        let esp_uuid = uuid("gpt-esp");
        let root_uuid = uuid("gpt-root");
        let extra_uuids: Vec<String> = layout
            .extra
            .iter()
            .map(|e| uuid(&format!("gpt-partition:{}", e.label)))
            .collect();
        let mut parts = vec![
            Part {
                name: "esp",
                type_guid: ESP_TYPE,
                uuid: &esp_uuid,
                size: sizes.esp,
            },
            Part {
                name: &layout.root_label,
                type_guid: arch.root_type,
                uuid: &root_uuid,
                size: sizes.root,
            },
        ];
        for ((e, size), id) in layout.extra.iter().zip(&sizes.extra).zip(&extra_uuids) {
            parts.push(Part {
                name: &e.label,
                type_guid: e.kind.guid(arch.root_type),
                uuid: id,
                size: *size,
            });
        }
        Table::place(&uuid("gpt-disk"), &parts, self.size).map_err(|needed| DiskError::TooSmall {
            dest: dest.to_path_buf(),
            size: self.size.unwrap_or_default(),
            needed,
        })
    }
}

/// Fill the layout's extra partitions: a copy of the root, an empty ext4,
/// a swap area, or nothing (zeros).
fn fill_extra(
    ctx: &ExportContext,
    layout: &DiskLayout,
    table: &Table,
    disk: &fs_err::File,
    raw: &Path,
    scratch: &Path,
) -> Result<(), ExportError> {
    let root = table.get(&layout.root_label);
    for e in &layout.extra {
        let p = table.get(&e.label);
        match (e.contents, e.filesystem) {
            (Contents::Copy, _) => gpt::copy_within(disk, root.start, p.start, root.size)?,
            (Contents::Empty, Filesystem::Ext4) => {
                Mke2fs {
                    label: &e.label,
                    uuid: &derive_uuid(&format!("ext4-uuid:{}", e.label), &ctx.image),
                    size: p.size,
                    inodes: None,
                    epoch: ctx.epoch,
                }
                .run(raw, p.start, &ctx.tmp_dir)?;
            }
            (Contents::Empty, Filesystem::Swap) => {
                // mkswap writes a file of its own: the header page only,
                // the rest stays a hole.
                let area = scratch.join(format!("swap-{}", e.label));
                fs_err::File::create(&area)?.set_len(p.size)?;
                let mut cmd = MKSWAP.command()?;
                cmd.args(["-q", "-L", &e.label, "-U"])
                    .arg(derive_uuid(&format!("swap-uuid:{}", e.label), &ctx.image))
                    .arg(&area);
                MKSWAP.run(cmd, raw)?;
                gpt::copy_at(&area, disk, p.start, p.size)?;
                fs_err::remove_file(&area)?;
            }
            (Contents::Empty, Filesystem::None) => {}
        }
    }
    Ok(())
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
            RootFs::Ext4 => super::ext4w::WRITER.into(),
            RootFs::Erofs => ErofsExporter {
                compression: "lz4hc".into(),
            }
            .key_options()?
            .remove("tool")
            .unwrap_or_default(),
        };
        o.insert("rootfs-tool".into(), root_tool);
        // The layout's content, not its path; no entry without one, so the
        // default disk keeps its key.
        if self.layout.is_some() {
            let layout = self.layout_file()?;
            o.insert("layout".into(), layout.canonical());
            if layout
                .extra
                .iter()
                .any(|e| e.filesystem == Filesystem::Swap)
            {
                o.insert("mkswap".into(), version(&MKSWAP, &["--version"]));
            }
            // Empty ext4 partitions are still made by mke2fs.
            if layout
                .extra
                .iter()
                .any(|e| e.contents == Contents::Empty && e.filesystem == Filesystem::Ext4)
            {
                o.insert("mke2fs".into(), version(&MKE2FS, &["-V"]));
            }
        }
        if self.format == DiskFormat::Qcow2 {
            o.insert("qemu-img".into(), version(&QEMU_IMG, &["--version"]));
        }
        Ok(o)
    }

    fn export(&self, rootfs: &Path, ctx: &ExportContext, dest: &Path) -> Result<(), ExportError> {
        let layout = self.layout_file()?;
        let arch = Arch::from_oci(&ctx.arch)?;
        let boot = Boot::find(rootfs, arch)?;
        let root_partuuid = derive_uuid("gpt-root", &ctx.image);
        let options = boot::command_line(
            rootfs,
            &root_partuuid,
            self.rootfs == RootFs::Erofs,
            self.cmdline.as_deref(),
        )?;
        let content = esp::content_size(&boot)?;
        let esp_size = match layout.esp_size {
            // Room for the files and the two FATs (4 bytes a sector each).
            Some(s) if s.bytes < content + s.bytes / 64 + MIB => {
                return Err(layout
                    .error(
                        s.line,
                        format!(
                            "[esp] size = {}M cannot hold systemd-boot, the kernel and the initrd ({}M); give at least size = \"{}M\" or leave it out",
                            s.bytes / MIB,
                            content.div_ceil(MIB),
                            esp::esp_size(content) / MIB
                        ),
                    )
                    .into())
            }
            Some(s) => s.bytes,
            None => esp::esp_size(content),
        };
        // Beside the destination: the parts are as large as the disk.
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let scratch = tempfile::Builder::new()
            .prefix(".disk-parts-")
            .tempdir_in(parent)?;
        // An erofs root is made first: only then is its size known.
        let (erofs, root_fit, root_min) = match self.rootfs {
            RootFs::Ext4 => (None, ext4::default_size(&ctx.stats), ctx.stats.block_bytes),
            RootFs::Erofs => {
                let image = scratch.path().join("root.erofs");
                ErofsExporter {
                    compression: "lz4hc".into(),
                }
                .export(rootfs, ctx, &image)?;
                let len = fs_err::metadata(&image)?.len();
                (Some(image), len, len)
            }
        };
        let sizes = self.sizes(&layout, esp_size, root_fit, root_min, dest)?;
        let table = self.table(ctx, &layout, &sizes, arch, dest)?;
        let esp_part = table.get("esp");
        let root = table.get(&layout.root_label);
        let esp_img = scratch.path().join("esp.img");
        let volume_id = u32::from_str_radix(&derive_uuid("fat-volume-id", &ctx.image)[..8], 16)
            .expect("a derived uuid starts with 8 hex digits");
        let raw = match self.format {
            DiskFormat::Raw => dest.to_path_buf(),
            DiskFormat::Qcow2 => scratch.path().join("disk.raw"),
        };
        let disk = gpt::create(&raw, table.total)?;
        // The ESP (mkfs.vfat, mcopy) on a thread of its own while the root
        // filesystem is made: they write different files.
        let (esp_made, root_made) = std::thread::scope(|s| {
            let esp = s.spawn(|| {
                esp::make(
                    &esp::Esp {
                        boot: &boot,
                        arch,
                        options: &options,
                        volume_id,
                        epoch: ctx.epoch,
                        size: esp_part.size,
                    },
                    &esp_img,
                    &ctx.tmp_dir,
                )
            });
            let root_made = match &erofs {
                Some(image) => gpt::copy_at(image, &disk, root.start, root.size),
                // Made in place: the filesystem is not copied again.
                None => Ext4Exporter {
                    size: Some(root.size),
                    label: layout.root_label.clone(),
                    inodes: None,
                }
                .make_at(rootfs, ctx, &raw, root.start),
            };
            let esp_made = esp.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            (esp_made, root_made)
        });
        root_made?;
        esp_made?;
        gpt::copy_at(&esp_img, &disk, esp_part.start, esp_part.size)?;
        fill_extra(ctx, &layout, &table, &disk, &raw, scratch.path())?;
        gpt::partition(&raw, &table)?;
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
            esp_mib = esp_part.size / MIB,
            root_mib = root.size / MIB,
            partitions = table.partitions.len(),
            "disk made"
        );
        Ok(())
    }

    fn label(&self) -> String {
        format!(
            "disk ({}, {} root{})",
            self.format.as_str(),
            self.rootfs.as_str(),
            if self.layout.is_some() {
                ", layout"
            } else {
                ""
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exporter(size: Option<u64>) -> DiskExporter {
        DiskExporter {
            format: DiskFormat::Raw,
            size,
            rootfs: RootFs::Ext4,
            cmdline: None,
            layout: None,
        }
    }

    fn layout(text: &str) -> DiskLayout {
        DiskLayout::parse(text, Path::new("disk.toml")).unwrap()
    }

    const SLOT_AND_DATA: &str = "[[partition]]\nlabel = \"b\"\ntype = \"root\"\n\
        [[partition]]\nlabel = \"d\"\ntype = \"linux-generic\"\nsize = \"100M\"\n";

    #[test]
    fn without_size_the_root_fits_its_content_and_a_slot_takes_its_size() {
        let s = exporter(None)
            .sizes(
                &layout(SLOT_AND_DATA),
                64 * MIB,
                300 * MIB + 1,
                200 * MIB,
                Path::new("x"),
            )
            .unwrap();
        assert_eq!((s.esp, s.root), (64 * MIB, 301 * MIB));
        assert_eq!(s.extra, [301 * MIB, 100 * MIB]);
    }

    #[test]
    fn with_size_the_root_and_its_slots_share_what_is_left() {
        let s = exporter(Some(1 << 30))
            .sizes(
                &layout(SLOT_AND_DATA),
                64 * MIB,
                300 * MIB,
                200 * MIB,
                Path::new("x"),
            )
            .unwrap();
        // 1024 - 2 (tables) - 64 - 100 = 858, shared by two root slots.
        assert_eq!(s.root, 429 * MIB);
        assert_eq!(s.extra, [429 * MIB, 100 * MIB]);
        let e = exporter(Some(500 * MIB))
            .sizes(
                &layout(SLOT_AND_DATA),
                64 * MIB,
                300 * MIB,
                200 * MIB,
                Path::new("x"),
            )
            .unwrap_err();
        assert!(
            matches!(e, DiskError::TooSmall { needed, .. } if needed == 566 * MIB),
            "{e}"
        );
    }

    #[test]
    fn a_root_size_below_the_content_names_its_line() {
        let l = layout("[root]\nsize = \"100M\"\n");
        let e = exporter(None)
            .sizes(&l, 64 * MIB, 300 * MIB, 200 * MIB, Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "disk.toml:2: [root] size = 100M is smaller than the root filesystem needs (200M)"
            ),
            "{e}"
        );
    }

    #[test]
    fn the_default_layout_keys_no_layout() {
        let o = exporter(None).key_options().unwrap();
        assert!(!o.contains_key("layout"), "{o:?}");
    }
}
