//! What the user means by a REF argument (`export`, `copy`, `pull`,
//! `template inspect`, `sbom`): an image this machine built, by its name,
//! a tag it published or its digest (see [`transfer::local`]), else a
//! registry reference or an OCI layout.

use super::template::parse_target;
use super::{parse_platform, Context, Failure};
use crate::oci::Target;
use crate::transfer;

/// A REF argument resolved to one image for `--platform` (manifest and
/// config in the store), where it lives, and the client that reached it.
/// An image found in the store is a layout target at the store's folder.
pub async fn resolve_arg(
    ctx: &Context,
    typed: &str,
    platform: Option<&str>,
) -> anyhow::Result<(Target, crate::registry::Client, transfer::Resolved)> {
    let client = ctx.client()?;
    let in_store = |local: transfer::Resolved| Target::Layout {
        dir: ctx.store.root().to_path_buf(),
        tag: typed.to_string(),
        digest: Some(local.image.digest()),
    };
    // A digest or a bare name is this machine's; a registry reference is
    // the registry's (its referrers, its current tag), and the copy this
    // machine pushed there only stands in when the registry cannot answer.
    let asked = platform.map(|p| parse_platform(Some(p))).transpose()?;
    let digest_typed = typed.trim_start_matches('@').starts_with("sha256:");
    let local = match transfer::local::find(&ctx.store, typed, asked.as_ref()) {
        // A tag this machine published without that platform: the
        // registry's answer (and its error) is the one that counts.
        Err(transfer::local::LocalError::NoPlatform { .. })
            if !(digest_typed || looks_local(typed)) =>
        {
            None
        }
        r => r.map_err(local_error)?,
    };
    if digest_typed || looks_local(typed) {
        if let Some(local) = local {
            return Ok((in_store(local.clone()), client, local));
        }
    }
    if typed.trim_start_matches('@').starts_with("sha256:") {
        return Err(Failure::bad_input(format!(
            "no image with digest {typed} was built or pulled on this machine"
        ))
        .with_hint(
            "`tplbuild images` lists what the store holds; a registry image is HOST[:PORT]/REPO@sha256:…",
        )
        .into());
    }
    let not_here = |e: anyhow::Error| {
        match looks_local(typed) {
        true => e.context(
            Failure::bad_input(format!(
                "no image named {typed:?} was built on this machine, and no registry has it"
            ))
            .with_hint(
                "`tplbuild images` lists what this machine built; name a registry image as HOST[:PORT]/REPO[:TAG]",
            ),
        ),
        false => e,
    }
    };
    let target = parse_target(typed).map_err(not_here)?;
    let platform = parse_platform(platform)?;
    let resolved = match transfer::resolve(&ctx.store, &client, &target, &platform).await {
        Ok(r) => r,
        Err(e) => match local {
            Some(local) => {
                eprintln!(
                    "warning: reading {target} failed ({e}); using the image this machine built and pushed there"
                );
                return Ok((in_store(local.clone()), client, local));
            }
            None => {
                return Err(not_here(
                    anyhow::Error::new(e).context(format!("reading {target}")),
                ))
            }
        },
    };
    Ok((target, client, resolved))
}

/// A name with no registry host: what only the store can hold.
fn looks_local(typed: &str) -> bool {
    !(typed.contains('/') || typed.starts_with("oci:"))
}

fn local_error(e: transfer::local::LocalError) -> anyhow::Error {
    match e {
        transfer::local::LocalError::Ambiguous { .. } => Failure::bad_input(e.to_string())
            .with_hint("type more digits of the digest")
            .into(),
        transfer::local::LocalError::NoPlatform { ref available, .. } => {
            let first = available
                .split(", ")
                .next()
                .unwrap_or("linux/arm64")
                .to_string();
            Failure::bad_input(e.to_string())
                .with_hint(format!("pick one with --platform, e.g. --platform {first}"))
                .into()
        }
        e => e.into(),
    }
}
