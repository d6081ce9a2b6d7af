//! From a parsed Buildfile to an ordered list of steps with content keys.
//!
//! FROM is resolved to a manifest digest before any key is made. A step's
//! key covers its parent's content (the layer digests so far), its
//! canonical definition after ARG substitution, the ENV in effect, what it
//! reads (COPY trees, apt archive state), the platform, the epoch and the
//! cache format ([`key`]). Keys after a step that has not run yet cannot be
//! known, since they depend on its layer: the plan says "after step N".
//! The inputs of every key are recorded with each build, so a miss can say
//! which input changed ([`explain`]).

pub mod apt;
pub mod explain;
pub mod inputs;
pub mod key;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::buildfile::{BuildFile, InstructionKind, Keep, Span};
use crate::oci::{Digest, Platform};
use crate::transfer::Resolved;

/// A step that produces a layer.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based among layer steps.
    pub number: usize,
    pub span: Span,
    /// The instruction as shown to users (`INSTALL openssh-server curl`).
    pub text: String,
    pub kind: StepKind,
    /// ENV in effect for this step.
    pub env: BTreeMap<String, String>,
    /// Canonical definition for the key.
    pub definition: Value,
    /// Input digests for the key (COPY files, apt archive state).
    pub inputs: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Install {
        packages: Vec<String>,
        recommends: bool,
    },
    Remove {
        packages: Vec<String>,
    },
    Copy {
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
        chmod: Option<u32>,
    },
    Run {
        script: String,
    },
}

impl StepKind {
    /// The shell script a container runs for this step (COPY runs none).
    pub fn script(&self) -> Option<String> {
        match self {
            StepKind::Install {
                packages,
                recommends,
            } => Some(format!(
                "set -e; apt-get update -qq {APT_NO_TRANSLATIONS}; apt-get install -y {DPKG_UNSAFE_IO} {}{}",
                if *recommends {
                    ""
                } else {
                    "--no-install-recommends "
                },
                packages.join(" ")
            )),
            StepKind::Remove { packages } => Some(format!(
                "set -e; apt-get purge -y {DPKG_UNSAFE_IO} {}",
                packages.join(" ")
            )),
            StepKind::Run { script } => Some(script.clone()),
            StepKind::Copy { .. } => None,
        }
    }

    pub fn uses_apt(&self) -> bool {
        matches!(self, StepKind::Install { .. } | StepKind::Remove { .. })
    }
}

/// Passed to apt in step containers: dpkg skips its fsync()s, as
/// mmdebstrap does. A step's container is thrown away after its diff is
/// read, so durability buys nothing, and the files dpkg writes are the same
/// (the layer does not change); under qemu-user an arm64 `INSTALL
/// openssh-server curl` unpacked and configured in 111 s with it, 172 s
/// without (one loaded run each). Not part of any step key:
/// it changes how, not what.
pub const DPKG_UNSAFE_IO: &str = "-o Dpkg::Options::=--force-unsafe-io";

/// Passed to `apt-get update` in step and lock containers: no package
/// description translations. apt's lists are left out of every layer, so
/// they change nothing in the image, but apt fetches, unpacks and indexes
/// Translation-en (32 MB for bookworm main) on every update: under
/// qemu-user an arm64 update took 30 s with this and 53 s without (one
/// loaded run each). Not part of any step key, like [`DPKG_UNSAFE_IO`].
pub const APT_NO_TRANSLATIONS: &str = "-o Acquire::Languages=none";

/// The whole plan: the resolved base, the steps, and the metadata of the
/// final image.
#[derive(Debug, Clone)]
pub struct Plan {
    pub buildfile: BuildFile,
    pub base: Resolved,
    pub platform: Platform,
    pub epoch: i64,
    pub steps: Vec<Step>,
    pub final_env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub keep: Vec<String>,
    /// The lockfile the apt steps follow, when the Buildfile has one.
    pub locked: Option<crate::lockfile::Lockfile>,
}

impl Plan {
    /// Follow a lockfile: each apt step's key covers its locked package set
    /// (names, versions, .deb digests) instead of the archive's state, and
    /// the build installs exactly those .debs.
    /// `FILE:LINE` of a span of the Buildfile, as errors name steps.
    pub fn location(&self, span: Span) -> String {
        format!("{}:{}", self.buildfile.path.display(), span.line)
    }

    pub fn with_lock(mut self, lock: crate::lockfile::Lockfile) -> Self {
        let apt_steps = self.steps.iter_mut().filter(|s| s.kind.uses_apt());
        for (apt_index, step) in apt_steps.enumerate() {
            step.inputs.retain(|k, _| !k.starts_with("apt:"));
            if let Some(l) = lock.for_step(apt_index) {
                for p in &l.packages {
                    step.inputs.insert(
                        format!("lock:{}:{}", p.name, p.architecture),
                        format!("{} {}", p.version, p.sha256),
                    );
                }
            }
        }
        self.locked = Some(lock);
        self
    }

    /// The locked step for the plan step `step`, if the plan is locked.
    pub fn locked_step(&self, step: &Step) -> Option<&crate::lockfile::LockedStep> {
        let lock = self.locked.as_ref()?;
        let index = self
            .steps
            .iter()
            .filter(|s| s.kind.uses_apt())
            .position(|s| s.number == step.number)?;
        lock.for_step(index)
    }

    /// The key document of `step` on top of `parent` (the diff_ids below
    /// it): what its key hashes, and what is recorded to explain a miss.
    pub fn key_doc(&self, step: &Step, parent: &[Digest]) -> key::KeyDoc {
        let platform = self.platform.to_string();
        key::KeyInputs {
            parent,
            platform: &platform,
            epoch: self.epoch,
            env: &step.env,
            step: step.definition.clone(),
            inputs: &step.inputs,
            keep: &self.keep,
        }
        .doc()
    }

    /// The key of `step` on top of `parent`.
    pub fn key(&self, step: &Step, parent: &[Digest]) -> Digest {
        self.key_doc(step, parent).key()
    }
}

/// The epoch for the image's mtimes: SOURCE_DATE_EPOCH, else the base's
/// creation time (so a rebuild does not depend on today's date).
pub fn epoch_for(base: &Resolved) -> i64 {
    crate::epoch::source_date_epoch()
        .or_else(|| {
            base.image
                .config
                .created
                .as_deref()
                .and_then(crate::epoch::parse_rfc3339)
        })
        .unwrap_or(0)
}

/// Turn instructions into layer steps with their definitions and inputs.
/// `apt_state` is the archive state (see [`apt::archive_state`]).
pub fn make(
    buildfile: BuildFile,
    base: Resolved,
    platform: Platform,
    apt_state: &BTreeMap<String, String>,
) -> std::io::Result<Plan> {
    let epoch = epoch_for(&base);
    let mut env: BTreeMap<String, String> = base
        .image
        .config
        .config
        .as_ref()
        .map(|c| {
            c.env
                .iter()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let mut labels = BTreeMap::new();
    let mut keep = vec![];
    let mut steps = vec![];
    for ins in &buildfile.instructions {
        let (kind, definition, inputs) = match &ins.kind {
            InstructionKind::Env(kvs) => {
                for (k, v) in kvs {
                    env.insert(k.clone(), v.clone());
                }
                continue;
            }
            InstructionKind::Label(kvs) => {
                for (k, v) in kvs {
                    labels.insert(k.clone(), v.clone());
                }
                continue;
            }
            InstructionKind::Keep(items) => {
                for k in items {
                    keep.push(keep_name(k).to_string());
                }
                keep.sort();
                keep.dedup();
                continue;
            }
            InstructionKind::Install {
                packages,
                recommends,
            } => {
                let mut sorted = packages.clone();
                sorted.sort();
                (
                    StepKind::Install {
                        packages: packages.clone(),
                        recommends: *recommends,
                    },
                    json!({"kind": "INSTALL", "packages": sorted, "recommends": recommends}),
                    apt_state.clone(),
                )
            }
            InstructionKind::Remove { packages } => {
                let mut sorted = packages.clone();
                sorted.sort();
                (
                    StepKind::Remove {
                        packages: packages.clone(),
                    },
                    json!({"kind": "REMOVE", "packages": sorted}),
                    apt_state.clone(),
                )
            }
            InstructionKind::Copy {
                sources,
                dest,
                chown,
                chmod,
            } => (
                StepKind::Copy {
                    sources: sources.clone(),
                    dest: dest.clone(),
                    chown: chown.clone(),
                    chmod: *chmod,
                },
                json!({"kind": "COPY", "sources": sources, "dest": dest, "chown": chown, "chmod": chmod}),
                inputs::copy_inputs(&buildfile.context, sources)?,
            ),
            InstructionKind::Run { script, .. } => (
                StepKind::Run {
                    script: script.clone(),
                },
                json!({"kind": "RUN", "script": script}),
                BTreeMap::new(),
            ),
        };
        steps.push(Step {
            number: steps.len() + 1,
            span: ins.span,
            text: ins.to_string(),
            kind,
            env: env.clone(),
            definition,
            inputs,
        });
    }
    Ok(Plan {
        buildfile,
        base,
        platform,
        epoch,
        steps,
        final_env: env,
        labels,
        keep,
        locked: None,
    })
}

pub fn keep_name(k: &Keep) -> &'static str {
    match k {
        Keep::SshHostKeys => "ssh-host-keys",
        Keep::MachineId => "machine-id",
        Keep::RandomSeed => "random-seed",
    }
}
