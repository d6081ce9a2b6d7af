//! Signed templates: cosign-compatible key-based signatures, and the FROM
//! policy that requires them.
//!
//! A platform team signs what it publishes (`tplbuild sign`, `template
//! import --sign`, `build --tag … --sign`); a product team's build refuses
//! a FROM that the keys its settings or `--require-signed` name have not
//! signed, before any step runs. The format is cosign's (ECDSA P-256 over
//! the "simple signing" payload, stored under the `sha256-<hex>.sig` tag),
//! so `cosign verify --key` and skopeo's `sigstoreSigned` policy accept
//! what tplbuild writes, and tplbuild accepts what cosign writes.
//!
//! Files: `keys.rs` (PEM keys; the only code that touches key material),
//! `payload.rs` (the bytes signed and stored, no I/O), `remote.rs` (the
//! `.sig` manifest in a registry and in the store, for offline builds and
//! bundles), `policy.rs` (which keys a FROM needs, and the check).

mod keys;
mod payload;
mod policy;
mod remote;

use std::path::PathBuf;

pub use keys::{PrivateKey, PublicKey};
pub use payload::signature_tag;
pub use policy::{check_from, keep_for_offline, Policy};
pub use remote::{fetch, sign, SignatureSet, Signed, Verified};

use crate::registry::RegistryError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("{}: not a usable key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "{}: an encrypted key ({label}); tplbuild reads plain keys only: export it as an \
         unencrypted PKCS#8 PEM (`PRIVATE KEY`) and keep that file private",
        path.display()
    )]
    EncryptedKey { path: PathBuf, label: String },
    #[error("reading a signature manifest")]
    SigManifest(#[source] serde_json::Error),
    #[error("{context}")]
    Registry {
        context: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{image}@{digest} is not signed by {keys}: {found}")]
    NotSigned {
        image: String,
        digest: String,
        keys: String,
        found: String,
    },
    #[error("{image}: signatures are checked on registry images only, and this is an OCI layout on disk")]
    NotInRegistry { image: String },
}

impl SignError {
    /// The hint a user needs for this error, if any.
    pub fn hint(&self) -> Option<String> {
        match self {
            SignError::EncryptedKey { .. } => Some(
                "or make a plain key: openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem"
                    .into(),
            ),
            SignError::NotSigned { .. } => Some(
                "the publisher signs it with `tplbuild sign REF --key KEY.pem` (or cosign); \
                 check that the public key given is the publisher's"
                    .into(),
            ),
            SignError::NotInRegistry { .. } => {
                Some("push the template to a registry and sign it there".into())
            }
            _ => None,
        }
    }
}
