//! Locked .debs as an OCI artifact in a registry (`tplbuild fetch
//! --cache-to/--cache-from REF`), so CI machines and air-gapped sites share
//! one package cache beside the step cache.
//!
//! ```text
//! image manifest   artifactType  application/vnd.tplbuild.debs.v1+json
//! ├── config       application/vnd.oci.empty.v1+json   `{}`
//! └── layers       application/vnd.debian.binary-package, one per .deb,
//!                  sorted by digest, titled with the .deb's file name
//! ```
//!
//! A .deb's digest is the lock's sha256, so a pulled blob is verified
//! against the lock by the store's commit ([`crate::transfer::ensure_blobs`])
//! and the artifact needs no trust of its own: it only says where to look.
//! Several lockfiles may share one tag: [`push_debs`] merges with what the
//! tag holds (union by digest) and refuses a tag that holds something else.
//! [`pull_debs`] turns a missing or broken artifact into warnings; the
//! archive ([`super::fetch`]) is the fallback.

use std::collections::BTreeMap;

use super::{LockedPackage, Lockfile};
use crate::cache::EMPTY_MEDIA_TYPE;
use crate::oci::{Descriptor, Digest, Manifest, ManifestDoc, MediaType, Reference};
use crate::registry::{Client, RegistryError};
use crate::store::{Store, StoreError};
use crate::transfer::{ensure_blobs, BlobSource, TransferError};

/// The `artifactType` of a .deb cache manifest.
pub const DEBS_ARTIFACT_TYPE: &str = "application/vnd.tplbuild.debs.v1+json";
/// The media type of one .deb blob.
pub const DEB_MEDIA_TYPE: &str = "application/vnd.debian.binary-package";
/// The annotation that carries a .deb's file name.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
const EMPTY_JSON: &[u8] = b"{}";
/// A writer that read before our PUT may overwrite it; re-read and re-merge
/// at most this many times.
const MAX_ATTEMPTS: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{name} {version}: the lock's sha256 {sha256:?} is not 64 hex digits")]
    BadDigest {
        name: String,
        version: String,
        sha256: String,
    },
    #[error("{name} {version} is not in the store; run `tplbuild fetch` first")]
    NotStored { name: String, version: String },
    #[error(
        "{reference} holds something that is not a tplbuild .deb cache ({why}); not overwriting it"
    )]
    Foreign { reference: String, why: String },
    #[error("{reference} kept changing while pushing the .debs ({MAX_ATTEMPTS} attempts)")]
    Contended { reference: String },
    #[error("{context}")]
    Registry {
        context: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("{context}")]
    Transfer {
        context: String,
        #[source]
        source: Box<TransferError>,
    },
    #[error("{context}")]
    Store {
        context: String,
        #[source]
        source: StoreError,
    },
}

/// What [`push_debs`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The lock's .debs, all now in the registry.
    pub debs: usize,
    /// .debs the artifact listed before (from this or other lockfiles).
    pub kept: usize,
    /// .debs the artifact lists now.
    pub total: usize,
    /// The manifest now at the tag.
    pub manifest: Digest,
    /// Why an existing, broken artifact was replaced.
    pub warnings: Vec<String>,
}

/// What [`pull_debs`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// .debs taken from the registry into the store.
    pub pulled: usize,
    pub bytes: u64,
    /// Why the artifact, or some of its .debs, could not be used.
    pub warnings: Vec<String>,
}

/// The blob descriptor of a locked .deb.
pub fn deb_descriptor(p: &LockedPackage) -> Result<Descriptor, ArtifactError> {
    let digest = match p.digest() {
        Some(Ok(d)) => d,
        _ => {
            return Err(ArtifactError::BadDigest {
                name: p.name.clone(),
                version: p.version.clone(),
                sha256: p.sha256.clone(),
            })
        }
    };
    let mut d = Descriptor::new(DEB_MEDIA_TYPE, digest, p.size);
    d.annotations
        .insert(TITLE_ANNOTATION.to_string(), p.deb_name().to_string());
    Ok(d)
}

fn empty_descriptor() -> Descriptor {
    Descriptor::new(
        EMPTY_MEDIA_TYPE,
        Digest::of(EMPTY_JSON),
        EMPTY_JSON.len() as u64,
    )
}

/// The manifest bytes for these .debs: one layer per digest (the last
/// one given wins), sorted by digest, so equal sets give equal bytes.
pub fn manifest_bytes(debs: impl IntoIterator<Item = Descriptor>) -> Vec<u8> {
    let by_digest: BTreeMap<Digest, Descriptor> =
        debs.into_iter().map(|d| (d.digest.clone(), d)).collect();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MediaType::OCI_MANIFEST.to_string()),
        artifact_type: Some(DEBS_ARTIFACT_TYPE.to_string()),
        config: empty_descriptor(),
        layers: by_digest.into_values().collect(),
        subject: None,
        annotations: BTreeMap::new(),
    };
    serde_json::to_vec(&manifest).expect("a manifest always serialises")
}

/// What a tag holds, as far as .debs go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Listing {
    Absent,
    Debs(Vec<Descriptor>),
    /// Not ours (an image, another artifact): never overwritten.
    Foreign(String),
    /// Ours but unreadable: a push replaces it.
    Broken(String),
}

/// Read a manifest as a .deb listing. Layers of another media type are
/// dropped (a newer writer's extras), not fatal.
fn decode(bytes: &[u8], media_type: &str) -> Listing {
    let m = match ManifestDoc::parse(bytes, Some(media_type)) {
        Ok(ManifestDoc::Image(m)) => m,
        Ok(ManifestDoc::Index(_)) => return Listing::Foreign("an image index".into()),
        Err(e) => return Listing::Broken(format!("its manifest is invalid ({e})")),
    };
    if m.artifact_type.as_deref() != Some(DEBS_ARTIFACT_TYPE) {
        return Listing::Foreign(format!(
            "artifactType {:?}, expected {DEBS_ARTIFACT_TYPE:?}",
            m.artifact_type.as_deref().unwrap_or("")
        ));
    }
    Listing::Debs(
        m.layers
            .into_iter()
            .filter(|l| l.media_type == DEB_MEDIA_TYPE)
            .collect(),
    )
}

async fn read_listing(client: &Client, reference: &Reference) -> Result<Listing, ArtifactError> {
    match client.get_manifest(reference).await {
        Ok(raw) => Ok(decode(&raw.bytes, &raw.media_type)),
        Err(e) if e.is_not_found() => Ok(Listing::Absent),
        Err(source) => Err(ArtifactError::Registry {
            context: format!("reading the .deb cache {reference}"),
            source: Box::new(source),
        }),
    }
}

/// Push every locked .deb (all must be in the store) and merge them into
/// the artifact at `reference`.
pub async fn push_debs(
    client: &Client,
    store: &Store,
    reference: &Reference,
    lock: &Lockfile,
) -> Result<PushReport, ArtifactError> {
    let registry = |context: String| {
        move |source| ArtifactError::Registry {
            context,
            source: Box::new(source),
        }
    };
    let ours = lock
        .debs()
        .into_iter()
        .map(|p| {
            let d = deb_descriptor(p)?;
            if !store.has_blob(&d.digest) {
                return Err(ArtifactError::NotStored {
                    name: p.name.clone(),
                    version: p.version.clone(),
                });
            }
            Ok(d)
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Refuse a foreign tag before uploading anything into its repository.
    if let Listing::Foreign(why) = read_listing(client, reference).await? {
        return Err(ArtifactError::Foreign {
            reference: reference.to_string(),
            why,
        });
    }
    // Blobs before the manifest: a manifest may only name blobs the
    // repository has.
    for d in &ours {
        client
            .push_blob_file(reference, d, &store.blob_path(&d.digest), None)
            .await
            .map_err(registry(format!("pushing {} to {reference}", title(d))))?;
    }
    let empty = empty_descriptor();
    store
        .put_bytes(EMPTY_JSON)
        .map_err(|source| ArtifactError::Store {
            context: "storing the empty config".into(),
            source,
        })?;
    client
        .push_blob_file(reference, &empty, &store.blob_path(&empty.digest), None)
        .await
        .map_err(registry(format!("pushing the empty config to {reference}")))?;

    let mut warnings = vec![];
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(crate::cache::backoff(attempt as u32)).await;
        }
        let theirs = match read_listing(client, reference).await? {
            Listing::Absent => vec![],
            Listing::Debs(d) => d,
            Listing::Foreign(why) => {
                return Err(ArtifactError::Foreign {
                    reference: reference.to_string(),
                    why,
                })
            }
            Listing::Broken(why) => {
                warnings.push(format!(
                    "replacing the broken .deb cache {reference}: {why}"
                ));
                vec![]
            }
        };
        let kept = theirs.len();
        let bytes = manifest_bytes(theirs.into_iter().chain(ours.iter().cloned()));
        let total = match decode(&bytes, MediaType::OCI_MANIFEST) {
            Listing::Debs(d) => d.len(),
            _ => unreachable!("our own manifest decodes as a .deb listing"),
        };
        let started = std::time::Instant::now();
        let manifest = client
            .put_manifest(reference, &bytes, MediaType::OCI_MANIFEST)
            .await
            .map_err(registry(format!(
                "pushing the .deb cache manifest {reference}"
            )))?;
        let round_trip = started.elapsed();
        // Another writer may have PUT between our read and our write, or
        // may still write what it read before our PUT: check that ours are
        // all there now and again a little later, else merge again (as the
        // step cache does, src/cache/push.rs).
        if !holds_all(client, reference, &ours).await? {
            continue;
        }
        tokio::time::sleep(crate::cache::settle_delay(round_trip)).await;
        if holds_all(client, reference, &ours).await? {
            return Ok(PushReport {
                debs: ours.len(),
                kept,
                total,
                manifest,
                warnings,
            });
        }
    }
    Err(ArtifactError::Contended {
        reference: reference.to_string(),
    })
}

/// Whether the artifact at `reference` lists every one of `ours`.
async fn holds_all(
    client: &Client,
    reference: &Reference,
    ours: &[Descriptor],
) -> Result<bool, ArtifactError> {
    Ok(match read_listing(client, reference).await? {
        Listing::Debs(now) => {
            let now: std::collections::BTreeSet<_> = now.into_iter().map(|d| d.digest).collect();
            ours.iter().all(|d| now.contains(&d.digest))
        }
        _ => false,
    })
}

fn title(d: &Descriptor) -> String {
    d.annotations
        .get(TITLE_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| d.digest.to_string())
}

/// A registry answer that means "this content is bad or gone" rather than
/// "the registry cannot be used".
fn is_content_problem(e: &RegistryError) -> bool {
    match e {
        RegistryError::NotFound { .. }
        | RegistryError::DigestMismatch { .. }
        | RegistryError::TooLong { .. }
        | RegistryError::Truncated { .. } => true,
        RegistryError::RetriesExhausted { source, .. } => is_content_problem(source),
        _ => false,
    }
}

/// Pull into the store each locked .deb the store lacks and the artifact
/// at `reference` lists, verified against the lock's sha256 and size. A
/// missing or broken artifact, or a listed .deb that is gone or does not
/// match, is a warning; only the registry itself failing is an error.
pub async fn pull_debs(
    client: &Client,
    store: &Store,
    reference: &Reference,
    lock: &Lockfile,
) -> Result<PullReport, ArtifactError> {
    let mut report = PullReport::default();
    let listed: BTreeMap<Digest, Descriptor> = match read_listing(client, reference).await? {
        Listing::Debs(d) => d.into_iter().map(|d| (d.digest.clone(), d)).collect(),
        Listing::Absent => {
            report
                .warnings
                .push(format!("no .deb cache at {reference}"));
            return Ok(report);
        }
        Listing::Foreign(why) | Listing::Broken(why) => {
            report
                .warnings
                .push(format!("ignoring the .deb cache {reference}: {why}"));
            return Ok(report);
        }
    };
    for p in lock.debs() {
        // The lock, not the artifact, says what the blob must be.
        let want = deb_descriptor(p)?;
        if store.has_blob(&want.digest) {
            continue;
        }
        let Some(have) = listed.get(&want.digest) else {
            continue;
        };
        if have.size != want.size {
            report.warnings.push(format!(
                "{reference} lists {} with {} bytes, the lock says {}; ignoring it",
                p.deb_name(),
                have.size,
                want.size
            ));
            continue;
        }
        match ensure_blobs(
            store,
            client,
            &BlobSource::Registry(reference.clone()),
            std::slice::from_ref(&want),
        )
        .await
        {
            Ok(()) => {
                report.pulled += 1;
                report.bytes += want.size;
            }
            Err(TransferError::Registry(e)) if is_content_problem(&e) => report.warnings.push(
                format!("{reference}: {} cannot be used ({e})", p.deb_name()),
            ),
            Err(TransferError::Store(e @ StoreError::Mismatch { .. })) => {
                report.warnings.push(format!(
                    "{reference}: {} does not match the lock ({e})",
                    p.deb_name()
                ))
            }
            Err(source) => {
                return Err(ArtifactError::Transfer {
                    context: format!("pulling {} from {reference}", p.deb_name()),
                    source: Box::new(source),
                })
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb(name: &str, body: &[u8]) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: "1.0-1".into(),
            architecture: "amd64".into(),
            filename: format!("pool/main/x/{name}/{name}_1.0-1_amd64.deb"),
            sha256: Digest::of(body).hex().to_string(),
            size: body.len() as u64,
            uri: "http://deb.debian.org/debian".into(),
        }
    }

    #[test]
    fn manifest_bytes_are_sorted_by_digest_deduplicated_and_stable() {
        let a = deb_descriptor(&deb("a", b"aaa")).unwrap();
        let b = deb_descriptor(&deb("b", b"bbb")).unwrap();
        let c = deb_descriptor(&deb("c", b"ccc")).unwrap();
        let one = manifest_bytes(vec![c.clone(), a.clone(), b.clone(), a.clone()]);
        let two = manifest_bytes(vec![b.clone(), a.clone(), c.clone()]);
        assert_eq!(one, two, "order and duplicates do not change the bytes");

        let m: Manifest = serde_json::from_slice(&one).unwrap();
        let digests: Vec<_> = m.layers.iter().map(|l| l.digest.clone()).collect();
        let mut sorted = digests.clone();
        sorted.sort();
        assert_eq!(digests, sorted);
        assert_eq!(digests.len(), 3);
        assert_eq!(m.artifact_type.as_deref(), Some(DEBS_ARTIFACT_TYPE));
        assert_eq!(m.config.media_type, EMPTY_MEDIA_TYPE);
        assert_eq!(m.config.digest, Digest::of(b"{}"));

        // Pin the exact encoding of one layer: a change here changes every
        // pushed manifest's digest.
        let text = String::from_utf8(manifest_bytes(vec![a.clone()])).unwrap();
        let expected = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
             \"artifactType\":\"{DEBS_ARTIFACT_TYPE}\",\
             \"config\":{{\"mediaType\":\"{EMPTY_MEDIA_TYPE}\",\"digest\":\"{}\",\"size\":2}},\
             \"layers\":[{{\"mediaType\":\"{DEB_MEDIA_TYPE}\",\"digest\":\"{}\",\"size\":3,\
             \"annotations\":{{\"{TITLE_ANNOTATION}\":\"a_1.0-1_amd64.deb\"}}}}]}}",
            Digest::of(b"{}"),
            a.digest
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn our_manifest_decodes_as_a_listing_and_an_image_is_foreign() {
        let a = deb_descriptor(&deb("a", b"aaa")).unwrap();
        let bytes = manifest_bytes(vec![a.clone()]);
        assert_eq!(
            decode(&bytes, MediaType::OCI_MANIFEST),
            Listing::Debs(vec![a])
        );

        let mut image: Manifest = serde_json::from_slice(&bytes).unwrap();
        image.artifact_type = None;
        let bytes = serde_json::to_vec(&image).unwrap();
        assert!(matches!(
            decode(&bytes, MediaType::OCI_MANIFEST),
            Listing::Foreign(_)
        ));
        assert!(matches!(
            decode(b"not json", MediaType::OCI_MANIFEST),
            Listing::Broken(_)
        ));
    }

    #[test]
    fn a_removed_package_or_bad_sha256_has_no_descriptor() {
        let mut p = deb("a", b"aaa");
        p.sha256 = "xyz".into();
        assert!(matches!(
            deb_descriptor(&p),
            Err(ArtifactError::BadDigest { .. })
        ));
    }
}
