//! `tplbuild build`: walk the plan step by step. A step whose key is in the
//! store is a HIT and runs nothing. A MISS runs in a fresh container created
//! from exactly the parent's layers (loaded into the engine once per parent
//! digest), and its change becomes one normalized layer, stored with its key
//! and the inputs that made it. Because later keys hash the parent's
//! *content*, a step that re-runs and yields the same layer lets every
//! later step hit again (early cutoff).

pub mod copy;
pub mod diff;
pub mod files;
pub mod run;
mod signals;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::buildfile::Span;
use crate::engine::{EngineChoice, Network};
use crate::image::{keys, Image};
use crate::oci::{Descriptor, Digest, RuntimeConfig};
use crate::plan::explain::{self, RecordedStep};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::registry::Client;
use crate::store::{StepRecord, Store};
use crate::transfer;

pub use signals::Interrupted;

pub struct BuildOptions {
    pub engine: EngineChoice,
    pub network: Network,
    /// Where a step's diff is read from (`--diff`).
    pub diff: diff::DiffChoice,
    pub no_cache: bool,
    /// Registry caches consulted after the local store, in order.
    pub cache_from: Vec<crate::cache::RemoteCache>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{location}: `{text}` failed with exit code {code}")]
    StepFailed {
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
}

pub fn location(plan: &Plan, span: Span) -> String {
    format!("{}:{}", plan.buildfile.path.display(), span.line)
}

pub async fn build(
    store: &Store,
    client: &Client,
    plan: &Plan,
    opts: &BuildOptions,
    progress: &mut Progress,
) -> anyhow::Result<Built> {
    let started = Instant::now();
    let signals = signals::Signals::install();
    let total = plan.steps.len();
    let mut image = plan.base.image.clone();
    let mut runner: Option<run::Runner> = None;
    let mut hits = 0;
    let mut remote_hits = 0;
    let mut runs = 0;
    let mut records: Vec<StepRecord> = vec![];
    let mut sources = transfer::Sources::new(plan.base.source.clone());
    let mut removed_secrets = vec![];
    let mut recorded = vec![];
    let previous = explain::load_previous(store, &plan.buildfile.path);

    for step in &plan.steps {
        signals.check()?;
        let t0 = Instant::now();
        let parent = image.diff_ids().to_vec();
        let key = plan.key(step, &parent);
        let inputs = plan.recorded_inputs(step, &parent);
        let loc = location(plan, step.span);
        progress.step_start(step.number, total, &step.text, &loc);
        let cached = if opts.no_cache {
            None
        } else {
            match store.get_step(&key)? {
                Some(rec) => Some((rec, "HIT")),
                // A registry hit downloads nothing now: the layer is fetched
                // (or mounted) only if an output or a later step needs it.
                None => opts.cache_from.iter().find_map(|c| {
                    c.lookup(&key).map(|e| {
                        sources.add(e.layer.digest.clone(), c.reference.clone());
                        (e.to_record(&key), "HIT (registry)")
                    })
                }),
            }
        };
        let (record, status, mut notes) = match cached {
            Some((rec, status)) => {
                hits += 1;
                if status != "HIT" {
                    remote_hits += 1;
                }
                (rec, status, vec![])
            }
            None => {
                let reasons = explain::reasons(&step.text, previous.get(step.number - 1), &inputs);
                if runner.is_none() {
                    runner = Some(run::Runner::connect(opts, progress).await?);
                }
                let r = runner.as_mut().expect("connected above");
                let rec = r
                    .run_step(
                        store,
                        client,
                        &sources,
                        plan,
                        step,
                        &image,
                        &key,
                        inputs.clone(),
                        progress,
                        &signals,
                    )
                    .await?;
                runs += 1;
                let notes = if opts.no_cache {
                    vec!["--no-cache".to_string()]
                } else {
                    reasons.iter().map(|r| format!("miss: {r}")).collect()
                };
                (rec, "MISS", notes)
            }
        };
        for s in record.removed_secrets.iter().filter(|_| status == "MISS") {
            notes.push(format!(
                "removed per-device secret /{s} (keep it with KEEP in the Buildfile)"
            ));
        }
        removed_secrets.extend(record.removed_secrets.iter().cloned());
        progress.step_done(
            step.number,
            total,
            &step.text,
            status,
            t0.elapsed(),
            &key.to_string(),
            Some((&record.layer.digest.to_string(), record.layer.size)),
            &notes,
        );
        recorded.push(RecordedStep {
            text: step.text.clone(),
            key: key.clone(),
            inputs,
        });
        image = image.with_layer(record.layer.clone(), record.diff_id.clone());
        records.push(record);
    }

    let image = finalize(plan, &image, &records);
    transfer::store_image(store, &image)?;
    explain::save(store, &plan.buildfile.path, &recorded);
    let containers_created = runner.as_ref().map_or(0, |r| r.containers_created);
    Ok(Built {
        image,
        records,
        sources,
        hits,
        remote_hits,
        runs,
        elapsed: started.elapsed(),
        removed_secrets,
        containers_created,
    })
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
    let created = crate::template::rfc3339(plan.epoch);
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
pub fn summary(built: &Built, tags: &[String]) -> (serde_json::Value, String) {
    let size: u64 = built.image.layers_size();
    let v = json!({
        "digest": built.image.digest().to_string(),
        "steps_hit": built.hits,
        "steps_hit_registry": built.remote_hits,
        "steps_run": built.runs,
        "containers_created": built.containers_created,
        "seconds": built.elapsed.as_secs_f64(),
        "size": size,
        "layers": built.image.layers().iter().map(|l| json!({"digest": l.digest.to_string(), "size": l.size})).collect::<Vec<_>>(),
        "removed_secrets": built.removed_secrets,
        "tags": tags,
    });
    let text = format!(
        "built {} in {:.1}s: {} steps hit, {} run, {} in {} layers",
        built.image.digest(),
        built.elapsed.as_secs_f64(),
        built.hits,
        built.runs,
        crate::cli::human_size(size),
        built.image.layers().len()
    );
    (v, text)
}

pub(crate) fn record_for(
    key: &Digest,
    layer: Descriptor,
    diff_id: Digest,
    uncompressed_size: u64,
    inputs: BTreeMap<String, String>,
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
