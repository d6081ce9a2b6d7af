//! The cache index document and the manifest that carries it: lenient
//! decoding (a bad entry is dropped with a warning, a bad document reads as
//! empty), canonical encoding, and the merge rule. Pure values, no I/O;
//! `remote.rs` and `push.rs` move them to and from the registry.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::CACHE_ARTIFACT_TYPE;
use crate::oci::{Descriptor, Digest, Manifest, ManifestDoc, MediaType};
use crate::store::steps::STEP_RECORD_VERSION;
use crate::store::StepRecord;

/// The media type of the index blob (the manifest's first layer).
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.tplbuild.cache.index.v1+json";
/// The OCI "empty" config of an artifact manifest; its blob is `{}`.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub(crate) const EMPTY_JSON: &[u8] = b"{}";
/// The index format this tplbuild reads and writes.
pub const INDEX_VERSION: u64 = 1;
/// An index blob larger than this is treated as corrupt (about 100,000
/// entries; a real index is far smaller).
pub const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;

/// One step in the index. Fields are declared in sorted order so that the
/// JSON keys come out sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// Digest of the uncompressed layer (a `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// The key document the key hashes (see `StepRecord::inputs`),
    /// written with sorted keys like the rest of the index.
    #[serde(default, serialize_with = "sorted_json")]
    pub inputs: serde_json::Value,
    /// The compressed layer blob, in the cache repository.
    pub layer: Descriptor,
    /// The dpkg package list after the step, when the step wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<String>,
    #[serde(default)]
    pub removed_secrets: Vec<String>,
    pub uncompressed_size: u64,
}

fn sorted_json<S: serde::Serializer>(v: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
    crate::plan::key::sort_value(v).serialize(s)
}

impl From<&StepRecord> for CacheEntry {
    fn from(r: &StepRecord) -> Self {
        CacheEntry {
            diff_id: r.diff_id.clone(),
            inputs: r.inputs.clone(),
            layer: r.layer.clone(),
            packages: r.packages.clone(),
            removed_secrets: r.removed_secrets.clone(),
            uncompressed_size: r.uncompressed_size,
        }
    }
}

impl CacheEntry {
    /// The local step record this entry stands for.
    pub fn to_record(&self, key: &Digest) -> StepRecord {
        StepRecord {
            version: STEP_RECORD_VERSION,
            key: key.clone(),
            layer: self.layer.clone(),
            diff_id: self.diff_id.clone(),
            uncompressed_size: self.uncompressed_size,
            inputs: self.inputs.clone(),
            removed_secrets: self.removed_secrets.clone(),
            packages: self.packages.clone(),
        }
    }
}

/// The whole index: step key → entry. Immutable; [`CacheIndex::merge`]
/// returns a new value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheIndex {
    entries: BTreeMap<Digest, CacheEntry>,
}

/// What decoding an index blob gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A readable index; `warnings` name the entries that were dropped.
    Index {
        index: CacheIndex,
        warnings: Vec<String>,
    },
    /// Written by a newer tplbuild: not to be read, nor overwritten.
    Newer(u64),
    /// Not an index at all; the reason.
    Corrupt(String),
}

/// The document as written. Reading goes through `serde_json::Value` so
/// that one bad entry does not spoil the others.
#[derive(Serialize)]
struct Doc<'a> {
    entries: &'a BTreeMap<Digest, CacheEntry>,
    version: u64,
}

impl CacheIndex {
    pub(crate) fn entries(&self) -> &BTreeMap<Digest, CacheEntry> {
        &self.entries
    }

    pub(crate) fn into_entries(self) -> BTreeMap<Digest, CacheEntry> {
        self.entries
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Canonical bytes: sorted keys, no whitespace.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&Doc {
            entries: &self.entries,
            version: INDEX_VERSION,
        })
        .expect("a cache index always serialises")
    }

    pub(crate) fn decode(bytes: &[u8]) -> Decoded {
        let v: serde_json::Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => return Decoded::Corrupt(format!("the index is not JSON ({e})")),
        };
        let Some(doc) = v.as_object() else {
            return Decoded::Corrupt("the index is not a JSON object".into());
        };
        match doc.get("version").and_then(|v| v.as_u64()) {
            Some(INDEX_VERSION) => {}
            Some(v) if v > INDEX_VERSION => return Decoded::Newer(v),
            Some(v) => return Decoded::Corrupt(format!("unknown index version {v}")),
            None => return Decoded::Corrupt("the index has no numeric `version`".into()),
        }
        let Some(raw) = doc.get("entries").and_then(|e| e.as_object()) else {
            return Decoded::Corrupt("the index has no `entries` object".into());
        };
        let mut entries = BTreeMap::new();
        let mut warnings = Vec::new();
        for (key, value) in raw {
            let key = match Digest::parse(key) {
                Ok(k) => k,
                Err(e) => {
                    warnings.push(format!("ignoring entry {key:?}: {e}"));
                    continue;
                }
            };
            let entry: CacheEntry = match serde_json::from_value(value.clone()) {
                Ok(e) => e,
                Err(e) => {
                    warnings.push(format!("ignoring malformed entry {key}: {e}"));
                    continue;
                }
            };
            // The layer code picks the decompressor from the media type.
            if entry.layer.media().layer_compression().is_none() {
                warnings.push(format!(
                    "ignoring entry {key}: {:?} is not a layer media type",
                    entry.layer.media_type
                ));
                continue;
            }
            entries.insert(key, entry);
        }
        Decoded::Index {
            index: CacheIndex { entries },
            warnings,
        }
    }

    /// The union of both indexes; on the same key `ours` wins.
    pub(crate) fn merge(&self, ours: &CacheIndex) -> CacheIndex {
        let mut entries = self.entries.clone();
        entries.extend(ours.entries.iter().map(|(k, e)| (k.clone(), e.clone())));
        CacheIndex { entries }
    }

    /// The index without the entries whose layer is in `gone`.
    pub(crate) fn without_layers(&self, gone: &BTreeSet<Digest>) -> CacheIndex {
        CacheIndex {
            entries: self
                .entries
                .iter()
                .filter(|(_, e)| !gone.contains(&e.layer.digest))
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
        }
    }

    /// The artifact manifest for this index, whose index blob is
    /// `index_blob`: the empty config, the index blob, then each distinct
    /// step layer (so that registry garbage collection keeps them).
    pub(crate) fn manifest_bytes(&self, index_blob: &Descriptor) -> Vec<u8> {
        let mut seen = BTreeSet::new();
        let layers = std::iter::once(index_blob.clone())
            .chain(
                self.entries
                    .values()
                    .filter(|e| seen.insert(e.layer.digest.clone()))
                    .map(|e| {
                        Descriptor::new(
                            e.layer.media_type.clone(),
                            e.layer.digest.clone(),
                            e.layer.size,
                        )
                    }),
            )
            .collect();
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MediaType::OCI_MANIFEST.to_string()),
            artifact_type: Some(CACHE_ARTIFACT_TYPE.to_string()),
            config: empty_descriptor(),
            layers,
            subject: None,
            annotations: BTreeMap::new(),
        };
        serde_json::to_vec(&manifest).expect("a manifest always serialises")
    }
}

impl FromIterator<(Digest, CacheEntry)> for CacheIndex {
    fn from_iter<I: IntoIterator<Item = (Digest, CacheEntry)>>(iter: I) -> Self {
        CacheIndex {
            entries: iter.into_iter().collect(),
        }
    }
}

pub(crate) fn empty_descriptor() -> Descriptor {
    Descriptor::new(
        EMPTY_MEDIA_TYPE,
        Digest::of(EMPTY_JSON),
        EMPTY_JSON.len() as u64,
    )
}

/// Why a manifest gives no index blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoIndex {
    /// Something else lives at the tag (an image, an index): never
    /// overwritten by a push.
    Foreign(String),
    /// A cache manifest that cannot be used; a push replaces it.
    Broken(String),
}

impl std::fmt::Display for NoIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoIndex::Foreign(why) | NoIndex::Broken(why) => f.write_str(why),
        }
    }
}

/// The index blob named by a cache manifest, or why there is none.
pub(crate) fn index_blob_of(bytes: &[u8], media_type: &str) -> Result<Descriptor, NoIndex> {
    let manifest = match ManifestDoc::parse(bytes, Some(media_type)) {
        Ok(ManifestDoc::Image(m)) => m,
        Ok(ManifestDoc::Index(_)) => {
            return Err(NoIndex::Foreign(
                "it is an image index, not a tplbuild cache".into(),
            ))
        }
        Err(e) => return Err(NoIndex::Broken(format!("its manifest is invalid ({e})"))),
    };
    if manifest.artifact_type.as_deref() != Some(CACHE_ARTIFACT_TYPE) {
        return Err(NoIndex::Foreign(format!(
            "it is not a tplbuild cache (artifactType {:?}, expected {CACHE_ARTIFACT_TYPE:?})",
            manifest.artifact_type.as_deref().unwrap_or("")
        )));
    }
    let blob = manifest
        .layers
        .into_iter()
        .find(|l| l.media_type == INDEX_MEDIA_TYPE)
        .ok_or_else(|| NoIndex::Broken(format!("its manifest has no {INDEX_MEDIA_TYPE} layer")))?;
    if blob.size > MAX_INDEX_BYTES {
        return Err(NoIndex::Broken(format!(
            "its index blob has {} bytes, more than the limit of {MAX_INDEX_BYTES}",
            blob.size
        )));
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> CacheEntry {
        CacheEntry {
            diff_id: Digest::of(format!("tar {name}").as_bytes()),
            // Unsorted on purpose: the encoding sorts.
            inputs: serde_json::json!({"parent": ["sha256:…"], "inputs": {"run": format!("echo {name}"), "base": "x"}}),
            layer: Descriptor::new(
                MediaType::OCI_LAYER_GZIP,
                Digest::of(format!("layer {name}").as_bytes()),
                123,
            ),
            removed_secrets: vec!["etc/machine-id".into()],
            packages: None,
            uncompressed_size: 456,
        }
    }

    fn key(name: &str) -> Digest {
        Digest::of(name.as_bytes())
    }

    fn index(names: &[&str]) -> CacheIndex {
        names.iter().map(|n| (key(n), entry(n))).collect()
    }

    fn decoded(bytes: &[u8]) -> (CacheIndex, Vec<String>) {
        match CacheIndex::decode(bytes) {
            Decoded::Index { index, warnings } => (index, warnings),
            other => panic!("expected an index, got {other:?}"),
        }
    }

    #[test]
    fn equal_content_gives_equal_bytes_whatever_the_insertion_order() {
        let a = index(&["a", "b", "c"]);
        let b: CacheIndex = ["c", "a", "b"].iter().map(|n| (key(n), entry(n))).collect();
        assert_eq!(a.to_json(), b.to_json());
        // And a decode/encode round trip is the identity on bytes.
        let (back, warnings) = decoded(&a.to_json());
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(back, a);
        assert_eq!(back.to_json(), a.to_json());
    }

    #[test]
    fn json_keys_are_sorted_at_every_level() {
        let bytes = index(&["a"]).to_json();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with(r#"{"entries":{"sha256:"#), "{text}");
        assert!(text.ends_with(r#""version":1}"#), "{text}");
        let order = [
            "\"diff_id\"",
            "\"inputs\"",
            "\"layer\"",
            "\"removed_secrets\"",
            "\"uncompressed_size\"",
        ];
        let positions: Vec<usize> = order.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        // Inputs are sorted too: "base" before "run", "inputs" before "parent".
        assert!(text.find("\"base\"").unwrap() < text.find("\"run\"").unwrap());
        assert!(text.find("\"run\"").unwrap() < text.find("\"parent\"").unwrap());
        assert!(
            !text.contains('\n') && !text.contains("\": "),
            "compact encoding: {text}"
        );
    }

    #[test]
    fn merge_keeps_their_entries_and_ours_win_on_the_same_key() {
        let theirs = index(&["a", "b"]);
        let mut changed = entry("b");
        changed.layer.size = 999;
        let ours: CacheIndex = [(key("b"), changed.clone()), (key("c"), entry("c"))]
            .into_iter()
            .collect();
        let merged = theirs.merge(&ours);
        assert_eq!(merged.len(), 3);
        assert_eq!(merged.entries()[&key("a")], entry("a"));
        assert_eq!(merged.entries()[&key("b")], changed);
        assert_eq!(merged.entries()[&key("c")], entry("c"));
        // The inputs are left untouched (values are immutable).
        assert_eq!(theirs.len(), 2);
        assert_eq!(theirs.entries()[&key("b")], entry("b"));
    }

    #[test]
    fn merging_what_is_already_there_changes_nothing() {
        let theirs = index(&["a", "b"]);
        assert_eq!(theirs.merge(&index(&["b"])), theirs);
        assert_eq!(theirs.merge(&index(&["b"])).to_json(), theirs.to_json());
    }

    #[test]
    fn newer_version_is_reported_not_read() {
        let doc = br#"{"version":99,"entries":{},"something_new":true}"#;
        assert_eq!(CacheIndex::decode(doc), Decoded::Newer(99));
    }

    #[test]
    fn garbage_and_wrong_shapes_are_corrupt() {
        for doc in [
            &b"\x1f\x8b not json"[..],
            b"[1,2,3]",
            br#"{"entries":{}}"#,
            br#"{"version":"1","entries":{}}"#,
            br#"{"version":0,"entries":{}}"#,
            br#"{"version":1,"entries":[]}"#,
        ] {
            assert!(
                matches!(CacheIndex::decode(doc), Decoded::Corrupt(_)),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
    }

    #[test]
    fn one_bad_entry_is_dropped_with_a_warning_and_the_rest_kept() {
        let good = serde_json::to_value(entry("a")).unwrap();
        let mut not_a_layer = entry("c");
        not_a_layer.layer.media_type = MediaType::OCI_MANIFEST.into();
        let doc = serde_json::json!({
            "version": 1,
            "entries": {
                key("a").to_string(): good,
                "md5:abc": serde_json::to_value(entry("b")).unwrap(),
                key("c").to_string(): serde_json::to_value(not_a_layer).unwrap(),
                key("d").to_string(): {"layer": "nope"},
            }
        });
        let (index, warnings) = decoded(&serde_json::to_vec(&doc).unwrap());
        assert_eq!(index, [(key("a"), entry("a"))].into_iter().collect());
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings.iter().any(|w| w.contains("md5:abc")),
            "{warnings:?}"
        );
    }

    #[test]
    fn entries_from_an_older_writer_without_optional_fields_read() {
        let e = entry("a");
        let doc = serde_json::json!({"version": 1, "entries": { key("a").to_string(): {
            "diff_id": e.diff_id, "layer": e.layer, "uncompressed_size": 456,
        }}});
        let (index, warnings) = decoded(&serde_json::to_vec(&doc).unwrap());
        assert!(warnings.is_empty());
        let got = &index.entries()[&key("a")];
        assert!(got.inputs.is_null() && got.removed_secrets.is_empty());
    }

    #[test]
    fn manifest_lists_index_blob_first_then_each_layer_once() {
        let mut twin = entry("twin");
        twin.layer = entry("a").layer; // two keys, one layer (e.g. an empty diff)
        let idx = index(&["a", "b"]).merge(&[(key("twin"), twin)].into_iter().collect());
        let blob = Descriptor::new(
            INDEX_MEDIA_TYPE,
            Digest::of(&idx.to_json()),
            idx.to_json().len() as u64,
        );
        let bytes = idx.manifest_bytes(&blob);
        let m: Manifest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(m.artifact_type.as_deref(), Some(CACHE_ARTIFACT_TYPE));
        assert_eq!(m.config, empty_descriptor());
        assert_eq!(
            m.config.digest.to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(m.layers[0], blob);
        assert_eq!(m.layers.len(), 3, "{:?}", m.layers);
        assert_eq!(index_blob_of(&bytes, MediaType::OCI_MANIFEST), Ok(blob));
        // The manifest is as stable as the index.
        assert_eq!(
            bytes,
            idx.manifest_bytes(&Descriptor::new(
                INDEX_MEDIA_TYPE,
                Digest::of(&idx.to_json()),
                idx.to_json().len() as u64
            ))
        );
    }

    #[test]
    fn an_ordinary_image_is_not_taken_for_a_cache() {
        let m = Manifest {
            schema_version: 2,
            media_type: Some(MediaType::OCI_MANIFEST.into()),
            artifact_type: None,
            config: Descriptor::new(MediaType::OCI_CONFIG, Digest::of(b"cfg"), 3),
            layers: vec![Descriptor::new(INDEX_MEDIA_TYPE, Digest::of(b"x"), 1)],
            subject: None,
            annotations: BTreeMap::new(),
        };
        let err =
            index_blob_of(&serde_json::to_vec(&m).unwrap(), MediaType::OCI_MANIFEST).unwrap_err();
        assert!(
            matches!(&err, NoIndex::Foreign(why) if why.contains("not a tplbuild cache")),
            "{err}"
        );
    }

    #[test]
    fn an_oversized_index_blob_is_refused_before_download() {
        let blob = Descriptor::new(INDEX_MEDIA_TYPE, Digest::of(b"x"), MAX_INDEX_BYTES + 1);
        let bytes = CacheIndex::default().manifest_bytes(&blob);
        let err = index_blob_of(&bytes, MediaType::OCI_MANIFEST).unwrap_err();
        assert!(
            matches!(&err, NoIndex::Broken(why) if why.contains("limit")),
            "{err}"
        );
    }

    #[test]
    fn record_round_trips_through_an_entry() {
        let e = entry("a");
        let rec = e.to_record(&key("a"));
        assert_eq!(rec.key, key("a"));
        assert_eq!(rec.version, STEP_RECORD_VERSION);
        assert_eq!(CacheEntry::from(&rec), e);
    }

    #[test]
    fn without_layers_drops_every_key_using_a_gone_layer() {
        let mut twin = entry("twin");
        twin.layer = entry("a").layer;
        let idx = index(&["a", "b"]).merge(&[(key("twin"), twin)].into_iter().collect());
        let gone = BTreeSet::from([entry("a").layer.digest]);
        let kept: Vec<_> = idx
            .without_layers(&gone)
            .into_entries()
            .into_keys()
            .collect();
        assert_eq!(kept, vec![key("b")]);
    }
}
