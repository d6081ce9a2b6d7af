//! `tplbuild fetch` against an archive that misbehaves: the in-process fake
//! HTTP server of the registry fault tests serves the locked .debs and fails
//! on purpose. What passes is retried; what cannot pass is not.

#[path = "registry_faults/fake.rs"]
#[allow(dead_code)]
mod fake;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fake::{ok, status, Action, Fake, Req};
use tplbuild::lock::fetch::{fetch, FetchError};
use tplbuild::lock::{LockedPackage, LockedStep, Lockfile};
use tplbuild::oci::Digest;
use tplbuild::store::Store;

/// A made-up .deb's bytes.
fn bytes_of(name: &str, len: usize) -> Vec<u8> {
    name.bytes().cycle().take(len).collect()
}

/// The lock entry of `data` as `fake` serves it.
fn pkg(fake: &Fake, name: &str, data: &[u8]) -> LockedPackage {
    LockedPackage {
        name: name.into(),
        version: "1.0-1".into(),
        architecture: "amd64".into(),
        filename: format!("pool/main/{name}_1.0-1_amd64.deb"),
        sha256: Digest::of(data)
            .to_string()
            .trim_start_matches("sha256:")
            .into(),
        size: data.len() as u64,
        uri: format!("http://{}/debian", fake.host),
    }
}

fn deb_path(name: &str) -> String {
    format!("{name}_1.0-1_amd64.deb")
}

fn lock_of(packages: Vec<LockedPackage>) -> Lockfile {
    Lockfile::new(
        vec![],
        vec![LockedStep {
            index: 1,
            instruction: "INSTALL test".into(),
            replayed: String::new(),
            packages,
        }],
    )
}

/// A handler whose answer for a path depends on how often it was asked:
/// `plan[path][n]` for the n-th request, the last entry from then on.
type Plan = HashMap<String, Vec<Box<dyn Fn() -> Action + Send + Sync>>>;

async fn archive(plan: Plan) -> Fake {
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    Fake::start(move |r: &Req| {
        let mut seen = seen.lock().unwrap();
        let n = seen.entry(r.path.clone()).or_default();
        let answers = match plan.iter().find(|(k, _)| r.path.ends_with(k.as_str())) {
            Some((_, a)) => a,
            None => return status(404),
        };
        let a = &answers[(*n).min(answers.len() - 1)];
        *n += 1;
        a()
    })
    .await
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

/// A 200 that closes the connection after `keep` bytes and gives no
/// length, so the HTTP layer sees a complete (short) body.
fn short_unannounced(data: &[u8], keep: usize) -> Action {
    let mut raw = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec();
    raw.extend_from_slice(&data[..keep]);
    Action::Raw(raw)
}

fn short(data: &[u8], keep: usize) -> Action {
    fake::cut_short(data, keep, &["Connection: close"])
}

#[tokio::test]
async fn transient_failures_are_retried_and_every_deb_arrives() {
    let a = bytes_of("overloaded", 70_000);
    let b = bytes_of("cut-short", 90_000);
    let c = bytes_of("reset", 10_000);
    let d = bytes_of("fine", 5_000);
    let e = bytes_of("no-length", 30_000);
    let mut plan: Plan = HashMap::new();
    let (e1, e2) = (e.clone(), e.clone());
    plan.insert(
        deb_path("no-length"),
        vec![
            Box::new(move || short_unannounced(&e1, 29_999)),
            Box::new(move || ok(&e2)),
        ],
    );
    let (a1, b1, b2, c1, d1) = (a.clone(), b.clone(), b.clone(), c.clone(), d.clone());
    plan.insert(
        deb_path("overloaded"),
        vec![
            Box::new(|| status(503)),
            Box::new(|| status(429)),
            Box::new(move || ok(&a1)),
        ],
    );
    plan.insert(
        deb_path("cut-short"),
        vec![
            Box::new(move || short(&b1, 1000)),
            Box::new(move || ok(&b2)),
        ],
    );
    plan.insert(
        deb_path("reset"),
        vec![Box::new(|| Action::Reset), Box::new(move || ok(&c1))],
    );
    plan.insert(deb_path("fine"), vec![Box::new(move || ok(&d1))]);
    let fake = archive(plan).await;
    let debs = [
        (&a, pkg(&fake, "overloaded", &a)),
        (&b, pkg(&fake, "cut-short", &b)),
        (&c, pkg(&fake, "reset", &c)),
        (&d, pkg(&fake, "fine", &d)),
        (&e, pkg(&fake, "no-length", &e)),
    ];
    let (_dir, store) = store();
    let lock = lock_of(debs.iter().map(|(_, p)| p.clone()).collect());
    let started = Mutex::new(vec![]);
    let report = fetch(&store, &lock, false, |p| {
        started.lock().unwrap().push(p.name.clone())
    })
    .await
    .unwrap();
    assert_eq!(report.downloaded, 5);
    assert_eq!(
        report.bytes,
        (a.len() + b.len() + c.len() + d.len() + e.len()) as u64
    );
    assert_eq!(started.lock().unwrap().len(), 5, "one notice per .deb");
    assert_eq!(fake.count("GET", "/debian/pool/main/overloaded"), 3);
    assert_eq!(fake.count("GET", "/debian/pool/main/cut-short"), 2);
    assert_eq!(fake.count("GET", "/debian/pool/main/reset"), 2);
    assert_eq!(fake.count("GET", "/debian/pool/main/fine"), 1);
    assert_eq!(fake.count("GET", "/debian/pool/main/no-length"), 2);
    assert_eq!(
        std::fs::read_dir(store.tmp_dir()).unwrap().count(),
        0,
        "no temp file is left behind"
    );
    for (data, p) in &debs {
        let digest = p.digest().unwrap().unwrap();
        assert!(store.has_blob(&digest), "{} stored", p.name);
        assert_eq!(Digest::of(data), digest);
    }

    // Everything is there now: a second fetch downloads nothing.
    let again = fetch(&store, &lock, true, |_| panic!("nothing to download"))
        .await
        .unwrap();
    assert_eq!((again.downloaded, again.already), (0, 5));
}

#[tokio::test]
async fn a_wrong_deb_is_refused_at_once_and_stores_nothing() {
    let wrong = vec![b'x'; 4_000];
    let mut plan: Plan = HashMap::new();
    plan.insert(deb_path("evil"), vec![Box::new(move || ok(&wrong))]);
    let fake = archive(plan).await;
    // The lock wants other bytes of the same length.
    let p = pkg(&fake, "evil", &bytes_of("evil", 4_000));
    let (_dir, store) = store();
    let err = fetch(&store, &lock_of(vec![p.clone()]), false, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Mismatch { .. }), "{err:?}");
    assert_eq!(
        fake.count("GET", "/debian/"),
        1,
        "a mismatch is not retried"
    );
    assert!(!store.has_blob(&p.digest().unwrap().unwrap()));
    let text = format!("{err}");
    assert!(
        text.contains("evil 1.0-1") && text.contains("does not match the lock"),
        "{text}"
    );
}

#[tokio::test]
async fn a_deb_the_archive_no_longer_has_is_named_with_a_hint() {
    let fake = archive(HashMap::new()).await;
    let p = pkg(&fake, "gone", &bytes_of("gone", 100));
    let (_dir, store) = store();
    let err = fetch(&store, &lock_of(vec![p]), false, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Gone { .. }), "{err:?}");
    assert_eq!(fake.count("GET", "/debian/"), 1, "a 404 is not retried");
    assert!(format!("{err}").contains("snapshot"), "{err}");
}

#[tokio::test]
async fn an_archive_that_always_fails_is_given_up_on_with_the_count() {
    let mut plan: Plan = HashMap::new();
    plan.insert(deb_path("down"), vec![Box::new(|| status(502))]);
    let fake = archive(plan).await;
    let p = pkg(&fake, "down", &bytes_of("down", 100));
    let (_dir, store) = store();
    let err = fetch(&store, &lock_of(vec![p]), false, |_| {})
        .await
        .unwrap_err();
    assert!(
        format!("{err}").starts_with("down 1.0-1: giving up after 5 attempts"),
        "{err}"
    );
    match &err {
        FetchError::Retried {
            attempts, source, ..
        } => {
            assert_eq!(*attempts, 5);
            assert!(
                matches!(**source, FetchError::Status { status: 502, .. }),
                "{source:?}"
            );
        }
        other => panic!("expected Retried, got {other:?}"),
    }
    assert_eq!(fake.count("GET", "/debian/"), 5);
}

#[tokio::test]
async fn a_permanent_failure_after_a_transient_one_is_reported_as_itself() {
    let mut plan: Plan = HashMap::new();
    plan.insert(
        deb_path("flaky"),
        vec![Box::new(|| status(503)), Box::new(|| status(404))],
    );
    let fake = archive(plan).await;
    let p = pkg(&fake, "flaky", &bytes_of("flaky", 100));
    let (_dir, store) = store();
    let err = fetch(&store, &lock_of(vec![p]), false, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Gone { .. }), "{err:?}");
    assert_eq!(fake.count("GET", "/debian/"), 2);
    assert!(std::fs::read_dir(store.tmp_dir()).unwrap().next().is_none());
}
