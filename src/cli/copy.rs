//! `tplbuild pull` and `tplbuild copy`.

use anyhow::Context as _;
use clap::Args;

use super::human_size;
use super::template::parse_target;
use super::{parse_platform, Context};
use crate::oci::Target;
use crate::transfer;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// HOST/REPO:TAG[@DIGEST] or oci:DIR[:TAG].
    #[arg(value_name = "REF")]
    pub reference: String,
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tplbuild copy 127.0.0.1:5000/platform/base:1 oci:./mirror:base-1 --insecure-registry 127.0.0.1:5000\n  \
    tplbuild copy oci:./mirror:base-1 registry.example.com/platform/base:1")]
pub struct CopyArgs {
    /// Source: HOST/REPO:TAG[@DIGEST] or oci:DIR[:TAG].
    #[arg(value_name = "SRC")]
    pub source: String,
    /// Destination: HOST/REPO:TAG or oci:DIR[:TAG].
    #[arg(value_name = "DEST")]
    pub dest: String,
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

/// Resolve a reference for `platform` and bring all its layers into the store.
async fn fetch_whole(
    ctx: &Context,
    reference: &str,
    platform: Option<&str>,
) -> anyhow::Result<transfer::Resolved> {
    let target = parse_target(reference)?;
    let platform = parse_platform(platform)?;
    let client = ctx.client()?;
    let resolved = transfer::resolve(&ctx.store, &client, &target, &platform)
        .await
        .with_context(|| format!("reading {target}"))?;
    fetch_layers(ctx, &client, &resolved, &target).await?;
    Ok(resolved)
}

/// Every layer of `resolved` into the store.
async fn fetch_layers(
    ctx: &Context,
    client: &crate::registry::Client,
    resolved: &transfer::Resolved,
    from: &Target,
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

pub async fn pull(ctx: &Context, a: PullArgs) -> anyhow::Result<()> {
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
    let src = parse_target(&a.source)?;
    let dest = parse_target(&a.dest)?;
    let platform = parse_platform(a.platform.as_deref())?;
    let client = ctx.client()?;
    let resolved = transfer::resolve(&ctx.store, &client, &src, &platform)
        .await
        .with_context(|| format!("reading {src}"))?;
    // Between repositories of one registry, blobs are mounted, not copied.
    let mount_from = match (&src, &dest) {
        (Target::Registry(s), Target::Registry(d)) if s.registry == d.registry => Some(s.clone()),
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
        fetch_layers(ctx, &client, &resolved, &src).await?;
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
            fetch_layers(ctx, &client, &resolved, &src).await?;
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
#[command(after_help = "Examples:\n  \
    tplbuild export 127.0.0.1:5000/products/gateway:1 -o type=ext4,dest=gateway.ext4,size=1G\n  \
    tplbuild export oci:./templates:base-1 -o type=tar,dest=base.tar.zst,compression=zstd -o type=dir,dest=rootfs\n  \
    tplbuild export 127.0.0.1:5000/products/vm:1 -o type=disk,dest=vm.qcow2,format=qcow2,size=4G")]
pub struct ExportArgs {
    /// Any image: a template, a built product, a Docker-built image.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// type=tar|dir|ext4|erofs|squashfs|disk|oci,dest=PATH[,opt=value] (repeatable).
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
    let outputs = super::args::parse_outputs(&a.outputs)?;
    let resolved = fetch_whole(ctx, &a.reference, a.platform.as_deref()).await?;
    let target = &resolved.pinned;
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
