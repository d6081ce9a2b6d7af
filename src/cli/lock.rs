//! `tplbuild lock` and `tplbuild fetch`: write the Buildfile's lockfile
//! with apt's resolver ([`crate::lock::resolve`]), and download the locked
//! .debs into the store ([`crate::lock::fetch`]).

use clap::Args;

use super::args::{make_plan, BuildfileArgs, EngineArg};
use super::template::parse_target;
use super::{human_size, Context, Failure};
use crate::lock::{self, artifact, fetch::FetchError, resolve::Update, Lockfile};
use crate::oci::{Reference, Target};
use crate::progress::{Progress, ProgressMode};

#[derive(Debug, Args)]
#[command(
    after_help = "Writes FILE.lock beside the Buildfile: for every INSTALL/REMOVE \
    step, the exact packages it installs or removes (name, version, architecture, archive \
    path, sha256, size), and the archive suites resolved against. Locked versions are kept \
    unless --update names them.\n\n\
    Examples:\n  tplbuild lock -f buildfiles/gateway/Buildfile\n  \
    tplbuild lock -f buildfiles/gateway/Buildfile --update openssh-server\n  \
    tplbuild lock -f buildfiles/gateway/Buildfile --check"
)]
pub struct LockArgs {
    #[command(flatten)]
    pub bf: BuildfileArgs,
    /// Re-resolve: every package, or only the ones named.
    #[arg(long, num_args = 0.., value_name = "PKG")]
    pub update: Option<Vec<String>>,
    /// Only check that FILE.lock still matches the Buildfile's apt steps
    /// (for CI); resolve nothing, write nothing.
    #[arg(long, conflicts_with = "update")]
    pub check: bool,
    /// Which engine runs apt.
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineArg,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Downloads every .deb FILE.lock names into the store, once, \
    checked against the lock's sha256 and size. --cache-from/--cache-to share the .debs \
    through a registry as an OCI artifact (one tag may serve several lockfiles).\n\n\
    Examples:\n  tplbuild fetch -f buildfiles/gateway/Buildfile\n  \
    tplbuild fetch -f buildfiles/gateway/Buildfile \\\n      \
    --cache-to 127.0.0.1:5000/debs/gateway:cache\n  \
    tplbuild fetch -f buildfiles/gateway/Buildfile --offline \\\n      \
    --cache-from 127.0.0.1:5000/debs/gateway:cache"
)]
pub struct FetchArgs {
    /// The Buildfile whose lock to fetch (FILE.lock); the same Buildfile
    /// flags as `lock` and `build`, so one command line serves all three.
    #[command(flatten)]
    pub bf: BuildfileArgs,
    /// Download nothing; fail naming the .debs the store lacks.
    #[arg(long)]
    pub offline: bool,
    /// Before the archive, take missing .debs from the .deb cache artifact
    /// at this registry REF (repeatable; an unusable one is a warning).
    #[arg(long, value_name = "REF")]
    pub cache_from: Vec<String>,
    /// After fetching, push every locked .deb to the .deb cache artifact at
    /// this registry REF, merged with what it lists already.
    #[arg(long, value_name = "REF")]
    pub cache_to: Option<String>,
}

/// `tplbuild lock`: each platform `--platform` names into its own file.
pub async fn lock_cmd(ctx: &Context, a: LockArgs) -> anyhow::Result<()> {
    for bf in a.bf.per_platform()? {
        lock_one(ctx, &a, &bf).await?;
    }
    Ok(())
}

async fn lock_one(ctx: &Context, a: &LockArgs, bf: &BuildfileArgs) -> anyhow::Result<()> {
    let path = bf.lock_path()?;
    let previous = if path.is_file() {
        Some(Lockfile::load(&path)?)
    } else {
        None
    };
    let update = match a.update.clone() {
        None => Update::Nothing,
        Some(v) if v.is_empty() => Update::All,
        Some(v) => Update::Only(v),
    };
    let plan = make_plan(ctx, bf).await?;
    if a.check {
        let Some(lock) = previous else {
            return Err(
                Failure::failed(format!("{} does not exist", path.display()))
                    .with_hint("run `tplbuild lock`")
                    .into(),
            );
        };
        let drift = lock
            .matches(&plan)
            .err()
            .or_else(|| lock.replay_drift(&plan).into_iter().next());
        if let Some(drift) = drift {
            return Err(Failure::failed(drift.to_string())
                .with_hint(
                    "an apt step, or a COPY or RUN before one, changed since locking; \
                     `tplbuild lock` re-resolves only what changed",
                )
                .into());
        }
        println!("{} matches {}", path.display(), bf.buildfile().display());
        return Ok(());
    }
    let client = ctx.client()?;
    let engine = a.engine.choice();
    let progress = Progress::new(ProgressMode::Plain);
    let new = lock::resolve::resolve(
        &ctx.store,
        &client,
        &plan,
        previous.as_ref(),
        &update,
        engine,
        &progress,
    )
    .await
    .map_err(|e| {
        if let Some(lock::resolve::ResolveError::ReplayFailed { tail, .. }) = e.downcast_ref() {
            eprintln!("--- last {} lines of its output ---", tail.len());
            for l in tail {
                eprintln!("  {}", crate::progress::as_drawn(l));
            }
            eprintln!("---");
            return e;
        }
        if let Some(lock::resolve::ResolveError::AptFailed { tail, .. }) = e.downcast_ref() {
            eprintln!("--- last {} lines of the lock container's output ---", tail.len());
            for l in tail {
                eprintln!("  {}", crate::progress::as_drawn(l));
            }
            eprintln!("---");
            let hint = if previous.is_some() {
                "a locked version may be gone from the archive: `tplbuild lock --update` re-resolves"
            } else {
                "check the package names and the template's apt sources"
            };
            return e.context(Failure::failed("locking the apt steps").with_hint(hint));
        }
        e
    })?;
    if previous.as_ref() == Some(&new) {
        println!("{} is up to date", path.display());
        return Ok(());
    }
    new.save(&path)?;
    match lock::diff::render(previous.as_ref(), &new) {
        Some(d) => print!("{d}"),
        None => println!("(no package changed; archive states updated)"),
    }
    let debs = new.debs();
    let bytes: u64 = debs.iter().map(|p| p.size).sum();
    println!(
        "wrote {}: {} apt step(s), {} .deb(s), {}",
        path.display(),
        new.steps.len(),
        debs.len(),
        human_size(bytes)
    );
    Ok(())
}

/// `tplbuild fetch`: the .debs of each platform's lockfile.
pub async fn fetch_cmd(ctx: &Context, a: FetchArgs) -> anyhow::Result<()> {
    for bf in a.bf.per_platform()? {
        fetch_one(ctx, &a, &bf).await?;
    }
    Ok(())
}

async fn fetch_one(ctx: &Context, a: &FetchArgs, bf: &BuildfileArgs) -> anyhow::Result<()> {
    let path = bf.lock_path()?;
    if !path.is_file() {
        return Err(
            Failure::bad_input(format!("{} does not exist", path.display()))
                .with_hint("run `tplbuild lock` first")
                .into(),
        );
    }
    let lock = Lockfile::load(&path)?;
    let registry_ref = |s: &str, flag: &str| -> anyhow::Result<Reference> {
        match parse_target(s)? {
            Target::Registry(r) => Ok(r),
            Target::Layout { .. } => Err(Failure::bad_input(format!(
                "{flag} {s}: the .deb cache lives in a registry, not an OCI layout"
            ))
            .into()),
        }
    };
    let cache_from = a
        .cache_from
        .iter()
        .map(|s| registry_ref(s, "--cache-from"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache_to = a
        .cache_to
        .as_deref()
        .map(|s| registry_ref(s, "--cache-to"))
        .transpose()?;
    let client = if cache_from.is_empty() && cache_to.is_none() {
        None
    } else {
        Some(ctx.client()?)
    };
    let stored_before = lock.debs().len() - lock::fetch::missing(&ctx.store, &lock)?.len();
    let mut sources = vec![];
    for r in &cache_from {
        if lock::fetch::missing(&ctx.store, &lock)?.is_empty() {
            break;
        }
        let client = client
            .as_ref()
            .expect("a client when --cache-from is given");
        match artifact::pull_debs(client, &ctx.store, r, &lock).await {
            Ok(report) => {
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
                if report.pulled > 0 {
                    sources.push(format!("{} from {r}", report.pulled));
                }
            }
            Err(e) => eprintln!(
                "warning: the .deb cache {r} is not usable, ignoring it: {:#}",
                anyhow::Error::new(e)
            ),
        }
    }
    let report = lock::fetch::fetch(&ctx.store, &lock, a.offline, |p| {
        eprintln!("fetching {} {} ({})", p.name, p.version, human_size(p.size));
    })
    .await
    .map_err(|e| {
        let failure = match &e {
            FetchError::Gone { .. } => Failure::failed("a locked .deb is gone"),
            FetchError::Mismatch { .. } => Failure::failed("a .deb does not match the lock")
                .with_hint("the lockfile was edited or the archive changed a published file; run `tplbuild lock --update` if you trust the archive"),
            FetchError::Offline { .. } => Failure::failed("fetching offline")
                .with_hint("run `tplbuild fetch` where the archive is reachable"),
            _ => Failure::failed("fetching the locked .debs"),
        };
        anyhow::Error::new(e).context(failure)
    })?;
    sources.push(format!(
        "{} from the archive ({})",
        report.downloaded,
        human_size(report.bytes)
    ));
    if cache_from.is_empty() {
        println!(
            "{} .deb(s) downloaded ({}), {} already in the store",
            report.downloaded,
            human_size(report.bytes),
            report.already
        );
    } else {
        // `report.already` counts what the caches just gave, too.
        println!(
            "{} .deb(s): {}, {stored_before} already stored",
            lock.debs().len(),
            sources.join(", ")
        );
    }
    if let Some(r) = &cache_to {
        let client = client.as_ref().expect("a client when --cache-to is given");
        let pushed = artifact::push_debs(client, &ctx.store, r, &lock)
            .await
            .map_err(|e| {
                let failure = match &e {
                    artifact::ArtifactError::Foreign { .. } => {
                        Failure::failed(format!("--cache-to {r} holds something else"))
                            .with_hint("choose a tag of its own for the .deb cache")
                    }
                    _ => Failure::failed(format!("pushing the .debs to {r}")),
                };
                anyhow::Error::new(e).context(failure)
            })?;
        for w in &pushed.warnings {
            eprintln!("warning: {w}");
        }
        println!(
            "pushed {} .deb(s) to {r} ({} listed there now, {} before)",
            pushed.debs, pushed.total, pushed.kept
        );
    }
    Ok(())
}
