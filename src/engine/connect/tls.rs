//! TLS to a Docker engine on `tcp://`, by the Docker CLI's rules: with
//! `DOCKER_TLS_VERIFY` set (to anything) the engine's certificate is verified
//! against `ca.pem` alone when that file exists, else the system's roots;
//! `DOCKER_TLS` alone encrypts without verifying; `cert.pem` + `key.pem`
//! are the client certificate. The files come from `DOCKER_CERT_PATH`
//! (default: the Docker config folder) or, for a context, from its TLS
//! folder. Each file is used only if it exists, as the Docker CLI does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// When set, the only CA trusted; otherwise the system's roots.
    pub ca: Option<PathBuf>,
    /// The client certificate and its key.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// False for `DOCKER_TLS` without `DOCKER_TLS_VERIFY`, or a context's
    /// `SkipTLSVerify`: encrypted, but the engine's certificate is not checked.
    pub verify: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// fs_err's error, which names the file.
    #[error(transparent)]
    Read(std::io::Error),
    #[error("{}: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("{} is there but {} is not: a client certificate needs both", present.display(), absent.display())]
    HalfPair { present: PathBuf, absent: PathBuf },
    #[error("setting up TLS")]
    Rustls(#[source] rustls::Error),
}

impl TlsSettings {
    /// TLS from the environment, or `None` for plain HTTP. `get` reads a
    /// variable; `config_dir` is the Docker config folder (`~/.docker`).
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>, config_dir: &Path) -> Option<Self> {
        let set = |name: &str| get(name).is_some_and(|v| !v.is_empty());
        let verify = set("DOCKER_TLS_VERIFY");
        if !verify && !set("DOCKER_TLS") {
            return None;
        }
        let dir = get("DOCKER_CERT_PATH")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| config_dir.to_path_buf());
        Some(Self::from_dir(&dir, verify))
    }

    /// TLS for a context: its folder holds whichever of the files it has.
    /// `None` when it has none and verification is on (plain HTTP), as
    /// the Docker CLI does.
    pub fn from_context(dir: &Path, skip_verify: bool) -> Option<Self> {
        let s = Self::from_dir(dir, !skip_verify);
        (skip_verify || s.ca.is_some() || s.cert.is_some() || s.key.is_some()).then_some(s)
    }

    fn from_dir(dir: &Path, verify: bool) -> Self {
        let file = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        TlsSettings {
            ca: file("ca.pem"),
            cert: file("cert.pem"),
            key: file("key.pem"),
            verify,
        }
    }

    #[cfg(test)]
    pub fn insecure() -> Self {
        TlsSettings {
            ca: None,
            cert: None,
            key: None,
            verify: false,
        }
    }

    /// The rustls client configuration these settings describe.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?;
        let builder = if self.verify {
            builder.with_root_certificates(self.roots()?)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        };
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = certs(cert)?;
                let bytes = read(key)?;
                let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
                    path: key.clone(),
                    message: format!("no private key: {e}"),
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(TlsError::Rustls)
            }
            (Some(present), None) | (None, Some(present)) => Err(TlsError::HalfPair {
                present: present.clone(),
                absent: present.with_file_name(if self.cert.is_some() {
                    "key.pem"
                } else {
                    "cert.pem"
                }),
            }),
            (None, None) => Ok(builder.with_no_client_auth()),
        }?;
        // No session resumption: a TLS front (stunnel, socat, nginx) that
        // verifies client certificates without a session id context fails
        // every resumed handshake, and a full one costs little next to a
        // build step.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for c in certs(ca)? {
                    roots.add(c).map_err(|e| TlsError::Pem {
                        path: ca.clone(),
                        message: e.to_string(),
                    })?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    // One unreadable system certificate must not stop the rest.
                    let _ = roots.add(c);
                }
            }
        }
        Ok(roots)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs_err::read(path).map_err(TlsError::Read)
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            message: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// The server name to check the engine's certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|e| TlsError::Pem {
        path: PathBuf::from(host),
        message: format!("not a host name TLS can check: {e}"),
    })
}

/// Accepts any certificate, but still checks that the handshake is signed
/// by it: `SkipTLSVerify` / `DOCKER_TLS` without `DOCKER_TLS_VERIFY`.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn dir_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            fs_err::write(d.path().join(f), "x").unwrap();
        }
        d
    }

    #[test]
    fn no_tls_variables_means_plain_http() {
        let d = dir_with(&["ca.pem", "cert.pem", "key.pem"]);
        assert_eq!(TlsSettings::from_env(&env(&[]), d.path()), None);
        assert_eq!(
            TlsSettings::from_env(&env(&[("DOCKER_TLS_VERIFY", "")]), d.path()),
            None
        );
    }

    #[test]
    fn tls_verify_reads_the_cert_path_like_the_docker_cli() {
        let certs = dir_with(&["ca.pem", "cert.pem", "key.pem"]);
        let config = dir_with(&[]);
        let path = certs.path().to_str().unwrap();
        let s = TlsSettings::from_env(
            &env(&[("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", path)]),
            config.path(),
        )
        .unwrap();
        assert!(s.verify);
        assert_eq!(s.ca, Some(certs.path().join("ca.pem")));
        assert_eq!(s.cert, Some(certs.path().join("cert.pem")));
        assert_eq!(s.key, Some(certs.path().join("key.pem")));
        // Any value enables it, "0" included, as with the Docker CLI.
        assert!(
            TlsSettings::from_env(&env(&[("DOCKER_TLS_VERIFY", "0")]), config.path())
                .unwrap()
                .verify
        );
    }

    #[test]
    fn tls_without_verify_and_files_from_the_config_dir_when_present() {
        let config = dir_with(&["ca.pem"]);
        let s = TlsSettings::from_env(&env(&[("DOCKER_TLS", "1")]), config.path()).unwrap();
        assert!(!s.verify);
        assert_eq!(s.ca, Some(config.path().join("ca.pem")));
        assert_eq!(s.cert, None);
        assert_eq!(s.key, None);
    }

    #[test]
    fn a_context_without_tls_files_is_plain_unless_it_skips_verification() {
        let empty = dir_with(&[]);
        assert_eq!(TlsSettings::from_context(empty.path(), false), None);
        assert!(
            !TlsSettings::from_context(empty.path(), true)
                .unwrap()
                .verify
        );
        let ca = dir_with(&["ca.pem"]);
        let s = TlsSettings::from_context(ca.path(), false).unwrap();
        assert!(s.verify);
        assert_eq!(s.ca, Some(ca.path().join("ca.pem")));
    }

    #[test]
    fn half_a_client_certificate_is_an_error_naming_both_files() {
        let d = dir_with(&["cert.pem"]);
        let s = TlsSettings {
            ca: None,
            cert: Some(d.path().join("cert.pem")),
            key: None,
            verify: false,
        };
        let err = s.client_config().unwrap_err().to_string();
        assert!(err.contains("cert.pem") && err.contains("key.pem"), "{err}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_an_error_naming_it() {
        let d = dir_with(&["ca.pem"]);
        let s = TlsSettings::from_context(d.path(), false).unwrap();
        let err = s.client_config().unwrap_err().to_string();
        assert!(err.contains("ca.pem"), "{err}");
    }
}
