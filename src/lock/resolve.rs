//! Resolving a plan's apt steps with apt itself, in one container.
//!
//! What each step resolves against (the choice, and its limit): the
//! template, plus every earlier INSTALL/REMOVE carried out in the same
//! container, in order. COPY and RUN steps in between are NOT replayed, so
//! a RUN that adds an apt source or pins a version before an INSTALL is
//! not seen by the lock. This keeps locking to one container, one
//! `apt-get update` and no layer writing; the lead may switch to running
//! the build's earlier steps if Buildfiles need it.
//!
//! Already-locked steps keep their versions: unless `--update` names a
//! package (or says all), a step whose instruction is unchanged passes
//! apt `name=version` for every package it locked before, so apt's
//! resolver must reproduce it (and fails if the archive dropped one).

use std::collections::BTreeMap;

use crate::build::run::Runner;
use crate::build::BuildOptions;
use crate::engine::{ContainerSpec, EngineChoice, Network};
use crate::plan::{Plan, StepKind};
use crate::progress::Progress;
use crate::registry::Client;
use crate::store::Store;
use crate::transfer;

use super::uris::{self, AptRequest};
use super::{apt_steps, LockedArchive, LockedStep, Lockfile};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("apt failed while locking (exit code {code})")]
    AptFailed { code: i64, tail: Vec<String> },
    #[error("reading what apt printed")]
    Output(#[source] uris::UriError),
    #[error("interrupted while locking; the lockfile was not changed")]
    Interrupted,
}

/// Which locked versions `lock` may move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Keep every locked version; resolve only new or changed steps.
    Nothing,
    /// Resolve every step afresh.
    All,
    /// Move only these packages (by name); keep the rest.
    Only(Vec<String>),
}

impl Update {
    fn keeps(&self, name: &str) -> bool {
        match self {
            Update::Nothing => true,
            Update::All => false,
            Update::Only(names) => !names.iter().any(|n| n == name),
        }
    }
}

/// The apt requests for `plan`'s apt steps, pinned by `previous`.
pub fn requests(plan: &Plan, previous: Option<&Lockfile>, update: &Update) -> Vec<AptRequest> {
    let steps = apt_steps(plan);
    let last = steps.len().saturating_sub(1);
    steps
        .iter()
        .map(|(index, step)| {
            let (install, packages, recommends) = match &step.kind {
                StepKind::Install {
                    packages,
                    recommends,
                } => (true, packages.clone(), *recommends),
                StepKind::Remove { packages } => (false, packages.clone(), false),
                _ => unreachable!("apt_steps returns only INSTALL and REMOVE"),
            };
            let old = previous
                .and_then(|p| p.for_step(*index))
                .filter(|s| s.instruction == step.text && install);
            let mut args = vec![];
            let mut pinned = std::collections::BTreeSet::new();
            if let Some(old) = old {
                for p in old.packages.iter().filter(|p| update.keeps(&p.name)) {
                    args.push(format!("{}={}", p.name, p.version));
                    pinned.insert(p.name.clone());
                }
            }
            for p in packages {
                if !pinned.contains(p.split(['=', '/']).next().unwrap_or(p.as_str())) {
                    args.push(p.clone());
                }
            }
            AptRequest {
                install,
                args,
                recommends,
                env: step.env.clone(),
                apply: *index != last,
            }
        })
        .collect()
}

/// Resolve `plan`'s apt steps in a container from its template and return
/// the new lock. With no apt step, no container is started.
pub async fn resolve(
    store: &Store,
    client: &Client,
    plan: &Plan,
    previous: Option<&Lockfile>,
    update: &Update,
    engine: EngineChoice,
    progress: &Progress,
) -> anyhow::Result<Lockfile> {
    let steps = apt_steps(plan);
    if steps.is_empty() {
        return Ok(Lockfile::new(vec![], vec![]));
    }
    let script = uris::script(&requests(plan, previous, update));
    let opts = BuildOptions {
        engine,
        network: Network::Host,
        no_cache: false,
        cache_from: vec![],
    };
    let mut runner = Runner::connect(&opts, progress).await?;
    let sources = transfer::Sources::new(plan.base.source.clone());
    let tag = runner
        .ensure_state(store, client, &sources, &plan.base.image)
        .await?;
    let spec = ContainerSpec {
        image: tag,
        env: vec![],
        script: Some(script),
        network: Network::Host,
    };
    let engine = runner.engine.clone();
    let container = engine.create(&spec).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let run = {
        let engine = engine.clone();
        let c = container.clone();
        tokio::spawn(async move {
            engine
                .run(&c, move |line| {
                    let _ = tx.send(line.to_string());
                })
                .await
        })
    };
    let collect = async {
        let mut lines = vec![];
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        lines
    };
    let result = tokio::select! {
        lines = collect => Ok(lines),
        _ = tokio::signal::ctrl_c() => Err(ResolveError::Interrupted),
    };
    let code = match &result {
        Ok(_) => Some(run.await?),
        Err(_) => {
            run.abort();
            None
        }
    };
    if let Err(e) = engine.remove(&container).await {
        progress.warn(&format!("could not remove container {}: {e}", container.id));
    }
    let lines = result?;
    let code = code.expect("the run finished")?;
    if code != 0 {
        let tail = lines[lines.len().saturating_sub(20)..].to_vec();
        return Err(ResolveError::AptFailed { code, tail }.into());
    }
    let out = uris::parse_output(lines.iter().map(String::as_str)).map_err(ResolveError::Output)?;
    for l in out
        .other
        .iter()
        .filter(|l| l.starts_with("W:") || l.starts_with("E:"))
    {
        progress.warn(&format!("apt: {l}"));
    }
    let locked = steps
        .iter()
        .map(|(index, step)| LockedStep {
            index: *index,
            instruction: step.text.clone(),
            packages: out.steps.get(index).cloned().unwrap_or_default(),
        })
        .collect();
    Ok(Lockfile::new(archives(plan, &out.in_release), locked))
}

/// The archive suites from the plan's apt inputs (`apt:URI SUITE`), each
/// with the InRelease digest apt saw in the container, else the one the
/// plan fetched.
fn archives(plan: &Plan, in_container: &BTreeMap<String, String>) -> Vec<LockedArchive> {
    let Some((_, first)) = apt_steps(plan).into_iter().next() else {
        return vec![];
    };
    first
        .inputs
        .iter()
        .filter_map(|(k, v)| {
            let (uri, suite) = k.strip_prefix("apt:")?.split_once(' ')?;
            let sha = in_container
                .get(&uris::list_file_name(uri, suite))
                .cloned()
                .unwrap_or_else(|| v.strip_prefix("sha256:").unwrap_or(v).to_string());
            Some(LockedArchive {
                uri: uri.trim_end_matches('/').to_string(),
                suite: suite.to_string(),
                in_release_sha256: sha,
            })
        })
        .collect()
}
