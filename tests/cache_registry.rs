//! The registry step cache against the test bed's plain-HTTP registry on
//! 127.0.0.1:5000: pushing and loading, concurrent writers, and every kind
//! of bad index, which must give warnings and never errors. Each test uses
//! its own repository. Tests skip, saying why, when TPLBUILD_TEST_REGISTRY
//! is unset (`eval "$(bash scripts/testbed env)"`).

use rand::RngCore;
use tplbuild::build::step_cache::StepLabel;
use tplbuild::build::{HitSource, StepCache};
use tplbuild::cache::{
    self, CacheError, RemoteCache, CACHE_ARTIFACT_TYPE, EMPTY_MEDIA_TYPE, INDEX_MEDIA_TYPE,
};
use tplbuild::oci::{Descriptor, Digest, MediaType, Reference};
use tplbuild::registry::{Client, CredentialSource, RegistrySettings};
use tplbuild::store::steps::STEP_RECORD_VERSION;
use tplbuild::store::{StepRecord, Store};

fn registry() -> Option<String> {
    match std::env::var("TPLBUILD_TEST_REGISTRY") {
        Ok(r) if !r.is_empty() => Some(r),
        _ => {
            eprintln!("skipped: TPLBUILD_TEST_REGISTRY is unset (run `eval \"$(bash scripts/testbed env)\"`)");
            if std::env::var_os("CI").is_some() {
                panic!("the test bed must be up in CI");
            }
            None
        }
    }
}

struct Bed {
    client: Client,
    reference: Reference,
    _dir: tempfile::TempDir,
    store: Store,
}

impl Bed {
    /// Push `steps` from this bed's store to its repository.
    async fn push(&self, steps: &[StepRecord]) -> Result<cache::PushReport, CacheError> {
        cache::push(&self.client, &self.store, &self.reference, steps).await
    }

    /// A client, a fresh store and a repository no other test uses.
    fn new(name: &str) -> Option<Bed> {
        let reg = registry()?;
        let client = Client::with_credentials(
            RegistrySettings::default().with_insecure(&reg),
            CredentialSource::None,
        )
        .unwrap();
        let reference = Reference::parse(&format!(
            "{reg}/tplbuild-test/cache-{name}-{:08x}:buildcache",
            rand::random::<u32>()
        ))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        Some(Bed {
            client,
            reference,
            _dir: dir,
            store,
        })
    }

    /// Another empty store: the fresh CI machine.
    fn fresh_store(&self) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    /// A step whose (random) layer is in the bed's store.
    fn step(&self, name: &str) -> StepRecord {
        step_in(&self.store, name)
    }

    async fn load(&self) -> RemoteCache {
        RemoteCache::load(&self.client, &self.reference)
            .await
            .unwrap()
    }

    /// Push a blob straight from memory.
    async fn push_blob(&self, bytes: &[u8], media_type: &str) -> Descriptor {
        let desc = Descriptor::new(media_type, Digest::of(bytes), bytes.len() as u64);
        let path = self._dir.path().join(desc.digest.hex());
        fs_err::write(&path, bytes).unwrap();
        self.client
            .push_blob_file(&self.reference, &desc, &path, None)
            .await
            .unwrap();
        desc
    }

    /// Replace the index with a cache manifest whose index blob is `index`.
    async fn put_raw_index(&self, index: &[u8]) {
        let config = self.push_blob(b"{}", EMPTY_MEDIA_TYPE).await;
        let blob = self.push_blob(index, INDEX_MEDIA_TYPE).await;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MediaType::OCI_MANIFEST,
            "artifactType": CACHE_ARTIFACT_TYPE,
            "config": config,
            "layers": [blob],
        });
        self.client
            .put_manifest(
                &self.reference,
                &serde_json::to_vec(&manifest).unwrap(),
                MediaType::OCI_MANIFEST,
            )
            .await
            .unwrap();
    }

    /// The registry's DELETE blob API (the test bed enables deletes).
    async fn delete_blob(&self, digest: &Digest) {
        let url = format!(
            "http://{}/v2/{}/blobs/{digest}",
            self.reference.registry, self.reference.repository
        );
        let status = reqwest::Client::new()
            .delete(url)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 202, "deleting {digest}");
    }
}

/// A step whose (random) layer is in `store`.
fn step_in(store: &Store, name: &str) -> StepRecord {
    let mut layer = vec![0u8; 4096];
    rand::thread_rng().fill_bytes(&mut layer);
    let digest = store.put_bytes(&layer).unwrap();
    StepRecord {
        version: STEP_RECORD_VERSION,
        key: Digest::of(format!("{name} {digest}").as_bytes()),
        layer: Descriptor::new(MediaType::OCI_LAYER_GZIP, digest, layer.len() as u64),
        diff_id: Digest::of(format!("diff {name}").as_bytes()),
        uncompressed_size: 8192,
        inputs: serde_json::json!({"inputs": {"run": format!("echo {name}")}}),
        removed_secrets: vec!["etc/machine-id".to_string()],
        packages: None,
    }
}

#[tokio::test]
async fn absent_tag_is_an_empty_cache_without_warning() {
    let Some(bed) = Bed::new("absent") else {
        return;
    };
    let cache = bed.load().await;
    assert!(cache.is_empty());
    assert!(cache.warnings.is_empty(), "{:?}", cache.warnings);
}

#[tokio::test]
async fn pushed_records_are_seen_by_load_with_their_inputs() {
    let Some(bed) = Bed::new("two") else { return };
    let (a, b) = (bed.step("a"), bed.step("b"));
    let report = bed.push(&[a.clone(), b.clone()]).await.unwrap();
    assert_eq!(report.entries_total, 2);
    assert_eq!(report.entries_added, 2);
    assert_eq!(report.blobs_uploaded, 2);
    assert_eq!(report.retries, 0);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    let cache = bed.load().await;
    assert!(cache.warnings.is_empty(), "{:?}", cache.warnings);
    assert_eq!(cache.len(), 2);
    let got = cache.lookup(&a.key).expect("a is in the index");
    assert_eq!(got.to_record(&a.key), a);
    assert_eq!(cache.lookup(&b.key).unwrap().to_record(&b.key), b);

    // Pushing the same records again uploads nothing and changes nothing.
    let before = bed
        .client
        .get_manifest(&bed.reference)
        .await
        .unwrap()
        .digest;
    let again = bed.push(&[a, b]).await.unwrap();
    assert_eq!(
        (
            again.entries_total,
            again.entries_added,
            again.blobs_uploaded
        ),
        (2, 0, 0)
    );
    let after = bed
        .client
        .get_manifest(&bed.reference)
        .await
        .unwrap()
        .digest;
    assert_eq!(before, after, "an unchanged index is not rewritten");
}

#[tokio::test]
async fn second_push_merges_with_the_first() {
    let Some(bed) = Bed::new("merge") else { return };
    let (a, b) = (bed.step("a"), bed.step("b"));
    bed.push(std::slice::from_ref(&a)).await.unwrap();
    let report = bed.push(std::slice::from_ref(&b)).await.unwrap();
    assert_eq!((report.entries_total, report.entries_added), (2, 1));
    let cache = bed.load().await;
    assert!(cache.lookup(&a.key).is_some() && cache.lookup(&b.key).is_some());
}

#[tokio::test]
async fn fetch_layer_makes_a_fresh_store_hit() {
    let Some(bed) = Bed::new("fetch") else { return };
    let a = bed.step("a");
    bed.push(std::slice::from_ref(&a)).await.unwrap();
    let (_dir, fresh) = bed.fresh_store();
    let cache = bed.load().await;
    assert!(cache.lookup(&a.key).is_some());
    // lookup alone downloads nothing.
    assert!(!fresh.has_blob(&a.layer.digest));
    assert_eq!(fresh.get_step(&a.key).unwrap(), None);

    let rec = cache
        .fetch_layer(&bed.client, &fresh, &a.key)
        .await
        .unwrap();
    assert_eq!(rec, a);
    assert_eq!(fresh.get_step(&a.key).unwrap(), Some(a.clone()));
    fresh.verify_blob(&a.layer.digest).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_branches_pushing_at_once_both_keep_their_entries() {
    let Some(bed) = Bed::new("race") else { return };
    // What both branches inherited from main.
    let shared = bed.step("main");
    bed.push(std::slice::from_ref(&shared)).await.unwrap();
    let (_dir_b, store_b) = bed.fresh_store();
    let a: Vec<_> = (0..3).map(|i| bed.step(&format!("a{i}"))).collect();
    let b: Vec<_> = (0..3)
        .map(|i| step_in(&store_b, &format!("b{i}")))
        .collect();
    let (ra, rb) = tokio::join!(
        bed.push(&a),
        cache::push(&bed.client, &store_b, &bed.reference, &b),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    eprintln!("retries: branch a {}, branch b {}", ra.retries, rb.retries);
    let cache = bed.load().await;
    assert!(cache.warnings.is_empty(), "{:?}", cache.warnings);
    for rec in a.iter().chain(&b).chain([&shared]) {
        assert!(cache.lookup(&rec.key).is_some(), "lost {}", rec.key);
    }
    assert_eq!(cache.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_over_several_rounds_lose_nothing() {
    let Some(bed) = Bed::new("stampede") else {
        return;
    };
    const WRITERS: usize = 4;
    const ROUNDS: usize = 3;
    let stores: Vec<_> = (0..WRITERS).map(|_| bed.fresh_store()).collect();
    let writer = |w: usize| {
        let (bed, store) = (&bed, &stores[w].1);
        async move {
            let mut pushed = Vec::new();
            let mut retries = 0;
            for round in 0..ROUNDS {
                let rec = step_in(store, &format!("w{w} r{round}"));
                let report = cache::push(
                    &bed.client,
                    store,
                    &bed.reference,
                    std::slice::from_ref(&rec),
                )
                .await
                .unwrap();
                retries += report.retries;
                pushed.push(rec.key);
            }
            (pushed, retries)
        }
    };
    let results = futures_util::future::join_all((0..WRITERS).map(writer)).await;
    let retries: u32 = results.iter().map(|(_, r)| r).sum();
    eprintln!("retries over all writers: {retries}");
    let cache = bed.load().await;
    for (keys, _) in &results {
        for k in keys {
            assert!(cache.lookup(k).is_some(), "lost {k}");
        }
    }
    assert_eq!(cache.len(), WRITERS * ROUNDS);
}

#[tokio::test]
async fn corrupt_index_blob_loads_empty_with_a_warning_and_a_push_repairs_it() {
    let Some(bed) = Bed::new("corrupt") else {
        return;
    };
    bed.put_raw_index(b"\x1f\x8b\x08 this is not JSON").await;
    let cache = bed.load().await;
    assert!(cache.is_empty());
    assert_eq!(cache.warnings.len(), 1, "{:?}", cache.warnings);
    assert!(
        cache.warnings[0].contains("not JSON"),
        "{:?}",
        cache.warnings
    );

    let a = bed.step("a");
    let report = bed.push(std::slice::from_ref(&a)).await.unwrap();
    assert!(
        report.warnings.iter().any(|w| w.contains("not JSON")),
        "{:?}",
        report.warnings
    );
    let cache = bed.load().await;
    assert!(cache.warnings.is_empty(), "{:?}", cache.warnings);
    assert!(cache.lookup(&a.key).is_some());
}

#[tokio::test]
async fn newer_index_version_is_ignored_with_a_warning_and_never_overwritten() {
    let Some(bed) = Bed::new("newer") else { return };
    let step = bed.step("a");
    let future = serde_json::json!({
        "version": 99,
        "entries": { step.key.to_string(): {"layer": step.layer, "anything": "new"} },
    });
    bed.put_raw_index(&serde_json::to_vec(&future).unwrap())
        .await;
    let cache = bed.load().await;
    assert!(cache.is_empty() && cache.lookup(&step.key).is_none());
    assert_eq!(cache.warnings.len(), 1, "{:?}", cache.warnings);
    assert!(
        cache.warnings[0].contains("newer tplbuild"),
        "{:?}",
        cache.warnings
    );

    let before = bed
        .client
        .get_manifest(&bed.reference)
        .await
        .unwrap()
        .digest;
    let err = bed.push(&[step]).await.unwrap_err();
    assert!(
        matches!(err, CacheError::NewerIndex { version: 99, .. }),
        "{err}"
    );
    let after = bed
        .client
        .get_manifest(&bed.reference)
        .await
        .unwrap()
        .digest;
    assert_eq!(before, after);
}

#[tokio::test]
async fn an_image_at_the_tag_is_not_a_cache_and_is_not_overwritten() {
    let Some(bed) = Bed::new("foreign") else {
        return;
    };
    let config = bed
        .push_blob(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
            MediaType::OCI_CONFIG,
        )
        .await;
    let image = serde_json::json!({
        "schemaVersion": 2, "mediaType": MediaType::OCI_MANIFEST, "config": config, "layers": [],
    });
    bed.client
        .put_manifest(
            &bed.reference,
            &serde_json::to_vec(&image).unwrap(),
            MediaType::OCI_MANIFEST,
        )
        .await
        .unwrap();
    let cache = bed.load().await;
    assert!(cache.is_empty());
    assert!(
        cache.warnings[0].contains("not a tplbuild cache"),
        "{:?}",
        cache.warnings
    );
    let err = bed.push(&[bed.step("a")]).await.unwrap_err();
    assert!(matches!(err, CacheError::NotACache { .. }), "{err}");
}

#[tokio::test]
async fn entry_whose_layer_was_deleted_is_a_miss_with_a_warning() {
    let Some(bed) = Bed::new("deleted") else {
        return;
    };
    let (a, b) = (bed.step("a"), bed.step("b"));
    bed.push(&[a.clone(), b.clone()]).await.unwrap();
    bed.delete_blob(&a.layer.digest).await;

    let (_dir, fresh) = bed.fresh_store();
    let cache = bed.load().await;
    assert!(cache.warnings.is_empty(), "{:?}", cache.warnings);
    // The index still names it; the build's step cache finds out.
    assert!(cache.lookup(&a.key).is_some());
    let mut steps = StepCache::new(&fresh, &bed.client, vec![cache]);
    let label = |n: usize| StepLabel {
        number: n,
        text: format!("RUN step {n}"),
        location: format!("Buildfile:{n}"),
    };
    assert_eq!(steps.lookup(&a.key, &label(1)).await.unwrap(), None);
    let warnings = steps.take_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&a.layer.digest.to_string()) && warnings[0].contains("step 1"),
        "{warnings:?}"
    );
    assert!(steps.unusable_reason(&a.key).is_some());
    assert_eq!(
        steps.lookup(&a.key, &label(1)).await.unwrap(),
        None,
        "the entry is ignored from then on"
    );
    assert!(steps.take_warnings().is_empty(), "warned once");
    assert_eq!(fresh.get_step(&a.key).unwrap(), None);
    assert!(!fresh.has_blob(&a.layer.digest));
    // The other entry still works.
    let hit = steps
        .lookup(&b.key, &label(2))
        .await
        .unwrap()
        .expect("a registry hit");
    assert!(matches!(hit.from, HitSource::Registry(_)));
    assert!(steps
        .fetch(&[(b.key.clone(), &hit, label(2))])
        .await
        .is_empty());
    assert_eq!(fresh.get_step(&b.key).unwrap(), Some(b.clone()));
}

#[tokio::test]
async fn push_over_an_entry_whose_layer_vanished_drops_that_entry() {
    let Some(bed) = Bed::new("vanished") else {
        return;
    };
    let (a, b) = (bed.step("a"), bed.step("b"));
    bed.push(&[a.clone(), b.clone()]).await.unwrap();
    bed.delete_blob(&a.layer.digest).await;
    // The registry refuses a manifest that lists a blob it no longer has.
    let (_dir, other) = bed.fresh_store();
    let c = step_in(&other, "c");
    let report = cache::push(
        &bed.client,
        &other,
        &bed.reference,
        std::slice::from_ref(&c),
    )
    .await
    .unwrap();
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains(&a.layer.digest.to_string()),
        "{:?}",
        report.warnings
    );
    assert_eq!(report.entries_total, 2);
    let cache = bed.load().await;
    assert!(cache.lookup(&a.key).is_none());
    assert!(cache.lookup(&b.key).is_some() && cache.lookup(&c.key).is_some());
}

#[tokio::test]
async fn push_to_another_repository_mounts_layers_that_are_not_local() {
    let Some(bed) = Bed::new("mount-src") else {
        return;
    };
    let (a, b) = (bed.step("a"), bed.step("b"));
    bed.push(&[a.clone(), b.clone()]).await.unwrap();
    // A CI machine that took a and b from the cache without downloading them.
    let (_dir, fresh) = bed.fresh_store();
    let Some(target) = Bed::new("mount-dst") else {
        return;
    };
    let err = cache::push(
        &bed.client,
        &fresh,
        &target.reference,
        std::slice::from_ref(&a),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CacheError::LayerUnavailable { .. }), "{err}");
    let report = cache::push_from(
        &bed.client,
        &fresh,
        &target.reference,
        &[a.clone(), b.clone()],
        Some(&bed.reference),
    )
    .await
    .unwrap();
    assert_eq!((report.blobs_mounted, report.blobs_uploaded), (2, 0));
    let cache = target.load().await;
    assert_eq!(cache.len(), 2);
    // Both layers now resolve in the target repository.
    for rec in [&a, &b] {
        assert!(bed
            .client
            .blob_exists(&target.reference, &rec.layer.digest)
            .await
            .unwrap()
            .is_some());
    }
}
