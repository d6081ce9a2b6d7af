//! `tplbuild build`: walk the plan step by step. A step whose key is in the
//! store is a HIT and runs nothing. A MISS runs in a fresh container created
//! from exactly the parent's layers (loaded into the engine once per parent
//! digest), and its change becomes one normalized layer, stored with its key
//! and the inputs that made it. Because later keys hash the parent's
//! *content*, a step that re-runs and yields the same layer lets every
//! later step hit again (early cutoff).

pub mod diff;
pub mod job;
pub mod multi;
pub mod prepare;
pub mod run;
#[cfg(test)]
mod run_tests;
mod signals;
pub mod step_cache;
pub mod supply;
#[cfg(test)]
mod test_plan;
pub mod walk;
#[cfg(test)]
mod walk_tests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::engine::{EngineChoice, Network};
use crate::image::{keys, Image};
use crate::oci::{Descriptor, Digest, RuntimeConfig};
use crate::plan::explain;
use crate::plan::Plan;
use crate::progress::Progress;
use crate::registry::Client;
use crate::store::{StepRecord, Store};
use crate::transfer;

pub use signals::Interrupted;
pub use step_cache::{Hit, HitSource, StepCache};
pub use walk::{StepReport, StepStatus, WalkOptions};

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub engine: EngineChoice,
    pub network: Network,
    /// Where a step's diff is read from (`--diff`).
    pub diff: crate::engine::DiffChoice,
    pub no_cache: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{location}: `{text}` failed with exit code {code}")]
    StepFailed {
        /// The step's number (1 is FROM).
        step: usize,
        location: String,
        text: String,
        code: i64,
        tail: Vec<String>,
    },
    #[error("{location}: `{text}`")]
    Step {
        location: String,
        text: String,
        #[source]
        source: anyhow::Error,
    },
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

/// What a finished build reports.
#[derive(Debug, Clone)]
pub struct Built {
    pub image: Image,
    /// Every step's record, bottom first (for `--cache-to`).
    pub records: Vec<StepRecord>,
    /// Where the image's blobs can be fetched or mounted from.
    pub sources: transfer::Sources,
    pub hits: usize,
    /// Of `hits`, those found in a registry cache.
    pub remote_hits: usize,
    pub runs: usize,
    pub elapsed: Duration,
    pub removed_secrets: Vec<String>,
    pub containers_created: usize,
    /// The engine that ran the missing steps; `None` when every step was
    /// a cache hit and no engine was asked.
    pub engine: Option<crate::engine::EngineInfo>,
    /// Registry cache problems met on the way (already printed).
    pub warnings: Vec<String>,
}

/// Walk the plan with the engine as executor, then make and store the
/// final image. `need_layers`: the outputs read the image, so every
/// registry hit's layer is fetched (and checked) before this returns.
pub async fn build(
    plan: &Plan,
    cache: &mut StepCache<'_>,
    opts: &BuildOptions,
    need_layers: bool,
    progress: &mut Progress,
) -> anyhow::Result<Built> {
    let started = Instant::now();
    let store = cache.store();
    let mut exec = RunnerExecutor {
        store: store.clone(),
        client: cache.client().clone(),
        opts,
        signals: signals::Signals::install(),
        runner: None,
    };
    let walked = walk::walk(
        plan,
        cache,
        Some(&mut exec),
        WalkOptions {
            no_cache: opts.no_cache,
            need_layers,
        },
        progress,
    )
    .await?;
    let records: Vec<StepRecord> = walked
        .steps
        .iter()
        .filter_map(|s| s.record.clone())
        .collect();
    let count = |f: fn(&StepStatus) -> bool| walked.steps.iter().filter(|s| f(&s.status)).count();
    let hits = count(|s| matches!(s, StepStatus::Hit { .. }));
    let remote_hits = count(|s| {
        matches!(
            s,
            StepStatus::Hit {
                from: HitSource::Registry(_)
            }
        )
    });
    let runs = count(|s| matches!(s, StepStatus::Miss { .. }));
    let removed_secrets = records
        .iter()
        .flat_map(|r| r.removed_secrets.iter().cloned())
        .collect();
    let image = finalize(plan, &walked.image, &records);
    transfer::store_image(store, &image)?;
    explain::save(store, &plan.buildfile.path, &walked.recorded);
    let containers_created = exec.runner.as_ref().map_or(0, |r| r.containers_created);
    let engine = exec.runner.as_ref().map(run::Runner::engine_info);
    Ok(Built {
        image,
        records,
        sources: walked.sources,
        hits,
        remote_hits,
        runs,
        elapsed: started.elapsed(),
        removed_secrets,
        containers_created,
        engine,
        warnings: walked.warnings,
    })
}

/// The build's executor: the engine, connected at the first miss.
struct RunnerExecutor<'a> {
    store: Store,
    client: Client,
    opts: &'a BuildOptions,
    signals: signals::Signals,
    runner: Option<run::Runner>,
}

impl walk::Executor for RunnerExecutor<'_> {
    async fn run(
        &mut self,
        job: walk::StepJob<'_>,
        progress: &mut Progress,
    ) -> anyhow::Result<StepRecord> {
        if self.runner.is_none() {
            self.runner = Some(run::Runner::connect(self.opts, progress).await?);
        }
        let runner = self.runner.as_mut().expect("connected above");
        runner
            .run_step(
                &self.store,
                &self.client,
                job.sources,
                job.plan,
                job.step,
                job.parent,
                job.key,
                job.inputs,
                progress,
                &self.signals,
            )
            .await
    }

    fn check_interrupted(&self) -> anyhow::Result<()> {
        Ok(self.signals.check()?)
    }
}

/// The final image: ENV, LABELs (also as annotations), the template's
/// annotations carried over, base name/digest, and the package list read
/// from the topmost dpkg database.
fn finalize(plan: &Plan, image: &Image, records: &[StepRecord]) -> Image {
    let base = &plan.base.image;
    let mut labels = base.labels();
    labels.extend(plan.labels.clone());
    let mut annotations: BTreeMap<String, String> = base
        .annotations()
        .iter()
        .filter(|(k, _)| {
            k.starts_with("dev.tplbuild.template.") || k.starts_with("org.opencontainers.image.")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let created = crate::epoch::rfc3339(plan.epoch);
    annotations.insert(keys::CREATED.into(), created.clone());
    annotations.insert(
        keys::BASE_NAME.into(),
        plan.buildfile.from.reference.clone(),
    );
    annotations.insert(keys::BASE_DIGEST.into(), base.digest().to_string());
    // The package list after the last step that changed dpkg's database.
    if let Some(pkgs) = records.iter().rev().find_map(|r| r.packages.as_deref()) {
        let count = crate::image::parse_package_lines(pkgs).len();
        annotations.insert(keys::PACKAGE_COUNT.into(), count.to_string());
        labels.insert(keys::PACKAGES.into(), pkgs.to_string());
    }
    for (k, v) in &plan.labels {
        annotations.insert(k.clone(), v.clone());
    }
    let mut runtime: RuntimeConfig = base.config.config.clone().unwrap_or_default();
    runtime.env = plan
        .final_env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    runtime.labels = labels;
    image.with_metadata(runtime, Some(created), annotations)
}

/// JSON summary for `--progress json` and the human one.
/// The end of a build: typed fields for `--progress json`, one line for
/// people. `total` is the whole job (resolving, pulling, exporting), the
/// walk's own time is `steps_ms`.
pub fn summary(
    built: &Built,
    tags: &[String],
    total: std::time::Duration,
) -> (serde_json::Value, String) {
    let size: u64 = built.image.layers_size();
    let v = json!({
        "digest": built.image.digest().to_string(),
        "steps_hit": built.hits,
        "steps_hit_registry": built.remote_hits,
        "steps_run": built.runs,
        "containers_created": built.containers_created,
        "duration_ms": total.as_millis() as u64,
        "steps_ms": built.elapsed.as_millis() as u64,
        "bytes": size,
        "layers": built.image.layers().iter().map(|l| json!({"digest": l.digest.to_string(), "bytes": l.size})).collect::<Vec<_>>(),
        "removed_secrets": built.removed_secrets,
        "tags": tags,
    });
    let text = format!(
        "built {} in {:.1}s: {}, {} run, {} in {}",
        built.image.digest(),
        total.as_secs_f64(),
        plural(built.hits, "step hit", "steps hit"),
        built.runs,
        crate::human::human_size(size),
        plural(built.image.layers().len(), "layer", "layers"),
    );
    (v, text)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub(crate) fn record_for(
    key: &Digest,
    layer: Descriptor,
    diff_id: Digest,
    uncompressed_size: u64,
    inputs: serde_json::Value,
    removed_secrets: Vec<String>,
    packages: Option<String>,
) -> StepRecord {
    StepRecord {
        packages,
        version: crate::store::steps::STEP_RECORD_VERSION,
        key: key.clone(),
        layer,
        diff_id,
        uncompressed_size,
        inputs,
        removed_secrets,
    }
}
