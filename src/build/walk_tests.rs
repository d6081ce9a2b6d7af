//! The step walk on a scripted executor: no engine, no registry server
//! (except a tiny one that HEADs yes and GETs 404), milliseconds each.

use std::collections::BTreeMap;

use super::step_cache::{HitSource, StepCache};
use super::test_plan::client_for;
use super::walk::{self, Executor, StepJob, StepStatus, WalkOptions};
use crate::cache::{CacheEntry, RemoteCache};
use crate::oci::{Descriptor, Digest, MediaType, Reference};
use crate::plan::Plan;
use crate::progress::{Progress, ProgressMode};
use crate::registry::Client;
use crate::store::{StepRecord, Store};

/// Runs a step by storing a layer whose bytes are `outputs[step]` (or the
/// step's text), so a test decides which steps give the same layer.
struct Scripted {
    store: Store,
    outputs: BTreeMap<usize, &'static str>,
    fail: Option<usize>,
    ran: Vec<usize>,
}

impl Scripted {
    fn new(store: &Store) -> Self {
        Scripted {
            store: store.clone(),
            outputs: BTreeMap::new(),
            fail: None,
            ran: vec![],
        }
    }
}

impl Executor for Scripted {
    async fn run(&mut self, job: StepJob<'_>, _: &mut Progress) -> anyhow::Result<StepRecord> {
        let n = job.step.number;
        self.ran.push(n);
        if self.fail == Some(n) {
            anyhow::bail!("step {n} failed");
        }
        let bytes = self
            .outputs
            .get(&n)
            .map(|s| s.to_string())
            .unwrap_or_else(|| job.step.text.clone());
        let digest = self.store.put_bytes(bytes.as_bytes())?;
        let rec = StepRecord {
            version: crate::store::steps::STEP_RECORD_VERSION,
            key: job.key.clone(),
            layer: Descriptor::new(MediaType::OCI_LAYER_GZIP, digest, bytes.len() as u64),
            diff_id: Digest::of(format!("tar {bytes}").as_bytes()),
            uncompressed_size: bytes.len() as u64,
            inputs: job.inputs,
            removed_secrets: vec![],
            packages: None,
        };
        self.store.put_step(&rec)?;
        Ok(rec)
    }
}

struct Bed {
    dir: tempfile::TempDir,
    store: Store,
    client: Client,
}

impl Bed {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("home")).unwrap();
        Bed {
            dir,
            store,
            client: client_for("127.0.0.1:9"),
        }
    }

    fn plan(&self, body: &str) -> Plan {
        super::test_plan::plan_in(self.dir.path(), body)
    }

    async fn build(&self, plan: &Plan, exec: &mut Scripted) -> anyhow::Result<walk::Walked> {
        self.build_with(plan, exec, vec![], WalkOptions::default())
            .await
    }

    async fn build_with(
        &self,
        plan: &Plan,
        exec: &mut Scripted,
        remotes: Vec<RemoteCache>,
        opts: WalkOptions,
    ) -> anyhow::Result<walk::Walked> {
        let mut cache = StepCache::new(&self.store, &self.client, remotes);
        let mut progress = Progress::new(ProgressMode::Plain);
        let walked = walk::walk(plan, &mut cache, Some(exec), opts, &mut progress).await?;
        crate::plan::explain::save(&self.store, &plan.buildfile.path, &walked.recorded);
        Ok(walked)
    }

    async fn plan_walk(&self, plan: &Plan, remotes: Vec<RemoteCache>) -> walk::Walked {
        let mut cache = StepCache::new(&self.store, &self.client, remotes);
        walk::plan(plan, &mut cache).await.unwrap()
    }
}

fn statuses(w: &walk::Walked) -> Vec<StepStatus> {
    w.steps.iter().map(|s| s.status.clone()).collect()
}

fn local() -> StepStatus {
    StepStatus::Hit {
        from: HitSource::Local,
    }
}

fn is_miss(s: &StepStatus) -> bool {
    matches!(s, StepStatus::Miss { .. })
}

const THREE: &str = "RUN one\nRUN two\nRUN three\n";

#[tokio::test]
async fn a_cold_build_runs_every_step_and_the_rebuild_runs_none() {
    let bed = Bed::new();
    let plan = bed.plan(THREE);
    let cold = bed.plan_walk(&plan, vec![]).await;
    assert!(is_miss(&cold.steps[0].status));
    assert_eq!(
        statuses(&cold)[1..],
        [StepStatus::After(1), StepStatus::After(1)]
    );
    assert!(cold.steps[1].key.is_none(), "later keys are unknown");

    let mut exec = Scripted::new(&bed.store);
    let built = bed.build(&plan, &mut exec).await.unwrap();
    assert_eq!(exec.ran, [1, 2, 3]);
    assert!(statuses(&built).iter().all(is_miss));
    assert_eq!(built.image.layers().len(), 3);

    let mut exec = Scripted::new(&bed.store);
    let again = bed.build(&plan, &mut exec).await.unwrap();
    assert!(exec.ran.is_empty(), "nothing runs");
    assert_eq!(statuses(&again), [local(), local(), local()]);
    assert_eq!(again.image.digest(), built.image.digest());
    // plan says what the build did.
    assert_eq!(
        statuses(&bed.plan_walk(&plan, vec![]).await),
        statuses(&again)
    );
}

#[tokio::test]
async fn a_changed_step_that_gives_the_same_layer_lets_later_steps_hit() {
    let bed = Bed::new();
    let mut exec = Scripted::new(&bed.store);
    exec.outputs.insert(1, "same layer");
    bed.build(&bed.plan(THREE), &mut exec).await.unwrap();

    let changed = bed.plan("RUN one, reworded\nRUN two\nRUN three\n");
    let planned = bed.plan_walk(&changed, vec![]).await;
    let StepStatus::Miss { reasons } = &planned.steps[0].status else {
        panic!("{:?}", planned.steps[0].status)
    };
    assert!(reasons[0].contains("instruction changed"), "{reasons:?}");

    let mut exec = Scripted::new(&bed.store);
    exec.outputs.insert(1, "same layer");
    let built = bed.build(&changed, &mut exec).await.unwrap();
    assert_eq!(exec.ran, [1], "early cutoff");
    assert!(is_miss(&built.steps[0].status));
    assert_eq!(statuses(&built)[1..], [local(), local()]);
}

#[tokio::test]
async fn plan_and_build_agree_up_to_the_first_miss() {
    let bed = Bed::new();
    bed.build(&bed.plan(THREE), &mut Scripted::new(&bed.store))
        .await
        .unwrap();
    let changed = bed.plan("RUN one\nRUN two, changed\nRUN three\n");
    let planned = statuses(&bed.plan_walk(&changed, vec![]).await);
    assert_eq!(planned[0], local());
    assert!(is_miss(&planned[1]));
    assert_eq!(planned[2], StepStatus::After(2));
    let mut exec = Scripted::new(&bed.store);
    let built = statuses(&bed.build(&changed, &mut exec).await.unwrap());
    assert_eq!(built[..2], planned[..2]);
    assert_eq!(exec.ran, [2, 3]);
}

#[tokio::test]
async fn no_cache_runs_every_step() {
    let bed = Bed::new();
    let plan = bed.plan(THREE);
    bed.build(&plan, &mut Scripted::new(&bed.store))
        .await
        .unwrap();
    let mut exec = Scripted::new(&bed.store);
    let opts = WalkOptions {
        no_cache: true,
        ..Default::default()
    };
    let built = bed
        .build_with(&plan, &mut exec, vec![], opts)
        .await
        .unwrap();
    assert_eq!(exec.ran, [1, 2, 3]);
    assert!(built.steps.iter().all(|s| s.status
        == StepStatus::Miss {
            reasons: vec!["--no-cache".into()]
        }));
}

#[tokio::test]
async fn a_failing_step_records_nothing_for_itself() {
    let bed = Bed::new();
    let plan = bed.plan(THREE);
    let mut exec = Scripted::new(&bed.store);
    exec.fail = Some(2);
    let err = bed.build(&plan, &mut exec).await.unwrap_err();
    assert_eq!(err.to_string(), "step 2 failed");
    assert_eq!(exec.ran, [1, 2], "nothing runs after the failure");
    // Step 1 was kept; the rebuild starts at step 2.
    let planned = statuses(&bed.plan_walk(&plan, vec![]).await);
    assert_eq!(planned[0], local());
    assert!(is_miss(&planned[1]));
}

/// A registry cache naming step 1 of THREE, at `host`.
fn remote_with_step_one(bed: &Bed, host: &str) -> (RemoteCache, Digest) {
    let plan = bed.plan(THREE);
    let key = plan.key(&plan.steps[0], plan.base.image.diff_ids());
    let layer = b"from the registry";
    let entry = CacheEntry {
        diff_id: Digest::of(b"tar from the registry"),
        inputs: serde_json::Value::Null,
        layer: Descriptor::new(
            MediaType::OCI_LAYER_GZIP,
            Digest::of(layer),
            layer.len() as u64,
        ),
        packages: None,
        removed_secrets: vec![],
        uncompressed_size: 3,
    };
    let reference = Reference::parse(&format!("{host}/cache/unit:buildcache")).unwrap();
    let cache = RemoteCache::from_parts(reference, BTreeMap::from([(key, entry)]), vec![]);
    (cache, Digest::of(layer))
}

#[tokio::test]
async fn an_unreachable_registry_cache_is_one_warning_and_the_step_runs() {
    let bed = Bed::new();
    let (remote, _) = remote_with_step_one(&bed, "127.0.0.1:9");
    let planned = bed
        .plan_walk(
            &bed.plan(THREE),
            vec![remote_with_step_one(&bed, "127.0.0.1:9").0],
        )
        .await;
    assert!(is_miss(&planned.steps[0].status));
    assert_eq!(planned.warnings.len(), 1, "{:?}", planned.warnings);

    let mut exec = Scripted::new(&bed.store);
    let built = bed
        .build_with(
            &bed.plan(THREE),
            &mut exec,
            vec![remote],
            WalkOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(exec.ran, [1, 2, 3]);
    assert_eq!(built.warnings.len(), 1, "{:?}", built.warnings);
    assert!(
        built.warnings[0].contains("cannot be reached"),
        "{:?}",
        built.warnings
    );
    let StepStatus::Miss { reasons } = &built.steps[0].status else {
        panic!()
    };
    assert!(reasons[0].contains("cannot be reached"), "{reasons:?}");
}

/// A registry that has every blob (HEAD 200) but serves none (GET 404),
/// like a registry whose blob files were lost behind its metadata.
async fn head_yes_get_no() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = c.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let reply = if req.starts_with("HEAD ") {
                    "HTTP/1.1 200 OK\r\nContent-Length: 17\r\nConnection: close\r\n\r\n"
                } else if req.starts_with("GET /v2/ ") {
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = c.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_registry_hit_whose_layer_cannot_be_fetched_becomes_a_miss_with_one_warning() {
    let mut bed = Bed::new();
    let host = head_yes_get_no().await;
    bed.client = client_for(&host);
    let (remote, layer) = remote_with_step_one(&bed, &host);
    let plan = bed.plan(THREE);
    // plan only HEADs: a hit.
    let planned = bed
        .plan_walk(&plan, vec![remote_with_step_one(&bed, &host).0])
        .await;
    assert!(matches!(
        planned.steps[0].status,
        StepStatus::Hit {
            from: HitSource::Registry(_)
        }
    ));
    // The build needs step 1's layer to run step 2 on it: the fetch fails,
    // the walk goes back, step 1 runs.
    let mut exec = Scripted::new(&bed.store);
    let built = bed
        .build_with(&plan, &mut exec, vec![remote], WalkOptions::default())
        .await
        .unwrap();
    assert_eq!(exec.ran, [1, 2, 3]);
    assert!(
        statuses(&built).iter().all(is_miss),
        "{:?}",
        statuses(&built)
    );
    assert_eq!(built.warnings.len(), 1, "{:?}", built.warnings);
    let w = &built.warnings[0];
    assert!(
        w.contains("step 1") && w.contains("RUN one") && w.contains(&layer.to_string()),
        "{w}"
    );
    assert!(!bed.store.has_blob(&layer));
}

#[tokio::test]
async fn registry_hits_are_not_downloaded_unless_needed() {
    let mut bed = Bed::new();
    let host = head_yes_get_no().await;
    bed.client = client_for(&host);
    let (remote, layer) = remote_with_step_one(&bed, &host);
    let plan = bed.plan("RUN one\n");
    let mut exec = Scripted::new(&bed.store);
    let built = bed
        .build_with(&plan, &mut exec, vec![remote], WalkOptions::default())
        .await
        .unwrap();
    assert!(exec.ran.is_empty());
    assert!(built.warnings.is_empty());
    assert!(!bed.store.has_blob(&layer), "nothing was fetched");
}

#[tokio::test]
async fn a_keep_only_change_misses_with_keep_changed() {
    let bed = Bed::new();
    bed.build(&bed.plan(THREE), &mut Scripted::new(&bed.store))
        .await
        .unwrap();
    let kept = bed.plan(&format!("KEEP machine-id\n{THREE}"));
    let planned = bed.plan_walk(&kept, vec![]).await;
    assert_eq!(
        planned.steps[0].status,
        StepStatus::Miss {
            reasons: vec!["KEEP changed".into()]
        }
    );
}
