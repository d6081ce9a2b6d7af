//! Pruning: what the store has not used for a while goes, what named
//! images need stays.
//!
//! "Used" is a file's mtime: a step record and its layer are touched on
//! every HIT, a blob whenever [`Store::has_blob`] finds it (a build, an
//! export, a fetch of a locked .deb), an export cache entry when it is
//! served. `prune` then removes
//!
//! 1. step records and notes not used since the cutoff,
//! 2. export cache entries not used since the cutoff,
//! 3. blobs not used since the cutoff that no named image (index.json:
//!    pulled templates, images kept by name) and no remaining step record
//!    needs,
//! 4. everything in `tmp/` (leftovers of killed processes).
//!
//! Every tplbuild process holds a shared lock on `users.lock` while it has
//! the store open; prune takes it exclusively, so it never removes a blob a
//! running build is about to read, and it waits for running ones to end.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{Store, StoreError};
use crate::oci::{Descriptor, Digest};

/// What a prune removed (or, dry, would remove) and kept.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub step_records: usize,
    pub notes: usize,
    pub exports: usize,
    pub blobs: usize,
    pub tmp_files: usize,
    /// Bytes freed, over all of the above.
    pub bytes: u64,
    pub kept_blobs: usize,
    pub kept_bytes: u64,
    pub dry_run: bool,
}

impl Store {
    /// Remove what was not used in the last `older_than` (see the module
    /// docs). With `dry_run`, count only. The caller must hold the store
    /// exclusively ([`Store::open_exclusive`]).
    pub fn prune(&self, older_than: Duration, dry_run: bool) -> Result<PruneReport, StoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let old = |m: &std::fs::Metadata| m.modified().map_or(true, |t| t < cutoff);
        let mut report = PruneReport {
            dry_run,
            ..Default::default()
        };
        let remove = |path: &Path, dir: bool| -> Result<(), StoreError> {
            if dry_run {
                return Ok(());
            }
            let r = if dir {
                fs_err::remove_dir_all(path)
            } else {
                fs_err::remove_file(path)
            };
            match r {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            }
        };

        // 1. Step records and notes; the kept records' layers are live.
        let mut live: BTreeSet<Digest> = BTreeSet::new();
        for entry in fs_err::read_dir(self.root().join("steps-v1"))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if old(&meta) {
                remove(&entry.path(), false)?;
                report.bytes += meta.len();
                if name.starts_with("note-") {
                    report.notes += 1;
                } else {
                    report.step_records += 1;
                }
            } else if !name.starts_with("note-") {
                if let Ok(rec) =
                    serde_json::from_slice::<super::StepRecord>(&fs_err::read(entry.path())?)
                {
                    live.insert(rec.layer.digest);
                }
            }
        }

        // 2. Export cache entries.
        for entry in fs_err::read_dir(self.exports_dir())? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if old(&meta) {
                report.bytes += tree_size(&entry.path());
                report.exports += 1;
                remove(&entry.path(), meta.is_dir())?;
            }
        }

        // 3. Blobs: named images and kept records first, then age.
        let index = super::index::read_index(&self.root().join("index.json"))?;
        for desc in &index.manifests {
            self.mark(desc, &mut live);
        }
        for entry in fs_err::read_dir(self.root().join("blobs/sha256"))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = Digest::parse(&format!("sha256:{name}")).ok();
            if digest.is_some_and(|d| live.contains(&d)) || !old(&meta) {
                report.kept_blobs += 1;
                report.kept_bytes += meta.len();
                continue;
            }
            remove(&entry.path(), false)?;
            report.blobs += 1;
            report.bytes += meta.len();
        }

        // 4. Nobody else has the store open: whatever is in tmp/ is left
        //    over from a process that was killed.
        for entry in fs_err::read_dir(self.tmp_dir())? {
            let entry = entry?;
            let meta = entry.metadata()?;
            report.tmp_files += 1;
            report.bytes += if meta.is_dir() {
                tree_size(&entry.path())
            } else {
                meta.len()
            };
            remove(&entry.path(), meta.is_dir())?;
        }
        Ok(report)
    }

    /// Mark `desc` and, for a manifest or an index, everything it names.
    /// A blob that is absent or unreadable ends the walk there.
    fn mark(&self, desc: &Descriptor, live: &mut BTreeSet<Digest>) {
        if !live.insert(desc.digest.clone()) {
            return;
        }
        let media = desc.media_type.as_str();
        if !(media.contains("manifest") || media.contains("image.index")) {
            return;
        }
        let Ok(bytes) = fs_err::read(self.blob_path(&desc.digest)) else {
            return;
        };
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return;
        };
        let config = doc.get("config").into_iter();
        let lists = ["layers", "manifests"]
            .iter()
            .filter_map(|k| doc.get(*k).and_then(|v| v.as_array()))
            .flatten();
        for d in config.chain(lists) {
            if let Ok(d) = serde_json::from_value::<Descriptor>(d.clone()) {
                self.mark(&d, live);
            }
        }
    }
}

/// Bytes in the files under `path` (or of `path`, a file).
fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs_err::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs_err::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Set `path`'s mtime to now: "used". Failures only mean it may be pruned
/// sooner, so they are ignored.
pub(crate) fn touch(path: &Path) {
    let now = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
    };
    let _ = rustix::fs::utimensat(rustix::fs::CWD, path, &now, rustix::fs::AtFlags::empty());
}

/// A duration as people write it: `90s`, `30m`, `24h`, `7d`, `2w`.
pub fn parse_age(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(secs).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::MediaType;

    fn age(path: &Path, days: u64) {
        let t = SystemTime::now() - Duration::from_secs(days * 86_400);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    }

    fn age_dir(path: &Path, days: u64) {
        let secs = (SystemTime::now() - Duration::from_secs(days * 86_400))
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: secs as i64,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: secs as i64,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(rustix::fs::CWD, path, &ts, rustix::fs::AtFlags::empty()).unwrap();
    }

    fn record(store: &Store, layer: &Digest, key_seed: &str) -> std::path::PathBuf {
        let rec = super::super::StepRecord {
            version: super::super::steps::STEP_RECORD_VERSION,
            key: Digest::of(key_seed.as_bytes()),
            layer: Descriptor::new(MediaType::OCI_LAYER_GZIP, layer.clone(), 1),
            diff_id: layer.clone(),
            uncompressed_size: 1,
            inputs: Default::default(),
            removed_secrets: vec![],
            packages: None,
        };
        store.put_step(&rec).unwrap();
        store
            .root()
            .join("steps-v1")
            .join(format!("{}.json", rec.key.hex()))
    }

    #[test]
    fn old_unneeded_things_go_and_named_recent_and_recorded_ones_stay() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let blob = |s: &str, days| {
            let d = store.put_bytes(s.as_bytes()).unwrap();
            age(&store.blob_path(&d), days);
            d
        };
        // A named image: manifest → config + layer, all old.
        let layer = blob("named layer", 30);
        let config = blob("{}", 30);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{m}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"{l}","digest":"{layer}","size":11}}]}}"#,
            m = MediaType::OCI_MANIFEST,
            l = MediaType::OCI_LAYER_GZIP,
        );
        let m = blob(&manifest, 30);
        store
            .set_name(
                "base",
                &Descriptor::new(MediaType::OCI_MANIFEST, m.clone(), manifest.len() as u64),
            )
            .unwrap();
        // A recent step record keeps its old layer; an old one goes, and so
        // does its layer.
        let kept_layer = blob("kept step layer", 30);
        let fresh = record(&store, &kept_layer, "fresh");
        let gone_layer = blob("gone step layer", 30);
        let stale = record(&store, &gone_layer, "stale");
        age(&stale, 30);
        // Recording a step looked its layer up, which counts as use: age them again.
        age(&store.blob_path(&kept_layer), 30);
        age(&store.blob_path(&gone_layer), 30);
        // A recently used blob nobody names stays (a .deb, say); an old one goes.
        let recent = blob("recent deb", 1);
        let old_blob = blob("old deb", 30);
        // An old export entry goes, a recent one stays.
        let exports = store.exports_dir();
        for (name, days) in [("old", 30), ("new", 1)] {
            fs_err::create_dir_all(exports.join(name)).unwrap();
            fs_err::write(exports.join(name).join("output"), "12345").unwrap();
            age_dir(&exports.join(name), days);
        }
        fs_err::write(store.tmp_dir().join("blob-leftover"), "xx").unwrap();

        let dry = store.prune(Duration::from_secs(7 * 86_400), true).unwrap();
        assert!(dry.dry_run);
        assert!(
            store.blob_path(&old_blob).is_file(),
            "a dry run removes nothing"
        );
        let report = store.prune(Duration::from_secs(7 * 86_400), false).unwrap();
        assert_eq!(
            (
                dry.step_records,
                dry.blobs,
                dry.exports,
                dry.tmp_files,
                dry.bytes
            ),
            (
                report.step_records,
                report.blobs,
                report.exports,
                report.tmp_files,
                report.bytes
            ),
            "a dry run counts what the real one does"
        );
        assert_eq!(report.step_records, 1);
        assert_eq!(report.exports, 1);
        assert_eq!(report.tmp_files, 1);
        assert_eq!(report.blobs, 2, "{report:?}");
        for d in [&layer, &config, &m, &kept_layer, &recent] {
            assert!(store.blob_path(d).is_file(), "{d} is kept");
        }
        for d in [&gone_layer, &old_blob] {
            assert!(!store.blob_path(d).exists(), "{d} is removed");
        }
        assert!(fresh.exists() && !stale.exists());
        assert!(exports.join("new").exists() && !exports.join("old").exists());
        assert_eq!(fs_err::read_dir(store.tmp_dir()).unwrap().count(), 0);
        assert_eq!(report.kept_blobs, 5);

        // Everything unnamed, at any age.
        let all = store.prune(Duration::ZERO, false).unwrap();
        assert_eq!((all.step_records, all.blobs), (1, 2), "{all:?}");
        for d in [&layer, &config, &m] {
            assert!(store.blob_path(d).is_file(), "named: {d} is kept");
        }
    }

    #[test]
    fn a_hit_and_a_lookup_count_as_use() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let layer = store.put_bytes(b"layer").unwrap();
        let path = record(&store, &layer, "k");
        age(&path, 30);
        age(&store.blob_path(&layer), 30);
        assert!(store.get_step(&Digest::of(b"k")).unwrap().is_some());
        let report = store.prune(Duration::from_secs(86_400), false).unwrap();
        assert_eq!((report.step_records, report.blobs), (0, 0), "{report:?}");
        assert!(store.has_blob(&layer));
    }

    #[test]
    fn ages_read_as_people_write_them() {
        assert_eq!(parse_age("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_age("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_age("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_age("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_age("2w"), Some(Duration::from_secs(1_209_600)));
        assert_eq!(parse_age("0s"), Some(Duration::ZERO));
        for bad in ["", "7", "d", "7y", "-1d", "1.5h"] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
    }
}
