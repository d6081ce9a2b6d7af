//! The registry step cache against the test bed's plain-HTTP registry on
//! 127.0.0.1:5000: pushing and loading, concurrent writers, and every kind
//! of bad index, which must give warnings and never errors. Each test uses
//! its own repository. Tests skip, saying why, when TPLBUILD_TEST_REGISTRY
//! is unset (`eval "$(bash scripts/testbed env)"`).

use std::collections::BTreeMap;

use rand::RngCore;
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

    /// A step whose (random) layer is in the store.
    fn step(&self, name: &str) -> StepRecord {
        let mut layer = vec![0u8; 4096];
        rand::thread_rng().fill_bytes(&mut layer);
        let digest = self.store.put_bytes(&layer).unwrap();
        StepRecord {
            version: STEP_RECORD_VERSION,
            key: Digest::of(format!("{name} {digest}").as_bytes()),
            layer: Descriptor::new(MediaType::OCI_LAYER_GZIP, digest, layer.len() as u64),
            diff_id: Digest::of(format!("diff {name}").as_bytes()),
            uncompressed_size: 8192,
            inputs: BTreeMap::from([("run".to_string(), format!("echo {name}"))]),
            removed_secrets: vec!["etc/machine-id".to_string()],
        }
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
    let report = cache::push(
        &bed.client,
        &bed.store,
        &bed.reference,
        &[a.clone(), b.clone()],
    )
    .await
    .unwrap();
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
    let again = cache::push(&bed.client, &bed.store, &bed.reference, &[a, b])
        .await
        .unwrap();
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
    cache::push(
        &bed.client,
        &bed.store,
        &bed.reference,
        std::slice::from_ref(&a),
    )
    .await
    .unwrap();
    let report = cache::push(
        &bed.client,
        &bed.store,
        &bed.reference,
        std::slice::from_ref(&b),
    )
    .await
    .unwrap();
    assert_eq!((report.entries_total, report.entries_added), (2, 1));
    let cache = bed.load().await;
    assert!(cache.lookup(&a.key).is_some() && cache.lookup(&b.key).is_some());
}

#[tokio::test]
async fn fetch_into_store_makes_a_fresh_store_hit() {
    let Some(bed) = Bed::new("fetch") else { return };
    let a = bed.step("a");
    cache::push(
        &bed.client,
        &bed.store,
        &bed.reference,
        std::slice::from_ref(&a),
    )
    .await
    .unwrap();
    let (_dir, fresh) = bed.fresh_store();
    let cache = bed.load().await;
    assert!(cache.lookup(&a.key).is_some());
    // lookup alone downloads nothing.
    assert!(!fresh.has_blob(&a.layer.digest));
    assert_eq!(fresh.get_step(&a.key).unwrap(), None);

    let rec = cache
        .fetch_into_store(&bed.client, &fresh, &a.key)
        .await
        .unwrap()
        .expect("a hit");
    assert_eq!(rec, a);
    assert_eq!(fresh.get_step(&a.key).unwrap(), Some(a.clone()));
    fresh.verify_blob(&a.layer.digest).unwrap();
    assert!(cache.take_fetch_warnings().is_empty());
}
