//! The registry step cache: `--cache-to REF` pushes step layers and a small
//! index (step key → layer) to a registry, `--cache-from REF` reads it back,
//! so a CI machine with an empty store can reuse what any machine built.
//!
//! # Where it lives in the registry
//!
//! The index is a plain OCI artifact under the tag of the user's REF (say
//! `127.0.0.1:5000/cache/gateway:buildcache`):
//!
//! ```text
//! image manifest   artifactType  application/vnd.tplbuild.cache.v1+json
//! ├── config       application/vnd.oci.empty.v1+json   `{}`
//! ├── layers[0]    application/vnd.tplbuild.cache.index.v1+json
//! │                {"entries":{"<key>":{"diff_id":…,"inputs":{…},"layer":{…},
//! │                 "removed_secrets":[…],"uncompressed_size":…}},"version":1}
//! └── layers[1..]  every step layer the index names, once each
//! ```
//!
//! The step layers are ordinary blobs of the same repository, so every
//! descriptor in the index resolves there. Listing them in the manifest too
//! makes them referenced, so a registry garbage collection keeps them. The
//! index JSON is written with sorted keys and no whitespace: equal content
//! gives equal bytes and so an unchanged index is never re-pushed.
//!
//! # Reading never fails a build
//!
//! An absent tag is an empty cache. A manifest that is not ours, an index
//! blob that is missing or not JSON, a `version` newer than this tplbuild
//! knows, a malformed entry: each is a warning (a string handed back to the
//! caller, never printed here) and the affected entries are ignored, so the
//! step simply runs. Only the registry itself failing (unreachable, auth)
//! is an error of [`RemoteCache::load`]. [`RemoteCache::lookup`] touches no
//! network; [`RemoteCache::fetch_layer`] downloads exactly one layer,
//! verified, and records the step in the [`Store`]. The build's
//! `build::step_cache` decides what a layer that cannot be had means: a
//! miss with one warning, never a failed build. The index is trusted the
//! way BuildKit trusts its cache: whoever may push to the cache repository
//! decides which layer a key gives.
//!
//! # The merge rule for writers
//!
//! [`push`] never loses entries another writer (another branch, another CI
//! job) pushed. Registries have no compare-and-swap on tags, so it is a
//! read-modify-write with detection:
//!
//! 1. upload the step layers (the slow part, outside the critical section);
//! 2. GET the current index and take the union of its entries and ours
//!    (ours win on the same key: the same key means the same inputs, and
//!    either layer is a correct result); if that changes nothing, stop;
//! 3. upload the new index blob, GET the tag again and start over if it
//!    moved since step 2 (another writer got in first);
//! 4. PUT the manifest, GET it back and check that all our keys are there;
//!    wait a few round trips (a writer that read before our PUT may still
//!    be about to write) and check once more;
//! 5. when a check fails, go back to 2 after a random delay, at most
//!    [`MAX_RETRIES`] times.
//!
//! Every writer's PUT holds everything it read, so entries only disappear
//! when a writer read before our PUT and wrote after our last check — a
//! window of one round trip that step 4's wait makes very unlikely. An
//! index written by a newer tplbuild is never overwritten
//! ([`CacheError::NewerIndex`]), nor is a tag that holds something else,
//! such as an image ([`CacheError::NotACache`]); a broken cache index is. If the registry refuses the manifest
//! because a listed layer vanished (`MANIFEST_BLOB_UNKNOWN`), the entries
//! whose layers are gone are dropped, with a warning, and the push goes on.
//!
//! Files: `index.rs` (the JSON document, the manifest, the merge),
//! `remote.rs` (reading: [`RemoteCache`]), `push.rs` (writing: [`push`]).

mod index;
mod push;
mod remote;

pub use index::{CacheEntry, EMPTY_MEDIA_TYPE, INDEX_MEDIA_TYPE, INDEX_VERSION, MAX_INDEX_BYTES};
pub(crate) use push::{backoff, settle_delay};
pub use push::{push, push_from, PushReport, MAX_RETRIES};
pub use remote::RemoteCache;

use crate::oci::{Digest, Reference};
use crate::registry::RegistryError;
use crate::store::{StepRecord, StoreError};

/// The `artifactType` of a cache index manifest.
pub const CACHE_ARTIFACT_TYPE: &str = "application/vnd.tplbuild.cache.v1+json";

/// Which steps `--cache-to` pushes, as in BuildKit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CacheMode {
    /// Only the steps whose layers are in the final image.
    #[default]
    Min,
    /// Every step the build ran or took from a cache.
    Max,
}

impl CacheMode {
    /// The records to push: all of `used` for `Max`; for `Min` those whose
    /// layer is one of `final_layers` (the output image's layer digests).
    pub fn select<'a>(
        self,
        used: &'a [StepRecord],
        final_layers: &[Digest],
    ) -> Vec<&'a StepRecord> {
        used.iter()
            .filter(|r| self == CacheMode::Max || final_layers.contains(&r.layer.digest))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{context}")]
    Registry {
        context: String,
        #[source]
        source: RegistryError,
    },
    #[error("{context}")]
    Store {
        context: String,
        #[source]
        source: StoreError,
    },
    #[error("{context}")]
    Transfer {
        context: String,
        #[source]
        source: crate::transfer::TransferError,
    },
    #[error("the cache index {reference} was written by a newer tplbuild (format version {version}); not overwriting it (hint: upgrade tplbuild or push to another tag)")]
    NewerIndex { reference: Reference, version: u64 },
    #[error("pushing the cache to {reference}: {why}; not overwriting it (hint: use another tag for the cache)")]
    NotACache { reference: Reference, why: String },
    #[error("pushing the cache index {reference}: other writers replaced it {attempts} times in a row; giving up")]
    Contended { reference: Reference, attempts: u32 },
    #[error("pushing the cache to {reference}: the layer {digest} of step {key} is neither in the local store nor in the registry")]
    LayerUnavailable {
        reference: Reference,
        key: Digest,
        digest: Digest,
    },
    #[error("the cache {reference} has no entry for step {key}")]
    NoEntry { reference: Reference, key: Digest },
    #[error("the cache reference {0} needs a tag (e.g. {0}:buildcache), not a digest")]
    NeedsTag(Reference),
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::oci::{Descriptor, MediaType};

    fn record(name: &str) -> StepRecord {
        StepRecord {
            version: crate::store::steps::STEP_RECORD_VERSION,
            key: Digest::of(name.as_bytes()),
            layer: Descriptor::new(
                MediaType::OCI_LAYER_GZIP,
                Digest::of(format!("layer {name}").as_bytes()),
                10,
            ),
            diff_id: Digest::of(format!("tar {name}").as_bytes()),
            uncompressed_size: 20,
            inputs: serde_json::Value::Null,
            removed_secrets: vec![],
            packages: None,
        }
    }

    #[test]
    fn min_mode_keeps_only_final_image_layers_max_keeps_all() {
        let used = [record("a"), record("b"), record("c")];
        let final_layers = [used[0].layer.digest.clone(), used[2].layer.digest.clone()];
        let min: Vec<_> = CacheMode::Min
            .select(&used, &final_layers)
            .into_iter()
            .map(|r| r.key.clone())
            .collect();
        assert_eq!(min, vec![used[0].key.clone(), used[2].key.clone()]);
        assert_eq!(CacheMode::Max.select(&used, &final_layers).len(), 3);
    }

    #[test]
    fn cache_mode_parses_like_buildkit() {
        use clap::ValueEnum;
        assert_eq!(CacheMode::from_str("min", false), Ok(CacheMode::Min));
        assert_eq!(CacheMode::from_str("max", false), Ok(CacheMode::Max));
        assert!(CacheMode::from_str("all", false).is_err());
    }
}
