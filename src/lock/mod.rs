//! The lockfile (`Buildfile.lock`): the exact packages every INSTALL and
//! REMOVE step resolved to, and the archive states they were resolved
//! against, so that a build can install exactly those versions from .debs
//! verified by sha256 ([`fetch`]) without asking the archive anything.
//!
//! `tplbuild lock` fills it by running apt's own resolver in a container
//! ([`resolve`]); [`Lockfile::matches`] is what `build`/`plan` call to refuse
//! a lock that no longer fits the Buildfile; [`deb_paths`] hands the
//! build the stored .debs of one step. A .deb's sha256 is its digest in the
//! content store, so the store needs no separate .deb index.

pub mod artifact;
pub mod diff;
pub mod fetch;
pub mod resolve;
pub mod uris;

use std::path::PathBuf;

use crate::oci::Digest;
use crate::plan::{Plan, Step};
use crate::store::Store;

/// The Buildfile changed since it was locked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {what}; run `tplbuild lock` to update the lockfile")]
pub struct LockDrift {
    /// `FILE:LINE` of the step that changed (`FILE` alone when a locked
    /// step is gone).
    pub location: String,
    pub what: String,
}

pub use crate::lockfile::{
    LockError, LockedArchive, LockedPackage, LockedStep, Lockfile, FORMAT_VERSION,
};

impl Lockfile {
    /// Does the lock still describe `plan`'s apt steps, in order? The
    /// instruction text is compared after ARG substitution, as the plan
    /// shows it, so comments and spacing do not matter.
    pub fn matches(&self, plan: &Plan) -> Result<(), LockDrift> {
        let file = plan.buildfile.path.display().to_string();
        let steps = apt_steps(plan);
        for (index, step) in &steps {
            let location = format!("{file}:{}", step.span.line);
            match self.for_step(*index) {
                None => {
                    return Err(LockDrift {
                        location,
                        what: format!("`{}` is not in the lockfile", step.text),
                    })
                }
                Some(l) if l.instruction != step.text => {
                    return Err(LockDrift {
                        location,
                        what: format!("`{}` was locked as `{}`", step.text, l.instruction),
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = self.steps.iter().find(|l| l.index >= steps.len()) {
            return Err(LockDrift {
                location: file,
                what: format!(
                    "the lockfile has `{}` (apt step {}), which the Buildfile no longer has",
                    extra.instruction,
                    extra.index + 1
                ),
            });
        }
        Ok(())
    }
}

impl Lockfile {
    /// The apt steps whose earlier COPY and RUN steps changed since they
    /// were locked (their packages were resolved on another state).
    pub fn replay_drift(&self, plan: &Plan) -> Vec<LockDrift> {
        let file = plan.buildfile.path.display().to_string();
        apt_steps(plan)
            .into_iter()
            .filter_map(|(index, step)| {
                let locked = self.for_step(index)?;
                // An empty digest is a lock written before digests were
                // kept: accepted, and filled in by the next `tplbuild lock`.
                (locked.instruction == step.text
                    && !locked.replayed.is_empty()
                    && locked.replayed != replayed_digest(plan, step))
                    .then(|| LockDrift {
                        location: format!("{file}:{}", step.span.line),
                        what: format!(
                            "a COPY or RUN step before `{}` (or a file it copies) changed since locking",
                            step.text
                        ),
                    })
            })
            .collect()
    }
}

/// The [`LockedStep::replayed`] digest of apt step `step` in `plan`: over
/// the definitions and inputs of every COPY and RUN step before it.
pub fn replayed_digest(plan: &Plan, step: &Step) -> String {
    replayed_digest_of(&plan.steps, step.number)
}

/// [`replayed_digest`] over `steps`, for the step numbered `number`.
pub fn replayed_digest_of(steps: &[Step], number: usize) -> String {
    let before: Vec<serde_json::Value> = steps
        .iter()
        .take_while(|s| s.number != number)
        .filter(|s| !s.kind.uses_apt())
        .map(|s| serde_json::json!({"definition": s.definition, "env": s.env, "inputs": s.inputs}))
        .collect();
    if before.is_empty() {
        return String::new();
    }
    // Canonical (sorted keys) as the step keys are, so it is the same on
    // every machine and in every version that builds the same JSON.
    let canonical = crate::plan::key::sort_value(&serde_json::Value::Array(before));
    Digest::of(&serde_json::to_vec(&canonical).expect("JSON values serialise")).to_string()
}

/// The plan's INSTALL/REMOVE steps with their 0-based index among them.
pub fn apt_steps(plan: &Plan) -> Vec<(usize, &Step)> {
    plan.steps
        .iter()
        .filter(|s| s.kind.uses_apt())
        .enumerate()
        .collect()
}

/// The stored .debs of one locked step, in the lock's order, as (path in
/// the store, file name to give it), for the build to copy into a step
/// container. A .deb not yet fetched is left out: callers compare the
/// count with the step's .debs, or run [`fetch::fetch`] first.
pub fn deb_paths(store: &Store, step: &LockedStep) -> Vec<(PathBuf, String)> {
    step.packages
        .iter()
        .filter_map(|p| match p.digest() {
            Some(Ok(d)) if store.has_blob(&d) => {
                Some((store.blob_path(&d), p.deb_name().to_string()))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
