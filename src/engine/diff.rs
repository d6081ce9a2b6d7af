//! Reading what a step container changed: two sources, one result (see
//! `layer::canonical`).
//! - **upper**: the container's overlay upper dir, read from this host's
//!   filesystem. Only for a local engine on classic overlay storage, as
//!   root: it touches only what changed.
//! - **api**: `GET /containers/{id}/changes` names what changed and
//!   `GET /containers/{id}/export` carries the bytes, filtered on the way
//!   (only changed files are kept, in a spool file). Works on every engine:
//!   remote (`tcp://`, `ssh://`), Docker's containerd image store, Podman
//!   with vfs storage.
//!
//! `--diff auto` takes the upper dir when it can be read, else the API.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use super::{ChangeKind as EngineChange, Container, Engine};
use crate::layer::{ChangeKind, ChangeSet, TreeIndex};

/// `--diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiffChoice {
    /// The upper dir when it is readable here, else the API.
    #[default]
    Auto,
    /// Only the upper dir; a step fails when it cannot be read.
    Upper,
    /// Only the engine's API.
    Api,
}

/// Which source a step's diff came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffSource {
    Upper,
    Api,
}

impl DiffSource {
    pub fn describe(self) -> &'static str {
        match self {
            DiffSource::Upper => "diff from the overlay upper dir (local fast path)",
            DiffSource::Api => "diff through the engine API (changes + export)",
        }
    }
}

impl Engine {
    /// Read the container's changes with the source `choice` allows; changed
    /// files' bytes from the API go to a spool file in `spool_dir`.
    pub async fn read_changes(
        &self,
        c: &Container,
        choice: DiffChoice,
        spool_dir: &Path,
        parent: Arc<TreeIndex>,
        epoch: Option<i64>,
    ) -> anyhow::Result<(ChangeSet, DiffSource)> {
        let engine = self;
        if choice != DiffChoice::Api {
            if let Some(upper) = engine.upper_dir(c).await? {
                let set = tokio::task::spawn_blocking(move || ChangeSet::from_upper(&upper))
                    .await?
                    .context("reading the container's overlay upper dir")?;
                return Ok((set, DiffSource::Upper));
            }
            if choice == DiffChoice::Upper {
                anyhow::bail!(
                "--diff upper: the engine at {} shows no overlay upper dir this process can read \
                 (it is remote, not on overlay storage, or we are not root); use --diff auto or api",
                engine.info().host
            );
            }
        }
        let changes: Vec<(String, ChangeKind)> = engine
            .changes(c)
            .await?
            .into_iter()
            .map(|ch| {
                let kind = match ch.kind {
                    EngineChange::Modified => ChangeKind::Modified,
                    EngineChange::Added => ChangeKind::Added,
                    EngineChange::Deleted => ChangeKind::Deleted,
                };
                (ch.path, kind)
            })
            .collect();
        let export = engine.export(c).await?;
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(export));
        let spool_dir = spool_dir.to_path_buf();
        let mut set = tokio::task::spawn_blocking(move || {
            let export = std::io::BufReader::with_capacity(1 << 20, reader);
            ChangeSet::from_export(&changes, export, &spool_dir, &parent, epoch)
        })
        .await?
        .with_context(|| format!("reading the changes of container {}", c.short_id()))?;
        // A new name for a file the step did not change: its bytes.
        for (path, target) in std::mem::take(&mut set.missing_content) {
            let abs = format!("/{}", String::from_utf8_lossy(&target));
            let stream = engine.archive(c, &abs);
            let reader =
                tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
            set =
                tokio::task::spawn_blocking(move || set.fill_missing(&path, reader).map(|()| set))
                    .await?
                    .with_context(|| format!("reading {abs} from container {}", c.short_id()))?;
        }
        Ok((set, DiffSource::Api))
    }
}
