//! The EFI system partition as a file: `mkfs.vfat -C` makes an empty FAT32,
//! `mmd`/`mcopy` (mtools) fill it. No loop device, no mount, no root.
//!
//! Reproducibility: mkfs.fat 4.2 takes the volume id and the label's time
//! from the clock; `--invariant` fixes both and a later `-i` still sets the
//! id (derived from the image digest). mtools stamps files and folders with
//! `SOURCE_DATE_EPOCH`, in the zone of `TZ` (pinned to UTC).

use std::path::Path;
use std::process::Command;

use super::boot::{Arch, Boot};
use crate::export::tool::{Tool, MCOPY, MKFS_VFAT, MMD};
use crate::export::ExportError;

const MIB: u64 = 1 << 20;

/// Room for the files twice over (a second kernel on an update) plus
/// 16 MiB, at least 64 MiB (FAT32 with one-sector clusters needs 33).
pub fn esp_size(content: u64) -> u64 {
    let raw = (content * 2 + 16 * MIB).max(64 * MIB);
    raw.div_ceil(MIB) * MIB
}

/// Bytes of the files `make` copies.
pub fn content_size(boot: &Boot) -> Result<u64, ExportError> {
    let mut n = 0;
    for p in [&boot.kernel, &boot.initrd, &boot.efi] {
        n += fs_err::metadata(p)?.len();
    }
    Ok(n + 64 * 1024)
}

/// What goes on one ESP.
pub struct Esp<'a> {
    pub boot: &'a Boot,
    pub arch: Arch,
    /// The kernel command line of the entry.
    pub options: &'a str,
    pub volume_id: u32,
    pub epoch: i64,
    pub size: u64,
}

/// Make the ESP image `dest` holding systemd-boot (as the firmware's
/// default loader), the kernel, the initrd and one entry.
pub fn make(esp: &Esp<'_>, dest: &Path, tmp_dir: &Path) -> Result<(), ExportError> {
    let Esp {
        boot,
        arch,
        options,
        volume_id,
        epoch,
        size,
    } = *esp;
    let mut cmd = MKFS_VFAT.command()?;
    cmd.args(["-C", "--invariant", "-F", "32", "-s", "1", "-S", "512"])
        .arg("-i")
        .arg(format!("{volume_id:08x}"))
        .args(["-n", "ESP"])
        .arg(dest)
        .arg((size / 1024).to_string());
    MKFS_VFAT.run(cmd, dest)?;

    let staged = tempfile::Builder::new()
        .prefix("esp-")
        .tempdir_in(tmp_dir)?;
    let conf = staged.path().join("loader.conf");
    fs_err::write(&conf, boot.loader_conf())?;
    let entry = staged.path().join("entry.conf");
    fs_err::write(&entry, boot.entry(options))?;

    let mtools = |tool: &Tool| -> Result<Command, ExportError> {
        let mut c = tool.command()?;
        c.env("SOURCE_DATE_EPOCH", epoch.to_string())
            .env("TZ", "UTC")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(dest);
        Ok(c)
    };
    let mut cmd = mtools(&MMD)?;
    cmd.args(["::EFI", "::EFI/BOOT", "::loader", "::loader/entries"]);
    MMD.run(cmd, dest)?;
    for (src, to) in [
        (boot.efi.as_path(), format!("::{}", arch.efi_default)),
        (boot.kernel.as_path(), format!("::{}", boot.esp_kernel())),
        (boot.initrd.as_path(), format!("::{}", boot.esp_initrd())),
        (conf.as_path(), "::loader/loader.conf".to_string()),
        (
            entry.as_path(),
            format!("::loader/entries/{}", boot.entry_name()),
        ),
    ] {
        let mut cmd = mtools(&MCOPY)?;
        cmd.arg(src).arg(to);
        MCOPY.run(cmd, dest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_size_is_twice_the_content_plus_16m_at_least_64m() {
        assert_eq!(esp_size(0), 64 * MIB);
        assert_eq!(esp_size(40 * MIB), 96 * MIB);
        assert_eq!(esp_size(40 * MIB + 1), 97 * MIB);
    }
}
