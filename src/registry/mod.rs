//! (stub, replaced by the registry branch)
#![allow(unused)]
use std::path::Path;
use crate::oci::*;
#[derive(Debug, thiserror::Error)]
#[error("registry")]
pub struct RegistryError;
#[derive(Default)]
pub struct RegistrySettings { pub insecure: Vec<String> }
impl RegistrySettings { pub fn load() -> Result<Self, RegistryError> { todo!() } }
#[derive(Clone)]
pub struct Client;
pub struct RawManifest { pub bytes: Vec<u8>, pub media_type: String, pub digest: Digest }
pub struct ResolvedImage { pub manifest: RawManifest, pub config_bytes: Vec<u8> }
impl Client {
 pub fn new(s: RegistrySettings) -> Result<Self, RegistryError> { todo!() }
 pub async fn resolve_image(&self, r: &Reference, p: &Platform) -> Result<ResolvedImage, RegistryError> { todo!() }
 pub async fn pull_blob(&self, r: &Reference, d: &Descriptor, w: &mut impl std::io::Write) -> Result<(), RegistryError> { todo!() }
 pub async fn push_blob_file(&self, r: &Reference, d: &Descriptor, p: &Path, m: Option<&Reference>) -> Result<(), RegistryError> { todo!() }
 pub async fn put_manifest(&self, r: &Reference, b: &[u8], m: &str) -> Result<Digest, RegistryError> { todo!() }
}
