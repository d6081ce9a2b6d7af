//! Moving images between the store, OCI layouts (`oci:DIR:TAG`) and
//! registries. Everything passes through the store, verified: a blob read
//! from a layout or a registry lands under its digest only if it hashes to
//! it.

mod index;
mod layout;
pub mod local;
mod remote;

use crate::image::Image;
use crate::oci::{Descriptor, Digest, ManifestError, Reference, Target};
use crate::registry::{Client, RegistryError};
use crate::store::{Store, StoreError};

pub use index::{index_bytes, index_entries, publish_index, IndexError};
pub use layout::{read_layout_image, write_layout_image};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Image(#[from] crate::image::ImageError),
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("no image tagged {tag:?} in the OCI layout {dir}; {}", has_tags(.available))]
    LayoutTagMissing {
        dir: String,
        tag: String,
        available: Vec<String>,
    },
    #[error("{reference}: tag not found; {}", has_tags(.available))]
    NoSuchTag {
        reference: String,
        available: Vec<String>,
    },
    #[error("{dir} is not an OCI image layout (no index.json)")]
    NotALayout { dir: String },
    #[error("no manifest for platform {wanted} in {what}; it has: {available}")]
    NoPlatform {
        what: String,
        wanted: String,
        available: String,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// "it has: 1, 2024.06" — the tags a user may have meant, at most 20.
fn has_tags(tags: &[String]) -> String {
    const SHOWN: usize = 20;
    match tags.len() {
        0 => "it has no tags".to_string(),
        n if n <= SHOWN => format!("it has: {}", tags.join(", ")),
        n => format!(
            "it has: {}, … ({} more)",
            tags[..SHOWN].join(", "),
            n - SHOWN
        ),
    }
}

/// Where an image's blobs can be fetched from.
#[derive(Debug, Clone)]
pub enum BlobSource {
    /// Already complete in the store.
    Store,
    Layout(std::path::PathBuf),
    Registry(Reference),
    /// Per blob, as a build recorded it: step layers from registry caches,
    /// the rest from the template's source.
    Mixed(Box<Sources>),
}

/// An image whose manifest and config are in the store, and where to fetch
/// its layers from when they are needed.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub image: Image,
    pub source: BlobSource,
    /// The reference as the user wrote it, pinned to the digest.
    pub pinned: String,
}

impl Resolved {
    pub fn digest(&self) -> Digest {
        self.image.digest()
    }
}

/// Resolve a target to one image for `platform`, with its manifest and
/// config in the store. Layers are not fetched (see [`ensure_layers`]).
pub async fn resolve(
    store: &Store,
    client: &Client,
    target: &Target,
    platform: &crate::oci::Platform,
) -> Result<Resolved, TransferError> {
    match target {
        Target::Layout { dir, tag, digest } => {
            let image = read_layout_image(store, dir, tag, digest.as_ref(), platform)?;
            let pinned = format!("oci:{}:{tag}@{}", dir.display(), image.digest());
            Ok(Resolved {
                image,
                source: BlobSource::Layout(dir.clone()),
                pinned,
            })
        }
        Target::Registry(r) => {
            let resolved = remote::resolve(store, client, r, platform).await?;
            // Remembered so an offline build (or a bundle) can resolve the
            // same reference without the registry.
            store.set_name(&resolved_name(r, platform), &resolved.image.descriptor())?;
            Ok(resolved)
        }
    }
}

/// The store name under which a registry reference's last resolution is kept.
pub fn resolved_name(r: &Reference, platform: &crate::oci::Platform) -> String {
    format!("resolved:{platform}:{r}")
}

#[derive(Debug, thiserror::Error)]
#[error("{reference} was never resolved on this machine (or in this bundle), and --offline forbids asking the registry")]
pub struct NotResolvedOffline {
    pub reference: String,
}

/// Resolve without any network: a registry reference by what the store
/// remembers of it, a layout as usual.
pub async fn resolve_offline(
    store: &Store,
    client: &Client,
    target: &Target,
    platform: &crate::oci::Platform,
) -> anyhow::Result<Resolved> {
    match target {
        Target::Layout { .. } => Ok(resolve(store, client, target, platform).await?),
        Target::Registry(r) => {
            let desc = store
                .lookup_name(&resolved_name(r, platform))?
                .ok_or_else(|| NotResolvedOffline {
                    reference: r.to_string(),
                })?;
            let image = load_image(store, &desc.digest)?;
            Ok(Resolved {
                pinned: r.with_digest(image.digest()).to_string(),
                image,
                source: BlobSource::Store,
            })
        }
    }
}

/// Where each blob of a build's image can be fetched from: the base
/// image's source, and per-digest registry locations for step layers that
/// a registry cache holds. Nothing is downloaded until a blob is needed.
#[derive(Debug, Clone)]
pub struct Sources {
    pub base: BlobSource,
    layers: std::collections::BTreeMap<Digest, Reference>,
}

impl Sources {
    pub fn new(base: BlobSource) -> Self {
        Sources {
            base,
            layers: Default::default(),
        }
    }

    /// `digest` can be pulled from (or mounted from) `repo`.
    pub fn add(&mut self, digest: Digest, repo: Reference) {
        self.layers.insert(digest, repo);
    }

    /// The registry repository that holds `digest`, if any is known.
    pub fn registry_of(&self, digest: &Digest) -> Option<Reference> {
        self.layers.get(digest).cloned().or(match &self.base {
            BlobSource::Registry(r) => Some(r.clone()),
            _ => None,
        })
    }

    fn source_of(&self, digest: &Digest) -> BlobSource {
        match self.layers.get(digest) {
            Some(r) => BlobSource::Registry(r.clone()),
            None => self.base.clone(),
        }
    }
}

/// How many blobs are fetched at once unless `--jobs` says otherwise.
pub const PARALLEL_FETCHES: usize = 4;

static JOBS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(PARALLEL_FETCHES);

/// Set how many blobs are fetched at once (`--jobs`; at least 1).
pub fn set_jobs(n: usize) {
    JOBS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn jobs() -> usize {
    JOBS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Make sure these blobs are in the store, each fetched from where
/// `sources` says, several at a time.
pub async fn ensure_from(
    store: &Store,
    client: &Client,
    sources: &Sources,
    blobs: &[Descriptor],
) -> Result<(), TransferError> {
    use futures_util::stream::{self, TryStreamExt};
    let mut seen = std::collections::BTreeSet::new();
    let missing: Vec<&Descriptor> = blobs
        .iter()
        .filter(|d| !store.has_blob(&d.digest) && seen.insert(d.digest.clone()))
        .collect();
    stream::iter(missing.into_iter().map(Ok))
        .try_for_each_concurrent(jobs(), |desc| async move {
            let source = sources.source_of(&desc.digest);
            ensure_blobs(store, client, &source, std::slice::from_ref(desc)).await
        })
        .await
}

/// Make sure these blobs are in the store, fetching from `source` as needed.
pub async fn ensure_blobs(
    store: &Store,
    client: &Client,
    source: &BlobSource,
    blobs: &[Descriptor],
) -> Result<(), TransferError> {
    for desc in blobs {
        if store.has_blob(&desc.digest) {
            continue;
        }
        let mixed;
        let source = match source {
            BlobSource::Mixed(sources) => {
                mixed = sources.source_of(&desc.digest);
                &mixed
            }
            s => s,
        };
        match source {
            BlobSource::Store | BlobSource::Mixed(_) => {
                return Err(StoreError::Missing {
                    digest: desc.digest.clone(),
                }
                .into())
            }
            BlobSource::Layout(dir) => layout::copy_blob_in(store, dir, desc)?,
            BlobSource::Registry(r) => remote::pull_blob(store, client, r, desc).await?,
        }
    }
    Ok(())
}

/// Write an image whose blobs are all in the store to a target. Returns the
/// manifest digest.
pub async fn publish(
    store: &Store,
    client: &Client,
    image: &Image,
    target: &Target,
    mount_from: &(dyn Fn(&Digest) -> Option<Reference> + Sync),
) -> Result<Digest, TransferError> {
    match target {
        Target::Layout { dir, tag, .. } => {
            write_layout_image(store, image, dir, tag)?;
            Ok(image.digest())
        }
        Target::Registry(r) => remote::push_image(store, client, image, r, mount_from, None).await,
    }
}

/// Push an image read from an OCI layout straight from the layout's blob
/// files (manifest and config come from the store).
pub async fn push_from_layout(
    store: &Store,
    client: &Client,
    image: &Image,
    layout: &std::path::Path,
    r: &Reference,
) -> Result<Digest, TransferError> {
    let blobs = layout.join("blobs").join("sha256");
    remote::push_image(store, client, image, r, &|_| None, Some(&blobs)).await
}

/// Store an image's manifest and config (layers must be stored by the caller).
pub fn store_image(store: &Store, image: &Image) -> Result<(), StoreError> {
    store.put_bytes(&image.config_bytes)?;
    store.put_bytes(&image.manifest_bytes)?;
    Ok(())
}

/// Load an image from the store by manifest digest.
pub fn load_image(store: &Store, digest: &Digest) -> Result<Image, TransferError> {
    let manifest_bytes = store.read_bytes(digest)?;
    let manifest: crate::oci::Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| TransferError::Manifest(ManifestError::Json(e)))?;
    let config_bytes = store.read_bytes(&manifest.config.digest)?;
    Ok(Image::from_parts(manifest_bytes, config_bytes)?)
}
