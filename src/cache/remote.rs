//! Reading a cache index from the registry ([`RemoteCache`]) and taking one
//! entry's layer into the store. Content problems become warnings and
//! ignored entries; only the registry failing as such is an error.

use std::collections::{BTreeMap, BTreeSet};

use super::index::{index_blob_of, CacheIndex, Decoded, NoIndex};
use super::{CacheEntry, CacheError};
use crate::oci::{Digest, Reference};
use crate::registry::{Client, RegistryError, VecSink};
use crate::store::{StepRecord, Store};
use crate::transfer::{ensure_blobs, BlobSource};

/// The index at a tag, as read at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// The manifest's digest; `None` when the tag does not exist.
    pub manifest: Option<Digest>,
    pub index: CacheIndex,
    /// Set when the index was written by a newer tplbuild.
    pub newer: Option<u64>,
    /// Set when the tag holds something that is not a cache index.
    pub foreign: Option<String>,
    pub warnings: Vec<String>,
}

impl Snapshot {
    fn empty(manifest: Option<Digest>, warning: Option<String>) -> Self {
        Snapshot {
            manifest,
            index: CacheIndex::default(),
            newer: None,
            foreign: None,
            warnings: warning.into_iter().collect(),
        }
    }
}

/// True for a registry answer that means "this content is bad or gone",
/// as opposed to "the registry cannot be used".
pub(crate) fn is_content_problem(e: &RegistryError) -> bool {
    match e {
        RegistryError::NotFound { .. }
        | RegistryError::DigestMismatch { .. }
        | RegistryError::TooLong { .. } => true,
        RegistryError::RetriesExhausted { source, .. } => is_content_problem(source),
        _ => false,
    }
}

/// GET the manifest at `reference` and its index blob, and decode it.
pub(crate) async fn read_snapshot(
    client: &Client,
    reference: &Reference,
) -> Result<Snapshot, CacheError> {
    let context = || format!("reading the cache index {reference}");
    let raw = match client.get_manifest(reference).await {
        Ok(raw) => raw,
        Err(e) if e.is_not_found() => return Ok(Snapshot::empty(None, None)),
        Err(source) => {
            return Err(CacheError::Registry {
                context: context(),
                source,
            })
        }
    };
    let warn = |why: String| format!("ignoring the cache {reference}: {why}");
    let blob = match index_blob_of(&raw.bytes, &raw.media_type) {
        Ok(b) => b,
        Err(NoIndex::Broken(why)) => return Ok(Snapshot::empty(Some(raw.digest), Some(warn(why)))),
        Err(NoIndex::Foreign(why)) => {
            return Ok(Snapshot {
                foreign: Some(why.clone()),
                ..Snapshot::empty(Some(raw.digest), Some(warn(why)))
            })
        }
    };
    let mut sink = VecSink::default();
    match client
        .pull_blob(&reference.with_digest(raw.digest.clone()), &blob, &mut sink)
        .await
    {
        Ok(()) => {}
        Err(e) if is_content_problem(&e) => {
            let why = format!("its index blob cannot be read ({e})");
            return Ok(Snapshot::empty(Some(raw.digest), Some(warn(why))));
        }
        Err(source) => {
            return Err(CacheError::Registry {
                context: context(),
                source,
            })
        }
    }
    Ok(match CacheIndex::decode(&sink.into_inner()) {
        Decoded::Index { index, warnings } => Snapshot {
            manifest: Some(raw.digest),
            index,
            newer: None,
            foreign: None,
            warnings: warnings
                .into_iter()
                .map(|w| format!("cache {reference}: {w}"))
                .collect(),
        },
        Decoded::Newer(version) => Snapshot {
            newer: Some(version),
            ..Snapshot::empty(
                Some(raw.digest),
                Some(warn(format!(
                    "it was written by a newer tplbuild (index format version {version}; this one reads {})",
                    super::INDEX_VERSION
                ))),
            )
        },
        Decoded::Corrupt(why) => Snapshot::empty(Some(raw.digest), Some(warn(why))),
    })
}

/// A cache index read from the registry, for `--cache-from`.
///
/// `lookup` is free (no network). `fetch_layer` downloads one layer; it
/// takes `&self` so that layers can be fetched in parallel. An entry found
/// unusable is [`RemoteCache::ignore`]d from then on.
#[derive(Debug)]
pub struct RemoteCache {
    pub reference: Reference,
    entries: BTreeMap<Digest, CacheEntry>,
    /// Why parts of the index were ignored when it was loaded.
    pub warnings: Vec<String>,
    /// Keys found unusable after loading (their layer blob is gone).
    dead: BTreeSet<Digest>,
}

impl RemoteCache {
    /// Fetch the index (an absent tag = an empty cache, no warning).
    pub async fn load(client: &Client, reference: &Reference) -> Result<Self, CacheError> {
        let snap = read_snapshot(client, reference).await?;
        Ok(RemoteCache::from_parts(
            reference.clone(),
            snap.index.into_entries(),
            snap.warnings,
        ))
    }

    /// A cache with these entries (tests, and callers that merge several
    /// `--cache-from` indexes).
    pub fn from_parts(
        reference: Reference,
        entries: BTreeMap<Digest, CacheEntry>,
        warnings: Vec<String>,
    ) -> Self {
        RemoteCache {
            reference,
            entries,
            warnings,
            dead: BTreeSet::new(),
        }
    }

    /// The entry for a step key. Downloads nothing.
    pub fn lookup(&self, key: &Digest) -> Option<&CacheEntry> {
        let entry = self.entries.get(key)?;
        (!self.is_dead(key)).then_some(entry)
    }

    /// The number of usable entries.
    pub fn len(&self) -> usize {
        self.entries.len() - self.dead.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The usable keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Digest> + '_ {
        self.entries.keys().filter(|k| !self.is_dead(k))
    }

    /// Pull the entry's layer into the store (verified) and record the
    /// step there. Any failure is an error, the caller decides what it
    /// means (the build: a miss with a warning, see
    /// `build::step_cache`); an unknown key is [`CacheError::NoEntry`].
    pub async fn fetch_layer(
        &self,
        client: &Client,
        store: &Store,
        key: &Digest,
    ) -> Result<StepRecord, CacheError> {
        let Some(entry) = self.lookup(key) else {
            return Err(CacheError::NoEntry {
                reference: self.reference.clone(),
                key: key.clone(),
            });
        };
        let rec = entry.to_record(key);
        let source = BlobSource::Registry(self.reference.clone());
        ensure_blobs(store, client, &source, std::slice::from_ref(&entry.layer))
            .await
            .map_err(|source| CacheError::Transfer {
                context: format!(
                    "fetching the layer {} of step {} from the cache {}",
                    entry.layer.digest,
                    key.short(),
                    self.reference
                ),
                source,
            })?;
        store.put_step(&rec).map_err(|source| CacheError::Store {
            context: format!(
                "recording step {} from the cache {}",
                key.short(),
                self.reference
            ),
            source,
        })?;
        Ok(rec)
    }

    /// Stop offering `key` (its layer turned out unusable); the caller
    /// tells the user why.
    pub fn ignore(&mut self, key: &Digest) {
        self.dead.insert(key.clone());
    }

    fn is_dead(&self, key: &Digest) -> bool {
        self.dead.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Descriptor, MediaType};
    use crate::registry::{CredentialSource, RegistrySettings};

    fn cache_with(key: &Digest, layer: &[u8]) -> RemoteCache {
        let entry = CacheEntry {
            diff_id: Digest::of(b"tar"),
            inputs: serde_json::Value::Null,
            layer: Descriptor::new(
                MediaType::OCI_LAYER_GZIP,
                Digest::of(layer),
                layer.len() as u64,
            ),
            removed_secrets: vec![],
            packages: None,
            uncompressed_size: 3,
        };
        RemoteCache::from_parts(
            // Port 9 (discard) on loopback: any attempt to download fails fast.
            Reference::parse("127.0.0.1:9/cache/unit:buildcache").unwrap(),
            BTreeMap::from([(key.clone(), entry)]),
            vec![],
        )
    }

    fn offline_client() -> Client {
        let settings = RegistrySettings {
            max_retries: 0,
            ..RegistrySettings::default().with_insecure("127.0.0.1:9")
        };
        Client::with_credentials(settings, CredentialSource::None).unwrap()
    }

    #[tokio::test]
    async fn fetch_of_a_layer_already_in_the_store_downloads_nothing_and_records_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_bytes(b"layer").unwrap();
        let key = Digest::of(b"key");
        let cache = cache_with(&key, b"layer");
        let rec = cache
            .fetch_layer(&offline_client(), &store, &key)
            .await
            .unwrap();
        assert_eq!(store.get_step(&key).unwrap(), Some(rec));
    }

    #[tokio::test]
    async fn unknown_key_is_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cache = cache_with(&Digest::of(b"key"), b"layer");
        let other = Digest::of(b"other");
        assert!(cache.lookup(&other).is_none());
        let err = cache
            .fetch_layer(&offline_client(), &store, &other)
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::NoEntry { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_an_error_naming_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = Digest::of(b"key");
        let cache = cache_with(&key, b"not stored");
        let err = cache
            .fetch_layer(&offline_client(), &store, &key)
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::Transfer { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains(&Digest::of(b"not stored").to_string()),
            "{err}"
        );
        assert_eq!(store.get_step(&key).unwrap(), None, "nothing recorded");
    }

    #[test]
    fn ignored_entries_leave_lookup_len_and_keys() {
        let key = Digest::of(b"key");
        let mut cache = cache_with(&key, b"layer");
        assert_eq!(cache.len(), 1);
        cache.ignore(&key);
        assert!(cache.lookup(&key).is_none());
        assert!(cache.is_empty());
        assert_eq!(cache.keys().count(), 0);
    }
}
