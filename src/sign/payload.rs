//! The bytes cosign signs and stores, built and read without any I/O:
//! the "simple signing" payload, and the `sha256-<hex>.sig` manifest whose
//! layers are payloads with their signatures in an annotation.
//!
//! The shapes follow cosign (`pkg/oci/static`, `pkg/cosign/payload`) and
//! what `cosign verify --key` and containers/image (skopeo's
//! `sigstoreSigned` policy) read back.

use base64::Engine as _;
use serde_json::json;

use super::SignError;
use crate::oci::{Descriptor, Digest, MediaType, Reference};

/// The media type of a payload layer.
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 DER signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The payload's `critical.type`.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Payloads larger than this are not read.
pub const MAX_PAYLOAD_BYTES: u64 = 64 * 1024;

/// The tag under which `digest`'s signatures live: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("{}-{}.sig", digest.algorithm(), digest.hex())
}

/// The payload cosign signs for `digest` in `repo`'s repository, byte for
/// byte as cosign writes it (Go's encoding/json: keys in this order, no
/// spaces, `"optional":null`).
pub fn simple_signing_payload(repo: &Reference, digest: &Digest) -> Vec<u8> {
    let v = json!({
        "critical": {
            "identity": { "docker-reference": repo.repo_name() },
            "image": { "docker-manifest-digest": digest.to_string() },
            "type": PAYLOAD_TYPE,
        },
        "optional": null,
    });
    serde_json::to_vec(&v).expect("a JSON value serialises")
}

/// Check that a payload is a cosign simple-signing payload naming `digest`.
/// Returns the docker-reference it names.
pub fn check_payload(bytes: &[u8], digest: &Digest) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let critical = &v["critical"];
    if critical["type"] != PAYLOAD_TYPE {
        return Err(format!(
            "its type is {}, not {PAYLOAD_TYPE:?}",
            critical["type"]
        ));
    }
    let named = critical["image"]["docker-manifest-digest"]
        .as_str()
        .unwrap_or("(none)");
    if named != digest.to_string() {
        return Err(format!("it signs {named}, not {digest}"));
    }
    Ok(critical["identity"]["docker-reference"]
        .as_str()
        .unwrap_or("")
        .to_string())
}

/// One signature of a `.sig` manifest: the payload's descriptor and the
/// DER signature decoded from its annotation.
#[derive(Debug, Clone)]
pub struct SignatureLayer {
    pub payload: Descriptor,
    pub signature: Vec<u8>,
}

/// The layer descriptor for a payload and its DER signature.
pub fn payload_layer(payload: &[u8], signature: &[u8]) -> Descriptor {
    let mut d = Descriptor::new(SIMPLESIGNING, Digest::of(payload), payload.len() as u64);
    d.annotations.insert(
        SIGNATURE_ANNOTATION.to_string(),
        base64::engine::general_purpose::STANDARD.encode(signature),
    );
    d
}

/// The signature layers of a `.sig` manifest. Layers of other types, or
/// with no signature annotation, are skipped (cosign skips them too).
pub fn signature_layers(manifest: &[u8]) -> Result<Vec<SignatureLayer>, SignError> {
    let m: SigManifest = serde_json::from_slice(manifest).map_err(SignError::SigManifest)?;
    Ok(m.layers
        .into_iter()
        .filter(|l| l.media_type == SIMPLESIGNING)
        .filter_map(|l| {
            let sig = l.annotations.get(SIGNATURE_ANNOTATION)?;
            let signature = base64::engine::general_purpose::STANDARD
                .decode(sig.trim())
                .ok()?;
            Some(SignatureLayer {
                payload: l,
                signature,
            })
        })
        .collect())
}

#[derive(serde::Deserialize)]
struct SigManifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// The config blob of a `.sig` image, as cosign writes it: an empty image
/// config whose diff_ids are the payload digests.
pub fn sig_config(layers: &[Descriptor]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
    let v = json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{ "created": "0001-01-01T00:00:00Z" }],
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "config": {},
    });
    serde_json::to_vec(&v).expect("a JSON value serialises")
}

/// The `.sig` manifest: the config and the payload layers, in order.
pub fn sig_manifest(config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    let v = json!({
        "schemaVersion": 2,
        "mediaType": MediaType::OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    serde_json::to_vec(&v).expect("a JSON value serialises")
}

/// `layers` with `new` appended, unless an identical signature is there
/// already (ECDSA here is deterministic, RFC 6979: signing twice with one
/// key adds nothing).
pub fn with_signature(layers: &[Descriptor], new: Descriptor) -> Option<Vec<Descriptor>> {
    let same = |l: &Descriptor| {
        l.digest == new.digest
            && l.annotations.get(SIGNATURE_ANNOTATION) == new.annotations.get(SIGNATURE_ANNOTATION)
    };
    if layers.iter().any(same) {
        return None;
    }
    let mut all = layers.to_vec();
    all.push(new);
    Some(all)
}

/// Every layer descriptor of a `.sig` manifest, as served (kept so that
/// appending a signature keeps the others exactly).
pub fn all_layers(manifest: &[u8]) -> Result<Vec<Descriptor>, SignError> {
    let m: SigManifest = serde_json::from_slice(manifest).map_err(SignError::SigManifest)?;
    Ok(m.layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::of(b"image")
    }

    #[test]
    fn the_payload_is_byte_for_byte_what_cosign_signs() {
        let r = Reference::parse("127.0.0.1:5000/platform/base:1").unwrap();
        let got = String::from_utf8(simple_signing_payload(&r, &digest())).unwrap();
        assert_eq!(
            got,
            format!(
                "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"127.0.0.1:5000/platform/base\"}},\
                 \"image\":{{\"docker-manifest-digest\":\"{}\"}},\
                 \"type\":\"cosign container image signature\"}},\"optional\":null}}",
                digest()
            )
        );
        assert_eq!(
            check_payload(got.as_bytes(), &digest()).unwrap(),
            "127.0.0.1:5000/platform/base"
        );
        let other = Digest::of(b"other");
        assert!(check_payload(got.as_bytes(), &other)
            .unwrap_err()
            .contains("not sha256:"));
        assert!(check_payload(b"{\"critical\":{}}", &digest()).is_err());
    }

    #[test]
    fn the_sig_tag_is_the_digest_with_a_dash() {
        assert_eq!(
            signature_tag(&digest()),
            format!("sha256-{}.sig", digest().hex())
        );
    }

    #[test]
    fn a_manifest_round_trips_and_a_repeated_signature_is_not_added_twice() {
        let a = payload_layer(b"p1", b"s1");
        let b = payload_layer(b"p2", b"s2");
        let layers = with_signature(std::slice::from_ref(&a), b.clone()).unwrap();
        assert!(with_signature(&layers, a.clone()).is_none());
        let cfg = sig_config(&layers);
        let cfg_d = Descriptor::new(MediaType::OCI_CONFIG, Digest::of(&cfg), cfg.len() as u64);
        let m = sig_manifest(&cfg_d, &layers);
        let read = signature_layers(&m).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[1].payload.digest, Digest::of(b"p2"));
        assert_eq!(read[1].signature, b"s2");
        assert_eq!(all_layers(&m).unwrap(), layers);
        crate::oci::ManifestDoc::parse(&m, Some(MediaType::OCI_MANIFEST)).unwrap();
    }
}
