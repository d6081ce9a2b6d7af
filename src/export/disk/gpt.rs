//! The GPT disk: where the partitions go, the partition table written by
//! `sfdisk` onto a regular file (every identifier given, so the table is a
//! function of the layout), and partition images copied in at their
//! offsets (zero runs skipped, so the disk stays as sparse as its parts).
//! An ext4 root is not copied: it is written in place; a second root
//! slot that copies it is copied within the disk.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::export::tool::SFDISK;
use crate::export::ExportError;

/// DPS / UEFI type of the EFI system partition.
pub const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

pub const MIB: u64 = 1 << 20;

/// One partition of the table: where it lies, in bytes (whole MiB, the
/// alignment partitioning tools use), and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub type_guid: String,
    pub uuid: String,
    pub start: u64,
    pub size: u64,
}

/// The partition table: the first partition starts at 1 MiB, each
/// follows the one before, and at least 1 MiB is left at the end for the
/// backup table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub disk: String,
    pub partitions: Vec<Partition>,
    pub total: u64,
}

/// A partition to place: name, type GUID, GUID, size in bytes.
pub struct Part<'a> {
    pub name: &'a str,
    pub type_guid: &'a str,
    pub uuid: &'a str,
    pub size: u64,
}

impl Table {
    /// The partitions one after the other, each rounded up to a MiB, on a
    /// disk of `total` bytes (rounded down to a MiB) or just large enough.
    /// `Err(needed)` if `total` is too small.
    pub fn place(disk: &str, parts: &[Part<'_>], total: Option<u64>) -> Result<Table, u64> {
        let mut at = MIB;
        let mut partitions = Vec::with_capacity(parts.len());
        for p in parts {
            let size = p.size.div_ceil(MIB) * MIB;
            partitions.push(Partition {
                name: p.name.to_string(),
                type_guid: p.type_guid.to_string(),
                uuid: p.uuid.to_string(),
                start: at,
                size,
            });
            at += size;
        }
        let needed = at + MIB;
        let total = match total {
            Some(t) if t / MIB * MIB < needed => return Err(needed),
            Some(t) => t / MIB * MIB,
            None => needed,
        };
        Ok(Table {
            disk: disk.to_string(),
            partitions,
            total,
        })
    }

    /// The partition named `name`.
    pub fn get(&self, name: &str) -> &Partition {
        self.partitions
            .iter()
            .find(|p| p.name == name)
            .expect("the table has every partition the layout names")
    }

    /// The `sfdisk` script for this table.
    pub fn sfdisk_script(&self) -> String {
        let s = |b: u64| b / 512;
        let mut out = format!(
            "label: gpt\nlabel-id: {}\nunit: sectors\nsector-size: 512\n\n",
            self.disk
        );
        for p in &self.partitions {
            out.push_str(&format!(
                "start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
                s(p.start),
                s(p.size),
                p.type_guid,
                p.uuid,
                p.name
            ));
        }
        out
    }
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

/// Write the GPT (protective MBR, primary and backup tables) of `table`
/// onto the disk image `dest`, touching nothing else of it.
pub fn partition(dest: &Path, table: &Table) -> Result<(), ExportError> {
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
    run_with_stdin(cmd, dest, table.sfdisk_script())
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

/// Copy `len` bytes of the disk from `from` to `to` (a copy of a
/// partition), skipping all-zero chunks as [`copy_at`] does.
pub fn copy_within(disk: &fs_err::File, from: u64, to: u64, len: u64) -> Result<(), ExportError> {
    let mut buf = vec![0u8; MIB as usize];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(MIB) as usize;
        let chunk = &mut buf[..n];
        disk.file().read_exact_at(chunk, from + at)?;
        if chunk.iter().any(|&b| b != 0) {
            disk.file().write_all_at(chunk, to + at)?;
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

    fn part<'a>(name: &'a str, size: u64) -> Part<'a> {
        Part {
            name,
            type_guid: "T",
            uuid: "u",
            size,
        }
    }

    #[test]
    fn place_aligns_every_partition_to_a_mib() {
        let t = Table::place(
            "d",
            &[part("esp", 64 * MIB), part("root", 300 * MIB + 5)],
            None,
        )
        .unwrap();
        assert_eq!(t.get("esp").start, MIB);
        assert_eq!(t.get("root").start, 65 * MIB);
        assert_eq!(t.get("root").size, 301 * MIB);
        assert_eq!(t.total, 367 * MIB);
    }

    #[test]
    fn a_given_total_leaves_the_rest_free_or_is_too_small() {
        let parts = [part("esp", 64 * MIB), part("root", 100 * MIB)];
        let t = Table::place("d", &parts, Some((1 << 30) + 5)).unwrap();
        assert_eq!(t.total, 1 << 30);
        assert_eq!(Table::place("d", &parts, Some(160 * MIB)), Err(166 * MIB));
    }

    #[test]
    fn the_sfdisk_script_names_every_id_and_type() {
        let t = Table::place(
            "d",
            &[
                Part {
                    name: "esp",
                    type_guid: ESP_TYPE,
                    uuid: "e",
                    size: 64 * MIB,
                },
                Part {
                    name: "root",
                    type_guid: "T",
                    uuid: "r",
                    size: 100 * MIB,
                },
            ],
            None,
        )
        .unwrap();
        let s = t.sfdisk_script();
        assert!(s.starts_with("label: gpt\nlabel-id: d\n"), "{s}");
        assert!(
            s.contains(&format!(
                "start=2048, size=131072, type={ESP_TYPE}, uuid=e, name=\"esp\"\n"
            )),
            "{s}"
        );
        assert!(
            s.ends_with("start=133120, size=204800, type=T, uuid=r, name=\"root\"\n"),
            "{s}"
        );
    }
}
