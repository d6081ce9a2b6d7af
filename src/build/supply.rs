//! A build's supply-chain documents: the SBOM of the built image (each
//! package with the Buildfile step that brought it, the .deb sha256s of
//! the lockfile) and its SLSA provenance, both attached to what the build
//! publishes (`--tag`: registry referrers, OCI layouts) and written by
//! `-o type=oci` and `-o type=sbom`.

use std::collections::BTreeMap;

use anyhow::Context as _;

use super::Built;
use crate::export::{OutputKind, OutputSpec};
use crate::oci::{Digest, Target};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::registry::Client;
use crate::sbom::attach::{self, Artifact};
use crate::sbom::provenance::{self, BuildFacts, StepFact};
use crate::sbom::scan::{LayerBlobs, PulledBlobs};
use crate::sbom::{Described, Format, Sbom};
use crate::store::Store;

/// Per layer of the built image, the step that made it: the template's
/// layers are its FROM, each later layer one step.
pub fn layer_origins(plan: &Plan, built: &Built) -> Vec<String> {
    let base_layers = plan.base.image.layers().len();
    let from = format!("FROM {}", plan.base.pinned);
    (0..built.image.layers().len())
        .map(
            |i| match i.checked_sub(base_layers).and_then(|s| plan.steps.get(s)) {
                Some(step) => format!("{} {}", plan.location(step.span), step.text),
                None => from.clone(),
            },
        )
        .collect()
}

/// The image's layers where the SBOM can read them: those in the store
/// from there, the others pulled from their registry into files under
/// `dir` (verified as they stream) rather than into the store, so a build
/// whose every layer is mounted from a registry cache still stores none.
pub async fn layer_blobs<'a>(
    store: &'a Store,
    client: &Client,
    built: &Built,
    dir: &std::path::Path,
) -> anyhow::Result<PulledBlobs<'a>> {
    let mut files = BTreeMap::new();
    for desc in built.image.layers() {
        if store.has_blob(&desc.digest) || files.contains_key(&desc.digest) {
            continue;
        }
        match built.sources.registry_of(&desc.digest) {
            Some(repo) => {
                let path = dir.join(desc.digest.hex());
                let mut file = tokio::fs::File::create(&path)
                    .await
                    .with_context(|| format!("creating {}", path.display()))?;
                client
                    .pull_blob(&repo, desc, &mut file)
                    .await
                    .with_context(|| format!("reading layer {} for the SBOM", desc.digest))?;
                files.insert(desc.digest.clone(), path);
            }
            None => {
                crate::transfer::ensure_from(
                    store,
                    client,
                    &built.sources,
                    std::slice::from_ref(desc),
                )
                .await?
            }
        }
    }
    Ok(PulledBlobs { store, files })
}

/// The SBOM of the built image.
pub fn sbom(
    blobs: &dyn LayerBlobs,
    plan: &Plan,
    built: &Built,
    name: &str,
) -> anyhow::Result<Sbom> {
    let mut deb_sha256 = BTreeMap::new();
    if let Some(lock) = &plan.locked {
        for p in lock.debs() {
            deb_sha256.insert(
                (p.name.clone(), p.version.clone(), p.architecture.clone()),
                p.sha256.clone(),
            );
        }
    }
    let described = Described {
        name: name.to_string(),
        digest: built.image.digest(),
        created: plan.epoch,
        layer_origins: layer_origins(plan, built),
        deb_sha256,
    };
    let contents = crate::sbom::scan(blobs, &built.image)
        .with_context(|| format!("reading the packages of {}", built.image.digest()))?;
    Ok(Sbom {
        described,
        contents,
    })
}

/// The provenance statement of the build.
pub fn provenance(plan: &Plan, built: &Built, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = &plan.buildfile.path;
    let buildfile = Digest::of(&fs_err::read(path)?);
    let lock_path = crate::lockfile::Lockfile::path_for(path);
    let lockfile = match &plan.locked {
        Some(_) => Some((
            lock_path.display().to_string(),
            Digest::of(&fs_err::read(&lock_path)?),
        )),
        None => None,
    };
    let base_layers = plan.base.image.layers().len();
    let steps = plan
        .steps
        .iter()
        .zip(&built.records)
        .zip(built.image.layers().iter().skip(base_layers))
        .map(|((step, record), layer)| StepFact {
            location: plan.location(step.span),
            text: step.text.clone(),
            key: record.key.clone(),
            layer: layer.digest.clone(),
        })
        .collect();
    let (engine, engine_version) = match &built.engine {
        Some(e) => (e.kind.to_string(), e.version.clone()),
        None => (
            "none: every step came from the cache".to_string(),
            String::new(),
        ),
    };
    Ok(provenance::statement(&BuildFacts {
        image_name: name.to_string(),
        image: built.image.digest(),
        buildfile_path: path.display().to_string(),
        buildfile,
        build_args: plan.buildfile.args.clone(),
        template_ref: plan.base.pinned.clone(),
        template: plan.base.image.digest(),
        lockfile,
        steps,
        engine,
        engine_version,
        platform: plan.platform.to_string(),
        epoch: plan.epoch,
    }))
}

/// The artifacts to attach: one SBOM per format asked for, and the
/// provenance.
pub fn artifacts(
    blobs: &dyn LayerBlobs,
    plan: &Plan,
    built: &Built,
    name: &str,
    formats: &[Format],
) -> anyhow::Result<(Sbom, Vec<Artifact>)> {
    let sbom = sbom(blobs, plan, built, name)?;
    let subject = built.image.descriptor();
    let mut out: Vec<Artifact> = formats
        .iter()
        .map(|f| Artifact::new(&subject, f.media_type(), sbom.render(*f), plan.epoch))
        .collect();
    out.push(Artifact::new(
        &subject,
        attach::IN_TOTO,
        provenance(plan, built, name)?,
        plan.epoch,
    ));
    Ok((sbom, out))
}

/// Attach the artifacts where `target` keeps its image.
pub async fn attach_to(
    store: &Store,
    client: &Client,
    target: &Target,
    subject: &Digest,
    artifacts: &[Artifact],
) -> anyhow::Result<Option<String>> {
    match target {
        Target::Registry(r) => Ok(attach::push(store, client, r, subject, artifacts).await?),
        Target::Layout { dir, .. } => {
            attach::write_to_layout(dir, artifacts)?;
            Ok(None)
        }
    }
}

/// The `-o` outputs that carry the documents: `oci` layouts get the
/// artifacts beside the image, `sbom` the SBOM as a file.
pub async fn write_outputs(
    store: &Store,
    client: &Client,
    outputs: &[OutputSpec],
    subject: &Digest,
    sbom: &Sbom,
    artifacts: &[Artifact],
    progress: &Progress,
) -> anyhow::Result<()> {
    for o in outputs {
        let what = match o.kind {
            OutputKind::Oci => {
                let layout = Target::Layout {
                    dir: o.dest.clone(),
                    tag: o.tag().to_string(),
                    digest: None,
                };
                attach_to(store, client, &layout, subject, artifacts).await?;
                "SBOM and provenance"
            }
            OutputKind::Sbom => {
                crate::sbom::write_file(&sbom.render(o.sbom_format()), &o.dest)?;
                "SBOM"
            }
            _ => continue,
        };
        progress.note(
            "sbom",
            &format!("wrote the {what} of the image to {}", o.dest.display()),
        );
    }
    Ok(())
}
