//! Writing the cache: upload step layers, then merge our entries into the
//! index at the tag by read-modify-write with race detection (the rule is
//! in the module docs of `cache`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use rand::Rng;

use super::index::{empty_descriptor, CacheIndex, EMPTY_JSON, INDEX_MEDIA_TYPE};
use super::remote::{read_snapshot, Snapshot};
use super::{CacheEntry, CacheError};
use crate::oci::{Descriptor, Digest, MediaType, Reference};
use crate::registry::{Client, PushOutcome, RegistryError};
use crate::store::{StepRecord, Store};
use crate::transfer::{ensure_blobs, BlobSource};

/// How often a push starts over because another writer replaced the index.
pub const MAX_RETRIES: u32 = 5;

/// Layer uploads in flight at once.
const PUSH_JOBS: usize = 4;

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Entries in the index after the push.
    pub entries_total: usize,
    /// Of our entries, those the index did not have before.
    pub entries_added: usize,
    /// Step layers uploaded (not counting those the registry had).
    pub blobs_uploaded: usize,
    /// Step layers mounted from `mount_from` instead of uploaded.
    pub blobs_mounted: usize,
    /// Times the merge started over because another writer raced us.
    pub retries: u32,
    /// What was wrong with the index we merged into (corrupt, entries
    /// dropped because their layers are gone), for the build report.
    pub warnings: Vec<String>,
}

/// Push step layers (from the store) and merge their entries into the
/// index at `reference`. Layers already in the registry are skipped (HEAD).
pub async fn push(
    client: &Client,
    store: &Store,
    reference: &Reference,
    records: &[StepRecord],
) -> Result<PushReport, CacheError> {
    push_from(client, store, reference, records, None).await
}

/// [`push`], mounting layers from `mount_from` (another repository of the
/// same registry, e.g. the `--cache-from` one) instead of uploading them.
/// A layer that is not in the store is taken from `mount_from`; without it
/// such a layer is an error.
pub async fn push_from(
    client: &Client,
    store: &Store,
    reference: &Reference,
    records: &[StepRecord],
    mount_from: Option<&Reference>,
) -> Result<PushReport, CacheError> {
    if reference.tag.is_none() && reference.digest.is_some() {
        return Err(CacheError::NeedsTag(reference.clone()));
    }
    let reference = Reference {
        digest: None,
        ..reference.clone()
    };
    let ours: CacheIndex = records
        .iter()
        .map(|r| (r.key.clone(), CacheEntry::from(r)))
        .collect();
    let mut report = PushReport::default();
    upload_layers(client, store, &reference, &ours, mount_from, &mut report).await?;
    push_small_blob(client, &reference, &empty_descriptor(), EMPTY_JSON).await?;
    merge_into_tag(client, &reference, &ours, report).await
}

/// Each distinct layer once, a few at a time.
async fn upload_layers(
    client: &Client,
    store: &Store,
    reference: &Reference,
    ours: &CacheIndex,
    mount_from: Option<&Reference>,
    report: &mut PushReport,
) -> Result<(), CacheError> {
    let mut seen = BTreeSet::new();
    let layers: Vec<(&Digest, &Descriptor)> = ours
        .entries()
        .iter()
        .filter(|(_, e)| seen.insert(e.layer.digest.clone()))
        .map(|(k, e)| (k, &e.layer))
        .collect();
    let outcomes: Vec<Option<PushOutcome>> = futures_util::stream::iter(layers)
        .map(|(key, layer)| upload_layer(client, store, reference, key, layer, mount_from))
        .buffer_unordered(PUSH_JOBS)
        .try_collect()
        .await?;
    for outcome in outcomes.into_iter().flatten() {
        match outcome {
            PushOutcome::Uploaded => report.blobs_uploaded += 1,
            PushOutcome::Mounted => report.blobs_mounted += 1,
            PushOutcome::Existed => {}
        }
    }
    Ok(())
}

async fn upload_layer(
    client: &Client,
    store: &Store,
    reference: &Reference,
    key: &Digest,
    layer: &Descriptor,
    mount_from: Option<&Reference>,
) -> Result<Option<PushOutcome>, CacheError> {
    let context = || format!("pushing the layer of step {} to {reference}", key.short());
    let registry_err = |source| CacheError::Registry {
        context: context(),
        source,
    };
    if !store.has_blob(&layer.digest) {
        // A step taken from a remote cache may never have been downloaded.
        let there = client
            .blob_exists(reference, &layer.digest)
            .await
            .map_err(registry_err)?;
        if there.is_some() {
            return Ok(Some(PushOutcome::Existed));
        }
        let Some(from) = mount_from else {
            return Err(CacheError::LayerUnavailable {
                reference: reference.clone(),
                key: key.clone(),
                digest: layer.digest.clone(),
            });
        };
        // The registry client mounts only a blob it could also upload from
        // a file, so the layer comes into the store first. A mount-only
        // client call would save this download.
        ensure_blobs(
            store,
            client,
            &BlobSource::Registry(from.clone()),
            std::slice::from_ref(layer),
        )
        .await
        .map_err(|source| CacheError::Transfer {
            context: context(),
            source,
        })?;
    }
    let outcome = client
        .push_blob_file(
            reference,
            layer,
            &store.blob_path(&layer.digest),
            mount_from,
        )
        .await
        .map_err(registry_err)?;
    Ok(Some(outcome))
}

/// Push bytes held in memory as a blob (the index, the empty config).
async fn push_small_blob(
    client: &Client,
    reference: &Reference,
    desc: &Descriptor,
    bytes: &[u8],
) -> Result<(), CacheError> {
    client
        .push_blob_bytes(reference, desc, bytes)
        .await
        .map_err(|source| CacheError::Registry {
            context: format!("pushing the cache index blob to {reference}"),
            source,
        })?;
    Ok(())
}

/// The read-modify-write loop.
async fn merge_into_tag(
    client: &Client,
    reference: &Reference,
    ours: &CacheIndex,
    mut report: PushReport,
) -> Result<PushReport, CacheError> {
    // Layers found missing in the registry; their entries are dropped.
    let mut gone: BTreeSet<Digest> = BTreeSet::new();
    let mut warnings = BTreeSet::new();
    let mut pruned = false;
    for attempt in 0..=MAX_RETRIES {
        if attempt > 0 {
            report.retries += 1;
            tokio::time::sleep(backoff(attempt)).await;
        }
        let base = read_snapshot(client, reference).await?;
        if let Some(version) = base.newer {
            return Err(CacheError::NewerIndex {
                reference: reference.clone(),
                version,
            });
        }
        if let Some(why) = base.foreign {
            return Err(CacheError::NotACache {
                reference: reference.clone(),
                why,
            });
        }
        warnings.extend(base.warnings.iter().cloned());
        let base_index = base.index.without_layers(&gone);
        let merged = base_index.merge(ours);
        let added = ours
            .entries()
            .keys()
            .filter(|k| !base.index.entries().contains_key(*k))
            .count();
        if merged == base.index && base.manifest.is_some() {
            // Everything is there already: nothing to write.
            return Ok(finish(report, &merged, added, warnings));
        }
        let bytes = merged.to_json();
        let blob = Descriptor::new(INDEX_MEDIA_TYPE, Digest::of(&bytes), bytes.len() as u64);
        push_small_blob(client, reference, &blob, &bytes).await?;
        let manifest = merged.manifest_bytes(&blob);

        // The closest a registry comes to compare-and-swap: if the tag moved
        // since we read it, our merge is stale.
        let started = Instant::now();
        if current_digest(client, reference).await? != base.manifest {
            tracing::debug!(%reference, attempt, "cache index changed while merging; starting over");
            continue;
        }
        match client
            .put_manifest(reference, &manifest, MediaType::OCI_MANIFEST)
            .await
        {
            Ok(_) => {}
            Err(e) if is_blob_unknown(&e) && !pruned => {
                pruned = true;
                let lost = missing_layers(client, reference, &base_index, ours).await?;
                for (key, digest) in &lost {
                    warnings.insert(format!(
                        "cache {reference}: dropping step {}: its layer {digest} is gone from the registry",
                        key.short()
                    ));
                    gone.insert(digest.clone());
                }
                if lost.is_empty() {
                    return Err(put_error(reference, e));
                }
                continue;
            }
            Err(e) => return Err(put_error(reference, e)),
        }
        let round_trip = started.elapsed();
        if !holds_all(&read_snapshot(client, reference).await?, ours) {
            tracing::debug!(%reference, attempt, "another writer replaced the cache index; merging again");
            continue;
        }
        // A writer that read before our PUT may still write; give it time.
        tokio::time::sleep(settle_delay(round_trip)).await;
        if !holds_all(&read_snapshot(client, reference).await?, ours) {
            tracing::debug!(%reference, attempt, "another writer replaced the cache index; merging again");
            continue;
        }
        return Ok(finish(report, &merged, added, warnings));
    }
    Err(CacheError::Contended {
        reference: reference.clone(),
        attempts: MAX_RETRIES + 1,
    })
}

fn finish(
    mut report: PushReport,
    merged: &CacheIndex,
    added: usize,
    warnings: BTreeSet<String>,
) -> PushReport {
    report.entries_total = merged.len();
    report.entries_added = added;
    report.warnings = warnings.into_iter().collect();
    report
}

fn put_error(reference: &Reference, source: RegistryError) -> CacheError {
    CacheError::Registry {
        context: format!("pushing the cache index {reference}"),
        source,
    }
}

/// The digest the tag points at now, if it exists.
async fn current_digest(
    client: &Client,
    reference: &Reference,
) -> Result<Option<Digest>, CacheError> {
    match client.get_manifest(reference).await {
        Ok(raw) => Ok(Some(raw.digest)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(source) => Err(CacheError::Registry {
            context: format!("reading the cache index {reference}"),
            source,
        }),
    }
}

fn holds_all(snapshot: &Snapshot, ours: &CacheIndex) -> bool {
    ours.entries()
        .keys()
        .all(|k| snapshot.index.entries().contains_key(k))
}

/// The registry refused a manifest because a blob it lists is unknown.
fn is_blob_unknown(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Status { status: 400, message, .. } if message.contains("BLOB_UNKNOWN"))
}

/// The entries of `base` (not ours: we just pushed those) whose layer the
/// registry no longer has.
async fn missing_layers(
    client: &Client,
    reference: &Reference,
    base: &CacheIndex,
    ours: &CacheIndex,
) -> Result<Vec<(Digest, Digest)>, CacheError> {
    let candidates: Vec<(Digest, Digest)> = base
        .entries()
        .iter()
        .filter(|(k, _)| !ours.entries().contains_key(*k))
        .map(|(k, e)| (k.clone(), e.layer.digest.clone()))
        .collect();
    let checked: Vec<Option<(Digest, Digest)>> = futures_util::stream::iter(candidates)
        .map(|(key, digest)| async move {
            match client.blob_exists(reference, &digest).await {
                Ok(Some(_)) => Ok(None),
                Ok(None) => Ok(Some((key, digest))),
                Err(source) => Err(CacheError::Registry {
                    context: format!("checking the layers of the cache {reference}"),
                    source,
                }),
            }
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    Ok(checked.into_iter().flatten().collect())
}

/// Random, growing: two writers that collided should not collide again.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 50u64 << attempt.min(5);
    Duration::from_millis(rand::thread_rng().gen_range(base / 2..=base * 2))
}

/// How long to wait before the second check: several of our own round
/// trips, since a racing writer's read-to-write gap is about one.
pub(crate) fn settle_delay(round_trip: Duration) -> Duration {
    let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..=50));
    (round_trip * 4).clamp(Duration::from_millis(50), Duration::from_secs(2)) + jitter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_unknown_is_recognised_only_on_400() {
        let status = |status, message: &str| RegistryError::Status {
            context: "pushing".into(),
            status,
            message: message.into(),
            retry_after: None,
        };
        assert!(is_blob_unknown(&status(
            400,
            "MANIFEST_BLOB_UNKNOWN: blob unknown to registry"
        )));
        assert!(!is_blob_unknown(&status(
            400,
            "MANIFEST_INVALID: manifest invalid"
        )));
        assert!(!is_blob_unknown(&status(500, "BLOB_UNKNOWN")));
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempt in 1..=MAX_RETRIES {
            let d = backoff(attempt);
            let base = 50u64 << attempt;
            assert!(
                d >= Duration::from_millis(base / 2) && d <= Duration::from_millis(base * 2),
                "{d:?}"
            );
        }
        assert!(backoff(100) <= Duration::from_millis(50 << 5) * 2);
    }

    #[test]
    fn settle_delay_scales_with_the_round_trip_within_bounds() {
        assert!(settle_delay(Duration::from_micros(10)) >= Duration::from_millis(50));
        let slow = settle_delay(Duration::from_millis(300));
        assert!(slow >= Duration::from_millis(1200) && slow <= Duration::from_millis(1250));
        assert!(settle_delay(Duration::from_secs(60)) <= Duration::from_millis(2050));
    }
}
