//! The registry module's one error type.
//!
//! Messages name the operation and the reference ("pulling manifest
//! 127.0.0.1:5000/base:1") and keep the cause in `#[source]`. No variant
//! ever holds a credential or a token: those live only in
//! [`Secret`](super::credentials::Secret)s.

use std::path::PathBuf;

use crate::oci::{Digest, ManifestError};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("reading registry settings {}", path.display())]
    Settings {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error(transparent)]
    Io(std::io::Error),
    #[error("setting up the HTTP client")]
    ClientSetup(#[source] reqwest::Error),
    #[error("reading CA certificate {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("{context}: registry {registry} answered over plain HTTP but is not named insecure (hint: pass --insecure-registry {registry} or add it to `insecure` in ~/.config/tplbuild/registries.toml, or $TPLBUILD_CONFIG_DIR/registries.toml)")]
    PlainHttp { context: String, registry: String },
    #[error("{context}: the TLS certificate of {registry} is not trusted (hint: install its CA in the system store, set TPLBUILD_CA_FILE, or add it to `ca_files` in ~/.config/tplbuild/registries.toml, or $TPLBUILD_CONFIG_DIR/registries.toml)")]
    Certificate {
        context: String,
        registry: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{context}: cannot reach {registry}")]
    Connect {
        context: String,
        registry: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{context}: registry {registry} requires authentication and no credentials were found (hint: log in with `docker login {registry}` or `podman login {registry}`)")]
    AuthRequired { context: String, registry: String },
    #[error("{context}: registry {registry} rejected the credentials (hint: log in again with `docker login {registry}` or `podman login {registry}`)")]
    Unauthorized { context: String, registry: String },
    #[error("{context}: access denied{}", fmt_message(message))]
    Denied { context: String, message: String },
    #[error("{context}: getting a token from {realm}: {message}")]
    Token {
        context: String,
        realm: String,
        message: String,
    },
    #[error("{context}: bad authentication challenge from {registry}: {message}")]
    Challenge {
        context: String,
        registry: String,
        message: String,
    },
    #[error("looking up credentials for {registry}: {message}")]
    Credentials { registry: String, message: String },
    #[error("{context}: not found")]
    NotFound { context: String },
    #[error("{context}: registry answered {status}{}", fmt_message(message))]
    Status {
        context: String,
        status: u16,
        message: String,
        /// The server's Retry-After, for the retry loop.
        retry_after: Option<std::time::Duration>,
    },
    #[error("{context}: still failing after {attempts} attempts")]
    RetriesExhausted {
        context: String,
        attempts: u32,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("{context}: transfer failed")]
    Transfer {
        context: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{context}: body ended after {received} of {expected} bytes")]
    Truncated {
        context: String,
        received: u64,
        expected: u64,
    },
    #[error("{context}: body is longer than the {expected} bytes the descriptor says")]
    TooLong { context: String, expected: u64 },
    #[error("{context}: {what} is larger than the limit of {limit} bytes")]
    TooLarge {
        context: String,
        what: &'static str,
        limit: u64,
    },
    #[error("{context}: content has digest {actual}, expected {expected}")]
    DigestMismatch {
        context: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{context}: file {} has {actual} bytes, the descriptor says {expected}", path.display())]
    FileSize {
        context: String,
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{context}: invalid manifest")]
    Manifest {
        context: String,
        #[source]
        source: ManifestError,
    },
    #[error("{context}: expected {expected}, got a document of type {actual}")]
    WrongKind {
        context: String,
        expected: &'static str,
        actual: String,
    },
    #[error("{context}: no image for platform {wanted}; available: {}", available.join(", "))]
    NoMatchingPlatform {
        context: String,
        wanted: String,
        available: Vec<String>,
    },
    #[error("{context}: invalid image config")]
    Config {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{context}: {message}")]
    Protocol { context: String, message: String },
    #[error("{context}: reading {}", path.display())]
    ReadFile {
        context: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: writing the blob")]
    Sink {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn fmt_message(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(": {m}")
    }
}

impl RegistryError {
    /// Whether trying again may help: server overload, dropped connections,
    /// truncated bodies. Verification failures are never transient: a
    /// registry that serves the wrong bytes will serve them again.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Status { status, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
            }
            RegistryError::Connect { .. }
            | RegistryError::Transfer { .. }
            | RegistryError::Truncated { .. } => true,
            _ => false,
        }
    }

    /// True when the registry said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            RegistryError::NotFound { .. } => true,
            RegistryError::RetriesExhausted { source, .. } => source.is_not_found(),
            _ => false,
        }
    }
}
