//! SPDX 2.3 JSON. The image is the described package (purpose CONTAINER);
//! it CONTAINS one package per installed .deb and one file per regular
//! file no package owns. Which step brought a package is an annotation on
//! it (`tplbuild:step=…`), for a file its comment. Licence names that SPDX
//! has no identifier for are declared as extracted licences.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{tool, Sbom};

/// The document namespace: one per image digest, so two builds of one
/// image write the same document.
pub fn namespace(sbom: &Sbom) -> String {
    format!(
        "https://tplbuild.dev/spdx/image/sha256-{}",
        sbom.described.digest.hex()
    )
}

pub fn document(sbom: &Sbom) -> Value {
    let created = sbom.timestamp();
    let creator = format!("Tool: {}", tool());
    let d = &sbom.described;
    let mut packages = vec![json!({
        "SPDXID": "SPDXRef-Image",
        "name": d.name,
        "versionInfo": d.digest.to_string(),
        "downloadLocation": "NOASSERTION",
        // The image CONTAINS the files listed below, so SPDX wants them
        // analysed and their verification code.
        "filesAnalyzed": true,
        "packageVerificationCode": {"packageVerificationCodeValue": verification_code(sbom)},
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "licenseInfoFromFiles": ["NOASSERTION"],
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "CONTAINER",
        "checksums": [{"algorithm": "SHA256", "checksumValue": d.digest.hex()}],
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-Image",
    })];
    let mut refs = BTreeSet::new();
    for (i, v) in sbom.packages().enumerate() {
        let id = format!("SPDXRef-Package-{}-{}", i + 1, spdx_id_part(&v.p.name));
        let licence = v.licence.clone().unwrap_or_else(|| "NOASSERTION".into());
        refs.extend(
            licence
                .split(" AND ")
                .filter(|l| l.starts_with("LicenseRef-"))
                .map(str::to_string),
        );
        let mut pkg = json!({
            "SPDXID": id,
            "name": v.p.name,
            "versionInfo": v.p.version,
            "supplier": "NOASSERTION",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": licence,
            "copyrightText": "NOASSERTION",
            "sourceInfo": format!("built from the Debian source package {} {}", v.p.source, v.p.source_version),
            "primaryPackagePurpose": "LIBRARY",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": v.purl,
            }],
            "annotations": [{
                "annotationDate": created,
                "annotationType": "OTHER",
                "annotator": creator,
                "comment": format!("tplbuild:step={}", v.step),
            }],
        });
        if let Some(sha) = v.deb_sha256 {
            pkg["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sha}]);
        }
        packages.push(pkg);
        relationships.push(json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    let mut files = vec![];
    for (i, f) in sbom.contents.unowned.iter().enumerate() {
        let id = format!("SPDXRef-File-{}", i + 1);
        files.push(json!({
            "SPDXID": id,
            "fileName": format!("./{}", f.path),
            "checksums": [
                {"algorithm": "SHA1", "checksumValue": f.sha1},
                {"algorithm": "SHA256", "checksumValue": f.sha256},
            ],
            "licenseConcluded": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "comment": format!("owned by no package; tplbuild:step={}", d.origin(f.layer)),
        }));
        relationships.push(json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    let extracted: Vec<Value> = refs
        .iter()
        .map(|r| {
            let name = r.trim_start_matches("LicenseRef-");
            json!({
                "licenseId": r,
                "name": name,
                "extractedText": format!("The licence named \"{name}\" in a Debian copyright file (/usr/share/doc/*/copyright)."),
            })
        })
        .collect();
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{} {}", d.name, d.digest),
        "documentNamespace": namespace(sbom),
        "creationInfo": {
            "created": created,
            "creators": [creator],
        },
        "packages": packages,
        "files": files,
        "relationships": relationships,
    });
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = Value::Array(extracted);
    }
    doc
}

/// SPDX's package verification code: the SHA-1 of the sorted SHA-1s of
/// the package's files (here the files no .deb owns).
fn verification_code(sbom: &Sbom) -> String {
    use sha1::Digest as _;
    let mut sums: Vec<&str> = sbom
        .contents
        .unowned
        .iter()
        .map(|f| f.sha1.as_str())
        .collect();
    sums.sort_unstable();
    hex::encode(sha1::Sha1::digest(sums.concat().as_bytes()))
}

/// The characters an SPDX id may hold (`[A-Za-z0-9.-]`); others become `-`.
fn spdx_id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}
