//! A registry with the OCI 1.1 referrers API (the test bed's Distribution
//! registry has none, so its tests only see the tag scheme): artifacts are
//! pushed by digest, the registry indexes them by `subject`, and no
//! `sha256-<hex>` tag is written; `list` reads the API's answer.

use super::*;
use tplbuild::sbom::attach::{self, Artifact};

fn subject() -> Descriptor {
    let m = manifest_bytes();
    Descriptor::new(MediaType::OCI_MANIFEST, Digest::of(&m), m.len() as u64)
}

/// Blobs are all there (HEAD 200), manifests are accepted, and the
/// referrers API answers with `listed`.
async fn registry_with_referrers(listed: Vec<Descriptor>) -> Fake {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MediaType::OCI_INDEX,
        "manifests": listed,
    })
    .to_string();
    Fake::start(move |r: &Req| {
        if r.method == "HEAD" && r.path.contains("/blobs/") {
            return ok(b"");
        }
        if r.method == "PUT" && r.path.contains("/manifests/") {
            let digest = r.path.rsplit('/').next().unwrap_or_default().to_string();
            return Action::Respond(201, vec![("Docker-Content-Digest", digest)], vec![]);
        }
        if r.method == "GET" && r.path.contains("/referrers/") {
            return Action::Respond(
                200,
                vec![("Content-Type", MediaType::OCI_INDEX.to_string())],
                index.clone().into_bytes(),
            );
        }
        status(404)
    })
    .await
}

#[tokio::test]
async fn with_the_referrers_api_artifacts_go_by_digest_and_no_tag_is_written() {
    let subject = subject();
    let sbom = Artifact::new(&subject, "application/spdx+json", b"{}".to_vec(), 0);
    let prov = Artifact::new(&subject, "application/vnd.in-toto+json", b"{}".to_vec(), 0);
    let fake = registry_with_referrers(vec![sbom.descriptor(), prov.descriptor()]).await;
    let store_dir = tempfile::tempdir().unwrap();
    let store = tplbuild::store::Store::open(store_dir.path()).unwrap();
    let image = fake.reference("products/gateway:1");
    let tag = attach::push(
        &store,
        &fake.client(),
        &image,
        &subject.digest,
        &[sbom.clone(), prov.clone()],
    )
    .await
    .unwrap();
    assert_eq!(tag, None, "no referrers tag with the API");
    let puts: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/manifests/"))
        .map(|r| r.path)
        .collect();
    assert_eq!(
        puts,
        [
            format!("/v2/products/gateway/manifests/{}", sbom.digest()),
            format!("/v2/products/gateway/manifests/{}", prov.digest()),
        ]
    );
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.path.contains("/manifests/sha256-")),
        "the tag scheme was not used"
    );
    // Reading back goes through the API too.
    let listed = attach::list(&fake.client(), &image, &subject.digest)
        .await
        .unwrap();
    let types: Vec<_> = listed
        .iter()
        .map(|d| d.artifact_type.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        types,
        ["application/spdx+json", "application/vnd.in-toto+json"]
    );
    assert_eq!(
        fake.count(
            "GET",
            &format!("/v2/products/gateway/referrers/{}", subject.digest)
        ),
        2
    );
}
