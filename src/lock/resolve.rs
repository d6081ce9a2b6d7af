//! Resolving a plan's apt steps with apt itself, in one container.
//!
//! What each step resolves against: the template, plus every earlier step
//! of the Buildfile carried out in the same container, in order: apt
//! steps as apt would, RUN steps with `sh -c`, COPY steps by unpacking a
//! tar of their files that was put in the container before it started. So
//! a RUN that adds an architecture, or a COPY that adds an apt source or
//! pin, is seen; after any such step the lists are updated again. Steps
//! after the last apt step cannot change the lock and are not run. One
//! container, no layers written: locking stays cheap.
//!
//! Already-locked steps keep their versions: unless `--update` names a
//! package (or says all), a step whose instruction is unchanged passes
//! apt `name=version` for every package it locked before, so apt's
//! resolver must reproduce it (and fails if the archive dropped one).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::{
    self, run_container, ContainerSpec, ContainerWork, EngineChoice, Network, StepEngine,
};
use crate::plan::{Plan, Step, StepKind};
use crate::progress::Progress;
use crate::registry::Client;
use crate::stage::EngineState;
use crate::store::Store;
use crate::transfer;

use std::io::{Seek as _, Write as _};

use anyhow::Context as _;

use super::uris::{self, AptRequest, Replay};
use super::{apt_steps, LockedArchive, LockedStep, Lockfile};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("apt failed while locking (exit code {code})")]
    AptFailed { code: i64, tail: Vec<String> },
    #[error("{location}: `{text}` failed while locking (the lock carries out the COPY and RUN steps before an apt step)")]
    ReplayFailed {
        location: String,
        text: String,
        tail: Vec<String>,
    },
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

/// Where a replayed COPY step's tar is put in the lock container.
fn copy_tar_path(step: &Step) -> String {
    format!("{}/copy-{}.tar", uris::LOCK_DIR, step.number)
}

/// The steps up to the last apt step: the ones that shape what apt
/// resolves. Later steps cannot.
fn steps_to_resolve(steps: &[Step]) -> &[Step] {
    let end = steps
        .iter()
        .rposition(|s| s.kind.uses_apt())
        .map_or(0, |last| last + 1);
    &steps[..end]
}

/// The apt requests for a plan's `steps`, pinned by `previous`, each with
/// the COPY and RUN steps that come before it.
pub fn requests(steps: &[Step], previous: Option<&Lockfile>, update: &Update) -> Vec<AptRequest> {
    let all = steps;
    let steps = steps_to_resolve(steps);
    let apt_total = steps.iter().filter(|s| s.kind.uses_apt()).count();
    let mut out: Vec<AptRequest> = vec![];
    let mut before = vec![];
    for step in steps {
        let (install, packages, recommends) = match &step.kind {
            StepKind::Install {
                packages,
                recommends,
            } => (true, packages.clone(), *recommends),
            StepKind::Remove { packages } => (false, packages.clone(), false),
            StepKind::Run { script } => {
                before.push(Replay::Run {
                    step: step.number,
                    script: script.clone(),
                    env: step.env.clone(),
                });
                continue;
            }
            StepKind::Copy { .. } => {
                before.push(Replay::Unpack {
                    step: step.number,
                    tar: copy_tar_path(step),
                });
                continue;
            }
        };
        let index = out.len();
        // A step keeps its versions while it and what comes before it are
        // unchanged.
        let old = previous.and_then(|p| p.for_step(index)).filter(|s| {
            s.instruction == step.text
                && install
                && (s.replayed.is_empty()
                    || s.replayed == super::replayed_digest_of(all, step.number))
        });
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
        out.push(AptRequest {
            install,
            args,
            recommends,
            env: step.env.clone(),
            apply: index + 1 != apt_total,
            before: std::mem::take(&mut before),
        });
    }
    out
}

/// One tar holding a tar of each COPY step before the last apt step, at
/// the paths [`requests`] unpacks them from; `None` if there is no such
/// step. Owners named by `--chown` are looked up in the template (a user
/// made by an earlier RUN is not there yet: root stands in, which apt's
/// resolution does not care about).
fn copy_bundle(store: &Store, plan: &Plan) -> anyhow::Result<Option<tempfile::NamedTempFile>> {
    let copies: Vec<&Step> = steps_to_resolve(&plan.steps)
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Copy { .. }))
        .collect();
    if copies.is_empty() {
        return Ok(None);
    }
    let bundle = tempfile::NamedTempFile::new_in(store.tmp_dir())?;
    let mut outer = tar::Builder::new(std::io::BufWriter::new(bundle.reopen()?));
    for step in copies {
        let StepKind::Copy {
            sources,
            dest,
            chown,
            chmod,
        } = &step.kind
        else {
            continue;
        };
        let (uid, gid) = crate::stage::resolve_chown(store, &plan.base.image, chown.as_deref())
            .unwrap_or((0, 0));
        let attrs = crate::stage::copy::CopyAttrs {
            uid,
            gid,
            chmod: *chmod,
            mtime: plan.epoch.max(0) as u64,
        };
        let mut inner = tempfile::tempfile_in(store.tmp_dir())?;
        crate::stage::copy::write_copy_tar(
            &plan.buildfile.context,
            sources,
            dest,
            &attrs,
            &mut inner,
        )
        .with_context(|| format!("reading the sources of {}", step.text))?;
        let len = inner.stream_position()?;
        inner.rewind()?;
        let mut header = tar::Header::new_gnu();
        header.set_size(len);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        let path = copy_tar_path(step);
        outer.append_data(&mut header, path.trim_start_matches('/'), inner)?;
    }
    outer.into_inner()?.flush()?;
    Ok(Some(bundle))
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
    let script = uris::script(&requests(&plan.steps, previous, update));
    let engine: Arc<dyn StepEngine> = Arc::new(engine::connect(engine).await?);
    engine::introduce(&*engine, progress).await;
    let sources = transfer::Sources::new(plan.base.source.clone());
    let tag = EngineState::default()
        .ensure(
            &*engine,
            store,
            client,
            &sources,
            &plan.base.image,
            progress,
        )
        .await?;
    let spec = ContainerSpec {
        image: tag,
        env: vec![],
        script: Some(script),
        network: Network::Host,
        platform: Some(plan.platform.clone()),
    };
    let bundle = copy_bundle(store, plan)?;
    let bundle = bundle.as_ref().map(|b| b.path());
    // Output is collected, not shown: it is apt's answer.
    let mut quiet = progress.fork();
    let (result, _) = run_container(
        &engine,
        &spec,
        &mut quiet,
        || async {
            let _ = tokio::signal::ctrl_c().await;
            anyhow::Error::from(ResolveError::Interrupted)
        },
        LockWork {
            engine: &*engine,
            bundle,
        },
    )
    .await;
    let (code, lines) = result?;
    if code != 0 {
        if let Some((n, printed)) = uris::failed_replay(&lines) {
            if let Some(step) = plan.steps.iter().find(|s| s.number == n) {
                return Err(ResolveError::ReplayFailed {
                    location: plan.location(step.span),
                    text: step.text.clone(),
                    tail: last(&printed, 20),
                }
                .into());
            }
        }
        let tail = last(&lines, 20);
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
            replayed: super::replayed_digest(plan, step),
            packages: out.steps.get(index).cloned().unwrap_or_default(),
        })
        .collect();
    Ok(Lockfile::new(archives(plan, &out.in_release), locked))
}

/// The work in one lock container.
struct LockWork<'a> {
    engine: &'a dyn StepEngine,
    bundle: Option<&'a std::path::Path>,
}

impl ContainerWork for LockWork<'_> {
    type Output = (i64, Vec<String>);
    fn work<'x>(
        &'x mut self,
        container: &'x crate::engine::Container,
        _: &'x mut Progress,
    ) -> futures_util::future::BoxFuture<'x, anyhow::Result<Self::Output>> {
        Box::pin(run_once(self.engine, container, self.bundle))
    }
}

/// Given the COPY steps' tars, run to the end. Returns the exit code and
/// every line the container printed.
async fn run_once(
    engine: &dyn StepEngine,
    container: &crate::engine::Container,
    bundle: Option<&std::path::Path>,
) -> anyhow::Result<(i64, Vec<String>)> {
    if let Some(path) = bundle {
        let file = tokio::fs::File::open(path).await?;
        engine
            .upload(
                container,
                "/",
                Box::pin(tokio_util::io::ReaderStream::new(file)),
            )
            .await
            .context("putting the COPY steps' files in the lock container")?;
    }
    let mut lines = vec![];
    let code = engine
        .run(container, Box::new(|_, l: &str| lines.push(l.to_string())))
        .await?;
    Ok((code, lines))
}

/// The last `n` of `lines`.
fn last(lines: &[String], n: usize) -> Vec<String> {
    lines[lines.len().saturating_sub(n)..].to_vec()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockedPackage;

    fn step(number: usize, kind: StepKind) -> Step {
        let text = match &kind {
            StepKind::Install { packages, .. } => format!("INSTALL {}", packages.join(" ")),
            StepKind::Remove { packages } => format!("REMOVE {}", packages.join(" ")),
            StepKind::Run { script } => format!("RUN {script}"),
            StepKind::Copy { sources, dest, .. } => {
                format!("COPY {} {dest}", sources.join(" "))
            }
        };
        Step {
            number,
            span: Default::default(),
            // The plan's definition is the instruction's canonical JSON;
            // its text stands in for it here.
            definition: serde_json::json!({ "text": text }),
            text,
            kind,
            env: BTreeMap::from([("N".to_string(), number.to_string())]),
            inputs: BTreeMap::new(),
        }
    }

    fn install(n: usize, p: &str) -> Step {
        step(
            n,
            StepKind::Install {
                packages: vec![p.into()],
                recommends: false,
            },
        )
    }

    fn run(n: usize, script: &str) -> Step {
        step(
            n,
            StepKind::Run {
                script: script.into(),
            },
        )
    }

    fn copy(n: usize) -> Step {
        step(
            n,
            StepKind::Copy {
                sources: vec!["a".into()],
                dest: "/etc/apt/".into(),
                chown: None,
                chmod: None,
            },
        )
    }

    #[test]
    fn copy_and_run_steps_go_before_the_next_apt_step_and_later_ones_are_left_out() {
        let steps = [
            run(1, "dpkg --add-architecture i386"),
            copy(2),
            install(3, "hello:i386"),
            install(4, "curl"),
            run(5, "echo between"),
            step(
                6,
                StepKind::Remove {
                    packages: vec!["curl".into()],
                },
            ),
            run(7, "echo after the last apt step"),
            copy(8),
        ];
        let r = requests(&steps, None, &Update::Nothing);
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[0].before,
            vec![
                Replay::Run {
                    step: 1,
                    script: "dpkg --add-architecture i386".into(),
                    env: steps[0].env.clone()
                },
                Replay::Unpack {
                    step: 2,
                    tar: "/.tplbuild-lock/copy-2.tar".into()
                },
            ]
        );
        assert_eq!(r[0].args, ["hello:i386"]);
        assert!(r[1].before.is_empty());
        assert_eq!(
            r[2].before,
            vec![Replay::Run {
                step: 5,
                script: "echo between".into(),
                env: steps[4].env.clone()
            }]
        );
        assert!(!r[2].install);
        assert_eq!(
            r.iter().map(|r| r.apply).collect::<Vec<_>>(),
            [true, true, false]
        );
    }

    #[test]
    fn a_locked_step_keeps_its_versions_by_its_place_among_apt_steps() {
        let steps = [run(1, "true"), install(2, "hello")];
        let lock = Lockfile::new(
            vec![],
            vec![crate::lock::LockedStep {
                index: 0,
                instruction: "INSTALL hello".into(),
                replayed: crate::lock::replayed_digest_of(&steps, 2),
                packages: vec![LockedPackage {
                    name: "hello".into(),
                    version: "2.10-3".into(),
                    architecture: "amd64".into(),
                    filename: String::new(),
                    sha256: String::new(),
                    size: 0,
                    uri: String::new(),
                }],
            }],
        );
        let r = requests(&steps, Some(&lock), &Update::Nothing);
        assert_eq!(r[0].args, ["hello=2.10-3"]);
        let r = requests(&steps, Some(&lock), &Update::All);
        assert_eq!(r[0].args, ["hello"]);
        // The RUN before it changed: the step is resolved afresh.
        let changed = [run(1, "echo other"), install(2, "hello")];
        let r = requests(&changed, Some(&lock), &Update::Nothing);
        assert_eq!(r[0].args, ["hello"]);
    }

    #[test]
    fn the_replayed_digest_covers_only_the_copy_and_run_steps_before() {
        let steps = [
            install(1, "sl"),
            run(2, "true"),
            install(3, "hello"),
            run(4, "after"),
        ];
        assert_eq!(crate::lock::replayed_digest_of(&steps, 1), "");
        let d = crate::lock::replayed_digest_of(&steps, 3);
        assert!(d.starts_with("sha256:"), "{d}");
        // A step after it, or another apt step's packages, change nothing.
        let mut later = steps.clone();
        later[3] = run(4, "something else");
        later[0] = install(1, "curl");
        assert_eq!(crate::lock::replayed_digest_of(&later, 3), d);
        let mut before = steps.clone();
        before[1] = run(2, "false");
        assert_ne!(crate::lock::replayed_digest_of(&before, 3), d);
    }

    #[test]
    fn no_apt_step_means_nothing_to_resolve() {
        assert!(requests(&[run(1, "true"), copy(2)], None, &Update::Nothing).is_empty());
    }
}
