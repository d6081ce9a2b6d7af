//! The step runner on the fake engine: what a step's container is given,
//! what becomes of its changes, and that it is removed on every path (a
//! success, a failed command, a command that never started, an interrupt),
//! with nothing recorded for a step that did not finish. Milliseconds each.

use std::io::Read;
use std::sync::Arc;

use super::signals::Signals;
use super::{BuildError, BuildOptions};
use crate::engine::fake::{Effect, FakeEngine};
use crate::engine::{EngineError, Network};
use crate::oci::Digest;
use crate::plan::Plan;
use crate::progress::{Progress, ProgressMode};
use crate::registry::Client;
use crate::store::Store;
use crate::transfer::Sources;

use super::run::Runner;

struct Bed {
    dir: tempfile::TempDir,
    store: Store,
    client: Client,
    engine: Arc<FakeEngine>,
}

impl Bed {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("home")).unwrap();
        Bed {
            dir,
            store,
            client: super::test_plan::client_for("127.0.0.1:9"),
            engine: Arc::new(FakeEngine::new()),
        }
    }

    fn plan(&self, body: &str, files: &[(&str, &str)]) -> Plan {
        for (p, content) in files {
            fs_err::write(self.dir.path().join(p), content).unwrap();
        }
        super::test_plan::plan_in(self.dir.path(), body)
    }

    async fn runner(&self) -> Runner {
        let opts = BuildOptions {
            engine: Default::default(),
            network: Network::Host,
            diff: Default::default(),
            no_cache: false,
        };
        Runner::with_engine(
            self.engine.clone(),
            &opts,
            &Progress::new(ProgressMode::Plain),
        )
        .await
    }

    /// Run the plan's first step on the template.
    async fn run_first(
        &self,
        plan: &Plan,
        runner: &mut Runner,
        signals: &Signals,
    ) -> anyhow::Result<crate::store::StepRecord> {
        let mut progress = Progress::new(ProgressMode::Plain);
        let sources = Sources::new(plan.base.source.clone());
        runner
            .run_step(
                &self.store,
                &self.client,
                &sources,
                plan,
                &plan.steps[0],
                &plan.base.image,
                &key(),
                serde_json::json!({}),
                &mut progress,
                signals,
            )
            .await
    }

    /// The paths in a stored layer.
    fn layer_paths(&self, rec: &crate::store::StepRecord) -> Vec<String> {
        let blob = self.store.open_blob(&rec.layer.digest).unwrap();
        let mut r = crate::layer::decompress(blob).unwrap();
        let mut tar = Vec::new();
        r.read_to_end(&mut tar).unwrap();
        tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    fn counts(&self) -> (usize, usize, usize) {
        let c = self.engine.counts.lock().unwrap();
        (c.created, c.removed, c.alive.len())
    }
}

fn key() -> Digest {
    Digest::of(b"a step key")
}

fn signals() -> Signals {
    Signals::for_tests().0
}

#[tokio::test]
async fn a_run_step_becomes_a_layer_of_what_it_wrote_and_its_container_is_removed() {
    let bed = Bed::new();
    let plan = bed.plan("RUN make-it\n", &[]);
    bed.engine.on(
        "make-it",
        Effect {
            lines: vec!["working".into()],
            files: vec![("opt/app/conf".into(), b"x=1\n".to_vec())],
            ..Default::default()
        },
    );
    let mut runner = bed.runner().await;
    let rec = bed.run_first(&plan, &mut runner, &signals()).await.unwrap();
    assert_eq!(bed.layer_paths(&rec), ["opt/", "opt/app/", "opt/app/conf"]);
    assert_eq!(
        bed.store.get_step(&key()).unwrap().unwrap().layer,
        rec.layer
    );
    assert_eq!(bed.counts(), (1, 1, 0), "one container, removed");
    assert_eq!(bed.engine.counts.lock().unwrap().images_loaded, 1);
}

#[tokio::test]
async fn a_step_container_gets_the_epoch_as_source_date_epoch_unless_env_sets_it() {
    let bed = Bed::new();
    let plan = bed.plan("RUN make-it\n", &[]);
    bed.engine.on("make-it", Effect::default());
    let mut runner = bed.runner().await;
    bed.run_first(&plan, &mut runner, &signals()).await.unwrap();
    let plan2 = bed.plan("ENV SOURCE_DATE_EPOCH=42\nRUN make-it\n", &[]);
    let mut runner = bed.runner().await;
    bed.run_first(&plan2, &mut runner, &signals())
        .await
        .unwrap();
    let envs = bed.engine.counts.lock().unwrap().envs.clone();
    let sde = |env: &[String]| -> Vec<String> {
        env.iter()
            .filter(|e| e.starts_with("SOURCE_DATE_EPOCH="))
            .cloned()
            .collect()
    };
    assert_eq!(sde(&envs[0]), [format!("SOURCE_DATE_EPOCH={}", plan.epoch)]);
    assert_eq!(sde(&envs[1]), ["SOURCE_DATE_EPOCH=42"]);
}

#[tokio::test]
async fn a_copy_step_sends_its_files_through_the_engine_with_owner_and_mode() {
    let bed = Bed::new();
    let plan = bed.plan(
        "COPY --chown=7:8 --chmod=0600 motd /etc/motd\n",
        &[("motd", "hi\n")],
    );
    let mut runner = bed.runner().await;
    let rec = bed.run_first(&plan, &mut runner, &signals()).await.unwrap();
    assert_eq!(bed.layer_paths(&rec), ["etc/", "etc/motd"]);
    let blob = bed.store.open_blob(&rec.layer.digest).unwrap();
    let mut tar = Vec::new();
    crate::layer::decompress(blob)
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    let mut ar = tar::Archive::new(&tar[..]);
    let motd = ar.entries().unwrap().nth(1).unwrap().unwrap();
    let h = motd.header();
    assert_eq!(h.mode().unwrap(), 0o600);
    // Owners survive the fake's unpacking only as root.
    if rustix::process::geteuid().is_root() {
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (7, 8));
    }
    assert_eq!(bed.counts(), (1, 1, 0));
}

#[tokio::test]
async fn a_container_whose_command_never_started_is_replaced_and_each_one_removed() {
    let bed = Bed::new();
    let plan = bed.plan("RUN make-it\n", &[]);
    bed.engine.on(
        "make-it",
        Effect {
            files: vec![("x".into(), b"1".to_vec())],
            ..Default::default()
        },
    );
    bed.engine.fail_to_start(2);
    let mut runner = bed.runner().await;
    bed.run_first(&plan, &mut runner, &signals()).await.unwrap();
    assert_eq!(bed.counts(), (3, 3, 0));
    assert_eq!(runner.containers_created, 3);
}

#[tokio::test]
async fn a_command_that_never_starts_three_times_is_the_error_and_nothing_is_left() {
    let bed = Bed::new();
    let plan = bed.plan("RUN make-it\n", &[]);
    bed.engine.fail_to_start(3);
    let mut runner = bed.runner().await;
    let err = bed
        .run_first(&plan, &mut runner, &signals())
        .await
        .unwrap_err();
    assert!(EngineError::never_ran(&err), "{err:#}");
    assert!(format!("{err}").contains("Buildfile:2"), "{err}");
    assert_eq!(bed.counts(), (3, 3, 0));
    assert!(bed.store.get_step(&key()).unwrap().is_none());
}

#[tokio::test]
async fn a_failing_command_names_its_line_keeps_its_last_output_and_records_nothing() {
    let bed = Bed::new();
    let plan = bed.plan("RUN break-it\n", &[]);
    bed.engine.on(
        "break-it",
        Effect {
            lines: vec!["Reading package lists...".into(), "E: oops".into()],
            exit: 100,
            files: vec![("half".into(), b"written".to_vec())],
            ..Default::default()
        },
    );
    let mut runner = bed.runner().await;
    let err = bed
        .run_first(&plan, &mut runner, &signals())
        .await
        .unwrap_err();
    match err.downcast_ref::<BuildError>() {
        Some(BuildError::StepFailed {
            location,
            code,
            tail,
            ..
        }) => {
            assert!(location.ends_with("Buildfile:2"), "{location}");
            assert_eq!(*code, 100);
            assert_eq!(tail.last().map(String::as_str), Some("E: oops"));
        }
        _ => panic!("not a StepFailed: {err:#}"),
    }
    assert_eq!(bed.counts(), (1, 1, 0));
    assert!(bed.store.get_step(&key()).unwrap().is_none());
}

#[tokio::test]
async fn an_interrupt_mid_step_removes_the_container_and_records_nothing() {
    let bed = Bed::new();
    let plan = bed.plan("RUN sleep-forever\n", &[]);
    bed.engine.on(
        "sleep-forever",
        Effect {
            hang: true,
            ..Default::default()
        },
    );
    let (signals, raise) = Signals::for_tests();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let _ = raise.send(130);
    });
    let mut runner = bed.runner().await;
    let err = bed
        .run_first(&plan, &mut runner, &signals)
        .await
        .unwrap_err();
    let code = match err.downcast_ref::<BuildError>() {
        Some(BuildError::Interrupted(i)) => Some(i.exit_code),
        _ => err
            .downcast_ref::<super::Interrupted>()
            .map(|i| i.exit_code),
    };
    assert_eq!(code, Some(130), "{err:#}");
    assert_eq!(bed.counts(), (1, 1, 0));
    assert!(bed.store.get_step(&key()).unwrap().is_none());
}

/// The walk with the build's own executor on the fake engine.
async fn walk_on_fake(bed: &Bed, plan: &Plan, signals: Signals) -> anyhow::Result<Vec<String>> {
    use super::step_cache::StepCache;
    use super::walk::{self, WalkOptions};
    let opts = BuildOptions {
        engine: Default::default(),
        network: Network::Host,
        diff: Default::default(),
        no_cache: false,
    };
    let mut exec = super::RunnerExecutor {
        store: bed.store.clone(),
        client: bed.client.clone(),
        opts: &opts,
        signals,
        runner: Some(bed.runner().await),
    };
    let mut cache = StepCache::new(&bed.store, &bed.client, vec![]);
    let mut progress = Progress::new(ProgressMode::Plain);
    let walked = walk::walk(
        plan,
        &mut cache,
        Some(&mut exec),
        WalkOptions::default(),
        &mut progress,
    )
    .await?;
    crate::plan::explain::save(&bed.store, &plan.buildfile.path, &walked.recorded);
    Ok(walked
        .steps
        .iter()
        .map(|s| s.status.label().to_string())
        .collect())
}

fn writes(path: &str, content: &str) -> Effect {
    Effect {
        files: vec![(path.into(), content.as_bytes().to_vec())],
        ..Default::default()
    }
}

#[tokio::test]
async fn the_walk_on_the_fake_engine_misses_then_hits_and_cuts_off_early() {
    let bed = Bed::new();
    bed.engine.on("step-a", writes("a", "1"));
    bed.engine.on("step-b", writes("b", "2"));
    bed.engine.on("step-c", writes("c", "3"));
    let plan = bed.plan("RUN step-a\nRUN step-b\nRUN step-c\n", &[]);
    let statuses = walk_on_fake(&bed, &plan, signals()).await.unwrap();
    assert_eq!(statuses, ["MISS", "MISS", "MISS"]);
    assert_eq!(bed.counts(), (3, 3, 0));

    // Nothing changed: nothing runs.
    let statuses = walk_on_fake(&bed, &plan, signals()).await.unwrap();
    assert_eq!(statuses, ["HIT", "HIT", "HIT"]);
    assert_eq!(bed.counts(), (3, 3, 0));

    // Step b changes but writes the same: it runs, and c hits again.
    bed.engine.on("step-b --again", writes("b", "2"));
    let plan = bed.plan("RUN step-a\nRUN step-b --again\nRUN step-c\n", &[]);
    let statuses = walk_on_fake(&bed, &plan, signals()).await.unwrap();
    assert_eq!(statuses, ["HIT", "MISS", "HIT"]);
    assert_eq!(bed.counts(), (4, 4, 0));
}

#[tokio::test]
async fn a_walk_interrupted_in_its_second_step_keeps_the_first_and_records_nothing_more() {
    let bed = Bed::new();
    bed.engine.on("step-a", writes("a", "1"));
    bed.engine.on(
        "step-b",
        Effect {
            hang: true,
            ..Default::default()
        },
    );
    let plan = bed.plan("RUN step-a\nRUN step-b\n", &[]);
    let (signals, raise) = Signals::for_tests();
    let counts = bed.engine.counts.clone();
    tokio::spawn(async move {
        // Once the second container exists, press Ctrl-C.
        while counts.lock().unwrap().created < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let _ = raise.send(130);
    });
    assert!(walk_on_fake(&bed, &plan, signals).await.is_err());
    assert_eq!(bed.counts(), (2, 2, 0), "both containers removed");
    // What a plan now says: the first step is built, the second is not.
    let mut cache = super::step_cache::StepCache::new(&bed.store, &bed.client, vec![]);
    let walked = super::walk::plan(&plan, &mut cache).await.unwrap();
    let statuses: Vec<&str> = walked.steps.iter().map(|s| s.status.label()).collect();
    assert_eq!(statuses, ["HIT", "MISS"]);
}
