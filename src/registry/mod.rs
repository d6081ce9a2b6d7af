//! The OCI distribution client: pull and push manifests and blobs, with
//! authentication, retries and verification, written directly on reqwest so
//! that blobs stream both ways.
//!
//! The store, template and build code use [`Client`]; it takes
//! [`RegistrySettings`] (insecure registries, mirrors, CAs, retries) and
//! finds credentials through [`CredentialSource`]. Every byte that comes
//! back is checked against a digest before the call returns `Ok`.
//!
//! Files: `client.rs` (manifests, tags, HEAD), `blob.rs` (blob pull/push and
//! [`BlobSink`]), `transport.rs` (one HTTP exchange: scheme, auth, status),
//! `auth.rs` (challenges, tokens), `credentials.rs` (Docker/Podman config),
//! `retry.rs`, `settings.rs`, `error.rs`.

mod auth;
mod blob;
mod client;
mod credentials;
mod error;
mod referrers;
mod retry;
mod settings;
mod transport;

pub use auth::{parse_challenge, Challenge};
pub use blob::{BlobSink, PushOutcome, VecSink};
pub use client::{Client, RawManifest, ResolvedImage, MAX_MANIFEST_BYTES};
pub use credentials::{Credential, CredentialSource, Secret};
pub use error::RegistryError;
pub use retry::RetryPolicy;
pub use settings::RegistrySettings;
