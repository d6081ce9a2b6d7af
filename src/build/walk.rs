//! The one step walk behind `tplbuild plan` and `tplbuild build`, so that
//! plan shows exactly what build does.
//!
//! For each step: make its key from the parent's layers, look it up in the
//! [`StepCache`]; a hit adds its layer and goes on, a miss runs the step
//! through an [`Executor`] (build) or ends the walk (plan: every later key
//! depends on a layer that does not exist yet, so later steps are
//! [`StepStatus::After`]). Because keys hash the parent's *content*, a
//! step that reruns and gives the same layer lets later steps hit again
//! (early cutoff).
//!
//! Registry hits download nothing when they are found. Their layers are
//! fetched when something needs them: before a step runs on top of them,
//! and at the end when the outputs read the image
//! ([`WalkOptions::need_layers`]). A layer that cannot be fetched then
//! makes the walk go back to its step, which now misses and runs; the
//! steps after it follow again. Step events are printed only for steps
//! that can no longer change this way, so a user sees each step once.

use std::future::Future;
use std::time::{Duration, Instant};

use super::step_cache::{Hit, HitSource, StepCache, StepLabel};
use crate::image::Image;
use crate::oci::Digest;
use crate::plan::explain::{self, RecordedStep};
use crate::plan::{Plan, Step};
use crate::progress::Progress;
use crate::store::StepRecord;
use crate::transfer::Sources;

/// What the walk found for one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepStatus {
    /// Built before: nothing runs.
    Hit { from: HitSource },
    /// Not built before (plan: will run; build: ran), and why.
    Miss { reasons: Vec<String> },
    /// Plan only: the key depends on the layer of this earlier step,
    /// which has not been built.
    After(usize),
}

impl StepStatus {
    /// The status as `--progress json` and the step lines show it.
    pub fn label(&self) -> &'static str {
        match self {
            StepStatus::Hit {
                from: HitSource::Local,
            } => "HIT",
            StepStatus::Hit {
                from: HitSource::Registry(_),
            } => "HIT (registry)",
            StepStatus::Miss { .. } | StepStatus::After(_) => "MISS",
        }
    }
}

/// One step of a walk.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub number: usize,
    pub text: String,
    pub location: String,
    /// Unknown for [`StepStatus::After`].
    pub key: Option<Digest>,
    pub status: StepStatus,
    /// The step's layer; none for a plan's misses.
    pub record: Option<StepRecord>,
    pub elapsed: Duration,
}

/// What a walk gives: the image so far, and every step.
#[derive(Debug, Clone)]
pub struct Walked {
    /// The base with every step's layer (a plan stops at its first miss).
    pub image: Image,
    pub steps: Vec<StepReport>,
    /// Where the layers of registry hits can be fetched or mounted from.
    pub sources: Sources,
    /// The key inputs of every keyed step, for the next miss explanation.
    pub recorded: Vec<RecordedStep>,
    /// Registry cache problems, each once; the walk printed them too.
    pub warnings: Vec<String>,
}

/// One missed step to run.
pub struct StepJob<'a> {
    pub plan: &'a Plan,
    pub step: &'a Step,
    pub parent: &'a Image,
    pub key: &'a Digest,
    /// The key document, recorded with the step.
    pub inputs: serde_json::Value,
    pub sources: &'a Sources,
}

/// What runs a missed step and stores its layer: the engine in a build, a
/// script in the unit tests.
pub trait Executor {
    /// Run the step on its parent, store its layer and its record (under
    /// `job.key`), and return the record.
    fn run(
        &mut self,
        job: StepJob<'_>,
        progress: &mut Progress,
    ) -> impl Future<Output = anyhow::Result<StepRecord>>;

    /// Fails when the user asked the build to stop.
    fn check_interrupted(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The executor of a plan: it never runs anything (the walk stops at the
/// first miss when it has none).
pub enum NoExecutor {}

impl Executor for NoExecutor {
    async fn run(&mut self, _: StepJob<'_>, _: &mut Progress) -> anyhow::Result<StepRecord> {
        match *self {}
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct WalkOptions {
    /// Every step misses (`--no-cache`).
    pub no_cache: bool,
    /// The outputs read the image: fetch every registry hit's layer before
    /// the walk ends.
    pub need_layers: bool,
}

/// `tplbuild plan`: look every step up, run nothing.
pub async fn plan(plan: &Plan, cache: &mut StepCache<'_>) -> anyhow::Result<Walked> {
    let mut quiet = Progress::new(crate::progress::ProgressMode::Plain);
    walk::<NoExecutor>(plan, cache, None, WalkOptions::default(), &mut quiet).await
}

/// Walk the plan: with an executor, run every miss (a build); without,
/// stop at the first miss (a plan).
pub async fn walk<E: Executor>(
    plan: &Plan,
    cache: &mut StepCache<'_>,
    mut exec: Option<&mut E>,
    opts: WalkOptions,
    progress: &mut Progress,
) -> anyhow::Result<Walked> {
    let previous = explain::load_previous(cache.store(), &plan.buildfile.path);
    let total = plan.steps.len();
    let building = exec.is_some();
    let mut done: Vec<Done> = vec![];
    // Steps whose events were printed; they no longer change.
    let mut shown = 0;
    let mut warnings = vec![];
    let mut image = plan.base.image.clone();
    let mut i = 0;
    'walk: loop {
        while i < total {
            if let Some(e) = exec.as_deref() {
                e.check_interrupted()?;
            }
            let step = &plan.steps[i];
            let label = label_of(plan, step);
            let parent = image.diff_ids().to_vec();
            let doc = plan.key_doc(step, &parent);
            let key = doc.key();
            let recorded = RecordedStep {
                text: step.text.clone(),
                key: key.clone(),
                from: plan.base.pinned.clone(),
                inputs: doc,
            };
            let started = Instant::now();
            let hit = if opts.no_cache {
                None
            } else {
                cache.lookup(&key, &label).await?
            };
            flush_warnings(cache, building, progress, &mut warnings);
            if let Some(hit) = hit {
                image = image.with_layer(hit.record.layer.clone(), hit.record.diff_id.clone());
                done.push(Done {
                    key,
                    recorded,
                    label,
                    status: StepStatus::Hit {
                        from: hit.from.clone(),
                    },
                    hit: Some(hit.clone()),
                    record: Some(hit.record),
                    elapsed: started.elapsed(),
                });
                i += 1;
                continue;
            }
            let reasons = if opts.no_cache {
                vec!["--no-cache".to_string()]
            } else {
                let mut r = explain::reasons(previous.get(step.number - 1), &recorded);
                if let Some(why) = cache.unusable_reason(&key) {
                    r.insert(0, why.to_string());
                }
                r
            };
            let Some(e) = exec.as_deref_mut() else {
                // A plan: later keys depend on this step's layer.
                done.push(Done {
                    key,
                    recorded,
                    label,
                    status: StepStatus::Miss { reasons },
                    hit: None,
                    record: None,
                    elapsed: Duration::ZERO,
                });
                break 'walk;
            };
            // The step runs on its parent: the parent's layers must be real.
            if let Some(back) = fetch_hits(cache, &done[..i]).await {
                flush_warnings(cache, building, progress, &mut warnings);
                done.truncate(back);
                shown = shown.min(back);
                image = image_of(plan, &done);
                i = back;
                continue;
            }
            show(&done, &mut shown, total, progress);
            progress.step_start(step.number, total, &step.text, &label.location, true);
            let sources = sources_of(plan, &done);
            let record = e
                .run(
                    StepJob {
                        plan,
                        step,
                        parent: &image,
                        key: &key,
                        inputs: recorded.inputs.to_value(),
                        sources: &sources,
                    },
                    progress,
                )
                .await?;
            image = image.with_layer(record.layer.clone(), record.diff_id.clone());
            done.push(Done {
                key,
                recorded,
                label,
                status: StepStatus::Miss { reasons },
                hit: None,
                record: Some(record),
                elapsed: started.elapsed(),
            });
            show(&done, &mut shown, total, progress);
            i += 1;
        }
        if building && opts.need_layers {
            if let Some(back) = fetch_hits(cache, &done).await {
                flush_warnings(cache, building, progress, &mut warnings);
                done.truncate(back);
                shown = shown.min(back);
                image = image_of(plan, &done);
                i = back;
                continue 'walk;
            }
        }
        break;
    }
    if building {
        show(&done, &mut shown, total, progress);
    }
    Ok(finish(plan, image, done, warnings))
}

/// A step the walk has been through.
struct Done {
    key: Digest,
    recorded: RecordedStep,
    label: StepLabel,
    status: StepStatus,
    hit: Option<Hit>,
    record: Option<StepRecord>,
    elapsed: Duration,
}

fn label_of(plan: &Plan, step: &Step) -> StepLabel {
    StepLabel {
        number: step.number,
        text: step.text.clone(),
        location: plan.location(step.span),
    }
}

fn image_of(plan: &Plan, done: &[Done]) -> Image {
    done.iter()
        .filter_map(|d| d.record.as_ref())
        .fold(plan.base.image.clone(), |image, r| {
            image.with_layer(r.layer.clone(), r.diff_id.clone())
        })
}

fn sources_of(plan: &Plan, done: &[Done]) -> Sources {
    let mut sources = Sources::new(plan.base.source.clone());
    for d in done {
        if let Some(Hit {
            record,
            from: HitSource::Registry(r),
        }) = &d.hit
        {
            sources.add(record.layer.digest.clone(), r.clone());
        }
    }
    sources
}

/// Fetch the layers of the registry hits among `done`. On a failure, the
/// index of the first step whose layer could not be fetched: the walk
/// resumes there.
async fn fetch_hits(cache: &mut StepCache<'_>, done: &[Done]) -> Option<usize> {
    let hits: Vec<(Digest, &Hit, StepLabel)> = done
        .iter()
        .filter_map(|d| d.hit.as_ref().map(|h| (d.key.clone(), h, d.label.clone())))
        .filter(|(_, h, _)| matches!(h.from, HitSource::Registry(_)))
        .collect();
    if hits.is_empty() {
        return None;
    }
    let failed = cache.fetch(&hits).await;
    done.iter().position(|d| failed.contains(&d.key))
}

fn flush_warnings(
    cache: &mut StepCache<'_>,
    print: bool,
    progress: &Progress,
    into: &mut Vec<String>,
) {
    for w in cache.take_warnings() {
        if print {
            progress.warn(&w);
        }
        into.push(w);
    }
}

/// Print the events of the steps not shown yet.
fn show(done: &[Done], shown: &mut usize, total: usize, progress: &mut Progress) {
    for d in &done[*shown..] {
        let ran = matches!(d.status, StepStatus::Miss { .. });
        if !ran {
            progress.step_start(
                d.label.number,
                total,
                &d.label.text,
                &d.label.location,
                false,
            );
        }
        let mut notes: Vec<String> = match &d.status {
            StepStatus::Miss { reasons } if reasons.iter().any(|r| r == "--no-cache") => {
                vec!["--no-cache".to_string()]
            }
            StepStatus::Miss { reasons } => reasons.iter().map(|r| format!("miss: {r}")).collect(),
            _ => vec![],
        };
        let record = d.record.as_ref();
        if ran {
            for s in record.map(|r| r.removed_secrets.as_slice()).unwrap_or(&[]) {
                notes.push(format!(
                    "removed per-device secret /{s} (keep it with KEEP in the Buildfile)"
                ));
            }
        }
        let layer = record.map(|r| (r.layer.digest.to_string(), r.layer.size));
        progress.step_done(
            d.label.number,
            total,
            &d.label.text,
            d.status.label(),
            d.elapsed,
            &d.key.to_string(),
            layer.as_ref().map(|(d, s)| (d.as_str(), *s)),
            &notes,
        );
    }
    *shown = done.len();
}

fn finish(plan: &Plan, image: Image, done: Vec<Done>, warnings: Vec<String>) -> Walked {
    let sources = sources_of(plan, &done);
    let recorded = done.iter().map(|d| d.recorded.clone()).collect();
    let mut steps: Vec<StepReport> = done
        .into_iter()
        .map(|d| StepReport {
            number: d.label.number,
            text: d.label.text,
            location: d.label.location,
            key: Some(d.key),
            status: d.status,
            record: d.record,
            elapsed: d.elapsed,
        })
        .collect();
    let first_miss = steps.last().map(|s| s.number).unwrap_or(0);
    for step in &plan.steps[steps.len()..] {
        steps.push(StepReport {
            number: step.number,
            text: step.text.clone(),
            location: plan.location(step.span),
            key: None,
            status: StepStatus::After(first_miss),
            record: None,
            elapsed: Duration::ZERO,
        });
    }
    Walked {
        image,
        steps,
        sources,
        recorded,
        warnings,
    }
}
