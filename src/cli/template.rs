//! `tplbuild template import|inspect`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{human_size, parse_platform, Context, Failure};
use crate::image::keys;
use crate::oci::{Compression, Target};
use crate::registry::RegistryError;
use crate::template::{self, ImportOptions};
use crate::transfer;

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Turn a rootfs (folder or tarball) into a template image; several
    /// rootfs (one per platform) into one multi-platform image.
    ///
    /// Each SOURCE is a folder or a tarball (.tar, .tar.gz, .tar.zst, .tar.xz) as
    /// made by mmdebstrap, debootstrap or ISAR. The image has one
    /// deterministic layer (sorted entries, numeric owners, mtimes clamped
    /// to SOURCE_DATE_EPOCH when set), annotations for the Debian suite,
    /// architecture and package count, and the dpkg package list. Importing
    /// the same SOURCE twice gives the same digest. With several SOURCEs the
    /// tag names an OCI image index with one manifest per platform.
    #[command(after_help = "Examples:\n  \
        mmdebstrap --variant=minbase bookworm rootfs.tar\n  \
        tplbuild template import rootfs.tar oci:./templates:base-1\n  \
        tplbuild template import rootfs.tar 127.0.0.1:5000/platform/base:2024.06 \\\n      \
        --annotation org.opencontainers.image.version=2024.06\n  \
        tplbuild template import amd64.tar arm64.tar 127.0.0.1:5000/platform/multi:1")]
    Import(ImportArgs),
    /// Show a template's digest, platform, layers, annotations and packages.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The rootfs: a folder or a tarball; several for a multi-platform image.
    #[arg(required = true, num_args = 1..)]
    pub sources: Vec<PathBuf>,
    /// Where to write the image: HOST/REPO:TAG or oci:DIR[:TAG].
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Add an annotation to the manifest (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// The platform of the rootfs (default: read from its dpkg database);
    /// with several SOURCEs, once per SOURCE, in the same order.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Vec<String>,
    /// Import even if SOURCE has no os-release.
    #[arg(long)]
    pub force: bool,
    /// Layer compression.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd"])]
    pub compression: String,
    /// Sign the pushed template with this private key (PEM, P-256), in
    /// cosign's format; REF must be a registry reference.
    #[arg(long, value_name = "KEY.pem")]
    pub sign: Option<PathBuf>,
    /// The SBOM format(s) attached to the template (repeatable; default spdx).
    #[arg(long = "sbom-format", value_name = "spdx|cyclonedx", value_parser = super::args::parse_sbom_format)]
    pub sbom_formats: Vec<crate::sbom::Format>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tplbuild template inspect oci:./templates:base-1\n  \
    tplbuild template inspect 127.0.0.1:5000/platform/multi:1 --json")]
pub struct InspectArgs {
    /// The template: HOST/REPO:TAG[@DIGEST] or oci:DIR[:TAG].
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Which platform to pick from a multi-platform image (default: the host's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

pub async fn run(ctx: &Context, cmd: TemplateCommand) -> anyhow::Result<()> {
    match cmd {
        TemplateCommand::Import(a) => import(ctx, a).await,
        TemplateCommand::Inspect(a) => inspect(ctx, a).await,
    }
}

pub fn parse_target(s: &str) -> anyhow::Result<Target> {
    Target::parse(s).map_err(|e| {
        Failure::bad_input(e.to_string())
            .with_hint("write HOST[:PORT]/REPO[:TAG] or oci:DIR[:TAG]")
            .into()
    })
}

fn parse_kv(items: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Failure::bad_input(format!("{what} {kv:?} is not KEY=VALUE")).into())
        })
        .collect()
}

async fn import(ctx: &Context, a: ImportArgs) -> anyhow::Result<()> {
    let target = parse_target(&a.reference)?;
    let signing = super::sign::load_signing_key(a.sign.as_deref(), "--sign")?
        .map(|k| Ok::<_, anyhow::Error>((super::sign::registry_target(&target, "--sign")?, k)))
        .transpose()?;
    if !a.platform.is_empty() && a.platform.len() != a.sources.len() {
        return Err(Failure::bad_input(format!(
            "{} --platform for {} rootfs",
            a.platform.len(),
            a.sources.len()
        ))
        .with_hint("give --platform once per rootfs, in the same order, or leave it out to read each rootfs' dpkg architecture")
        .into());
    }
    let annotations = parse_kv(&a.annotations, "annotation")?;
    let started = std::time::Instant::now();
    let mut images = vec![];
    for (i, source) in a.sources.iter().enumerate() {
        let opts = ImportOptions {
            annotations: annotations.clone(),
            platform: a
                .platform
                .get(i)
                .map(|p| parse_platform(Some(p)))
                .transpose()?,
            force: a.force,
            compression: if a.compression == "zstd" {
                Compression::Zstd
            } else {
                Compression::Gzip
            },
        };
        images.push(import_one(ctx, source, opts).await?);
    }
    let client = ctx.client()?;
    let digest = if images.len() == 1 {
        transfer::publish(&ctx.store, &client, &images[0], &target, &|_| None).await
    } else {
        transfer::publish_index(&ctx.store, &client, &images, &target, &|_| None).await
    }
    .with_context(|| format!("writing the template to {target}"))?;
    // Each platform's image gets the SBOM of its own rootfs.
    for image in &images {
        attach_sbom(
            ctx,
            &client,
            image,
            &target,
            &image.digest(),
            &a.sbom_formats,
        )
        .await?;
    }
    if let Some((repo, key)) = &signing {
        eprintln!(
            "{}",
            super::sign::sign_and_report(&client, repo, &digest, key).await?
        );
    }
    eprintln!(
        "imported {target} ({}) in {:.1}s",
        images
            .iter()
            .map(|i| i.config.platform().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    );
    println!("{digest}");
    Ok(())
}

/// Import one rootfs into the store; its image.
async fn import_one(
    ctx: &Context,
    source: &std::path::Path,
    opts: ImportOptions,
) -> anyhow::Result<crate::image::Image> {
    let store = ctx.store.clone();
    eprintln!("importing {} …", source.display());
    let started = std::time::Instant::now();
    let src = source.to_path_buf();
    let imported = tokio::task::spawn_blocking(move || template::import(&store, &src, &opts))
        .await?
        .map_err(|e| {
            let hint = match &e {
                template::TemplateError::NotARootfs { .. } => {
                    Some("pass --force to import a folder or tarball that is not a Debian rootfs")
                }
                _ => None,
            };
            let mut f = Failure::failed(format!("importing {}", source.display()));
            if let Some(h) = hint {
                f = f.with_hint(h);
                f.code = super::exit::BAD_INPUT;
            }
            anyhow::Error::new(e).context(f)
        })?;
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    let info = &imported.info;
    eprintln!(
        "imported {} ({}, {}, {} packages, {}) in {:.1}s",
        source.display(),
        imported.image.config.platform(),
        info.suite.as_deref().unwrap_or("unknown suite"),
        info.packages.len(),
        human_size(imported.image.layers_size()),
        started.elapsed().as_secs_f64()
    );
    Ok(imported.image)
}

/// The template's SBOM, attached where the template was written. Its one
/// layer is the imported rootfs.
async fn attach_sbom(
    ctx: &Context,
    client: &crate::registry::Client,
    image: &crate::image::Image,
    target: &Target,
    digest: &crate::oci::Digest,
    formats: &[crate::sbom::Format],
) -> anyhow::Result<()> {
    let mut sbom = super::sbom::of_layers(&ctx.store, image, target.to_string())?;
    sbom.described.layer_origins = vec!["template import".into(); image.layers().len()];
    let formats = if formats.is_empty() {
        vec![crate::sbom::Format::Spdx]
    } else {
        formats.to_vec()
    };
    let artifacts: Vec<_> = formats
        .iter()
        .map(|f| {
            crate::sbom::attach::Artifact::new(
                &image.descriptor(),
                f.media_type(),
                sbom.render(*f),
                sbom.described.created,
            )
        })
        .collect();
    crate::build::supply::attach_to(&ctx.store, client, target, digest, &artifacts)
        .await
        .with_context(|| format!("attaching the SBOM to {target}"))?;
    Ok(())
}

async fn inspect(ctx: &Context, a: InspectArgs) -> anyhow::Result<()> {
    let target = parse_target(&a.reference)?;
    let client = ctx.client()?;
    // A multi-platform template shows every platform unless one is asked
    // for; a single image is shown whatever its platform (an armhf
    // template on an amd64 machine).
    let (platforms, single) = match &a.platform {
        Some(p) => (vec![parse_platform(Some(p))?], false),
        None => match transfer::index_entries(&ctx.store, &client, &target)
            .await
            .with_context(|| format!("reading {target}"))?
        {
            Some(entries) => (
                entries.into_iter().filter_map(|d| d.platform).collect(),
                false,
            ),
            None => (vec![crate::oci::Platform::host()], true),
        },
    };
    let mut shown = vec![];
    for platform in &platforms {
        shown.push(inspect_one(ctx, &client, &target, platform, single, a.json).await?);
    }
    if a.json {
        let v = match <[_; 1]>::try_from(shown) {
            Ok([one]) => one,
            Err(all) => json!({ "reference": target.to_string(), "platforms": all }),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

/// Print (or, for `json`, return) one platform's image of `target`.
async fn inspect_one(
    ctx: &Context,
    client: &crate::registry::Client,
    target: &Target,
    platform: &crate::oci::Platform,
    any_platform: bool,
    as_json: bool,
) -> anyhow::Result<serde_json::Value> {
    let resolved = match transfer::resolve(&ctx.store, client, target, platform).await {
        // One image, not the host's platform: show it as it is.
        Err(transfer::TransferError::Registry(RegistryError::NoMatchingPlatform {
            available,
            ..
        })) if any_platform && available.len() == 1 => {
            let theirs = parse_platform(Some(&available[0]))?;
            transfer::resolve(&ctx.store, client, target, &theirs).await
        }
        r => r,
    }
    .with_context(|| format!("reading {target}"))?;
    let image = &resolved.image;
    let packages = image.packages();
    let created = image
        .config
        .created
        .clone()
        .or_else(|| image.annotations().get(keys::CREATED).cloned());
    if as_json {
        return Ok(json!({
            "reference": target.to_string(),
            "digest": image.digest().to_string(),
            "mediaType": image.manifest.media_type,
            "platform": image.config.platform().to_string(),
            "created": created,
            "size": image.layers_size(),
            "layers": image.layers().iter().zip(image.diff_ids()).map(|(l, d)| json!({
                "digest": l.digest.to_string(), "size": l.size, "mediaType": l.media_type, "diffID": d.to_string(),
            })).collect::<Vec<_>>(),
            "annotations": image.annotations(),
            "packages": packages,
        }));
    }
    println!("Reference:  {target}");
    println!("Digest:     {}", image.digest());
    println!("Platform:   {}", image.config.platform());
    println!("Created:    {}", created.as_deref().unwrap_or("-"));
    println!("Size:       {}", human_size(image.layers_size()));
    println!("Layers:");
    for l in image.layers() {
        println!(
            "  {}  {:>10}  {}",
            l.digest,
            human_size(l.size),
            l.media_type
        );
    }
    if !image.annotations().is_empty() {
        println!("Annotations:");
        for (k, v) in image.annotations() {
            println!("  {k}={v}");
        }
    }
    println!("Packages ({}):", packages.len());
    for p in &packages {
        println!("  {:<32} {:<28} {}", p.name, p.version, p.architecture);
    }
    println!();
    Ok(serde_json::Value::Null)
}
