//! Reading what a step container changed, and the parent index that makes
//! the layer canonical.
//!
//! Two sources, one result (see `layer::canonical`):
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

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;

use crate::engine::{ChangeKind as EngineChange, Container, Engine};
use crate::image::Image;
use crate::layer::{self, ChangeKind, ChangeSet, LayerIndex, TreeIndex};
use crate::oci::Digest;
use crate::store::Store;

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

/// Read the container's changes with the source `choice` allows.
pub async fn read_changes(
    engine: &Engine,
    c: &Container,
    choice: DiffChoice,
    store: &Store,
    parent: Arc<TreeIndex>,
    epoch: Option<i64>,
) -> anyhow::Result<(ChangeSet, DiffSource)> {
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
    let spool_dir = store.tmp_dir();
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
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
        set = tokio::task::spawn_blocking(move || set.fill_missing(&path, reader).map(|()| set))
            .await?
            .with_context(|| format!("reading {abs} from container {}", c.short_id()))?;
    }
    Ok((set, DiffSource::Api))
}

/// Layer indexes, by diff_id, and the last parent tree built from them,
/// for one build.
#[derive(Default)]
pub struct Indexes {
    layers: HashMap<Digest, Arc<LayerIndex>>,
    last: Option<(Vec<Digest>, Arc<TreeIndex>)>,
}

/// The store note that names a layer's index blob.
fn index_note(diff_id: &Digest) -> Digest {
    Digest::of(format!("layer-index-v1 {diff_id}").as_bytes())
}

impl Indexes {
    /// Remember the index of a layer this build wrote, here and in the store.
    pub fn remember(&mut self, store: &Store, diff_id: &Digest, index: LayerIndex) {
        if let Ok(blob) = store.put_bytes(&index.encode()) {
            let _ = store.put_note(&index_note(diff_id), &serde_json::json!(blob.to_string()));
        }
        self.layers.insert(diff_id.clone(), Arc::new(index));
    }

    /// The tree `image`'s layers make (their blobs must be in the store).
    pub async fn tree(&mut self, store: &Store, image: &Image) -> anyhow::Result<Arc<TreeIndex>> {
        let ids = image.diff_ids().to_vec();
        if let Some((last_ids, tree)) = &self.last {
            if *last_ids == ids {
                return Ok(tree.clone());
            }
        }
        let (mut tree, start) = match &self.last {
            Some((last_ids, tree)) if ids.starts_with(last_ids) => {
                ((**tree).clone(), last_ids.len())
            }
            _ => (TreeIndex::default(), 0),
        };
        for (desc, diff_id) in image.layers().iter().zip(&ids).skip(start) {
            let index = match self.layers.get(diff_id) {
                Some(i) => i.clone(),
                None => {
                    let i = Arc::new(load_or_read(store, &desc.digest, diff_id).await?);
                    self.layers.insert(diff_id.clone(), i.clone());
                    i
                }
            };
            tree.apply(&index);
        }
        let tree = Arc::new(tree);
        self.last = Some((ids, tree.clone()));
        Ok(tree)
    }
}

/// A layer's index from the store, or read from its blob (once, then kept).
async fn load_or_read(
    store: &Store,
    blob: &Digest,
    diff_id: &Digest,
) -> anyhow::Result<LayerIndex> {
    let note = index_note(diff_id);
    if let Some(d) = store
        .get_note(&note)
        .and_then(|v| v.as_str().map(str::to_string))
    {
        if let Ok(d) = d.parse::<Digest>() {
            if let Ok(bytes) = store.read_bytes(&d) {
                if let Ok(i) = LayerIndex::decode(&bytes) {
                    return Ok(i);
                }
            }
        }
    }
    let store2 = store.clone();
    let blob = blob.clone();
    let index = tokio::task::spawn_blocking(move || -> anyhow::Result<LayerIndex> {
        let r = layer::decompress(store2.open_blob(&blob)?)?;
        Ok(LayerIndex::read(std::io::BufReader::with_capacity(
            1 << 20,
            r,
        ))?)
    })
    .await?
    .with_context(|| format!("indexing layer {diff_id}"))?;
    if let Ok(b) = store.put_bytes(&index.encode()) {
        let _ = store.put_note(&note, &serde_json::json!(b.to_string()));
    }
    Ok(index)
}
