//! `tplbuild sbom REF [--format spdx|cyclonedx]`: the SBOM of any image.
//! An SBOM attached to the image (by `build --tag`, `template import`, or
//! in an OCI layout) is printed as it was attached, so the build's step
//! names survive; any other Debian-based image is read layer by layer
//! (dpkg's status database, file lists, copyright files).

use anyhow::Context as _;
use clap::Args;

use super::Context;
use crate::oci::Target;
use crate::sbom::{attach, Described, Format, Sbom};
use crate::transfer;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    tplbuild sbom 127.0.0.1:5000/products/gateway:1\n  \
    tplbuild sbom oci:./out/gateway-oci --format cyclonedx > gateway.cdx.json\n  \
    tplbuild sbom gateway --from-layers")]
pub struct SbomArgs {
    /// Any image: HOST/REPO:TAG[@DIGEST], oci:DIR[:TAG], or a build of
    /// this machine (its name or digest).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// SPDX 2.3 JSON or CycloneDX 1.6 JSON.
    #[arg(long, default_value = "spdx", value_parser = super::args::parse_sbom_format)]
    pub format: Format,
    /// Read the layers even when an SBOM is attached.
    #[arg(long)]
    pub from_layers: bool,
    /// Which platform to pick from a multi-platform image (default: the host's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

pub async fn sbom_cmd(ctx: &Context, a: SbomArgs) -> anyhow::Result<()> {
    let (target, client, resolved) =
        super::resolve::resolve_arg(ctx, &a.reference, a.platform.as_deref()).await?;
    let digest = resolved.digest();
    if !a.from_layers {
        let attached = match &target {
            Target::Registry(r) => attach::fetch(&client, r, &digest, a.format.media_type())
                .await
                .with_context(|| format!("looking for an SBOM attached to {target}"))?,
            Target::Layout { dir, .. } => {
                attach::fetch_from_layout(dir, &digest, a.format.media_type())?
            }
        };
        if let Some(bytes) = attached {
            eprintln!("the {} SBOM attached to {}", a.format, resolved.pinned);
            print(&bytes)?;
            return Ok(());
        }
    }
    transfer::ensure_blobs(
        &ctx.store,
        &client,
        &resolved.source,
        resolved.image.layers(),
    )
    .await
    .with_context(|| format!("fetching the layers of {target}"))?;
    eprintln!(
        "reading the packages from the layers of {}",
        resolved.pinned
    );
    let sbom = of_layers(&ctx.store, &resolved.image, target.to_string())?;
    print(&sbom.render(a.format))
}

/// The SBOM of an image tplbuild knows nothing more about than its layers
/// (which must be in the store).
pub fn of_layers(
    store: &crate::store::Store,
    image: &crate::image::Image,
    name: String,
) -> anyhow::Result<Sbom> {
    let contents = tokio::task::block_in_place(|| crate::sbom::scan(store, image))
        .with_context(|| format!("reading the packages of {}", image.digest()))?;
    Ok(Sbom {
        described: Described::plain(name, image),
        contents,
    })
}

fn print(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}
