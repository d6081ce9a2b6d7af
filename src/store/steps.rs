//! The step index: step key → the layer it produced, with the inputs that
//! made the key, so a later miss can say which input changed.

use serde::{Deserialize, Serialize};

use super::{write_atomic, Store, StoreError};
use crate::oci::{Descriptor, Digest};

/// What a step produced. Written once, after the layer blob is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Format version of this record.
    pub version: u32,
    pub key: Digest,
    /// The layer, compressed, as it appears in a manifest.
    pub layer: Descriptor,
    /// Digest of the uncompressed layer (a `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// Uncompressed size, needed to stream the layer into an engine.
    pub uncompressed_size: u64,
    /// The key document (`plan::key::KeyDoc`) the key hashes, so a miss
    /// can be explained from the same data. (Records written before it
    /// hold a flat map here; nothing reads this field back as a key.)
    #[serde(default)]
    pub inputs: serde_json::Value,
    /// Per-device secrets the step removed, for the build report.
    #[serde(default)]
    pub removed_secrets: Vec<String>,
    /// The dpkg package list (`name version arch` lines) after the step,
    /// when the step rewrote dpkg's database, so the final image's list is
    /// known without reading any layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<String>,
}

pub const STEP_RECORD_VERSION: u32 = 1;

impl Store {
    pub fn get_step(&self, key: &Digest) -> Result<Option<StepRecord>, StoreError> {
        let path = self
            .root()
            .join("steps-v1")
            .join(format!("{}.json", key.hex()));
        let bytes = match fs_err::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let rec: StepRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            // A record we cannot read is a miss, not a failure: the step runs again.
            Err(e) => {
                tracing::warn!("ignoring unreadable step record {}: {e}", path.display());
                return Ok(None);
            }
        };
        if rec.version != STEP_RECORD_VERSION || rec.key != *key {
            return Ok(None);
        }
        // A record only counts while its layer is really here.
        if !self.has_blob(&rec.layer.digest) {
            return Ok(None);
        }
        super::prune::touch(&path);
        Ok(Some(rec))
    }

    /// Record a step. The layer blob must already be stored.
    pub fn put_step(&self, rec: &StepRecord) -> Result<(), StoreError> {
        if !self.has_blob(&rec.layer.digest) {
            return Err(StoreError::Missing {
                digest: rec.layer.digest.clone(),
            });
        }
        let path = self
            .root()
            .join("steps-v1")
            .join(format!("{}.json", rec.key.hex()));
        let bytes = serde_json::to_vec_pretty(rec).expect("a step record always serialises");
        write_atomic(self.root(), &path, &bytes)?;
        Ok(())
    }

    /// A small JSON document stored by name, e.g. the inputs of the last
    /// build of a Buildfile (so `plan` can explain a miss).
    pub fn get_note(&self, name: &Digest) -> Option<serde_json::Value> {
        let path = self
            .root()
            .join("steps-v1")
            .join(format!("note-{}.json", name.hex()));
        let bytes = fs_err::read(&path).ok()?;
        super::prune::touch(&path);
        serde_json::from_slice(&bytes).ok()
    }

    pub fn put_note(&self, name: &Digest, value: &serde_json::Value) -> Result<(), StoreError> {
        let path = self
            .root()
            .join("steps-v1")
            .join(format!("note-{}.json", name.hex()));
        let bytes = serde_json::to_vec_pretty(value).expect("JSON values serialise");
        // A no-op build writes the same note again: mark it used instead of
        // paying for two fsyncs.
        if fs_err::read(&path).is_ok_and(|old| old == bytes) {
            super::prune::touch(&path);
            return Ok(());
        }
        write_atomic(self.root(), &path, &bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::MediaType;

    #[test]
    fn step_record_round_trip_requires_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let layer = s.put_bytes(b"layer").unwrap();
        let key = Digest::of(b"key");
        let rec = StepRecord {
            version: STEP_RECORD_VERSION,
            key: key.clone(),
            layer: Descriptor::new(MediaType::OCI_LAYER_GZIP, layer.clone(), 5),
            diff_id: Digest::of(b"tar"),
            uncompressed_size: 3,
            inputs: serde_json::json!({"inputs": {"copy": "x"}}),
            removed_secrets: vec![],
            packages: None,
        };
        s.put_step(&rec).unwrap();
        assert_eq!(s.get_step(&key).unwrap(), Some(rec));
        // Without its layer a record is a miss.
        fs_err::remove_file(s.blob_path(&layer)).unwrap();
        assert_eq!(s.get_step(&key).unwrap(), None);
    }
}
