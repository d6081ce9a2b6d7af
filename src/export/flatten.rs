//! Flattening: applying an image's layers in order onto an empty folder.
//! The applying itself — whiteouts, opaque directories, hardlinks across
//! layers, and refusing every entry that would leave the folder — is
//! [`crate::layer::apply_layer`]'s; this part streams each blob from the
//! store through [`crate::layer::decompress`] and makes sure every byte
//! of it was checked against its digest.

use std::io;
use std::path::Path;

use super::ExportError;
use crate::image::Image;
use crate::layer::{self, Shared};
use crate::store::{Store, StoreError};

/// Apply `image`'s layers, bottom first, onto `dest` (an existing, empty
/// directory). The blobs must be in the store.
pub fn flatten(store: &Store, image: &Image, dest: &Path) -> Result<(), ExportError> {
    for desc in image.layers() {
        let blob_err = |source: StoreError| ExportError::Blob {
            layer: desc.digest.clone(),
            source,
        };
        let reader = Shared::new(store.open_blob(&desc.digest).map_err(blob_err)?);
        let decompressed = layer::decompress(reader.clone())?;
        let applied = layer::apply_layer(decompressed, dest);
        // The tar reader stops at the end-of-archive marker; read the rest
        // so the digest check at the end of the blob runs, and report a
        // corrupt blob as that rather than as whatever odd entry it made.
        let rest = {
            let mut r = reader.0.lock().unwrap_or_else(|p| p.into_inner());
            io::copy(&mut *r, &mut io::sink())
        };
        if let Err(e) = rest {
            if e.kind() == io::ErrorKind::InvalidData {
                store.forget_corrupt(&desc.digest);
                return Err(blob_err(StoreError::Corrupt {
                    digest: desc.digest.clone(),
                }));
            }
            return Err(blob_err(StoreError::Io(e)));
        }
        let _report = applied.map_err(|source| ExportError::Flatten {
            image: image.digest().to_string(),
            layer: desc.digest.clone(),
            source,
        })?;
    }
    Ok(())
}
