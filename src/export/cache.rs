//! The export cache: finished single-file outputs kept under
//! `store.exports_dir()`, keyed by everything that decides their bytes.
//!
//! ```text
//! exports-v1/
//! └── <key hex>/
//!     ├── output        the tar / ext4 / erofs / squashfs / disk file
//!     └── entry.json    the key's inputs, and what the output came to
//! ```
//!
//! `output` is a hard link to the file the export wrote for the user when
//! both are on one filesystem (a disk image is a gigabyte; copying it cost
//! more than a tenth of a cold export), else a copy. A shared output is
//! trusted only while its inode, size and mtime are those recorded when
//! it was linked: a user who boots, edits or truncates their file in place
//! changes the mtime, and the entry is then dropped and made again. A
//! hit is always copied out (or reflinked), never linked, so two user
//! files never share one inode.
//!
//! An entry is built in a temp folder and renamed into place whole, so a
//! reader sees a complete entry or none; two exports racing to make the
//! same entry both succeed and one copy is kept. `entry.json` holds the
//! inputs so that a surprising miss can be explained by comparing them.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::place::copy_file;
use super::{ExportError, OutputKind};
use crate::oci::Digest;
use crate::store::Store;

/// Bump when an exporter changes what it writes for the same inputs.
pub const EXPORT_FORMAT: &str = "tplbuild-export-v1";

/// Everything an export cache key covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportKeyInputs {
    pub format: String,
    pub image: Digest,
    #[serde(rename = "type")]
    pub kind: String,
    pub epoch: i64,
    /// Options with defaults filled in, plus the tool version.
    pub options: BTreeMap<String, String>,
}

/// The key: sha256 of the inputs' canonical JSON (struct fields in a fixed
/// order, options sorted by the BTreeMap).
pub fn export_key(inputs: &ExportKeyInputs) -> Digest {
    Digest::of(&serde_json::to_vec(inputs).expect("key inputs serialise"))
}

/// What `entry.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Entry {
    pub inputs: ExportKeyInputs,
    pub bytes: u64,
    pub entries: u64,
    /// Set when `output` is a hard link to the user's file: what it was
    /// when linked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<Stamp>,
}

/// What identifies one state of a shared output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(path: &Path) -> io::Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = fs_err::metadata(path)?;
        Ok(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

pub(super) struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(store: &Store) -> Self {
        Cache {
            dir: store.exports_dir(),
        }
    }

    fn entry_dir(&self, key: &Digest) -> PathBuf {
        self.dir.join(key.hex())
    }

    /// The entry for `key`, if one is complete and readable.
    pub fn get(&self, key: &Digest) -> Option<(Entry, PathBuf)> {
        let dir = self.entry_dir(key);
        let bytes = fs_err::read(dir.join("entry.json")).ok()?;
        let entry: Entry = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(entry = %dir.display(), error = %e, "ignoring a malformed export cache entry");
                return None;
            }
        };
        let output = dir.join("output");
        match fs_err::metadata(&output) {
            Ok(m) if m.len() == entry.bytes => {}
            _ => {
                tracing::warn!(entry = %dir.display(), "ignoring an export cache entry whose output is missing or truncated");
                return None;
            }
        }
        if !entry.unchanged(&output) {
            tracing::info!(entry = %dir.display(), "the exported file this cache entry shares was changed since; making it again");
            self.remove(key);
            return None;
        }
        crate::store::prune::touch(&dir);
        Some((entry, output))
    }

    /// Copy a hit's output to `dest`; an error if a shared output changed
    /// while it was copied (the entry is removed, so a second run remakes
    /// it).
    pub fn copy_out(
        &self,
        key: &Digest,
        entry: &Entry,
        output: &Path,
        dest: &Path,
    ) -> Result<(), ExportError> {
        let cache_err = |source: io::Error| ExportError::Cache {
            path: output.to_path_buf(),
            source,
        };
        copy_file(output, dest).map_err(cache_err)?;
        if entry.unchanged(output) {
            return Ok(());
        }
        self.remove(key);
        Err(cache_err(io::Error::other(
            "the cached output changed while it was copied (a program is writing to the file it shares with an earlier export); it was dropped, run the export again",
        )))
    }

    fn remove(&self, key: &Digest) {
        let dir = self.entry_dir(key);
        // Renamed aside first, so a reader never sees half an entry.
        let aside = self
            .dir
            .join(format!(".{}.removed-{}", key.hex(), std::process::id()));
        if fs_err::rename(&dir, &aside).is_ok() {
            let _ = fs_err::remove_dir_all(&aside);
        }
    }

    /// Say why nothing is cached for these inputs when an entry for the
    /// same image and type exists with other inputs (uv/mkosi style).
    pub fn explain_miss(&self, inputs: &ExportKeyInputs) -> Option<String> {
        let mut reasons = Vec::new();
        for dir in fs_err::read_dir(&self.dir).ok()?.flatten() {
            let Ok(bytes) = fs_err::read(dir.path().join("entry.json")) else {
                continue;
            };
            let Ok(old) = serde_json::from_slice::<Entry>(&bytes) else {
                continue;
            };
            let old = old.inputs;
            if old.image != inputs.image || old.kind != inputs.kind {
                continue;
            }
            let mut diff = Vec::new();
            if old.format != inputs.format {
                diff.push(format!("format {} → {}", old.format, inputs.format));
            }
            if old.epoch != inputs.epoch {
                diff.push(format!("epoch {} → {}", old.epoch, inputs.epoch));
            }
            for k in old.options.keys().chain(inputs.options.keys()) {
                let (a, b) = (old.options.get(k), inputs.options.get(k));
                if a != b && !diff.iter().any(|d| d.starts_with(&format!("{k} "))) {
                    diff.push(format!(
                        "{k} {} → {}",
                        a.map_or("(unset)", String::as_str),
                        b.map_or("(unset)", String::as_str)
                    ));
                }
            }
            reasons.push(diff.join(", "));
        }
        reasons.sort();
        reasons.into_iter().next()
    }

    /// Keep `output` (a finished file, about to become the user's) for
    /// `key`: a hard link to it when the filesystem allows, else a copy.
    pub fn put(&self, key: &Digest, output: &Path, entry: &Entry) -> Result<(), ExportError> {
        let final_dir = self.entry_dir(key);
        let cache_err = |source: io::Error| ExportError::Cache {
            path: final_dir.clone(),
            source,
        };
        if final_dir.exists() {
            return Ok(());
        }
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", key.hex()))
            .tempdir_in(&self.dir)
            .map_err(cache_err)?;
        let kept = tmp.path().join("output");
        let mut entry = entry.clone();
        entry.shared = match fs_err::hard_link(output, &kept) {
            Ok(()) => Some(Stamp::of(&kept).map_err(cache_err)?),
            Err(_) => {
                copy_file(output, &kept).map_err(cache_err)?;
                None
            }
        };
        let json = serde_json::to_vec_pretty(&entry).expect("entry serialises");
        fs_err::write(tmp.path().join("entry.json"), json).map_err(cache_err)?;
        for f in ["output", "entry.json"] {
            fs_err::File::open(tmp.path().join(f))
                .and_then(|f| f.sync_all())
                .map_err(cache_err)?;
        }
        match fs_err::rename(tmp.path(), &final_dir) {
            Ok(()) => {
                let _ = tmp.keep();
                crate::store::sync_parent(&final_dir).map_err(cache_err)?;
                Ok(())
            }
            // Another export made the same entry meanwhile; keep theirs.
            Err(_) if final_dir.join("entry.json").exists() => Ok(()),
            Err(e) => Err(cache_err(e)),
        }
    }
}

impl Entry {
    /// False if the output is shared and is no longer what was linked.
    fn unchanged(&self, output: &Path) -> bool {
        match self.shared {
            None => true,
            Some(stamp) => Stamp::of(output).is_ok_and(|now| now == stamp),
        }
    }
}

/// The key inputs of one output.
pub(super) fn inputs_for(
    image: &Digest,
    kind: OutputKind,
    epoch: i64,
    options: BTreeMap<String, String>,
) -> ExportKeyInputs {
    ExportKeyInputs {
        format: EXPORT_FORMAT.to_string(),
        image: image.clone(),
        kind: kind.to_string(),
        epoch,
        options,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(size: &str) -> ExportKeyInputs {
        inputs_for(
            &Digest::of(b"image"),
            OutputKind::Ext4,
            1700000000,
            [("size".to_string(), size.to_string())].into(),
        )
    }

    #[test]
    fn the_key_changes_with_every_input() {
        let base = inputs("512M");
        let k = export_key(&base);
        assert_eq!(k, export_key(&inputs("512M")));
        assert_ne!(k, export_key(&inputs("1G")));
        assert_ne!(
            k,
            export_key(&ExportKeyInputs {
                epoch: 1,
                ..base.clone()
            })
        );
        assert_ne!(
            k,
            export_key(&ExportKeyInputs {
                image: Digest::of(b"other"),
                ..base.clone()
            })
        );
        assert_ne!(
            k,
            export_key(&ExportKeyInputs {
                kind: "erofs".into(),
                ..base.clone()
            })
        );
        assert_ne!(
            k,
            export_key(&ExportKeyInputs {
                format: "tplbuild-export-v2".into(),
                ..base
            })
        );
    }

    #[test]
    fn an_entry_round_trips_and_a_miss_is_explained() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let cache = Cache::new(&store);
        let out = home.path().join("out.img");
        fs_err::write(&out, b"disk image").unwrap();
        let old = inputs("512M");
        let key = export_key(&old);
        assert!(cache.get(&key).is_none());
        let entry = Entry {
            inputs: old.clone(),
            bytes: 10,
            entries: 3,
            shared: None,
        };
        cache.put(&key, &out, &entry).unwrap();
        let (got, path) = cache.get(&key).unwrap();
        assert_eq!(got.inputs, old);
        assert_eq!(fs_err::read(path).unwrap(), b"disk image");
        // Putting again is a no-op, not an error.
        cache.put(&key, &out, &entry).unwrap();
        let why = cache.explain_miss(&inputs("1G")).unwrap();
        assert_eq!(why, "size 512M → 1G");
    }

    /// A cache in a new home holding `out.img` ("disk image") for the
    /// inputs `size=512M`.
    fn one_entry() -> (tempfile::TempDir, Cache, PathBuf, Digest, Entry) {
        let home = tempfile::tempdir().unwrap();
        let cache = Cache::new(&Store::open(home.path()).unwrap());
        let out = home.path().join("out.img");
        fs_err::write(&out, b"disk image").unwrap();
        let key = export_key(&inputs("512M"));
        let entry = Entry {
            inputs: inputs("512M"),
            bytes: 10,
            entries: 3,
            shared: None,
        };
        cache.put(&key, &out, &entry).unwrap();
        (home, cache, out, key, entry)
    }

    #[test]
    fn a_truncated_output_is_not_a_hit() {
        let (_home, cache, _, key, _) = one_entry();
        fs_err::write(cache.entry_dir(&key).join("output"), b"disk").unwrap();
        assert!(cache.get(&key).is_none());
    }

    #[test]
    fn a_shared_output_changed_in_place_is_dropped_not_served() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let (home, cache, out, key, entry) = one_entry();
        // One filesystem: the entry is the user's file, not a copy.
        assert_eq!(fs_err::metadata(&out).unwrap().nlink(), 2);
        let (hit, path) = cache
            .get(&key)
            .expect("an untouched shared output is a hit");
        assert!(hit.shared.is_some());
        let copy = home.path().join("copy.img");
        cache.copy_out(&key, &hit, &path, &copy).unwrap();
        assert_eq!(fs_err::read(&copy).unwrap(), b"disk image");
        assert_eq!(fs_err::metadata(&copy).unwrap().nlink(), 1);

        // The user boots their image: same size, new bytes, new mtime.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut f = fs_err::OpenOptions::new().write(true).open(&out).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(b"DISK").unwrap();
        drop(f);
        assert!(
            cache.get(&key).is_none(),
            "a changed shared output was served"
        );
        assert!(!cache.entry_dir(&key).exists(), "the stale entry was kept");
        // The user's file is theirs, untouched by the cache.
        assert_eq!(fs_err::read(&out).unwrap(), b"DISK image");
        // And the next export makes the entry again.
        cache.put(&key, &copy, &entry).unwrap();
        assert!(cache.get(&key).is_some());
    }
}
