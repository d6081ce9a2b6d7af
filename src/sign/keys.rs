//! Signing and verification keys, read from plain PEM files: a PKCS#8
//! (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) ECDSA P-256 private key, a
//! PKIX (`PUBLIC KEY`) public key, as `openssl genpkey`/`ecparam` and
//! `cosign generate-key-pair` (after export) write them.
//!
//! Key material never leaves this file: errors name the file and the kind
//! of PEM block, never its contents, and the key types print as their path.

use std::path::{Path, PathBuf};

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::der::pem;
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};

use super::SignError;

/// A private key and the file it came from.
pub struct PrivateKey {
    pub path: PathBuf,
    key: SigningKey,
}

/// A public key and the file it came from.
#[derive(Clone)]
pub struct PublicKey {
    pub path: PathBuf,
    key: VerifyingKey,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({})", self.path.display())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.path.display())
    }
}

/// One `-----BEGIN LABEL-----` block of a PEM file, decoded.
struct Block {
    label: String,
    der: Vec<u8>,
}

fn read_blocks(path: &Path) -> Result<Vec<Block>, SignError> {
    let text = fs_err::read_to_string(path).map_err(SignError::Io)?;
    let mut blocks = vec![];
    let mut rest = text.as_str();
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let label_end = block["-----BEGIN ".len()..]
            .find("-----")
            .map(|i| i + "-----BEGIN ".len());
        let Some(label_end) = label_end else { break };
        let label = block["-----BEGIN ".len()..label_end].to_string();
        let end_marker = format!("-----END {label}-----");
        let Some(end) = block.find(&end_marker) else {
            return Err(bad_key(path, format!("its {label} block has no END line")));
        };
        let one = &block[..end + end_marker.len()];
        let der = match pem::decode_vec(one.as_bytes()) {
            Ok((_, der)) => der,
            // The pem crate's error says nothing of the contents.
            Err(e) => {
                return Err(bad_key(
                    path,
                    format!("its {label} block is not valid PEM ({e})"),
                ))
            }
        };
        blocks.push(Block { label, der });
        rest = &block[end + end_marker.len()..];
    }
    if blocks.is_empty() {
        return Err(bad_key(path, "it holds no PEM block".into()));
    }
    Ok(blocks)
}

fn bad_key(path: &Path, reason: String) -> SignError {
    SignError::BadKey {
        path: path.to_path_buf(),
        reason,
    }
}

fn encrypted(path: &Path, label: &str) -> SignError {
    SignError::EncryptedKey {
        path: path.to_path_buf(),
        label: label.to_string(),
    }
}

impl PrivateKey {
    /// Read a private key: PKCS#8 or SEC1, P-256. An encrypted key (cosign's
    /// own format, or encrypted PKCS#8) is refused with a hint to export it.
    pub fn load(path: &Path) -> Result<Self, SignError> {
        let blocks = read_blocks(path)?;
        for b in &blocks {
            let key = match b.label.as_str() {
                "PRIVATE KEY" => p256::SecretKey::from_pkcs8_der(&b.der).map_err(|_| {
                    bad_key(path, "its PRIVATE KEY is not an ECDSA P-256 key".into())
                })?,
                "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(&b.der)
                    .map_err(|_| bad_key(path, "its EC PRIVATE KEY is not a P-256 key".into()))?,
                l if l.contains("ENCRYPTED") => return Err(encrypted(path, l)),
                _ => continue,
            };
            return Ok(PrivateKey {
                path: path.to_path_buf(),
                key: SigningKey::from(&key),
            });
        }
        Err(bad_key(
            path,
            format!(
                "it holds no private key (found: {}); sign with a PRIVATE KEY or EC PRIVATE KEY file",
                labels(&blocks)
            ),
        ))
    }

    /// An ECDSA P-256 / SHA-256 signature over `message`, DER-encoded (what
    /// cosign puts, base64-encoded, in the signature annotation).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let sig: Signature = self.key.sign(message);
        let der: DerSignature = sig.to_der();
        der.as_bytes().to_vec()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            path: self.path.clone(),
            key: *self.key.verifying_key(),
        }
    }
}

impl PublicKey {
    /// Read a public key (PKIX `PUBLIC KEY`). A private key file is accepted
    /// too: its public half is used.
    pub fn load(path: &Path) -> Result<Self, SignError> {
        let blocks = read_blocks(path)?;
        for b in &blocks {
            if b.label == "PUBLIC KEY" {
                let key = p256::PublicKey::from_public_key_der(&b.der).map_err(|_| {
                    bad_key(path, "its PUBLIC KEY is not an ECDSA P-256 key".into())
                })?;
                return Ok(PublicKey {
                    path: path.to_path_buf(),
                    key: VerifyingKey::from(&key),
                });
            }
        }
        if blocks.iter().any(|b| b.label.contains("PRIVATE KEY")) {
            return Ok(PrivateKey::load(path)?.public());
        }
        Err(bad_key(
            path,
            format!(
                "it holds no public key (found: {}); verify with a PUBLIC KEY file",
                labels(&blocks)
            ),
        ))
    }

    /// Whether `signature` (DER) is this key's signature over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match Signature::from_der(signature) {
            Ok(sig) => self.key.verify(message, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

fn labels(blocks: &[Block]) -> String {
    blocks
        .iter()
        .map(|b| b.label.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // A throwaway P-256 key made for these tests only
    // (`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`).
    const PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgrYSwW0odAkOQwCAD
2FVTHUNgFvURfMQflN9e4AI2ucmhRANCAASR2NqMVwEwRIhZeZuo7yM7jNZGQzRx
L5UgylPot+56NOLYBR9kiqlC2zZL0Tt9THI43CUDudSkC2C5Tqw1UckR
-----END PRIVATE KEY-----
";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs_err::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_signature_verifies_with_the_public_half_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::load(&write(dir.path(), "k.pem", PKCS8)).unwrap();
        let sig = key.sign(b"payload");
        assert!(key.public().verifies(b"payload", &sig));
        assert!(!key.public().verifies(b"payload!", &sig));
        assert!(!key.public().verifies(b"payload", b"not der"));
    }

    #[test]
    fn an_encrypted_cosign_key_is_refused_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "cosign.key",
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nc2VjcmV0\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
        );
        let e = PrivateKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("cosign.key"), "{e}");
        assert!(e.contains("ENCRYPTED SIGSTORE PRIVATE KEY"), "{e}");
        assert!(e.contains("PKCS#8"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
    }

    #[test]
    fn errors_name_the_file_but_never_show_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let body = PKCS8.lines().nth(1).unwrap();
        // A private key where a public one is expected is fine; garbage is not.
        let p = write(dir.path(), "bad.pem", &PKCS8.replace("MIGH", "MIGX"));
        let e = PublicKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.pem"), "{e}");
        assert!(!e.contains(&body[8..40]), "{e}");
        let p = write(dir.path(), "empty.pem", "hello\n");
        let e = PrivateKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("no PEM block"), "{e}");
        assert_eq!(
            format!(
                "{:?}",
                PrivateKey::load(&write(dir.path(), "k.pem", PKCS8)).unwrap()
            ),
            format!("PrivateKey({})", dir.path().join("k.pem").display())
        );
    }
}
