//! `tplbuild pull` and `tplbuild copy`.

use anyhow::Context as _;
use clap::Args;

use super::human_size;
use super::template::parse_target;
use super::Context;
use crate::oci::Target;
use crate::transfer;

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  \
    tplbuild pull 127.0.0.1:5000/platform/base:1")]
pub struct PullArgs {
    /// HOST/REPO:TAG[@DIGEST] or oci:DIR[:TAG].
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Only this platform of a multi-platform image (default: all of them).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tplbuild copy 127.0.0.1:5000/platform/base:1 oci:./mirror:base-1\n  \
    tplbuild copy oci:./mirror:base-1 127.0.0.1:5000/mirror/base:1")]
pub struct CopyArgs {
    /// Source: HOST/REPO:TAG[@DIGEST] or oci:DIR[:TAG].
    #[arg(value_name = "SRC")]
    pub source: String,
    /// Destination: HOST/REPO:TAG or oci:DIR[:TAG].
    #[arg(value_name = "DEST")]
    pub dest: String,
    /// Only this platform of a multi-platform image (default: all of them,
    /// as one index).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

/// Resolve a reference for `platform` and bring all its layers into the store.
async fn fetch_whole(
    ctx: &Context,
    reference: &str,
    platform: Option<&str>,
) -> anyhow::Result<transfer::Resolved> {
    let (_, client, resolved) = super::resolve::resolve_arg(ctx, reference, platform).await?;
    fetch_layers(ctx, &client, &resolved, reference).await?;
    Ok(resolved)
}

/// Every layer of `resolved` into the store.
async fn fetch_layers(
    ctx: &Context,
    client: &crate::registry::Client,
    resolved: &transfer::Resolved,
    from: &str,
) -> anyhow::Result<()> {
    transfer::ensure_blobs(
        &ctx.store,
        client,
        &resolved.source,
        resolved.image.layers(),
    )
    .await
    .with_context(|| format!("reading the layers of {from}"))
}

/// Every platform of a multi-platform `target`, resolved and with all
/// layers in the store; `None` when `target` is a single image.
async fn fetch_every_platform(
    ctx: &Context,
    client: &crate::registry::Client,
    target: &Target,
) -> anyhow::Result<Option<Vec<transfer::Resolved>>> {
    let Some(entries) = transfer::index_entries(&ctx.store, client, target)
        .await
        .with_context(|| format!("reading {target}"))?
    else {
        return Ok(None);
    };
    let mut all = vec![];
    for platform in entries.into_iter().filter_map(|d| d.platform) {
        let resolved = transfer::resolve(&ctx.store, client, target, &platform)
            .await
            .with_context(|| format!("reading {target} for {platform}"))?;
        fetch_layers(ctx, client, &resolved, &target.to_string()).await?;
        all.push(resolved);
    }
    Ok(Some(all))
}

/// `pull`/`copy` without `--platform` of a multi-platform image: every platform.
async fn every_platform(
    ctx: &Context,
    reference: &str,
    platform: Option<&str>,
) -> anyhow::Result<Option<(Target, crate::registry::Client, Vec<transfer::Resolved>)>> {
    // A platform asked for, or a build of this machine (one platform
    // each): one image.
    if platform.is_some()
        || !matches!(
            crate::transfer::local::find(&ctx.store, reference, None),
            Ok(None)
        )
    {
        return Ok(None);
    }
    let target = parse_target(reference)?;
    let client = ctx.client()?;
    Ok(fetch_every_platform(ctx, &client, &target)
        .await?
        .map(|all| (target, client, all)))
}

pub async fn pull(ctx: &Context, a: PullArgs) -> anyhow::Result<()> {
    if let Some((target, _, all)) = every_platform(ctx, &a.reference, a.platform.as_deref()).await?
    {
        for r in &all {
            eprintln!(
                "pulled {} ({}, {})",
                r.pinned,
                r.image.config.platform(),
                human_size(r.image.layers_size())
            );
            println!("{} {}", r.image.digest(), r.image.config.platform());
        }
        eprintln!("pulled every platform of {target}");
        return Ok(());
    }
    let resolved = fetch_whole(ctx, &a.reference, a.platform.as_deref()).await?;
    eprintln!(
        "pulled {} ({})",
        resolved.pinned,
        human_size(resolved.image.layers_size())
    );
    println!("{}", resolved.image.digest());
    Ok(())
}

pub async fn copy(ctx: &Context, a: CopyArgs) -> anyhow::Result<()> {
    let dest = parse_target(&a.dest)?;
    if let Some((src, client, all)) = every_platform(ctx, &a.source, a.platform.as_deref()).await? {
        let images: Vec<_> = all.iter().map(|r| r.image.clone()).collect();
        let digest = transfer::publish_index(&ctx.store, &client, &images, &dest, &|_| None)
            .await
            .with_context(|| format!("writing {dest}"))?;
        eprintln!("copied {src} ({} platforms) to {dest}", images.len());
        println!("{digest}");
        return Ok(());
    }
    let (_, client, resolved) =
        super::resolve::resolve_arg(ctx, &a.source, a.platform.as_deref()).await?;
    // Between repositories of one registry, blobs are mounted, not copied.
    let mount_from = match (&resolved.source, &dest) {
        (transfer::BlobSource::Registry(s), Target::Registry(d)) if s.registry == d.registry => {
            Some(s.clone())
        }
        _ => None,
    };
    if let (transfer::BlobSource::Layout(dir), Target::Registry(r)) = (&resolved.source, &dest) {
        let digest = transfer::push_from_layout(&ctx.store, &client, &resolved.image, dir, r)
            .await
            .with_context(|| format!("writing {dest}"))?;
        eprintln!("copied {} to {dest}", resolved.pinned);
        println!("{digest}");
        return Ok(());
    }
    if mount_from.is_none() {
        fetch_layers(ctx, &client, &resolved, &a.source).await?;
    }
    // Within one registry, blobs are mounted and nothing is downloaded; if
    // the registry refuses a mount, the blob is fetched and uploaded.
    let first = transfer::publish(&ctx.store, &client, &resolved.image, &dest, &|_| {
        mount_from.clone()
    })
    .await;
    let digest = match first {
        Ok(d) => d,
        Err(e) if mount_from.is_some() => {
            tracing::debug!("mount-only copy failed ({e}); copying through the store");
            fetch_layers(ctx, &client, &resolved, &a.source).await?;
            transfer::publish(&ctx.store, &client, &resolved.image, &dest, &|_| {
                mount_from.clone()
            })
            .await
            .with_context(|| format!("writing {dest}"))?
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("writing {dest}")));
        }
    };
    eprintln!("copied {} to {dest}", resolved.pinned);
    println!("{digest}");
    Ok(())
}

#[derive(Debug, Args)]
#[command(
    after_help = "REF is an image this machine built (its name or digest; `tplbuild images`), \
    a registry image or an OCI layout. -o PATH alone takes the type from the extension \
    (.tar, .ext4, .erofs, .squashfs, .img or .qcow2 for a bootable GPT disk; a folder \
    otherwise; docs/disk.md).\n\n\
    Examples:\n  \
    tplbuild export gateway -o out/rootfs.tar\n  \
    tplbuild export 127.0.0.1:5000/products/gateway:1 \\\n      \
    -o type=ext4,dest=out/gateway-1g.ext4,size=1G\n  \
    tplbuild export oci:./templates:base-1 \\\n      \
    -o type=tar,dest=base.tar.zst,compression=zstd -o type=dir,dest=rootfs"
)]
pub struct ExportArgs {
    /// Any image: a template, a built product, a Docker-built image.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// type=tar|dir|ext4|erofs|squashfs|disk|oci|sbom,dest=PATH[,opt=value] (repeatable).
    #[arg(
        long = "output",
        short = 'o',
        value_name = "type=T,dest=D",
        required = true
    )]
    pub outputs: Vec<String>,
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

/// Flatten any image to rootfs outputs.
pub async fn export(ctx: &Context, a: ExportArgs) -> anyhow::Result<()> {
    let (sboms, outputs): (Vec<_>, Vec<_>) = super::args::parse_outputs(&a.outputs)?
        .into_iter()
        .partition(|o| o.kind == crate::export::OutputKind::Sbom);
    let resolved = fetch_whole(ctx, &a.reference, a.platform.as_deref()).await?;
    let target = &resolved.pinned;
    if !sboms.is_empty() {
        let sbom = super::sbom::of_layers(&ctx.store, &resolved.image, a.reference.clone())?;
        for o in &sboms {
            crate::sbom::write_file(&sbom.render(o.sbom_format()), &o.dest)?;
            eprintln!("wrote {} ({} SBOM)", o.dest.display(), o.sbom_format());
        }
    }
    let epoch = crate::plan::epoch_for(&resolved);
    let store = ctx.store.clone();
    let image = resolved.image.clone();
    let reports = tokio::task::spawn_blocking(move || {
        crate::export::export_all(&store, &image, &outputs, epoch)
    })
    .await?
    .with_context(|| format!("exporting {target}"))?;
    for r in reports {
        eprintln!(
            "wrote {} {}{} in {:.1}s",
            r.dest.display(),
            r.summary,
            if r.cached { " (cached)" } else { "" },
            r.seconds
        );
    }
    Ok(())
}
