//! The parent of a step inside the engine: an image holding exactly its
//! layers, tagged by its digest, sent only when the engine lacks it and
//! then with only the layers it lacks (the template's bottom layer comes
//! in with an import, which both engines apply much faster than a load).

use std::collections::BTreeSet;

use anyhow::Context as _;

use crate::engine::{LoadLayer, LoadSpec, StepEngine};
use crate::image::Image;
use crate::layer;
use crate::oci::{Compression, Descriptor, Digest};
use crate::progress::Progress;
use crate::registry::Client;
use crate::store::Store;
use crate::transfer;

/// What this process knows the engine holds.
#[derive(Debug, Default)]
pub struct EngineState {
    /// Layers (by diff_id) the engine is known to hold, from the states
    /// this run loaded or found.
    present: BTreeSet<Digest>,
}

impl EngineState {
    /// Make the engine hold exactly `image`'s layers under a tag derived
    /// from its digest; load it only if the engine does not have it, and
    /// then send only the layers it does not have yet.
    ///
    /// What was sent is reported on `progress` (an engine on another
    /// machine may take a while to receive it).
    pub async fn ensure(
        &mut self,
        engine: &dyn StepEngine,
        store: &Store,
        client: &Client,
        sources: &transfer::Sources,
        image: &Image,
        progress: &Progress,
    ) -> anyhow::Result<String> {
        let tag = format!("tplbuild/state:{}", image.digest().hex());
        if engine.has_image(&tag).await? {
            self.present.extend(image.diff_ids().iter().cloned());
            return Ok(tag);
        }
        self.ensure_bottom_layer(engine, store, client, sources, image)
            .await;
        let missing: Vec<_> = image
            .layers()
            .iter()
            .zip(image.diff_ids())
            .filter(|(_, d)| !self.present.contains(*d))
            .map(|(l, _)| l.clone())
            .collect();
        transfer::ensure_from(store, client, sources, &missing)
            .await
            .context("fetching the parent layers")?;
        let spec = self.load_spec(store, image, true).await?;
        let kind = engine.info().kind;
        let started = std::time::Instant::now();
        let sent: u64 = spec.layers.iter().map(|l| l.uncompressed_size).sum();
        let loaded = engine.load_image(&tag, &spec).await;
        if let Err(e) = loaded {
            if !spec.layers.iter().any(|l| l.present) {
                return Err(
                    anyhow::Error::new(e).context(format!("loading the parent image into {kind}"))
                );
            }
            // An engine that insists on reading every layer: send them all.
            tracing::debug!("load with known layers left out failed ({e}); sending all layers");
            transfer::ensure_from(store, client, sources, image.layers())
                .await
                .context("fetching the parent layers")?;
            let full = self.load_spec(store, image, false).await?;
            engine
                .load_image(&tag, &full)
                .await
                .with_context(|| format!("loading the parent image into {kind}"))?;
        }
        self.present.extend(image.diff_ids().iter().cloned());
        progress.note(
            "engine-load",
            &format!(
                "sent the parent image to {kind} ({} of layers) in {:.1}s",
                crate::human::human_size(sent),
                started.elapsed().as_secs_f64()
            ),
        );
        Ok(tag)
    }

    /// Bring the bottom layer (the template's) in with an import, which
    /// both engines apply much faster than a load; the load that follows
    /// then leaves it out. Anything going wrong here only means the load
    /// sends the layer itself.
    async fn ensure_bottom_layer(
        &mut self,
        engine: &dyn StepEngine,
        store: &Store,
        client: &Client,
        sources: &transfer::Sources,
        image: &Image,
    ) {
        let (Some(desc), Some(diff_id)) = (image.layers().first(), image.diff_ids().first()) else {
            return;
        };
        if self.present.contains(diff_id) {
            return;
        }
        let tag = format!("tplbuild/layer:{}", diff_id.hex());
        let result: anyhow::Result<bool> = async {
            if engine.has_image(&tag).await? {
                return Ok(true);
            }
            transfer::ensure_from(store, client, sources, std::slice::from_ref(desc)).await?;
            let layer = load_layer(store, desc, diff_id, 0, false);
            let platform = image.config.platform();
            let matched = engine.import_layer(&tag, &layer, &platform).await?;
            if !matched {
                let _ = engine.remove_image(&tag).await;
            }
            Ok(matched)
        }
        .await;
        match result {
            Ok(true) => {
                self.present.insert(diff_id.clone());
            }
            Ok(false) => {
                tracing::debug!("the engine imported the bottom layer under another digest")
            }
            Err(e) => {
                tracing::debug!("importing the bottom layer failed ({e}); loading it instead")
            }
        }
    }

    async fn load_spec(
        &self,
        store: &Store,
        image: &Image,
        skip_present: bool,
    ) -> anyhow::Result<LoadSpec> {
        let mut layers = vec![];
        for (desc, diff_id) in image.layers().iter().zip(image.diff_ids()) {
            let present = skip_present && self.present.contains(diff_id);
            let size = if present {
                0
            } else {
                // Known from a note unless the layer came from elsewhere;
                // then it is decompressed once, off the async threads.
                let (store, desc, diff_id) = (store.clone(), desc.clone(), diff_id.clone());
                tokio::task::spawn_blocking(move || uncompressed_size(&store, &desc, &diff_id))
                    .await??
            };
            layers.push(load_layer(store, desc, diff_id, size, present));
        }
        Ok(LoadSpec {
            config_json: image.config_bytes.clone(),
            layers,
        })
    }
}

/// A stored layer as the engine module sends it.
fn load_layer(
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
    uncompressed_size: u64,
    present: bool,
) -> LoadLayer {
    LoadLayer {
        blob_path: store.blob_path(&desc.digest),
        compression: desc
            .media()
            .layer_compression()
            .unwrap_or(Compression::Gzip),
        diff_id: diff_id.clone(),
        uncompressed_size,
        present,
    }
}

/// The store note that holds a layer's uncompressed size.
fn size_note(diff_id: &Digest) -> Digest {
    Digest::of(format!("uncompressed-size-v1 {diff_id}").as_bytes())
}

/// Remember a layer's uncompressed size (known when we wrote it).
pub fn remember_uncompressed_size(store: &Store, diff_id: &Digest, size: u64) {
    let note = size_note(diff_id);
    let _ = store.put_note(&note, &serde_json::json!(size));
}

/// The uncompressed size of a stored layer (needed to stream it into an
/// engine as a tar entry), measured once and remembered by diff_id.
/// Blocking: run it off the async threads when the note may be missing.
pub fn uncompressed_size(
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
) -> anyhow::Result<u64> {
    let note = size_note(diff_id);
    if let Some(n) = store.get_note(&note).and_then(|v| v.as_u64()) {
        return Ok(n);
    }
    let blob = store.open_blob(&desc.digest)?;
    let mut r = layer::decompress(blob)?;
    let n = std::io::copy(&mut r, &mut std::io::sink())?;
    store.put_note(&note, &serde_json::json!(n))?;
    Ok(n)
}
