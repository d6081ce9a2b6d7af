//! The GPT disk: where the partitions go, the partition table written by
//! `sfdisk` onto a regular file (every identifier given, so the table is a
//! function of the layout), and partition images copied in at their
//! offsets (zero runs skipped, so the disk stays as sparse as its parts).
//! An ext4 root is not copied: mke2fs writes it in place.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::export::tool::SFDISK;
use crate::export::ExportError;

/// DPS / UEFI type of the EFI system partition.
pub const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

pub const MIB: u64 = 1 << 20;

/// Where each partition lies, in bytes; every start and size is a whole
/// MiB (the alignment partitioning tools use), the first partition starts
/// at 1 MiB and 1 MiB is left at the end for the backup table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub esp_start: u64,
    pub esp_size: u64,
    pub root_start: u64,
    pub root_size: u64,
    pub total: u64,
}

impl Layout {
    /// The smallest layout for an ESP and a root of these sizes.
    pub fn fit(esp_size: u64, root_size: u64) -> Layout {
        let esp_size = esp_size.div_ceil(MIB) * MIB;
        let root_size = root_size.div_ceil(MIB) * MIB;
        Layout {
            esp_start: MIB,
            esp_size,
            root_start: MIB + esp_size,
            root_size,
            total: MIB + esp_size + root_size + MIB,
        }
    }

    /// A disk of `total` bytes: the root partition takes what the ESP
    /// leaves. `None` if `total` leaves it nothing.
    pub fn sized(esp_size: u64, total: u64) -> Option<Layout> {
        let total = total / MIB * MIB;
        let root = total.checked_sub(Layout::fit(esp_size, 0).total)?;
        (root >= MIB).then(|| Layout {
            total,
            ..Layout::fit(esp_size, root)
        })
    }

    /// The `sfdisk` script for this layout.
    pub fn sfdisk_script(&self, ids: &Ids, root_type: &str) -> String {
        let s = |b: u64| b / 512;
        format!(
            "label: gpt\nlabel-id: {}\nunit: sectors\nsector-size: 512\n\n\
             start={}, size={}, type={ESP_TYPE}, uuid={}, name=\"esp\"\n\
             start={}, size={}, type={root_type}, uuid={}, name=\"root\"\n",
            ids.disk,
            s(self.esp_start),
            s(self.esp_size),
            ids.esp,
            s(self.root_start),
            s(self.root_size),
            ids.root,
        )
    }
}

/// The disk's and the partitions' GUIDs.
#[derive(Debug, Clone)]
pub struct Ids {
    pub disk: String,
    pub esp: String,
    pub root: String,
}

/// A zero-filled (sparse) disk image file of `total` bytes.
pub fn create(dest: &Path, total: u64) -> Result<fs_err::File, ExportError> {
    let file = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dest)?;
    file.set_len(total)?;
    Ok(file)
}

/// Write the GPT (protective MBR, primary and backup tables) of `layout`
/// onto the disk image `dest`, touching nothing else of it.
pub fn partition(
    dest: &Path,
    layout: &Layout,
    ids: &Ids,
    root_type: &str,
) -> Result<(), ExportError> {
    let mut cmd = SFDISK.command()?;
    cmd.args([
        "--no-reread",
        "--no-tell-kernel",
        "--quiet",
        "--wipe",
        "never",
    ])
    .arg(dest)
    .stdin(std::process::Stdio::piped());
    run_with_stdin(cmd, dest, layout.sfdisk_script(ids, root_type))
}

/// [`Tool::run`] feeding `input` on stdin.
fn run_with_stdin(
    mut cmd: std::process::Command,
    dest: &Path,
    input: String,
) -> Result<(), ExportError> {
    use std::io::Write;
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    tracing::debug!(?cmd, "running sfdisk");
    let mut child = cmd.spawn().map_err(|source| ExportError::ToolSpawn {
        tool: SFDISK.name,
        source,
    })?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(ExportError::ToolFailed {
            tool: SFDISK.name,
            dest: dest.to_path_buf(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Copy `src` into `out` at `offset`, refusing one larger than `room`;
/// all-zero chunks are skipped (the file is zero there already).
pub fn copy_at(src: &Path, out: &fs_err::File, offset: u64, room: u64) -> Result<(), ExportError> {
    let len = fs_err::metadata(src)?.len();
    if len > room {
        return Err(ExportError::Unexpected {
            what: format!(
                "{} is {len} bytes, larger than its partition ({room} bytes)",
                src.display()
            ),
        });
    }
    let mut f = fs_err::File::open(src)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut at = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if chunk.iter().any(|&b| b != 0) {
            out.file().write_all_at(chunk, offset + at)?;
        }
        at += n as u64;
    }
    Ok(())
}

fn read_full(f: &mut fs_err::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_aligns_every_partition_to_a_mib() {
        let l = Layout::fit(64 * MIB, 300 * MIB + 5);
        assert_eq!(l.esp_start, MIB);
        assert_eq!(l.root_start, 65 * MIB);
        assert_eq!(l.root_size, 301 * MIB);
        assert_eq!(l.total, 367 * MIB);
    }

    #[test]
    fn sized_gives_the_root_what_the_esp_leaves() {
        let l = Layout::sized(64 * MIB, 1 << 30).unwrap();
        assert_eq!(l.total, 1 << 30);
        assert_eq!(l.root_size, 1024 * MIB - 66 * MIB);
        assert_eq!(Layout::sized(64 * MIB, 66 * MIB), None);
    }

    #[test]
    fn the_sfdisk_script_names_every_id_and_type() {
        let ids = Ids {
            disk: "d".into(),
            esp: "e".into(),
            root: "r".into(),
        };
        let s = Layout::fit(64 * MIB, 100 * MIB).sfdisk_script(&ids, "T");
        assert!(s.contains("label-id: d\n"), "{s}");
        assert!(
            s.contains(&format!(
                "start=2048, size=131072, type={ESP_TYPE}, uuid=e, name=\"esp\""
            )),
            "{s}"
        );
        assert!(
            s.contains("start=133120, size=204800, type=T, uuid=r, name=\"root\""),
            "{s}"
        );
    }
}
