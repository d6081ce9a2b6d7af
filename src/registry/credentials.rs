//! Registry credentials from the Docker and Podman configuration files.
//!
//! Docker's `config.json` (`$DOCKER_CONFIG` or `~/.docker`) is read first,
//! with its `auths` (base64 `auth`, `identitytoken`), `credHelpers` and
//! `credsStore` (via the `docker_credential` crate); then Podman's
//! `auth.json` files. Whatever is found is wrapped in a [`Secret`] at once,
//! so no Debug, Display, log line or error can show it. [`auth`](super::auth)
//! is the only reader of the secret's text.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use docker_credential::{CredentialRetrievalError, DockerCredential};

use super::RegistryError;

/// A string that never prints. `expose` is deliberately crate-private.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A credential for one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: Secret,
    },
    /// An OAuth2 refresh token (Docker's `identitytoken`).
    IdentityToken(Secret),
}

/// Where credentials come from. The client asks once per registry and
/// caches the answer.
#[derive(Clone, Debug, Default)]
pub enum CredentialSource {
    /// Docker config, then Podman auth files, found through the usual
    /// environment variables and home-directory paths.
    #[default]
    Environment,
    /// Only these files (Docker `config.json` or Podman `auth.json`
    /// format), in order. For tests and for `--authfile`.
    Files(Vec<PathBuf>),
    /// Fixed credentials by registry `host[:port]`.
    Static(BTreeMap<String, Credential>),
    /// Never authenticate.
    None,
}

impl CredentialSource {
    /// Look up the credential for `registry`. Runs credential helpers, so
    /// call it from a blocking context.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        match self {
            CredentialSource::Environment => lookup_in(&default_files(), registry),
            CredentialSource::Files(files) => lookup_in(files, registry),
            CredentialSource::Static(map) => Ok(map.get(registry).cloned()),
            CredentialSource::None => Ok(None),
        }
    }
}

/// The files searched by [`CredentialSource::Environment`], in order.
pub fn default_files() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = env("HOME");
    let mut files = Vec::new();
    match (env("DOCKER_CONFIG"), &home) {
        (Some(dir), _) => files.push(dir.join("config.json")),
        (None, Some(h)) => files.push(h.join(".docker/config.json")),
        (None, None) => {}
    }
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        files.push(f);
    }
    if let Some(d) = env("XDG_RUNTIME_DIR") {
        files.push(d.join("containers/auth.json"));
    }
    if let Some(h) = &home {
        files.push(h.join(".config/containers/auth.json"));
    }
    files.push(PathBuf::from("/run/containers/0/auth.json"));
    files
}

/// The key Docker stores docker.io credentials under.
fn server_key(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "https://index.docker.io/v1/",
        other => other,
    }
}

fn lookup_in(files: &[PathBuf], registry: &str) -> Result<Option<Credential>, RegistryError> {
    for path in files {
        let file = match fs_err::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(RegistryError::Io(e)),
        };
        let fail = |message: String| RegistryError::Credentials {
            registry: registry.to_string(),
            message: format!("{}: {message}", path.display()),
        };
        match docker_credential::get_credential_from_reader(
            std::io::BufReader::new(file),
            server_key(registry),
        ) {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                tracing::debug!(registry, file = %path.display(), "found credentials");
                return Ok(Some(Credential::Basic {
                    username,
                    password: Secret::new(password),
                }));
            }
            Ok(DockerCredential::IdentityToken(t)) => {
                tracing::debug!(registry, file = %path.display(), "found an identity token");
                return Ok(Some(Credential::IdentityToken(Secret::new(t))));
            }
            Err(CredentialRetrievalError::NoCredentialConfigured) => continue,
            // A helper's stdout may hold a secret: name the helper only.
            Err(CredentialRetrievalError::HelperFailure { helper, .. }) => {
                return Err(fail(format!("credential helper `{helper}` failed")))
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "canary-Pa55w0rd-do-not-print";

    #[test]
    fn secret_never_prints_in_debug_or_display() {
        let c = Credential::Basic {
            username: "u".into(),
            password: Secret::new(CANARY),
        };
        assert!(!format!("{c:?}").contains(CANARY));
        assert!(!format!("{}", Secret::new(CANARY)).contains(CANARY));
    }

    #[test]
    fn base64_auth_in_docker_config_is_decoded() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("bob:{CANARY}"));
        let path = dir.path().join("config.json");
        fs_err::write(
            &path,
            format!(r#"{{"auths":{{"reg.example:5443":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        let src = CredentialSource::Files(vec![dir.path().join("missing.json"), path]);
        match src.lookup("reg.example:5443").unwrap() {
            Some(Credential::Basic { username, password }) => {
                assert_eq!(username, "bob");
                assert_eq!(password.expose(), CANARY);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(src.lookup("other.example").unwrap(), None);
    }

    #[test]
    fn identity_token_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        fs_err::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"identitytoken":"tok"}}}"#,
        )
        .unwrap();
        let src = CredentialSource::Files(vec![path]);
        assert_eq!(
            src.lookup("docker.io").unwrap(),
            Some(Credential::IdentityToken(Secret::new("tok")))
        );
    }

    #[test]
    fn broken_config_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs_err::write(&path, "{not json").unwrap();
        let err = CredentialSource::Files(vec![path.clone()])
            .lookup("r.example")
            .unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
