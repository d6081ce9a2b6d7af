//! The registry side of transfers: resolve, pull blobs into the store, push
//! an image from the store.

use super::{BlobSource, Resolved, TransferError};
use crate::image::Image;
use crate::oci::{Descriptor, Digest, Platform, Reference};
use crate::registry::{Client, RegistryError};
use crate::store::Store;

pub(super) async fn resolve(
    store: &Store,
    client: &Client,
    r: &Reference,
    platform: &Platform,
) -> Result<Resolved, TransferError> {
    let resolved = match client.resolve_image(r, platform).await {
        Ok(x) => x,
        // A tag the repository lacks: say which it has (a typo, a version
        // not published yet). A repository that does not exist has none.
        Err(RegistryError::NotFound { .. }) if r.digest.is_none() && r.tag.is_some() => {
            return Err(TransferError::NoSuchTag {
                reference: r.to_string(),
                // Signatures and referrers (`sha256-<hex>[.sig]`) are
                // not images anyone means.
                available: (client.list_tags(r).await.unwrap_or_default())
                    .into_iter()
                    .filter(|t| !t.starts_with("sha256-"))
                    .collect(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    store.put_bytes(&resolved.manifest.bytes)?;
    store.put_bytes(&resolved.config_bytes)?;
    let image = Image::from_parts(
        resolved.manifest.bytes.clone(),
        resolved.config_bytes.clone(),
    )?;
    let pinned = r.with_digest(image.digest());
    Ok(Resolved {
        pinned: pinned.to_string(),
        image,
        source: BlobSource::Registry(pinned),
    })
}

pub(super) async fn pull_blob(
    store: &Store,
    client: &Client,
    r: &Reference,
    desc: &Descriptor,
) -> Result<(), TransferError> {
    let mut sink = StoreSink(store.blob_writer()?);
    client.pull_blob(r, desc, &mut sink).await?;
    sink.0.commit(Some((&desc.digest, desc.size)))?;
    Ok(())
}

/// The registry client streams into the store's verified writer.
struct StoreSink(crate::store::BlobWriter);

impl crate::registry::BlobSink for StoreSink {
    async fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(&mut self.0, buf)
    }

    async fn restart(&mut self) -> std::io::Result<()> {
        self.0.restart()
    }
}

pub(super) async fn push_image(
    store: &Store,
    client: &Client,
    image: &Image,
    r: &Reference,
    mount_from: &(dyn Fn(&Digest) -> Option<Reference> + Sync),
    layer_dir: Option<&std::path::Path>,
) -> Result<Digest, TransferError> {
    for layer in image.layers() {
        let from = mount_from(&layer.digest);
        // From an OCI layout, layers go straight from its files: the
        // registry checks the digest of what it receives, so copying them
        // through the store first would only cost time.
        let path = match layer_dir {
            Some(dir) if dir.join(layer.digest.hex()).is_file() => dir.join(layer.digest.hex()),
            _ => store.blob_path(&layer.digest),
        };
        client
            .push_blob_file(r, layer, &path, from.as_ref())
            .await?;
    }
    let cfg = &image.manifest.config;
    client
        .push_blob_file(r, cfg, &store.blob_path(&cfg.digest), None)
        .await?;
    let media = image
        .manifest
        .media_type
        .clone()
        .unwrap_or_else(|| crate::oci::MediaType::OCI_MANIFEST.to_string());
    let target = if r.digest.is_some() && r.tag.is_none() {
        r.clone()
    } else {
        Reference {
            digest: None,
            ..r.clone()
        }
    };
    Ok(client
        .put_manifest(&target, &image.manifest_bytes, &media)
        .await?)
}
