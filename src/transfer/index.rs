//! Multi-platform images: one OCI image index naming one manifest per
//! platform, so that one tag serves every board (`template import` of
//! several rootfs, `build --platform A,B --tag`). Docker, Podman and
//! skopeo pick their platform's manifest from it.

use std::collections::BTreeMap;

use super::{layout, remote, TransferError};
use crate::image::Image;
use crate::oci::{Descriptor, Digest, ImageIndex, ManifestDoc, MediaType, Reference, Target};
use crate::registry::Client;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("two images for platform {0}: a multi-platform image holds one per platform")]
    DuplicatePlatform(String),
}

/// The index bytes for `images`, one entry per image with its platform,
/// in the order given. Deterministic: the same images give the same bytes.
pub fn index_bytes(images: &[Image]) -> Result<Vec<u8>, IndexError> {
    for (i, a) in images.iter().enumerate() {
        let p = a.config.platform();
        if images[..i].iter().any(|b| b.config.platform().matches(&p)) {
            return Err(IndexError::DuplicatePlatform(p.to_string()));
        }
    }
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(MediaType::OCI_INDEX.to_string()),
        artifact_type: None,
        manifests: images.iter().map(Image::descriptor).collect(),
        annotations: BTreeMap::new(),
    };
    Ok(serde_json::to_vec(&index).expect("an index always serialises"))
}

/// Write `images` as one multi-platform index at `target`: each manifest
/// by digest, then the index under the tag. Returns the index's digest.
pub async fn publish_index(
    store: &Store,
    client: &Client,
    images: &[Image],
    target: &Target,
    mount_from: &(dyn Fn(&Digest) -> Option<Reference> + Sync),
) -> Result<Digest, TransferError> {
    let bytes = index_bytes(images)?;
    match target {
        Target::Layout { dir, tag, .. } => {
            Ok(layout::write_layout_index(store, images, &bytes, dir, tag)?.digest)
        }
        Target::Registry(r) => {
            for image in images {
                let by_digest = Reference {
                    tag: None,
                    ..r.with_digest(image.digest())
                };
                remote::push_image(store, client, image, &by_digest, mount_from, None).await?;
            }
            let tagged = Reference {
                digest: None,
                ..r.clone()
            };
            Ok(client
                .put_manifest(&tagged, &bytes, MediaType::OCI_INDEX)
                .await?)
        }
    }
}

/// The platforms' entries when `target` is a multi-platform index, `None`
/// when it is a single image.
pub async fn index_entries(
    store: &Store,
    client: &Client,
    target: &Target,
) -> Result<Option<Vec<Descriptor>>, TransferError> {
    let (bytes, media) = match target {
        Target::Layout { dir, tag, digest } => {
            match layout::top_index(store, dir, tag, digest.as_ref())? {
                Some(bytes) => (bytes, MediaType::OCI_INDEX.to_string()),
                None => return Ok(None),
            }
        }
        Target::Registry(r) => match client.get_manifest(r).await {
            Ok(m) => (m.bytes, m.media_type),
            // Not there: the one-image path says so, with the tags it has.
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        },
    };
    match ManifestDoc::parse(&bytes, Some(&media))? {
        ManifestDoc::Index(index) => Ok(Some(index.manifests)),
        ManifestDoc::Image(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Platform;

    fn image(platform: &str) -> Image {
        let p = Platform::parse(platform).unwrap();
        Image::empty(crate::oci::ImageConfig {
            architecture: p.architecture,
            os: p.os,
            variant: p.variant,
            ..Default::default()
        })
    }

    #[test]
    fn one_entry_per_platform_with_its_platform() {
        let bytes = index_bytes(&[image("linux/amd64"), image("linux/arm64")]).unwrap();
        let ManifestDoc::Index(index) = ManifestDoc::parse(&bytes, None).unwrap() else {
            panic!("not an index");
        };
        let platforms: Vec<String> = index
            .manifests
            .iter()
            .map(|d| d.platform.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
        assert_eq!(index.media_type.as_deref(), Some(MediaType::OCI_INDEX));
    }

    #[test]
    fn the_same_platform_twice_is_refused() {
        let err = index_bytes(&[image("linux/arm64"), image("linux/arm64/v8")]);
        assert!(err.is_err());
    }
}
