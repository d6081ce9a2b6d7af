//! Fault injection: the registry client against a small in-process fake
//! HTTP/1.1 server that misbehaves on purpose (overload, resets, short,
//! long and corrupt bodies, auth challenges, bad manifests). Each test
//! names the fault it pins.

mod registry_fake;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use registry_fake::{ok, status, Action, Fake, Req};
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
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n\r\n",
        data.len()
    )
    .into_bytes();
    raw.extend_from_slice(&data[..keep]);
    Action::Raw(raw)
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

// ---------------------------------------------------------------- auth

const CANARY: &str = "canary-S3cret-pw-0451";
const TOKEN_CANARY: &str = "canary-t0ken-9981";

fn creds_for(host: &str, password: &str) -> CredentialSource {
    CredentialSource::Static(
        [(
            host.to_string(),
            Credential::Basic {
                username: "ci".into(),
                password: Secret::new(password),
            },
        )]
        .into_iter()
        .collect(),
    )
}

fn bearer_challenge(r: &Req) -> Action {
    let host = r.header("host").unwrap();
    Action::Respond(
        401,
        vec![(
            "WWW-Authenticate",
            format!(
                r#"Bearer realm="http://{host}/token",service="fake",scope="repository:a/b:pull""#
            ),
        )],
        br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
    )
}

#[tokio::test]
async fn bearer_token_is_cached_and_refreshed_once_on_a_new_401() {
    let manifest = manifest_bytes();
    let valid = Arc::new(Mutex::new(String::new()));
    let issued = Arc::new(AtomicUsize::new(0));
    let issue_good_tokens = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (v, i, good) = (valid.clone(), issued.clone(), issue_good_tokens.clone());
    let fake = Fake::start(move |r| {
        if r.path.starts_with("/token") {
            let n = i.fetch_add(1, Ordering::SeqCst) + 1;
            let tok = format!("tok{n}");
            if good.load(Ordering::SeqCst) {
                *v.lock().unwrap() = tok.clone();
            }
            return ok(format!(r#"{{"token":"{tok}","expires_in":300}}"#).as_bytes());
        }
        let want = format!("Bearer {}", v.lock().unwrap());
        if r.header("authorization") == Some(want.as_str()) {
            manifest_response(&manifest, MediaType::OCI_MANIFEST)
        } else {
            bearer_challenge(r)
        }
    })
    .await;
    let client = fake.client_with(creds_for(&fake.host, "pw"), 0);
    let r = fake.reference("a/b:1");

    client.get_manifest(&r).await.unwrap();
    client.get_manifest(&r).await.unwrap();
    assert_eq!(issued.load(Ordering::SeqCst), 1, "the token was not cached");
    let token_req = fake
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/token"))
        .unwrap();
    assert!(token_req
        .header("authorization")
        .unwrap()
        .starts_with("Basic "));
    assert!(
        token_req.path.contains("service=fake"),
        "{}",
        token_req.path
    );
    assert!(
        token_req.path.contains("scope=repository%3Aa%2Fb%3Apull"),
        "{}",
        token_req.path
    );

    // The registry stops accepting tok1: one refresh, and on we go.
    *valid.lock().unwrap() = "revoked".into();
    client.get_manifest(&r).await.unwrap();
    assert_eq!(issued.load(Ordering::SeqCst), 2);

    // A refreshed token that is refused too is not refreshed forever.
    *valid.lock().unwrap() = "revoked".into();
    issue_good_tokens.store(false, Ordering::SeqCst);
    let err = client.get_manifest(&r).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert_eq!(issued.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn basic_challenge_without_credentials_says_how_to_log_in() {
    let fake = Fake::start(|_| {
        Action::Respond(
            401,
            vec![("WWW-Authenticate", r#"Basic realm="fake""#.into())],
            Vec::new(),
        )
    })
    .await;
    let err = fake
        .client()
        .get_manifest(&fake.reference("a/b:1"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::AuthRequired { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("docker login {}", fake.host)),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("podman login {}", fake.host)),
        "{msg}"
    );
}

#[tokio::test]
async fn anonymous_token_that_grants_nothing_is_auth_required() {
    let fake = Fake::start(|r| {
        if r.path.starts_with("/token") {
            ok(br#"{"token":"anon"}"#)
        } else {
            bearer_challenge(r)
        }
    })
    .await;
    let err = fake
        .client()
        .get_manifest(&fake.reference("a/b:1"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::AuthRequired { .. }), "{err:?}");
}

#[derive(Clone)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged by this test binary, at TRACE level, including what
/// dependencies log through the `log` crate.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf(Arc::new(Mutex::new(Vec::new())));
        let w = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .init();
        buf.0
    })
    .clone()
}

#[tokio::test]
async fn canary_password_and_token_are_never_printed() {
    use base64::Engine;
    let logs = captured_logs();
    let basic = Fake::start(|_| {
        Action::Respond(
            401,
            vec![("WWW-Authenticate", r#"Basic realm="fake""#.into())],
            Vec::new(),
        )
    })
    .await;
    let bearer = Fake::start(|r| {
        if r.path.starts_with("/token") {
            ok(format!(r#"{{"access_token":"{TOKEN_CANARY}"}}"#).as_bytes())
        } else {
            bearer_challenge(r)
        }
    })
    .await;
    let mut printed = String::new();
    for fake in [&basic, &bearer] {
        let client = fake.client_with(creds_for(&fake.host, CANARY), 0);
        let err = client
            .get_manifest(&fake.reference("a/b:1"))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
        printed += &format!("{err:?}\n{err}\n{client:?}\n");
        let mut src = std::error::Error::source(&err);
        while let Some(s) = src {
            printed += &format!("{s:?} {s}\n");
            src = s.source();
        }
    }
    // The secrets did travel (so the test can fail) ...
    let sent: String = bearer
        .requests()
        .iter()
        .filter_map(|r| r.header("authorization"))
        .collect();
    assert!(sent.contains(TOKEN_CANARY));
    // ... but were never printed.
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(
        logged.contains("authentication challenge"),
        "log capture is not working"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("ci:{CANARY}"));
    for secret in [CANARY, TOKEN_CANARY, b64.as_str()] {
        assert!(
            !printed.contains(secret),
            "{secret} printed in an error: {printed}"
        );
        assert!(!logged.contains(secret), "{secret} logged");
    }
}

// ---------------------------------------------------------------- push

fn upload_server(mount: Option<u16>, put_failures: usize) -> impl Fn(&Req) -> Action + Send + Sync {
    let puts = AtomicUsize::new(0);
    move |r| match (r.method.as_str(), r.path.as_str()) {
        ("HEAD", _) => status(404),
        ("POST", p) if p.contains("mount=") => match mount {
            Some(201) => status(201),
            _ => Action::Respond(
                202,
                vec![("Location", "/upload/m?state=s".into())],
                Vec::new(),
            ),
        },
        ("POST", _) => Action::Respond(
            202,
            vec![("Location", "/upload/1?state=s".into())],
            Vec::new(),
        ),
        ("PUT", p) if p.starts_with("/upload/") => {
            if puts.fetch_add(1, Ordering::SeqCst) < put_failures {
                status(503)
            } else {
                status(201)
            }
        }
        _ => status(400),
    }
}

async fn push(
    fake: &Fake,
    data: &[u8],
    mount_from: Option<&str>,
) -> Result<PushOutcome, RegistryError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    fs_err::write(&path, data).unwrap();
    let d = Descriptor::new(
        MediaType::OCI_LAYER_GZIP,
        Digest::of(data),
        data.len() as u64,
    );
    let from = mount_from.map(|m| fake.reference(m));
    fake.client()
        .push_blob_file(&fake.reference("a/b"), &d, &path, from.as_ref())
        .await
}

#[tokio::test]
async fn upload_streams_the_file_to_the_location_with_the_digest() {
    let (data, d) = blob(300_000);
    let fake = Fake::start(upload_server(None, 0)).await;
    assert_eq!(
        push(&fake, &data, None).await.unwrap(),
        PushOutcome::Uploaded
    );
    let put = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(
        put.path,
        format!(
            "/upload/1?state=s&digest={}",
            d.digest.to_string().replace(':', "%3A")
        )
    );
    assert_eq!(put.body, data);
}

#[tokio::test]
async fn mount_refused_with_202_continues_with_the_session_it_opened() {
    let (data, _) = blob(1000);
    let fake = Fake::start(upload_server(Some(202), 0)).await;
    assert_eq!(
        push(&fake, &data, Some("other/repo")).await.unwrap(),
        PushOutcome::Uploaded
    );
    let reqs = fake.requests();
    assert_eq!(reqs.iter().filter(|r| r.method == "POST").count(), 1);
    assert!(reqs
        .iter()
        .any(|r| r.method == "PUT" && r.path.starts_with("/upload/m")));
}

#[tokio::test]
async fn mount_accepted_with_201_uploads_nothing() {
    let (data, _) = blob(1000);
    let fake = Fake::start(upload_server(Some(201), 0)).await;
    assert_eq!(
        push(&fake, &data, Some("other/repo")).await.unwrap(),
        PushOutcome::Mounted
    );
    assert_eq!(fake.count("PUT", "/"), 0);
}

#[tokio::test]
async fn failed_upload_is_retried_with_a_new_session() {
    let (data, _) = blob(1000);
    let fake = Fake::start(upload_server(None, 1)).await;
    assert_eq!(
        push(&fake, &data, None).await.unwrap(),
        PushOutcome::Uploaded
    );
    assert_eq!(fake.count("POST", "/v2/a/b/blobs/uploads/"), 2);
}

#[tokio::test]
async fn file_whose_size_disagrees_with_the_descriptor_is_not_pushed() {
    let fake = Fake::start(upload_server(None, 0)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    fs_err::write(&path, b"abc").unwrap();
    let d = Descriptor::new(MediaType::OCI_LAYER_GZIP, Digest::of(b"abc"), 4);
    let err = fake
        .client()
        .push_blob_file(&fake.reference("a/b"), &d, &path, None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::FileSize { .. }), "{err:?}");
    assert!(fake.requests().is_empty());
}

// ---------------------------------------------------------------- mirrors

fn mirrored_client(origin: &Fake, mirror: &Fake) -> Client {
    let mut settings = RegistrySettings::default()
        .with_insecure(&origin.host)
        .with_insecure(&mirror.host);
    settings
        .mirrors
        .insert(origin.host.clone(), vec![mirror.host.clone()]);
    Client::with_credentials(settings, CredentialSource::None).unwrap()
}

#[tokio::test]
async fn mirror_is_tried_first_and_a_failing_mirror_falls_back_to_the_origin() {
    let (data, d) = blob(5000);
    let data2 = data.clone();
    let origin = Fake::start(move |_| ok(&data2)).await;
    let missing = Fake::start(|_| status(404)).await;
    let (res, got) = pull(
        &mirrored_client(&origin, &missing),
        &origin.reference("a/b"),
        &d,
    )
    .await;
    res.unwrap();
    assert_eq!(got, data);
    assert_eq!((missing.requests().len(), origin.requests().len()), (1, 1));

    let data3 = data.clone();
    let good = Fake::start(move |_| ok(&data3)).await;
    let (res, _) = pull(
        &mirrored_client(&origin, &good),
        &origin.reference("a/b"),
        &d,
    )
    .await;
    res.unwrap();
    assert_eq!(
        (good.requests().len(), origin.requests().len()),
        (1, 1),
        "origin was asked though the mirror had it"
    );
}

// ---------------------------------------------------------------- TLS

/// `openssl s_server` with a certificate from a throwaway CA; killed on drop.
struct TlsServer {
    child: std::process::Child,
    host: String,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn tls_server() -> Option<TlsServer> {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no openssl binary");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=tplbuild test CA",
        ],
        d,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        d,
    );
    fs_err::write(
        d.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.crt",
            "-days",
            "1",
            "-extfile",
            "ext",
        ],
        d,
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let child = std::process::Command::new("openssl")
        .args([
            "s_server", "-quiet", "-www", "-accept", &host, "-cert", "leaf.crt", "-key", "leaf.key",
        ])
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = TlsServer {
        child,
        host,
        ca: d.join("ca.crt"),
        _dir: dir,
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&server.host).await.is_ok() {
            return Some(server);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("openssl s_server did not start");
}

#[tokio::test]
async fn untrusted_certificate_is_a_clear_error_and_a_ca_file_fixes_it() {
    let Some(server) = tls_server().await else {
        return;
    };
    let r = Reference::parse(&format!("{}/a/b:1", server.host)).unwrap();
    let client =
        Client::with_credentials(RegistrySettings::default(), CredentialSource::None).unwrap();
    let err = client.get_manifest(&r).await.unwrap_err();
    assert!(matches!(err, RegistryError::Certificate { .. }), "{err:?}");
    assert!(err.to_string().contains("not trusted"), "{err}");

    let settings = RegistrySettings {
        ca_files: vec![server.ca.clone()],
        ..RegistrySettings::default()
    };
    let client = Client::with_credentials(settings, CredentialSource::None).unwrap();
    // s_server answers with an HTML page: not a registry, but TLS worked.
    match client.get_manifest(&r).await {
        Err(RegistryError::Certificate { .. }) => panic!("the CA file was not used"),
        Err(e) => panic!("unexpected {e:?}"),
        Ok(m) => assert!(m.media_type.starts_with("text/html"), "{m:?}"),
    }
}
