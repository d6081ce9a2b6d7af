//! CycloneDX 1.6 JSON. The image is the metadata component (type
//! `container`); every installed .deb is a `library` component keyed by its
//! purl, every regular file no package owns a `file` component. Which step
//! brought each is the `dev.tplbuild:step` property.

use serde_json::{json, Value};

use super::Sbom;

/// `urn:uuid:…` derived from the image digest (a name-based UUID, version
/// 5 layout), so two builds of one image write the same serial number.
pub fn serial_number(sbom: &Sbom) -> String {
    let h = crate::oci::Digest::of(format!("cyclonedx {}", sbom.described.digest).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&hex::decode(h.hex()).expect("hex digest")[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

pub fn document(sbom: &Sbom) -> Value {
    let d = &sbom.described;
    let mut components = vec![];
    for v in sbom.packages() {
        let mut c = json!({
            "type": "library",
            "bom-ref": v.purl,
            "name": v.p.name,
            "version": v.p.version,
            "purl": v.purl,
        });
        if let Some(sha) = v.deb_sha256 {
            c["hashes"] = json!([{"alg": "SHA-256", "content": sha}]);
        }
        if let Some(l) = &v.licence {
            c["licenses"] = json!([{"expression": l}]);
        }
        c["properties"] = json!([
            {"name": "dev.tplbuild:step", "value": v.step},
            {"name": "dev.tplbuild:source", "value": format!("{} {}", v.p.source, v.p.source_version)},
            {"name": "dev.tplbuild:architecture", "value": v.p.architecture},
        ]);
        components.push(c);
    }
    for f in &sbom.contents.unowned {
        components.push(json!({
            "type": "file",
            "bom-ref": format!("file:/{}", f.path),
            "name": format!("/{}", f.path),
            "hashes": [
                {"alg": "SHA-1", "content": f.sha1},
                {"alg": "SHA-256", "content": f.sha256},
            ],
            "properties": [
                {"name": "dev.tplbuild:owner", "value": "none"},
                {"name": "dev.tplbuild:step", "value": d.origin(f.layer)},
            ],
        }));
    }
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": serial_number(sbom),
        "version": 1,
        "metadata": {
            "timestamp": sbom.timestamp(),
            "tools": {"components": [{
                "type": "application",
                "name": "tplbuild",
                "version": env!("CARGO_PKG_VERSION"),
            }]},
            "component": {
                "type": "container",
                "bom-ref": "image",
                "name": d.name,
                "version": d.digest.to_string(),
                "hashes": [{"alg": "SHA-256", "content": d.digest.hex()}],
            },
        },
        "components": components,
    })
}
