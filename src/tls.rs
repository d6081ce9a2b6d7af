//! TLS for every HTTP client tplbuild makes: the system's CA certificates
//! (plus any the registry settings add) are loaded on the first TLS
//! handshake, not when a client is built. Parsing them costs a few
//! milliseconds of CPU, which a no-op build that only talks plain HTTP (a
//! loopback registry, Debian's archive) never needs to pay; and a plain
//! HTTP request that is redirected to HTTPS still finds the roots.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// A reqwest client builder with TLS whose roots load on first use:
/// the system's, plus `extra` (DER certificates from CA files).
pub fn client_builder(extra: Vec<CertificateDer<'static>>) -> reqwest::ClientBuilder {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = LazyRoots {
        extra,
        provider: provider.clone(),
        inner: OnceLock::new(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder().use_preconfigured_tls(config)
}

/// Verifies like rustls's WebPKI verifier, built on the first handshake.
#[derive(Debug)]
struct LazyRoots {
    extra: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
    inner: OnceLock<Result<Arc<WebPkiServerVerifier>, String>>,
}

impl LazyRoots {
    fn verifier(&self) -> Result<&Arc<WebPkiServerVerifier>, Error> {
        self.inner
            .get_or_init(|| {
                let mut roots = RootCertStore::empty();
                let native = rustls_native_certs::load_native_certs();
                for c in native.certs {
                    // One unreadable system certificate must not stop the rest.
                    let _ = roots.add(c);
                }
                for c in &self.extra {
                    roots.add(c.clone()).map_err(|e| e.to_string())?;
                }
                if roots.is_empty() {
                    return Err(
                        "no CA certificates: none in the system store, none configured".into(),
                    );
                }
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::General(e.clone()))
    }
}

impl ServerCertVerifier for LazyRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The certificates in a PEM bundle, as DER.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}
