//! The whole `tplbuild build` job, from what the command line asked
//! ([`BuildRequest`]) to what happened ([`BuildReport`]): plan (FROM,
//! apt sources, lockfile), the locked .debs verified and fetched, the
//! step walk, then the tags published, the registry cache pushed and the
//! outputs exported. The CLI only maps flags to the request and prints the
//! report; progress events stream through [`Progress`] as things happen.

use anyhow::Context as _;

use super::prepare::{self, BuildfileSpec};
use super::{BuildOptions, Built, StepCache};
use crate::cache::{CacheMode, PushReport, RemoteCache};
use crate::export::{OutputKind, OutputSpec};
use crate::failure::Failure;
use crate::human::human_size;
use crate::oci::{Digest, Reference, Target};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::registry::Client;
use crate::store::Store;
use crate::transfer;

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub buildfile: BuildfileSpec,
    pub options: BuildOptions,
    /// Never download: the locked .debs must be in the store.
    pub offline: bool,
    pub tags: Vec<Target>,
    pub outputs: Vec<OutputSpec>,
    pub cache_from: Vec<Reference>,
    pub cache_to: Option<Reference>,
    pub cache_mode: CacheMode,
    /// The SBOM formats attached to what `--tag` publishes and to `-o
    /// type=oci` (the provenance always goes with them).
    pub sbom_formats: Vec<crate::sbom::Format>,
}

/// What the job did.
#[derive(Debug)]
pub struct BuildReport {
    /// The name the result is recorded under in the store (`tplbuild
    /// export NAME` finds it).
    pub name: String,
    pub plan: Plan,
    pub built: Built,
    /// Each `--tag` and the manifest digest written there.
    pub published: Vec<(Target, Digest)>,
    pub cache_push: Option<(Reference, PushReport)>,
    pub exports: Vec<crate::export::ExportReport>,
    /// Everything the user was warned about, in order.
    pub warnings: Vec<String>,
}

/// Run the job. Warnings are printed as they happen and kept in the report.
pub async fn run(
    store: &Store,
    client: &Client,
    req: BuildRequest,
    progress: &mut Progress,
) -> anyhow::Result<BuildReport> {
    let mut warnings = Warnings::default();
    // A destination that cannot be written fails now, not after the steps.
    crate::export::check_dests(&req.outputs).map_err(|e| {
        let unwritable = matches!(e, crate::export::ExportError::NotWritable { .. });
        let f = Failure::bad_input(format!("{:#}", anyhow::Error::new(e)));
        match unwritable {
            true => f.with_hint("pick an -o dest= in a folder you can write to"),
            false => f,
        }
    })?;
    let (plan, drift) = prepare::locked_plan(store, client, &req.buildfile, req.offline).await?;
    for w in drift {
        warnings.add(progress, w);
    }
    check_offline(&req, &plan)?;
    if plan.locked.is_some() {
        fetch_locked_debs(store, &plan, req.offline, progress, &mut warnings).await?;
    }
    let caches = load_caches(client, &req.cache_from, progress, &mut warnings).await;
    let need_layers =
        !req.outputs.is_empty() || req.tags.iter().any(|t| matches!(t, Target::Layout { .. }));
    let mut cache = StepCache::new(store, client, caches);
    let built = super::build(&plan, &mut cache, &req.options, need_layers, progress).await?;
    warnings.0.extend(built.warnings.iter().cloned());
    let sources = &built.sources;
    let name = buildfile_name(&plan.buildfile.path);
    let recorded_as = format!("{}{name}", transfer::local::BUILD_PREFIX);
    transfer::local::record(store, &recorded_as, &built.image.descriptor(), sources)?;
    let supply = supply_chain(store, client, &req, &plan, &built, &name).await?;
    let mut published = vec![];
    for t in &req.tags {
        // Layers the registry holds already (template, cache) are mounted,
        // not downloaded and uploaded again.
        if matches!(t, Target::Layout { .. }) {
            transfer::ensure_from(store, client, sources, built.image.layers()).await?;
        }
        let d = transfer::publish(store, client, &built.image, t, &|d| sources.registry_of(d))
            .await
            .with_context(|| format!("publishing to {t}"))?;
        progress.fact(
            "tag",
            &format!("published {t}@{d}"),
            serde_json::json!({ "ref": t.to_string(), "digest": d }),
        );
        let tag_name = format!("{}{t}", transfer::local::TAG_PREFIX);
        transfer::local::record(store, &tag_name, &built.image.descriptor(), sources)?;
        if let Some((_, artifacts)) = &supply {
            let tag = super::supply::attach_to(store, client, t, &d, artifacts)
                .await
                .with_context(|| format!("attaching the SBOM and provenance to {t}"))?;
            let how = tag.map_or(String::new(), |tag| format!(" (referrers tag {tag})"));
            progress.note(
                "sbom",
                &format!("attached the SBOM and provenance to {t}{how}"),
            );
        }
        published.push((t.clone(), d));
    }
    let cache_push = match &req.cache_to {
        Some(r) => {
            let report = push_cache(store, client, &built, r, req.cache_mode).await?;
            for w in &report.warnings {
                warnings.add(progress, w.clone());
            }
            progress.fact(
                "cache",
                &format!(
                    "cache {r}: {} entries ({} new), {} layers uploaded, {} mounted",
                    report.entries_total,
                    report.entries_added,
                    report.blobs_uploaded,
                    report.blobs_mounted
                ),
                serde_json::json!({
                    "ref": r.to_string(),
                    "entries": report.entries_total,
                    "entries_added": report.entries_added,
                    "layers_uploaded": report.blobs_uploaded,
                    "layers_mounted": report.blobs_mounted,
                }),
            );
            Some((r.clone(), report))
        }
        None => None,
    };
    let exports = export(store, client, &built, &req.outputs, plan.epoch, progress).await?;
    if let Some((sbom, artifacts)) = &supply {
        let digest = built.image.digest();
        super::supply::write_outputs(
            store,
            client,
            &req.outputs,
            &digest,
            sbom,
            artifacts,
            progress,
        )
        .await?;
    }
    Ok(BuildReport {
        name,
        plan,
        built,
        published,
        cache_push,
        exports,
        warnings: warnings.0,
    })
}

/// The SBOM and the artifacts to attach, when anything will carry them:
/// a `--tag`, an `oci` or an `sbom` output.
async fn supply_chain(
    store: &Store,
    client: &Client,
    req: &BuildRequest,
    plan: &Plan,
    built: &Built,
    name: &str,
) -> anyhow::Result<Option<(crate::sbom::Sbom, Vec<crate::sbom::attach::Artifact>)>> {
    let wanted = !req.tags.is_empty()
        || req
            .outputs
            .iter()
            .any(|o| matches!(o.kind, OutputKind::Oci | OutputKind::Sbom));
    if !wanted {
        return Ok(None);
    }
    let scratch = tempfile::Builder::new()
        .prefix("sbom-layers-")
        .tempdir_in(store.tmp_dir())?;
    let blobs = super::supply::layer_blobs(store, client, built, scratch.path()).await?;
    // The SBOM names the image the way the user does: the first tag, else
    // the Buildfile's folder.
    let name = req
        .tags
        .first()
        .map_or_else(|| name.to_string(), |t| t.to_string());
    let formats = if req.sbom_formats.is_empty() {
        vec![crate::sbom::Format::Spdx]
    } else {
        req.sbom_formats.clone()
    };
    let made = tokio::task::block_in_place(|| {
        super::supply::artifacts(&blobs, plan, built, &name, &formats)
    })?;
    Ok(Some(made))
}

#[derive(Default)]
struct Warnings(Vec<String>);

impl Warnings {
    fn add(&mut self, progress: &Progress, w: String) {
        progress.warn(&w);
        self.0.push(w);
    }
}

fn check_offline(req: &BuildRequest, plan: &Plan) -> anyhow::Result<()> {
    if !req.offline {
        return Ok(());
    }
    if plan.locked.is_none() && plan.steps.iter().any(|s| s.kind.uses_apt()) {
        return Err(Failure::bad_input(
            "--offline: the apt steps need the archive, and there is no lockfile",
        )
        .with_hint("run `tplbuild lock` and `tplbuild fetch` while online, or make a bundle")
        .into());
    }
    if !req.cache_from.is_empty() || req.cache_to.is_some() {
        return Err(Failure::bad_input("--offline cannot use a registry cache").into());
    }
    Ok(())
}

/// Every locked .deb, verified, in the store before any step runs.
async fn fetch_locked_debs(
    store: &Store,
    plan: &Plan,
    offline: bool,
    progress: &Progress,
    warnings: &mut Warnings,
) -> anyhow::Result<()> {
    let Some(lock) = &plan.locked else {
        return Ok(());
    };
    // A stored .deb that no longer matches its digest is dropped and
    // fetched again (or, offline, reported missing).
    for corrupt in crate::lock::fetch::verify_stored(store, lock).await? {
        warnings.add(
            progress,
            format!("the stored {corrupt} was corrupt and is fetched again"),
        );
    }
    let report = crate::lock::fetch::fetch(store, lock, offline, |p| {
        progress.note("fetch", &format!("fetching {} {}", p.name, p.version))
    })
    .await
    .map_err(|e| {
        let hint = if offline {
            "run `tplbuild fetch` while online, or build from a bundle"
        } else {
            "check the template's apt sources, or point them at snapshot.debian.org"
        };
        anyhow::Error::new(e).context(Failure::failed("fetching the locked .debs").with_hint(hint))
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
    Ok(())
}

/// Load every `--cache-from` index. A cache that cannot be read is a
/// warning: the steps then run, and the build still succeeds.
pub async fn load_caches(
    client: &Client,
    refs: &[Reference],
    progress: &Progress,
    warnings: &mut impl Extend<String>,
) -> Vec<RemoteCache> {
    let mut caches = vec![];
    for r in refs {
        let mut warn = |w: String| {
            progress.warn(&w);
            warnings.extend([w]);
        };
        match RemoteCache::load(client, r).await {
            Ok(c) => {
                for w in &c.warnings {
                    warn(format!("cache {r}: {w}"));
                }
                caches.push(c);
            }
            Err(e) => warn(format!("cache {r} is not usable, ignoring it: {e}")),
        }
    }
    caches
}

impl Extend<String> for Warnings {
    fn extend<I: IntoIterator<Item = String>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

async fn push_cache(
    store: &Store,
    client: &Client,
    built: &Built,
    r: &Reference,
    mode: CacheMode,
) -> anyhow::Result<PushReport> {
    let final_layers: Vec<_> = built
        .image
        .layers()
        .iter()
        .map(|l| l.digest.clone())
        .collect();
    let chosen: Vec<_> = mode
        .select(&built.records, &final_layers)
        .into_iter()
        .cloned()
        .collect();
    let from = chosen
        .iter()
        .find_map(|rec| built.sources.registry_of(&rec.layer.digest));
    crate::cache::push_from(client, store, r, &chosen, from.as_ref())
        .await
        .with_context(|| format!("pushing the registry cache to {r}"))
}

async fn export(
    store: &Store,
    client: &Client,
    built: &Built,
    outputs: &[OutputSpec],
    epoch: i64,
    progress: &Progress,
) -> anyhow::Result<Vec<crate::export::ExportReport>> {
    if outputs.is_empty() {
        return Ok(vec![]);
    }
    let outputs: Vec<OutputSpec> = outputs
        .iter()
        .filter(|o| o.kind != OutputKind::Sbom)
        .cloned()
        .collect();
    if outputs.is_empty() {
        return Ok(vec![]);
    }
    transfer::ensure_from(store, client, &built.sources, built.image.layers()).await?;
    let store2 = store.clone();
    let image = built.image.clone();
    let reports = tokio::task::spawn_blocking(move || {
        crate::export::export_all(&store2, &image, &outputs, epoch)
    })
    .await??;
    for r in &reports {
        progress.fact(
            "export",
            &format!(
                "wrote {} {}{} in {:.1}s",
                r.dest.display(),
                r.summary,
                if r.cached { " (cached)" } else { "" },
                r.seconds
            ),
            serde_json::json!({
                "type": r.kind.to_string(),
                "path": r.dest,
                "bytes": r.bytes,
                "cached": r.cached,
                "duration_ms": (r.seconds * 1000.0) as u64,
            }),
        );
    }
    Ok(reports)
}

fn buildfile_name(path: &std::path::Path) -> String {
    let abs = fs_err::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    abs.parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "buildfile".into())
}
