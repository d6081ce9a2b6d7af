//! What a step container is given, shared by `build` and `lock`: the
//! parent image inside the engine ([`EngineState`]), the tar a COPY step
//! sends ([`copy`]), and the owners `COPY --chown` names
//! ([`resolve_chown`], read from the parent's layers by [`files`]).

pub mod copy;
pub mod files;
mod state;

use anyhow::Context as _;

use crate::image::Image;
use crate::store::Store;

pub use state::{remember_uncompressed_size, uncompressed_size, EngineState};

/// `COPY --chown=USER[:GROUP]` as numeric ids: numbers as they are, names
/// looked up in the parent's `/etc/passwd` and `/etc/group`.
pub fn resolve_chown(
    store: &Store,
    image: &Image,
    chown: Option<&str>,
) -> anyhow::Result<(u32, u32)> {
    let Some(spec) = chown else {
        return Ok((0, 0));
    };
    let (u, g) = spec.split_once(':').unwrap_or((spec, spec));
    let numeric = |s: &str| s.parse::<u32>().ok();
    if let (Some(a), Some(b)) = (numeric(u), numeric(g)) {
        return Ok((a, b));
    }
    let files = files::read_files(store, image, &["etc/passwd", "etc/group"])?;
    let uid = files::lookup_id(files.get("etc/passwd").map(Vec::as_slice), u)
        .with_context(|| format!("COPY --chown: no user {u:?} in the image's /etc/passwd"))?;
    let gid = files::lookup_id(files.get("etc/group").map(Vec::as_slice), g)
        .with_context(|| format!("COPY --chown: no group {g:?} in the image's /etc/group"))?;
    Ok((uid, gid))
}
