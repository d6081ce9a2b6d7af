//! Fault injection: the registry client against a small in-process fake
//! HTTP/1.1 server that misbehaves on purpose (overload, resets, short,
//! long and corrupt bodies, auth challenges, bad manifests). Each test
//! names the fault it pins.

#[path = "registry_faults/auth.rs"]
mod auth;
#[path = "registry_faults/fake.rs"]
mod fake;
#[path = "registry_faults/push.rs"]
mod push;
#[path = "registry_faults/referrers.rs"]
mod referrers;
#[path = "registry_faults/tls.rs"]
mod tls;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fake::{ok, status, Action, Fake, Req};
use tplbuild::oci::{Descriptor, Digest, MediaType, Platform, Reference};
use tplbuild::registry::{
    Client, Credential, CredentialSource, PushOutcome, RegistryError, RegistrySettings, Secret,
    VecSink,
};

// ---------------------------------------------------------------- fixtures

fn blob(n: usize) -> (Vec<u8>, Descriptor) {
    let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
    let d = Descriptor::new(MediaType::OCI_LAYER_GZIP, Digest::of(&data), n as u64);
    (data, d)
}

fn is_blob_get(r: &Req, d: &Descriptor) -> bool {
    r.method == "GET" && r.path.ends_with(&format!("/blobs/{}", d.digest))
}

async fn pull(
    client: &Client,
    repo: &Reference,
    d: &Descriptor,
) -> (Result<(), RegistryError>, Vec<u8>) {
    let mut sink = VecSink::default();
    let r = client.pull_blob(repo, d, &mut sink).await;
    (r, sink.into_inner())
}

/// Errors that were retried end up wrapped; tests care about the cause.
fn root(e: &RegistryError) -> &RegistryError {
    match e {
        RegistryError::RetriesExhausted { source, .. } => root(source),
        e => e,
    }
}

// ---------------------------------------------------------------- retries

#[tokio::test]
async fn blob_pull_survives_503_twice_then_success() {
    let (data, d) = blob(10_000);
    let (data2, d2) = (data.clone(), d.clone());
    let n = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match n.fetch_add(1, Ordering::SeqCst) {
        0 | 1 if is_blob_get(r, &d2) => status(503),
        _ => ok(&data2),
    })
    .await;
    let (res, got) = pull(&fake.client(), &fake.reference("a/b"), &d).await;
    res.unwrap();
    assert_eq!(got, data);
    assert_eq!(fake.count("GET", "/v2/a/b/blobs/"), 3);
}

#[tokio::test]
async fn connection_reset_every_time_fails_cleanly_after_the_retries() {
    let (_, d) = blob(100);
    let fake = Fake::start(|_| Action::Reset).await;
    let (res, got) = pull(
        &fake.client_with(CredentialSource::None, 2),
        &fake.reference("a/b"),
        &d,
    )
    .await;
    let err = res.unwrap_err();
    assert!(
        matches!(err, RegistryError::RetriesExhausted { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(got.is_empty());
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn status_429_waits_for_retry_after() {
    let (data, d) = blob(10);
    let data2 = data.clone();
    let n = AtomicUsize::new(0);
    let fake = Fake::start(move |_| match n.fetch_add(1, Ordering::SeqCst) {
        0 => Action::Respond(
            429,
            vec![("Retry-After", "1".into())],
            b"slow down".to_vec(),
        ),
        _ => ok(&data2),
    })
    .await;
    let start = Instant::now();
    let (res, got) = pull(&fake.client(), &fake.reference("a/b"), &d).await;
    res.unwrap();
    assert_eq!(got, data);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

// ---------------------------------------------------------------- bodies

fn short_body(data: &[u8], keep: usize) -> Action {
    fake::cut_short(data, keep, &["Accept-Ranges: bytes"])
}

#[tokio::test]
async fn short_body_then_close_resumes_with_range() {
    let (data, d) = blob(50_000);
    let data2 = data.clone();
    let fake = Fake::start(move |r| match r.header("range") {
        None => short_body(&data2, 20_000),
        Some(range) => {
            let start: usize = range
                .trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse()
                .unwrap();
            Action::Respond(
                206,
                vec![(
                    "Content-Range",
                    format!("bytes {start}-{}/{}", data2.len() - 1, data2.len()),
                )],
                data2[start..].to_vec(),
            )
        }
    })
    .await;
    let (res, got) = pull(&fake.client(), &fake.reference("a/b"), &d).await;
    res.unwrap();
    assert_eq!(got, data);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].header("range"), Some("bytes=20000-"));
}

#[tokio::test]
async fn short_body_from_a_server_without_range_support_restarts_from_zero() {
    let (data, d) = blob(50_000);
    let data2 = data.clone();
    let n = AtomicUsize::new(0);
    let fake = Fake::start(move |_| match n.fetch_add(1, Ordering::SeqCst) {
        0 => short_body(&data2, 30_000),
        _ => ok(&data2), // ignores Range: full body with 200
    })
    .await;
    let (res, got) = pull(&fake.client(), &fake.reference("a/b"), &d).await;
    res.unwrap();
    assert_eq!(
        got, data,
        "the sink must hold the blob once, not a prefix plus the blob"
    );
}

#[tokio::test]
async fn body_always_short_fails_and_keeps_nothing() {
    let (data, d) = blob(1000);
    let fake = Fake::start(move |_| short_body(&data, 10)).await;
    let (res, got) = pull(
        &fake.client_with(CredentialSource::None, 1),
        &fake.reference("a/b"),
        &d,
    )
    .await;
    let err = res.unwrap_err();
    assert!(
        matches!(err, RegistryError::RetriesExhausted { attempts: 2, .. }),
        "{err:?}"
    );
    assert!(
        matches!(
            root(&err),
            RegistryError::Transfer { .. } | RegistryError::Truncated { .. }
        ),
        "{err:?}"
    );
    assert!(got.is_empty());
}

#[tokio::test]
async fn body_with_the_wrong_digest_is_refused_without_retrying() {
    let (mut data, d) = blob(1000);
    data[500] ^= 1;
    let fake = Fake::start(move |_| ok(&data)).await;
    let (res, got) = pull(&fake.client(), &fake.reference("a/b"), &d).await;
    let err = res.unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(got.is_empty(), "unverified bytes were left in the sink");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn body_longer_than_the_descriptor_is_refused() {
    let (data, d) = blob(1000);
    let mut longer = data.clone();
    longer.extend_from_slice(b"extra");
    // Announced in Content-Length, and close-delimited (no length at all).
    let raw = {
        let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        r.extend_from_slice(&longer);
        r
    };
    let n = AtomicUsize::new(0);
    let fake = Fake::start(move |_| match n.fetch_add(1, Ordering::SeqCst) {
        0 => ok(&longer),
        _ => Action::Raw(raw.clone()),
    })
    .await;
    let client = fake.client();
    for _ in 0..2 {
        let (res, got) = pull(&client, &fake.reference("a/b"), &d).await;
        let err = res.unwrap_err();
        assert!(matches!(err, RegistryError::TooLong { .. }), "{err:?}");
        assert!(got.is_empty());
    }
}

// ---------------------------------------------------------------- manifests

fn manifest_bytes() -> Vec<u8> {
    let (_, config) = blob(3);
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MediaType::OCI_MANIFEST,
        "config": Descriptor::new(MediaType::OCI_CONFIG, config.digest, 3),
        "layers": [],
    }))
    .unwrap()
}

fn manifest_response(bytes: &[u8], content_type: &str) -> Action {
    Action::Respond(
        200,
        vec![("Content-Type", content_type.to_string())],
        bytes.to_vec(),
    )
}

#[tokio::test]
async fn missing_tag_is_not_found_naming_the_reference() {
    let fake = Fake::start(|_| {
        Action::Respond(
            404,
            vec![],
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_vec(),
        )
    })
    .await;
    let r = fake.reference("team/base:2024.06");
    let err = fake.client().get_manifest(&r).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(err.to_string(), format!("pulling manifest {r}: not found"));
    assert_eq!(fake.requests().len(), 1, "404 must not be retried");
}

#[tokio::test]
async fn manifest_with_both_layers_and_manifests_is_rejected() {
    let doc = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[],"manifests":[]}"#;
    let fake = Fake::start(move |_| manifest_response(doc, MediaType::OCI_MANIFEST)).await;
    let err = fake
        .client()
        .resolve_image(
            &fake.reference("a/b:1"),
            &Platform::parse("linux/amd64").unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Manifest { .. }), "{err:?}");
    assert!(format!("{:?}", err).contains("Ambiguous"), "{err:?}");
}

#[tokio::test]
async fn content_type_disagreeing_with_the_documents_media_type_is_rejected() {
    let bytes = manifest_bytes();
    let fake = Fake::start(move |_| manifest_response(&bytes, MediaType::OCI_INDEX)).await;
    let err = fake
        .client()
        .resolve_image(
            &fake.reference("a/b:1"),
            &Platform::parse("linux/amd64").unwrap(),
        )
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("MediaTypeMismatch"), "{err:?}");
}

#[tokio::test]
async fn manifest_by_digest_must_hash_to_that_digest() {
    let bytes = manifest_bytes();
    let fake = Fake::start(move |_| manifest_response(&bytes, MediaType::OCI_MANIFEST)).await;
    let r = fake
        .reference("a/b")
        .with_digest(Digest::of(b"something else"));
    let err = fake.client().get_manifest(&r).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn docker_content_digest_header_is_not_trusted() {
    let bytes = manifest_bytes();
    let b2 = bytes.clone();
    let fake = Fake::start(move |_| {
        Action::Respond(
            200,
            vec![
                ("Content-Type", MediaType::OCI_MANIFEST.to_string()),
                ("Docker-Content-Digest", Digest::of(b"lie").to_string()),
            ],
            b2.clone(),
        )
    })
    .await;
    let m = fake
        .client()
        .get_manifest(&fake.reference("a/b:1"))
        .await
        .unwrap();
    assert_eq!(m.digest, Digest::of(&bytes));
}

#[tokio::test]
async fn manifest_larger_than_4_mib_is_refused() {
    let huge = vec![b' '; 4 * 1024 * 1024 + 1];
    let fake = Fake::start(move |_| manifest_response(&huge, MediaType::OCI_MANIFEST)).await;
    let err = fake
        .client()
        .get_manifest(&fake.reference("a/b:1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::TooLarge {
                what: "manifest",
                ..
            }
        ),
        "{err:?}"
    );
}
