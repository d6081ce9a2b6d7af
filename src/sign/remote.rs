//! An image's signatures where they live: the `sha256-<hex>.sig` manifest
//! in the image's repository, and a copy in the store (named
//! `signatures:REPO@DIGEST`) so that `--offline` builds and bundles verify
//! without the registry.
//!
//! Signing appends a payload layer to the existing `.sig` manifest (or
//! makes one), as `cosign sign` does; the other signatures are kept as
//! they were served.

use std::path::PathBuf;

use super::keys::{PrivateKey, PublicKey};
use super::payload::{self, SignatureLayer, MAX_PAYLOAD_BYTES};
use super::SignError;
use crate::oci::{Descriptor, Digest, MediaType, Reference};
use crate::registry::{Client, RegistryError, VecSink};
use crate::store::Store;

/// The signatures found for one image digest.
#[derive(Debug, Clone)]
pub struct SignatureSet {
    /// Where they were read, for messages.
    pub source: String,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    /// Each signature with its payload's bytes (verified against the
    /// payload's digest when read).
    pub entries: Vec<(SignatureLayer, Vec<u8>)>,
}

/// A signature that checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The key that verified it.
    pub key: PathBuf,
    /// The docker-reference its payload names.
    pub identity: String,
}

impl SignatureSet {
    /// The first signature made by one of `keys` whose payload names
    /// `digest`; else why none did (no key material in it).
    pub fn verify(&self, digest: &Digest, keys: &[PublicKey]) -> Result<Verified, String> {
        let mut other_digest = vec![];
        for (layer, bytes) in &self.entries {
            for key in keys {
                if !key.verifies(bytes, &layer.signature) {
                    continue;
                }
                match payload::check_payload(bytes, digest) {
                    Ok(identity) => {
                        return Ok(Verified {
                            key: key.path.clone(),
                            identity,
                        })
                    }
                    Err(why) => other_digest.push(format!(
                        "a signature by {} does not count: {why}",
                        key.path.display()
                    )),
                }
            }
        }
        let n = self.entries.len();
        let mut why = format!(
            "{n} signature{} in {}, none made by {} for this digest",
            if n == 1 { "" } else { "s" },
            self.source,
            if keys.len() == 1 {
                "this key"
            } else {
                "these keys"
            }
        );
        for o in other_digest {
            why.push_str("; ");
            why.push_str(&o);
        }
        Err(why)
    }
}

/// What [`sign`] did.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The image digest signed.
    pub digest: Digest,
    /// `HOST/REPO:sha256-<hex>.sig`.
    pub signature_ref: String,
    /// False when the same signature was there already.
    pub added: bool,
}

fn sig_ref(repo: &Reference, digest: &Digest) -> Reference {
    repo.with_tag(payload::signature_tag(digest))
}

fn registry_err(context: String) -> impl FnOnce(RegistryError) -> SignError {
    move |source| SignError::Registry {
        context,
        source: Box::new(source),
    }
}

/// Sign the image `target` names (its digest, or what its tag points at
/// now) with `key`, and push the signature next to it.
pub async fn sign(
    client: &Client,
    target: &Reference,
    key: &PrivateKey,
) -> Result<Signed, SignError> {
    let digest = match &target.digest {
        Some(d) => d.clone(),
        None => {
            client
                .get_manifest(target)
                .await
                .map_err(registry_err(format!("resolving {target} to sign it")))?
                .digest
        }
    };
    let at = sig_ref(target, &digest);
    let context = format!("signing {}@{digest} ({at})", target.repo_name());
    let existing = match client.get_manifest(&at).await {
        Ok(m) => payload::all_layers(&m.bytes)?,
        Err(e) if e.is_not_found() => vec![],
        Err(e) => return Err(registry_err(context)(e)),
    };
    let body = payload::simple_signing_payload(target, &digest);
    let layer = payload::payload_layer(&body, &key.sign(&body));
    let signed = |added| Signed {
        digest: digest.clone(),
        signature_ref: at.to_string(),
        added,
    };
    let Some(layers) = payload::with_signature(&existing, layer.clone()) else {
        return Ok(signed(false));
    };
    let config = payload::sig_config(&layers);
    let config_desc = Descriptor::new(
        MediaType::OCI_CONFIG,
        Digest::of(&config),
        config.len() as u64,
    );
    let manifest = payload::sig_manifest(&config_desc, &layers);
    for (desc, bytes) in [(&layer, &body), (&config_desc, &config)] {
        client
            .push_blob_bytes(target, desc, bytes)
            .await
            .map_err(registry_err(context.clone()))?;
    }
    client
        .put_manifest(&at, &manifest, MediaType::OCI_MANIFEST)
        .await
        .map_err(registry_err(context))?;
    Ok(signed(true))
}

/// The signatures of `digest` in `repo`'s repository; `None` when there
/// is no `.sig` tag.
pub async fn fetch(
    client: &Client,
    repo: &Reference,
    digest: &Digest,
) -> Result<Option<SignatureSet>, SignError> {
    let at = sig_ref(repo, digest);
    let context = format!("reading the signatures of {}@{digest}", repo.repo_name());
    let manifest = match client.get_manifest(&at).await {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(registry_err(context)(e)),
    };
    let config_desc = config_of(&manifest.bytes)?;
    let config = pull_small(client, &at, config_desc, &context).await?;
    let mut entries = vec![];
    for layer in payload::signature_layers(&manifest.bytes)? {
        let bytes = pull_small(client, &at, layer.payload.clone(), &context).await?;
        entries.push((layer, bytes));
    }
    Ok(Some(SignatureSet {
        source: at.to_string(),
        manifest: manifest.bytes,
        config,
        entries,
    }))
}

/// A payload or config blob, refused when larger than a payload may be.
async fn pull_small(
    client: &Client,
    at: &Reference,
    desc: Descriptor,
    context: &str,
) -> Result<Vec<u8>, SignError> {
    if desc.size > MAX_PAYLOAD_BYTES {
        return Err(SignError::Registry {
            context: context.to_string(),
            source: Box::new(RegistryError::TooLarge {
                context: format!("blob {}", desc.digest),
                what: "signature payload",
                limit: MAX_PAYLOAD_BYTES,
            }),
        });
    }
    let mut sink = VecSink::default();
    client
        .pull_blob(at, &desc, &mut sink)
        .await
        .map_err(registry_err(context.to_string()))?;
    Ok(sink.into_inner())
}

fn config_of(manifest: &[u8]) -> Result<Descriptor, SignError> {
    #[derive(serde::Deserialize)]
    struct M {
        config: Descriptor,
    }
    Ok(serde_json::from_slice::<M>(manifest)
        .map_err(SignError::SigManifest)?
        .config)
}

fn store_name(repo: &Reference, digest: &Digest) -> String {
    format!("signatures:{}@{digest}", repo.repo_name())
}

/// Keep `set` in `store` (blobs and a name), for offline checks and bundles.
pub fn save(
    store: &Store,
    repo: &Reference,
    digest: &Digest,
    set: &SignatureSet,
) -> Result<(), SignError> {
    store.put_bytes(&set.config)?;
    for (_, bytes) in &set.entries {
        store.put_bytes(bytes)?;
    }
    let d = store.put_bytes(&set.manifest)?;
    let desc = Descriptor::new(MediaType::OCI_MANIFEST, d, set.manifest.len() as u64);
    store.set_name(&store_name(repo, digest), &desc)?;
    Ok(())
}

/// The signatures [`save`] kept for `digest` in `repo`, read back and
/// verified against their digests.
pub fn load(
    store: &Store,
    repo: &Reference,
    digest: &Digest,
) -> Result<Option<SignatureSet>, SignError> {
    let name = store_name(repo, digest);
    let Some(desc) = store.lookup_name(&name)? else {
        return Ok(None);
    };
    let manifest = store.read_bytes(&desc.digest)?;
    let config = store.read_bytes(&config_of(&manifest)?.digest)?;
    let mut entries = vec![];
    for layer in payload::signature_layers(&manifest)? {
        let bytes = store.read_bytes(&layer.payload.digest)?;
        entries.push((layer, bytes));
    }
    Ok(Some(SignatureSet {
        source: format!("the store ({name})"),
        manifest,
        config,
        entries,
    }))
}
