//! `tplbuild plan` and `tplbuild build`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use super::template::parse_target;
use super::{human_size, parse_platform, Context, Failure};
use crate::build::{self, BuildError, BuildOptions, HitSource, StepCache, StepStatus};
use crate::buildfile;
use crate::engine::{EngineChoice, Network};

/// `--engine`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EngineArg {
    Auto,
    Docker,
    Podman,
}

/// `--network`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum NetworkArg {
    Host,
    None,
    Bridge,
}
use crate::plan::{self, apt, Plan};
use crate::progress::{Progress, ProgressMode};
use crate::transfer;

#[derive(Debug, Args)]
pub struct BuildfileArgs {
    /// The Buildfile; its folder is the context COPY reads from.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "Buildfile",
        value_name = "FILE"
    )]
    pub file: PathBuf,
    /// Set an ARG (repeatable).
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    pub build_args: Vec<String>,
    /// Platform of the template to use (default: the host's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Each step is shown with its location, its key and HIT (already built) \
    or MISS with the reason, compared with the previous build of the same Buildfile.\n\n\
    Example:\n  tplbuild plan -f buildfiles/gateway/Buildfile --insecure-registry 127.0.0.1:5000"
)]
pub struct PlanArgs {
    #[command(flatten)]
    pub bf: BuildfileArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tplbuild build -f buildfiles/gateway/Buildfile --insecure-registry 127.0.0.1:5000 -o type=oci,dest=out/gateway\n  \
    tplbuild build -f buildfiles/gateway/Buildfile --tag 127.0.0.1:5000/products/gateway:1 --progress json\n\n\
    Steps run in Docker or Podman (through their Docker-compatible API), on the host \
    network by default. A step whose key was built before runs nothing.")]
pub struct BuildArgs {
    #[command(flatten)]
    pub bf: BuildfileArgs,
    /// Which engine runs the steps: auto tries DOCKER_HOST, the Docker
    /// socket, then the Podman sockets.
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineArg,
    /// The step containers' network.
    #[arg(long, value_enum, default_value = "host")]
    pub network: NetworkArg,
    /// Run every step even if it was built before.
    #[arg(long)]
    pub no_cache: bool,
    /// Never download: the locked .debs must be in the store (`tplbuild fetch`).
    #[arg(long)]
    pub offline: bool,
    /// Also push or write the result here (repeatable): HOST/REPO:TAG or oci:DIR[:TAG].
    #[arg(long = "tag", short = 't', value_name = "REF")]
    pub tags: Vec<String>,
    /// Export the result: type=oci|tar|dir|ext4|erofs|squashfs,dest=PATH[,opt=value] (repeatable).
    #[arg(long = "output", short = 'o', value_name = "type=T,dest=D")]
    pub outputs: Vec<String>,
    /// How to show progress.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Push the registry cache here after the build: HOST/REPO:TAG.
    #[arg(long = "cache-to", value_name = "REF")]
    pub cache_to: Option<String>,
    /// Which steps --cache-to pushes: min = the final image's layers, max = every step.
    #[arg(long = "cache-mode", value_enum, default_value = "max")]
    pub cache_mode: crate::cache::CacheMode,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Consult this registry cache after the local store (repeatable,
    /// searched in order): HOST/REPO:TAG as written by --cache-to.
    #[arg(long = "cache-from", value_name = "REF")]
    pub cache_from: Vec<String>,
}

fn parse_registry_ref(s: &str, flag: &str) -> anyhow::Result<crate::oci::Reference> {
    match parse_target(s)? {
        crate::oci::Target::Registry(r) => Ok(r),
        crate::oci::Target::Layout { .. } => Err(Failure::bad_input(format!(
            "{flag} {s}: a registry cache lives in a registry, not an OCI layout"
        ))
        .into()),
    }
}

/// Load every `--cache-from` index. A cache that cannot be read is a
/// warning: the steps then run, and the build still succeeds.
async fn load_caches(
    client: &crate::registry::Client,
    args: &CacheArgs,
    progress: &Progress,
) -> anyhow::Result<Vec<crate::cache::RemoteCache>> {
    let mut caches = vec![];
    for s in &args.cache_from {
        let r = parse_registry_ref(s, "--cache-from")?;
        match crate::cache::RemoteCache::load(client, &r).await {
            Ok(c) => {
                for w in &c.warnings {
                    progress.warn(&format!("cache {r}: {w}"));
                }
                caches.push(c);
            }
            Err(e) => progress.warn(&format!("cache {r} is not usable, ignoring it: {e}")),
        }
    }
    Ok(caches)
}

fn parse_build_args(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            // `--build-arg NAME` takes the value from the environment, like Docker.
            _ => std::env::var(kv).map(|v| (kv.clone(), v)).map_err(|_| {
                Failure::bad_input(format!("--build-arg {kv:?} is not NAME=VALUE")).into()
            }),
        })
        .collect()
}

/// The plan `build`, `plan` and `bundle` use: with `FILE.lock` next to the Buildfile,
/// the apt steps follow it (no archive is asked anything), and a lockfile
/// that no longer matches the Buildfile is an error.
pub(crate) async fn make_locked_plan(
    ctx: &Context,
    a: &BuildfileArgs,
    offline: bool,
) -> anyhow::Result<Plan> {
    let lock_path = crate::lock::Lockfile::path_for(&a.file);
    if !lock_path.exists() {
        return make_plan_with(ctx, a, !offline, offline).await;
    }
    let lock = crate::lock::Lockfile::load(&lock_path).map_err(|e| {
        anyhow::Error::new(e).context(Failure::bad_input(format!(
            "reading {}",
            lock_path.display()
        )))
    })?;
    let plan = make_plan_with(ctx, a, false, offline).await?;
    lock.matches(&plan).map_err(|drift| {
        anyhow::Error::new(
            Failure::bad_input(format!("{} is out of date: {drift}", lock_path.display()))
                .with_hint(format!("run `tplbuild lock -f {}`", a.file.display())),
        )
    })?;
    // The locked packages still install as they are (that is what a lock
    // is for), but they were resolved on another state: say so.
    for drift in lock.replay_drift(&plan) {
        tracing::warn!(
            "{drift}; the locked packages are used as they are (run `tplbuild lock -f {}` to resolve them again)",
            a.file.display()
        );
    }
    Ok(plan.with_lock(lock))
}

/// Parse the Buildfile and resolve everything a key needs.
pub(crate) async fn make_plan(ctx: &Context, a: &BuildfileArgs) -> anyhow::Result<Plan> {
    make_plan_with(ctx, a, true, false).await
}

async fn make_plan_with(
    ctx: &Context,
    a: &BuildfileArgs,
    ask_archive: bool,
    offline: bool,
) -> anyhow::Result<Plan> {
    let args = parse_build_args(&a.build_args)?;
    let bf = buildfile::parse_file(&a.file, &args).map_err(|diags| {
        let n = diags.0.len();
        let mut f = Failure::bad_input(format!(
            "{diags}\n{n} error{} in {}; docs/buildfile.md describes every instruction\n",
            if n == 1 { "" } else { "s" },
            a.file.display()
        ));
        f.preformatted = true;
        anyhow::Error::new(f)
    })?;
    let platform = parse_platform(a.platform.as_deref())?;
    let target = parse_target(&bf.from.reference)?;
    let client = ctx.client()?;
    let resolved = if offline {
        transfer::resolve_offline(&ctx.store, &client, &target, &platform).await
    } else {
        transfer::resolve(&ctx.store, &client, &target, &platform)
            .await
            .map_err(anyhow::Error::new)
    };
    let base = resolved.map_err(|e| {
        e.context(Failure::failed(format!(
            "{}:{}: FROM {}",
            a.file.display(),
            bf.from.span.line,
            bf.from.reference
        )))
    })?;
    let needs_apt = bf.instructions.iter().any(|i| {
        matches!(
            i.kind,
            buildfile::InstructionKind::Install { .. } | buildfile::InstructionKind::Remove { .. }
        )
    });
    let apt_state = if needs_apt && ask_archive {
        // A template made by tplbuild names its apt sources; others are read
        // from their layers (which then must be fetched).
        let sources = match apt::sources_in_annotations(&base.image) {
            Some(s) => s,
            None => {
                transfer::ensure_blobs(&ctx.store, &client, &base.source, base.image.layers())
                    .await
                    .context("fetching the template's layers to read its apt sources")?;
                let store = ctx.store.clone();
                let image = base.image.clone();
                tokio::task::spawn_blocking(move || apt::sources_in_image(&store, &image)).await??
            }
        };
        apt::archive_state(&sources).await
    } else {
        BTreeMap::new()
    };
    Ok(plan::make(bf, base, platform, &apt_state)?)
}

pub async fn plan_cmd(ctx: &Context, a: PlanArgs) -> anyhow::Result<()> {
    let plan = make_locked_plan(ctx, &a.bf, false).await?;
    let client = ctx.client()?;
    let quiet = Progress::new(ProgressMode::Plain);
    let caches = load_caches(&client, &a.cache, &quiet).await?;
    let mut cache = StepCache::new(&ctx.store, &client, caches);
    let walked = build::walk::plan(&plan, &mut cache).await?;
    for w in &walked.warnings {
        quiet.warn(w);
    }
    let total = walked.steps.len();
    if a.json {
        let rows: Vec<_> = walked.steps.iter().map(plan_row).collect();
        let v = json!({
            "buildfile": plan.buildfile.path.display().to_string(),
            "from": plan.base.pinned,
            "platform": plan.platform.to_string(),
            "epoch": plan.epoch,
            "steps": rows,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("FROM {}", plan.base.pinned);
    for s in &walked.steps {
        let key = s
            .key
            .as_ref()
            .map(|k| k.hex()[..12].to_string())
            .unwrap_or_else(|| "-".repeat(12));
        let status = match &s.status {
            StepStatus::Hit { from } => format!("HIT ({})", source_name(from)),
            StepStatus::Miss { .. } | StepStatus::After(_) => "MISS".to_string(),
        };
        println!(
            "[{}/{total}] {:<40} {key}  {status}",
            s.number,
            truncate(&s.text, 40),
        );
        println!("      at {}", s.location);
        for reason in plan_reasons(&s.status) {
            println!("      {reason}");
        }
    }
    Ok(())
}

fn source_name(from: &HitSource) -> String {
    match from {
        HitSource::Local => "local".to_string(),
        HitSource::Registry(r) => r.to_string(),
    }
}

fn plan_reasons(status: &StepStatus) -> Vec<String> {
    match status {
        StepStatus::Hit { .. } => vec![],
        StepStatus::Miss { reasons } => reasons.clone(),
        StepStatus::After(n) => vec![format!("after step {n}")],
    }
}

/// One step of `plan --json`.
fn plan_row(s: &build::StepReport) -> serde_json::Value {
    let mut row = json!({
        "step": s.number,
        "location": s.location,
        "instruction": s.text,
        "key": s.key.as_ref().map(|k| k.to_string()),
        "status": match s.status { StepStatus::Hit { .. } => "HIT", _ => "MISS" },
    });
    match &s.status {
        StepStatus::Hit { from } => row["source"] = json!(source_name(from)),
        other => row["reasons"] = json!(plan_reasons(other)),
    }
    row
}

fn truncate(s: &str, n: usize) -> String {
    let first_line = s.lines().next().unwrap_or("");
    if first_line.chars().count() <= n && !s.contains('\n') {
        first_line.to_string()
    } else {
        let t: String = first_line.chars().take(n - 1).collect();
        format!("{t}…")
    }
}

/// Parse `-o` values; a bad one is bad input (exit 2).
pub fn parse_outputs(items: &[String]) -> anyhow::Result<Vec<crate::export::OutputSpec>> {
    items
        .iter()
        .map(|o| {
            o.parse::<crate::export::OutputSpec>()
                .map_err(|e| anyhow::Error::new(Failure::bad_input(format!("-o {o}: {e}"))))
        })
        .collect()
}

pub async fn build_cmd(ctx: &Context, a: BuildArgs) -> anyhow::Result<()> {
    let outputs = parse_outputs(&a.outputs)?;
    let tags = a
        .tags
        .iter()
        .map(|t| parse_target(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache_to = a
        .cache_to
        .as_deref()
        .map(|s| parse_registry_ref(s, "--cache-to"))
        .transpose()?;
    let mut progress = Progress::new(a.progress);
    let plan = make_locked_plan(ctx, &a.bf, a.offline).await?;
    if a.offline {
        if plan.locked.is_none() && plan.steps.iter().any(|s| s.kind.uses_apt()) {
            return Err(Failure::bad_input(
                "--offline: the apt steps need the archive, and there is no lockfile",
            )
            .with_hint("run `tplbuild lock` and `tplbuild fetch` while online, or make a bundle")
            .into());
        }
        if !a.cache.cache_from.is_empty() || a.cache_to.is_some() {
            return Err(Failure::bad_input("--offline cannot use a registry cache").into());
        }
    }
    if let Some(lock) = &plan.locked {
        // A stored .deb that no longer matches its digest is dropped and
        // fetched again (or, offline, reported missing).
        for p in lock.debs() {
            if let Some(Ok(d)) = p.digest() {
                if let Err(crate::store::StoreError::Corrupt { .. }) = ctx.store.verify_blob(&d) {
                    progress.warn(&format!(
                        "the stored {} {} was corrupt and is fetched again",
                        p.name, p.version
                    ));
                }
            }
        }
        // Every locked .deb, verified, before any step runs.
        let report = crate::lock::fetch::fetch(&ctx.store, lock, a.offline, |p| {
            progress.note("fetch", &format!("fetching {} {}", p.name, p.version))
        })
        .await
        .map_err(|e| {
            let hint = if a.offline {
                "run `tplbuild fetch` while online, or build from a bundle"
            } else {
                "check the template's apt sources, or point them at snapshot.debian.org"
            };
            anyhow::Error::new(e)
                .context(Failure::failed("fetching the locked .debs").with_hint(hint))
        })?;
        if report.downloaded > 0 {
            progress.note(
                "fetch",
                &format!(
                    "fetched {} locked .deb(s) ({}), {} already stored",
                    report.downloaded,
                    human_size(report.bytes),
                    report.already
                ),
            );
        }
    }
    let client = ctx.client()?;
    let cache_from = load_caches(&client, &a.cache, &progress).await?;
    let opts = BuildOptions {
        engine: match a.engine {
            EngineArg::Auto => EngineChoice::Auto,
            EngineArg::Docker => EngineChoice::Docker,
            EngineArg::Podman => EngineChoice::Podman,
        },
        network: match a.network {
            NetworkArg::Host => Network::Host,
            NetworkArg::None => Network::None,
            NetworkArg::Bridge => Network::Bridge,
        },
        no_cache: a.no_cache,
    };
    let need_layers = !outputs.is_empty()
        || tags
            .iter()
            .any(|t| matches!(t, crate::oci::Target::Layout { .. }));
    let mut cache = StepCache::new(&ctx.store, &client, cache_from);
    let built = match build::build(&plan, &mut cache, &opts, need_layers, &mut progress).await {
        Ok(b) => b,
        Err(e) => return Err(explain_failure(e, &progress)),
    };
    let digest = built.image.digest();
    let name = format!("build:{}", buildfile_name(&plan.buildfile.path));
    ctx.store.set_name(&name, &built.image.descriptor())?;
    let sources = &built.sources;
    for t in &tags {
        // Layers the registry holds already (template, cache) are mounted,
        // not downloaded and uploaded again.
        if matches!(t, crate::oci::Target::Layout { .. }) {
            transfer::ensure_from(&ctx.store, &client, sources, built.image.layers()).await?;
        }
        let d = transfer::publish(&ctx.store, &client, &built.image, t, &|d| {
            sources.registry_of(d)
        })
        .await
        .with_context(|| format!("publishing to {t}"))?;
        progress.note("tag", &format!("published {t}@{d}"));
    }
    if let Some(r) = &cache_to {
        let final_layers: Vec<_> = built
            .image
            .layers()
            .iter()
            .map(|l| l.digest.clone())
            .collect();
        let chosen: Vec<_> = a
            .cache_mode
            .select(&built.records, &final_layers)
            .into_iter()
            .cloned()
            .collect();
        let from = chosen
            .iter()
            .find_map(|rec| sources.registry_of(&rec.layer.digest));
        let report = crate::cache::push_from(&client, &ctx.store, r, &chosen, from.as_ref())
            .await
            .with_context(|| format!("pushing the registry cache to {r}"))?;
        for w in &report.warnings {
            progress.warn(w);
        }
        progress.note(
            "cache",
            &format!(
                "cache {r}: {} entries ({} new), {} layers uploaded, {} mounted",
                report.entries_total,
                report.entries_added,
                report.blobs_uploaded,
                report.blobs_mounted
            ),
        );
    }
    if !outputs.is_empty() {
        transfer::ensure_from(&ctx.store, &client, sources, built.image.layers()).await?;
        // Registry hits whose layers are now here become local hits.
        for rec in &built.records {
            if ctx.store.has_blob(&rec.layer.digest) && ctx.store.get_step(&rec.key)?.is_none() {
                ctx.store.put_step(rec)?;
            }
        }
        let store = ctx.store.clone();
        let image = built.image.clone();
        let epoch = plan.epoch;
        let reports = tokio::task::spawn_blocking(move || {
            crate::export::export_all(&store, &image, &outputs, epoch)
        })
        .await??;
        for r in reports {
            progress.note(
                "export",
                &format!(
                    "wrote {} {}{} in {:.1}s",
                    r.dest.display(),
                    r.summary,
                    if r.cached { " (cached)" } else { "" },
                    r.seconds
                ),
            );
        }
    }
    let tag_names: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    let (v, text) = build::summary(&built, &tag_names);
    progress.summary(v, &text);
    if !progress.is_json() {
        println!("{digest}");
    }
    Ok(())
}

fn buildfile_name(path: &Path) -> String {
    let abs = fs_err::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    abs.parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "buildfile".into())
}

/// Turn a failed step into the story a user needs: the location, the exit
/// code and the last lines of output.
fn explain_failure(e: anyhow::Error, progress: &Progress) -> anyhow::Error {
    if let Some(BuildError::StepFailed { tail, .. }) = e.downcast_ref::<BuildError>() {
        if progress.is_json() {
            progress.note("step-output-tail", &tail.join("\n"));
        } else {
            eprintln!("--- last {} lines of output ---", tail.len());
            for l in tail {
                eprintln!("  {l}");
            }
            eprintln!("---");
        }
    }
    let interrupted = match e.downcast_ref::<BuildError>() {
        Some(BuildError::Interrupted(i)) => Some(i.exit_code),
        _ => e.downcast_ref::<build::Interrupted>().map(|i| i.exit_code),
    };
    match interrupted {
        Some(code) => e.context(Failure {
            message: "build interrupted; nothing was recorded for the unfinished step".into(),
            hint: None,
            code,
            preformatted: false,
        }),
        None => e,
    }
}
