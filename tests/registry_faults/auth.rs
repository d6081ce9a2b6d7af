//! Authentication faults: Bearer token caching and refresh, missing or
//! useless credentials, and secrets that must never be printed.

use super::*;

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
