//! OCI image layouts on disk (`oci:DIR:TAG`), read and written with the
//! same verification as registry blobs.

use std::io::Write;
use std::path::Path;

use super::TransferError;
use crate::image::Image;
use crate::oci::{Descriptor, Digest, ImageIndex, ManifestDoc, Platform};
use crate::store::index::{set_name_in_layout, REF_NAME};
use crate::store::{Store, StoreError};

fn blob_path(dir: &Path, d: &Digest) -> std::path::PathBuf {
    dir.join("blobs").join("sha256").join(d.hex())
}

/// Copy one blob from a layout into the store, verifying digest and size.
pub(super) fn copy_blob_in(
    store: &Store,
    dir: &Path,
    desc: &Descriptor,
) -> Result<(), TransferError> {
    if store.has_blob(&desc.digest) {
        return Ok(());
    }
    let mut src = fs_err::File::open(blob_path(dir, &desc.digest))?;
    let mut w = store.blob_writer()?;
    std::io::copy(&mut src, &mut w)?;
    w.commit(Some((&desc.digest, desc.size)))?;
    Ok(())
}

fn read_small(store: &Store, dir: &Path, desc: &Descriptor) -> Result<Vec<u8>, TransferError> {
    copy_blob_in(store, dir, desc)?;
    Ok(store.read_bytes(&desc.digest)?)
}

/// Read the image tagged `tag` (or pinned by `digest`) from a layout into
/// the store: manifest and config only.
pub fn read_layout_image(
    store: &Store,
    dir: &Path,
    tag: &str,
    digest: Option<&Digest>,
    platform: &Platform,
) -> Result<Image, TransferError> {
    let top = find_top(dir, tag, digest)?;
    let what = format!("oci:{}:{tag}", dir.display());
    let manifest_desc = select(store, dir, &top, platform, &what)?;
    let manifest_bytes = read_small(store, dir, &manifest_desc)?;
    let doc = ManifestDoc::parse(&manifest_bytes, Some(&manifest_desc.media_type))?;
    let ManifestDoc::Image(manifest) = doc else {
        return Err(TransferError::Manifest(
            crate::oci::ManifestError::Unsupported("nested image index".into()),
        ));
    };
    let config_bytes = read_small(store, dir, &manifest.config)?;
    Ok(Image::from_parts(manifest_bytes, config_bytes)?)
}

/// The layout's `index.json` entry for `tag` (or `digest`).
fn find_top(dir: &Path, tag: &str, digest: Option<&Digest>) -> Result<Descriptor, TransferError> {
    let index_path = dir.join("index.json");
    if !index_path.is_file() {
        return Err(TransferError::NotALayout {
            dir: dir.display().to_string(),
        });
    }
    let index: ImageIndex = serde_json::from_slice(&fs_err::read(&index_path)?)
        .map_err(|e| TransferError::Manifest(e.into()))?;
    let top = index
        .manifests
        .iter()
        .find(|d| match digest {
            Some(want) => d.digest == *want,
            None => d.annotations.get(REF_NAME).map(String::as_str) == Some(tag),
        })
        .or_else(|| {
            // A layout holding exactly one untagged image: take it, like
            // skopeo. Artifacts beside it (SBOMs, provenance) do not count.
            let mut images = index.manifests.iter().filter(|d| d.artifact_type.is_none());
            match (digest, tag, images.next(), images.next()) {
                (None, "latest", Some(only), None) => Some(only),
                _ => None,
            }
        })
        .ok_or_else(|| TransferError::LayoutTagMissing {
            dir: dir.display().to_string(),
            tag: digest
                .map(|d| d.to_string())
                .unwrap_or_else(|| tag.to_string()),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.annotations.get(REF_NAME).cloned())
                .collect(),
        })?
        .clone();
    Ok(top)
}

/// The bytes of the multi-platform index tagged `tag` (or pinned by
/// `digest`) in a layout; `None` when that is a single image.
pub fn top_index(
    store: &Store,
    dir: &Path,
    tag: &str,
    digest: Option<&Digest>,
) -> Result<Option<Vec<u8>>, TransferError> {
    let top = find_top(dir, tag, digest)?;
    if !top.media().is_index() {
        return Ok(None);
    }
    Ok(Some(read_small(store, dir, &top)?))
}

/// Follow an index to the manifest for `platform`.
fn select(
    store: &Store,
    dir: &Path,
    desc: &Descriptor,
    platform: &Platform,
    what: &str,
) -> Result<Descriptor, TransferError> {
    if !desc.media().is_index() {
        return Ok(desc.clone());
    }
    let bytes = read_small(store, dir, desc)?;
    let ManifestDoc::Index(index) = ManifestDoc::parse(&bytes, Some(&desc.media_type))? else {
        return Ok(desc.clone());
    };
    pick_platform(&index, platform, what)
}

/// Pick a platform's manifest from an index.
pub fn pick_platform(
    index: &ImageIndex,
    platform: &Platform,
    what: &str,
) -> Result<Descriptor, TransferError> {
    index
        .entry_for(platform)
        .cloned()
        .ok_or_else(|| TransferError::NoPlatform {
            what: what.to_string(),
            wanted: platform.to_string(),
            available: index.platform_list(),
        })
}

/// Write an image (all blobs in the store) into a layout under `tag`.
pub fn write_layout_image(
    store: &Store,
    image: &Image,
    dir: &Path,
    tag: &str,
) -> Result<(), TransferError> {
    write_layout_blobs(store, image, dir)?;
    set_name_in_layout(dir, tag, &image.descriptor())?;
    Ok(())
}

/// Write a multi-platform index (its images' blobs first) into a layout
/// under `tag`.
pub fn write_layout_index(
    store: &Store,
    images: &[Image],
    index_bytes: &[u8],
    dir: &Path,
    tag: &str,
) -> Result<Descriptor, TransferError> {
    for image in images {
        write_layout_blobs(store, image, dir)?;
    }
    let desc = Descriptor::new(
        crate::oci::MediaType::OCI_INDEX,
        Digest::of(index_bytes),
        index_bytes.len() as u64,
    );
    let dest = blob_path(dir, &desc.digest);
    let mut tmp = tempfile::NamedTempFile::new_in(dir.join("blobs").join("sha256"))?;
    tmp.write_all(index_bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&dest).map_err(|e| e.error)?;
    set_name_in_layout(dir, tag, &desc)?;
    Ok(desc)
}

/// An image's layers, config and manifest into a layout's blobs (those
/// already there with the right size are kept).
fn write_layout_blobs(store: &Store, image: &Image, dir: &Path) -> Result<(), TransferError> {
    fs_err::create_dir_all(dir.join("blobs").join("sha256"))?;
    fs_err::create_dir_all(dir.join("tmp"))?;
    let layout_file = dir.join("oci-layout");
    if !layout_file.exists() {
        fs_err::write(&layout_file, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
    let mut blobs: Vec<(Digest, u64)> = image
        .layers()
        .iter()
        .map(|l| (l.digest.clone(), l.size))
        .collect();
    blobs.push((
        image.manifest.config.digest.clone(),
        image.manifest.config.size,
    ));
    blobs.push((image.digest(), image.manifest_bytes.len() as u64));
    for (digest, size) in blobs {
        let dest = blob_path(dir, &digest);
        if fs_err::metadata(&dest)
            .map(|m| m.len() == size)
            .unwrap_or(false)
        {
            continue;
        }
        let mut src = store.open_blob(&digest)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir.join("tmp"))?;
        std::io::copy(&mut src, &mut tmp).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                store.forget_corrupt(&digest);
                TransferError::Store(StoreError::Corrupt {
                    digest: digest.clone(),
                })
            } else {
                e.into()
            }
        })?;
        tmp.flush()?;
        tmp.as_file().sync_all()?;
        tmp.persist(&dest).map_err(|e| e.error)?;
    }
    let _ = fs_err::remove_dir(dir.join("tmp"));
    Ok(())
}
