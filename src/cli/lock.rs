//! `tplbuild lock` and `tplbuild fetch`: write the Buildfile's lockfile
//! with apt's resolver ([`crate::lock::resolve`]), and download the locked
//! .debs into the store ([`crate::lock::fetch`]).

use clap::Args;

use super::build::{make_plan, BuildfileArgs, EngineArg};
use super::{human_size, Context, Failure};
use crate::engine::EngineChoice;
use crate::lock::{self, fetch::FetchError, resolve::Update, Lockfile};
use crate::progress::{Progress, ProgressMode};

#[derive(Debug, Args)]
#[command(
    after_help = "Writes FILE.lock beside the Buildfile: for every INSTALL/REMOVE \
    step, the exact packages it installs or removes (name, version, architecture, archive \
    path, sha256, size), and the archive suites resolved against. Locked versions are kept \
    unless --update names them.\n\n\
    Examples:\n  tplbuild lock -f buildfiles/gateway/Buildfile --insecure-registry 127.0.0.1:5000\n  \
    tplbuild lock -f buildfiles/gateway/Buildfile --update openssh-server"
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
    checked against the lock's sha256 and size.\n\n\
    Example:\n  tplbuild fetch -f buildfiles/gateway/Buildfile"
)]
pub struct FetchArgs {
    /// The Buildfile whose lock to fetch (reads FILE.lock).
    #[arg(
        short = 'f',
        long = "file",
        default_value = "Buildfile",
        value_name = "FILE"
    )]
    pub file: std::path::PathBuf,
    /// Download nothing; fail naming the .debs the store lacks.
    #[arg(long)]
    pub offline: bool,
}

pub async fn lock_cmd(ctx: &Context, a: LockArgs) -> anyhow::Result<()> {
    let path = Lockfile::path_for(&a.bf.file);
    let previous = if path.is_file() {
        Some(Lockfile::load(&path)?)
    } else {
        None
    };
    let update = match a.update {
        None => Update::Nothing,
        Some(v) if v.is_empty() => Update::All,
        Some(v) => Update::Only(v),
    };
    let plan = make_plan(ctx, &a.bf).await?;
    if a.check {
        let Some(lock) = previous else {
            return Err(
                Failure::failed(format!("{} does not exist", path.display()))
                    .with_hint("run `tplbuild lock`")
                    .into(),
            );
        };
        lock.matches(&plan).map_err(|drift| {
            anyhow::Error::new(Failure::failed(drift.to_string()).with_hint(
                "an apt step was added, removed or changed since locking; \
                 `tplbuild lock` re-resolves only what changed",
            ))
        })?;
        println!("{} matches {}", path.display(), a.bf.file.display());
        return Ok(());
    }
    let client = ctx.client()?;
    let engine = match a.engine {
        EngineArg::Auto => EngineChoice::Auto,
        EngineArg::Docker => EngineChoice::Docker,
        EngineArg::Podman => EngineChoice::Podman,
    };
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
        if let Some(lock::resolve::ResolveError::AptFailed { tail, .. }) = e.downcast_ref() {
            eprintln!("--- last {} lines of apt's output ---", tail.len());
            for l in tail {
                eprintln!("  {l}");
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

pub async fn fetch_cmd(ctx: &Context, a: FetchArgs) -> anyhow::Result<()> {
    let path = Lockfile::path_for(&a.file);
    if !path.is_file() {
        return Err(
            Failure::bad_input(format!("{} does not exist", path.display()))
                .with_hint("run `tplbuild lock` first")
                .into(),
        );
    }
    let lock = Lockfile::load(&path)?;
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
    println!(
        "{} .deb(s) downloaded ({}), {} already in the store",
        report.downloaded,
        human_size(report.bytes),
        report.already
    );
    Ok(())
}
