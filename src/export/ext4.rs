//! `type=ext4`: the flattened tree written as an ext4 filesystem by our
//! own writer ([`super::ext4w`]), a function of the tree, the image digest
//! (UUID and directory hash seed, [`derive_uuid`]) and the epoch.
//!
//! [`Mke2fs`] remains for the empty ext4 partitions of a disk layout.
//! Debian 12's mke2fs (1.47.0) has no `SOURCE_DATE_EPOCH`; what it takes
//! from the machine, and how each is pinned:
//! - the UUID and the directory hash seed: `-U` / `-E hash_seed=`;
//! - the clock (superblock times, inode creation times): `E2FSPROGS_FAKE_TIME`;
//! - `/etc/mke2fs.conf` (features, inode size and ratio) and whether the
//!   kernel offers lazy inode-table init or the host filesystem can punch
//!   holes (which flips `ITABLE_ZEROED` flags): a pinned `MKE2FS_CONFIG`,
//!   `nodiscard` and `lazy_itable_init=0`;
//!
//! With no tree copied in, every inode time is the fake time (tested).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use sha2::Digest as _;

use super::tool::MKE2FS;
use super::{ExportContext, ExportError, Exporter, OutputKind, TreeStats};
use crate::oci::{Digest, Sha256};

const MIB: u64 = 1024 * 1024;

/// Debian 12's `/etc/mke2fs.conf`, minus the usage types that never
/// apply to a rootfs image, plus the init choices pinned.
const MKE2FS_CONF: &str = "\
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
	lazy_itable_init = false
	lazy_journal_init = true
	discard = false

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
	small = {
		inode_ratio = 4096
	}
	floppy = {
		inode_ratio = 8192
	}
	big = {
		inode_ratio = 32768
	}
	huge = {
		inode_ratio = 65536
	}
";

/// `type=ext4`.
#[derive(Debug, Clone)]
pub struct Ext4Exporter {
    /// Bytes; `None`: [`default_size`] of the content.
    pub size: Option<u64>,
    pub label: String,
    /// Inode count; `None`: mke2fs' ratio, raised if the tree needs more.
    pub inodes: Option<u64>,
}

/// A v4-shaped UUID from the first 16 bytes of sha256(`purpose` + digest):
/// fixed per image, different per purpose (ext4, erofs).
pub fn derive_uuid(purpose: &str, image: &Digest) -> String {
    let mut h = Sha256::new();
    h.update(purpose.as_bytes());
    h.update(image.to_string().as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// Content ×1.3 + 64 MiB (journal, metadata, room to boot), rounded up to
/// 4 MiB.
pub fn default_size(stats: &TreeStats) -> u64 {
    let raw = stats.block_bytes + stats.block_bytes * 3 / 10 + 64 * MIB;
    raw.div_ceil(4 * MIB) * 4 * MIB
}

/// The inode count to force, if mke2fs' own would be too small.
pub(crate) fn inode_count(size: u64, stats: &TreeStats, asked: Option<u64>) -> Option<u64> {
    if asked.is_some() {
        return asked;
    }
    // The "small" usage type (under 512 MiB) has a denser ratio.
    let ratio = if size < 512 * MIB { 4096 } else { 16384 };
    let default = size / ratio;
    let needed = stats.inodes + stats.inodes / 4 + 1024;
    (default < needed).then_some(needed)
}

impl Exporter for Ext4Exporter {
    fn kind(&self) -> OutputKind {
        OutputKind::Ext4
    }

    fn key_options(&self) -> Result<BTreeMap<String, String>, ExportError> {
        let mut o = BTreeMap::new();
        o.insert(
            "size".into(),
            self.size.map_or("default".into(), |s| s.to_string()),
        );
        o.insert("label".into(), self.label.clone());
        o.insert(
            "inodes".into(),
            self.inodes.map_or("default".into(), |n| n.to_string()),
        );
        o.insert("tool".into(), super::ext4w::WRITER.into());
        Ok(o)
    }

    fn export(&self, rootfs: &Path, ctx: &ExportContext, dest: &Path) -> Result<(), ExportError> {
        self.make_at(rootfs, ctx, dest, 0)
    }
}

impl Ext4Exporter {
    /// Make the filesystem in `dest` starting `offset` bytes into it (a
    /// partition of a disk image: no copy of the filesystem afterwards);
    /// the rest of the file is left as it is.
    pub(crate) fn make_at(
        &self,
        rootfs: &Path,
        ctx: &ExportContext,
        dest: &Path,
        offset: u64,
    ) -> Result<(), ExportError> {
        let needed = ctx.stats.block_bytes;
        let size = match self.size {
            Some(s) if s < needed => {
                return Err(ExportError::TooSmall {
                    dest: dest.to_path_buf(),
                    size: s,
                    needed,
                })
            }
            Some(s) => s,
            None => default_size(&ctx.stats),
        };
        let uuid = derive_uuid("ext4-uuid", &ctx.image);
        let inodes = inode_count(size, &ctx.stats, self.inodes);
        let uuid = super::ext4w::parse_uuid(&uuid).expect("derive_uuid makes a UUID");
        let mut params = super::ext4w::Params::new(&self.label, uuid, size, ctx.epoch);
        params.inodes = inodes;
        let t = std::time::Instant::now();
        super::ext4w::make(rootfs, &params, dest, offset).map_err(|e| {
            match super::ext4w::layout_problem(&e) {
                Some(what) => ExportError::Unexpected {
                    what: format!("cannot make the ext4 filesystem {}: {what}", dest.display()),
                },
                None => ExportError::Io(e),
            }
        })?;
        tracing::debug!(seconds = t.elapsed().as_secs_f64(), "ext4 made");
        Ok(())
    }
}

/// One `mke2fs` run of an empty filesystem, pinned for reproducibility
/// (see the module doc).
pub(crate) struct Mke2fs<'a> {
    pub label: &'a str,
    pub uuid: &'a str,
    pub size: u64,
    pub inodes: Option<u64>,
    pub epoch: i64,
}

impl Mke2fs<'_> {
    /// Make the filesystem in `dest` at `offset`.
    pub(crate) fn run(&self, dest: &Path, offset: u64, tmp_dir: &Path) -> Result<(), ExportError> {
        let epoch = self.epoch.to_string();
        let mut conf = tempfile::Builder::new()
            .prefix("mke2fs-")
            .suffix(".conf")
            .tempfile_in(tmp_dir)?;
        conf.write_all(MKE2FS_CONF.as_bytes())?;
        conf.flush()?;

        let mut cmd = MKE2FS.command()?;
        cmd.env("E2FSPROGS_FAKE_TIME", &epoch)
            .env("MKE2FS_CONFIG", conf.path())
            .args(["-t", "ext4", "-b", "4096", "-F", "-q", "-L", self.label])
            .args(["-U", self.uuid])
            .arg("-E")
            .arg(format!(
                "hash_seed={},root_owner=0:0,nodiscard,lazy_itable_init=0{}",
                self.uuid,
                if offset > 0 {
                    format!(",offset={offset}")
                } else {
                    String::new()
                }
            ));
        if let Some(n) = self.inodes {
            cmd.args(["-N", &n.to_string()]);
        }
        cmd.arg(dest).arg(format!("{}k", self.size / 1024));
        MKE2FS.run(cmd, dest)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uuids_are_fixed_v4_shaped_and_differ_per_purpose() {
        let d = Digest::of(b"image");
        let a = derive_uuid("ext4-uuid", &d);
        assert_eq!(a, derive_uuid("ext4-uuid", &d));
        assert_ne!(a, derive_uuid("erofs-uuid", &d));
        assert_ne!(a, derive_uuid("ext4-uuid", &Digest::of(b"other")));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn default_size_is_content_times_1_3_plus_64m_in_4m_steps() {
        let stats = TreeStats {
            block_bytes: 180 * MIB,
            ..Default::default()
        };
        // 180 × 1.3 = 234, + 64 = 298, rounded up to 300.
        assert_eq!(default_size(&stats), 300 * MIB);
        assert_eq!(default_size(&TreeStats::default()), 64 * MIB);
    }

    #[test]
    fn inode_count_is_raised_only_when_the_ratio_falls_short() {
        let few = TreeStats {
            inodes: 1000,
            ..Default::default()
        };
        assert_eq!(inode_count(300 * MIB, &few, None), None);
        let many = TreeStats {
            inodes: 200_000,
            ..Default::default()
        };
        assert_eq!(inode_count(600 * MIB, &many, None), Some(251_024));
        assert_eq!(inode_count(600 * MIB, &many, Some(7)), Some(7));
    }

    /// An empty filesystem needs no pinning after mke2fs: made twice, a
    /// second apart, at an offset, it is the same bytes, and every time of
    /// its inodes in use is the epoch.
    #[test]
    fn an_empty_filesystem_is_the_same_bytes_and_all_its_times_the_epoch() {
        if MKE2FS.command().is_err() {
            eprintln!("skipped: no mke2fs");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let epoch = 1_700_000_000;
        let fs = Mke2fs {
            label: "data",
            uuid: "11111111-2222-4333-8444-555555555555",
            size: 64 * MIB,
            inodes: None,
            epoch,
        };
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for p in [&a, &b] {
            fs_err::File::create(p).unwrap().set_len(65 * MIB).unwrap();
            fs.run(p, MIB, dir.path()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        assert!(fs_err::read(&a).unwrap() == fs_err::read(&b).unwrap());
        let image = format!("{}?offset={MIB}", a.display());
        let out = std::process::Command::new("debugfs")
            .args(["-R", "stat <2>", &image])
            .output()
            .unwrap();
        let stat = String::from_utf8_lossy(&out.stdout);
        let times: Vec<_> = stat.lines().filter(|l| l.contains("time: 0x")).collect();
        assert_eq!(times.len(), 4, "{stat}");
        for t in times {
            assert!(t.contains(&format!("0x{epoch:x}:")), "{t}");
        }
    }
}
