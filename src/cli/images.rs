//! `tplbuild images`: what the store holds by name — builds, the tags they
//! published, and images resolved from registries.

use clap::Args;

use super::{human_size, Context};
use crate::human::human_age;
use crate::transfer::local::{self, LocalKind};

#[derive(Debug, Args)]
#[command(after_help = "\
Builds are kept under their Buildfile's folder name (`gateway` for \
buildfiles/gateway/Buildfile), so `tplbuild export gateway -o rootfs.tar` \
writes the last build of it out, and so does `tplbuild export sha256:DIGEST` \
(7 or more hex digits are enough).

Examples:
  tplbuild images
  tplbuild images --all --json")]
pub struct ImagesArgs {
    /// One JSON array: name, kind, digest, size (bytes), recorded (Unix
    /// seconds), and platforms for a multi-platform build.
    #[arg(long)]
    pub json: bool,
    /// Also list images resolved from registries (templates, pulls).
    #[arg(long, short = 'a')]
    pub all: bool,
}

pub fn images(ctx: &Context, a: ImagesArgs) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rows: Vec<_> = local::list(&ctx.store)?
        .into_iter()
        .filter(|i| a.all || matches!(i.kind, LocalKind::Build | LocalKind::Tag))
        .map(|i| {
            // The layers' size, from the manifest (the layers themselves
            // may still be in a registry cache); a multi-platform build's
            // is every platform's.
            let platforms = local::platforms_of(&ctx.store, &i.descriptor)
                .ok()
                .flatten()
                .map(|all| {
                    let size = all.iter().map(|(_, img)| img.layers_size()).sum::<u64>();
                    let names = all.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>();
                    (names, size)
                });
            let size = match &platforms {
                Some((_, size)) => Some(*size),
                None => crate::transfer::load_image(&ctx.store, &i.descriptor.digest)
                    .map(|img| img.layers_size())
                    .ok(),
            };
            (i, size, platforms.map(|(names, _)| names))
        })
        .collect();
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(i, size, platforms)| {
                let mut v = serde_json::json!({
                    "name": i.name, "kind": i.kind, "digest": i.descriptor.digest,
                    "size": size, "recorded": i.recorded,
                });
                if let Some(p) = platforms {
                    v["platforms"] = serde_json::json!(p);
                }
                v
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if rows.is_empty() {
        eprintln!("no builds in the store yet; `tplbuild build` records each one here");
        return Ok(());
    }
    // A multi-platform build shows its platforms after its name.
    let shown = |i: &local::LocalImage, platforms: &Option<Vec<String>>| match platforms {
        Some(p) => format!("{} ({})", i.name, p.join(", ")),
        None => i.name.clone(),
    };
    let width = rows
        .iter()
        .map(|(i, _, p)| shown(i, p).len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:width$}  {:6}  {:19}  {:>9}  RECORDED",
        "NAME", "KIND", "DIGEST", "SIZE"
    );
    for (i, size, platforms) in &rows {
        let kind = match i.kind {
            LocalKind::Build => "build",
            LocalKind::Tag => "tag",
            LocalKind::Pulled => "pulled",
            LocalKind::Other => "other",
        };
        let digest = i.descriptor.digest.to_string();
        let short = &digest[..digest.len().min(19)];
        let size = size.map_or_else(|| "?".into(), human_size);
        let when = i.recorded.map_or_else(
            || "-".into(),
            |t| format!("{} ago", human_age(now.saturating_sub(t))),
        );
        let name = shown(i, platforms);
        println!("{name:width$}  {kind:6}  {short:19}  {size:>9}  {when}");
    }
    Ok(())
}
