//! The parent index that makes a step's layer canonical (see
//! `layer::canonical`): each layer's index is computed once (while the
//! layer is written, or by reading its blob), kept in the store, and folded
//! into the parent's tree; the engine module reads the step's changes.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;

use crate::image::Image;
use crate::layer::{self, LayerIndex, TreeIndex};
use crate::oci::Digest;
use crate::store::Store;

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
