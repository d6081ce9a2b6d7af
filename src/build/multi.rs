//! `build --platform A,B`: the Buildfile built once per platform (the
//! step keys already hold the platform, so nothing is shared by mistake),
//! each platform's outputs written to its own `dest` (see
//! [`OutputSpec::for_platform`]), the registry cache filled with every
//! platform's steps (pushes merge), and every `--tag` given one
//! multi-platform index naming each platform's image. The store records
//! that index as `build:NAME` too (see [`transfer::local::record_index`]).

use anyhow::Context as _;

use super::job::{self, BuildReport, BuildRequest};
use crate::export::OutputSpec;
use crate::failure::Failure;
use crate::image::Image;
use crate::oci::{Digest, Platform, Target};
use crate::progress::Progress;
use crate::registry::Client;
use crate::store::Store;
use crate::transfer;

/// What a multi-platform build did.
#[derive(Debug)]
pub struct MultiReport {
    /// One report per platform, in the order asked.
    pub platforms: Vec<(Platform, BuildReport)>,
    /// Each `--tag` and the digest of the index written there.
    pub published: Vec<(Target, Digest)>,
}

/// Each platform's outputs, checked before anything is built.
pub fn outputs_for(
    outputs: &[OutputSpec],
    platform: &Platform,
    several: bool,
) -> anyhow::Result<Vec<OutputSpec>> {
    outputs
        .iter()
        .map(|o| {
            o.for_platform(platform, several).map_err(|e| {
                Failure::bad_input(e.to_string())
                    .with_hint("put {platform} in dest, e.g. dest=out/{platform}.ext4")
                    .into()
            })
        })
        .collect()
}

/// Build `req` for each of `platforms`, then publish one index per tag.
pub async fn run(
    store: &Store,
    client: &Client,
    req: BuildRequest,
    platforms: &[Platform],
    progress: &mut Progress,
) -> anyhow::Result<MultiReport> {
    let several = platforms.len() > 1;
    let per_platform = platforms
        .iter()
        .map(|p| outputs_for(&req.outputs, p, several))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut done = vec![];
    for (platform, outputs) in platforms.iter().zip(per_platform) {
        let mut one = req.clone();
        one.buildfile.platform = platform.clone();
        one.tags = vec![];
        one.outputs = outputs;
        progress.note("platform", &format!("building for {platform}"));
        let report = job::run(store, client, one, progress)
            .await
            .with_context(|| format!("building for {platform}"))?;
        done.push((platform.clone(), report));
    }
    let images: Vec<Image> = done.iter().map(|(_, r)| r.built.image.clone()).collect();
    // `build:NAME` names every platform's image (each platform's job
    // recorded only its own), so `export NAME --platform P` finds P's.
    let sources: Vec<&transfer::Sources> = done.iter().map(|(_, r)| &r.built.sources).collect();
    if let Some((_, first)) = done.first() {
        let recorded_as = format!("{}{}", transfer::local::BUILD_PREFIX, first.name);
        transfer::local::record_index(store, &recorded_as, &images, &sources)?;
    }
    let registry_of = |d: &Digest| {
        done.iter()
            .find_map(|(_, r)| r.built.sources.registry_of(d))
    };
    let mut published = vec![];
    for t in &req.tags {
        if matches!(t, Target::Layout { .. }) {
            for (_, r) in &done {
                transfer::ensure_from(store, client, &r.built.sources, r.built.image.layers())
                    .await?;
            }
        }
        let d = transfer::publish_index(store, client, &images, t, &registry_of)
            .await
            .with_context(|| format!("publishing to {t}"))?;
        progress.note(
            "tag",
            &format!("published {t}@{d} ({} platforms)", images.len()),
        );
        let tag_name = format!("{}{t}", transfer::local::TAG_PREFIX);
        transfer::local::record_index(store, &tag_name, &images, &sources)?;
        published.push((t.clone(), d));
    }
    Ok(MultiReport {
        platforms: done,
        published,
    })
}
