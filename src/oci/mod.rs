//! OCI vocabulary shared by every other module: digests, descriptors, media
//! types, manifests, configs and image references.
//!
//! These are plain immutable values. Code that pulls a manifest keeps the raw
//! bytes next to the parsed value and hashes those bytes, never a
//! re-serialisation: a registry may send fields we do not model.

mod digest;
mod image;
mod media;
mod reference;

pub use digest::{Digest, DigestError, DigestWriter, Sha256};
pub use image::{
    Descriptor, ImageConfig, ImageIndex, Manifest, ManifestDoc, ManifestError, Platform, RootFs,
    RuntimeConfig,
};
pub use media::{Compression, MediaType};
pub use reference::{Reference, ReferenceError, Target};
