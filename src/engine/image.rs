//! Images in the engine: checking for a tag, `docker load` of a
//! docker-archive streamed from store blobs, removing a tag.

use std::io;

use bollard::query_parameters::{ImportImageOptions, RemoveImageOptions};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::archive::{write_docker_archive, ChannelWriter, LoadSpec};
use super::{is_not_found, Engine, EngineError};

impl Engine {
    /// True if the engine has an image with this tag (e.g. `tplbuild/state:<hex>`).
    pub async fn has_image(&self, tag: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_image(tag).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(EngineError::api(format!("inspecting image {tag}"))(e)),
        }
    }

    /// `docker load` the image `spec` describes under `tag`.
    ///
    /// The archive is written by a blocking thread into a bounded channel
    /// that is the request body, so memory stays at a few chunks whatever
    /// the image's size and nothing is written to disk on our side.
    pub async fn load_image(&self, tag: &str, spec: &LoadSpec) -> Result<(), EngineError> {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
        let writer = {
            let (tag, spec) = (tag.to_string(), spec.clone());
            tokio::task::spawn_blocking(move || {
                let errors = tx.clone();
                let result = write_docker_archive(&tag, &spec, ChannelWriter::new(tx));
                if let Err(e) = &result {
                    // Abort the request: an archive cut short must not load.
                    let _ = errors.blocking_send(Err(io::Error::other(e.to_string())));
                }
                result
            })
        };
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let options = ImportImageOptions {
            quiet: true,
            ..Default::default()
        };
        let mut progress = self
            .docker
            .import_image(options, bollard::body_try_stream(body), None);
        let mut api_result = Ok(());
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => tracing::trace!(?info, "load progress"),
                Err(e) => {
                    api_result = Err(e);
                    break;
                }
            }
        }
        drop(progress);
        let written = writer.await.map_err(|e| EngineError::Io {
            action: format!("writing the archive for {tag}"),
            source: io::Error::other(e),
        })?;
        match (written, api_result) {
            // The engine hung up first: its reason is the story.
            (Err(EngineError::Io { source, .. }), Err(api))
                if source.kind() == io::ErrorKind::BrokenPipe =>
            {
                return Err(EngineError::api(format!("loading image {tag}"))(api));
            }
            // A broken blob is the story, not the engine's view of the
            // truncated archive it caused.
            (Err(ours), _) => return Err(ours),
            (Ok(()), Err(api)) => {
                return Err(EngineError::api(format!("loading image {tag}"))(api));
            }
            (Ok(()), Ok(())) => {}
        }
        if !self.has_image(tag).await? {
            return Err(EngineError::NotLoaded {
                tag: tag.to_string(),
            });
        }
        Ok(())
    }

    /// Remove the tag `tag` (and the image, if no other tag or container
    /// holds it). Idempotent: an absent tag is not an error.
    pub async fn remove_image(&self, tag: &str) -> Result<(), EngineError> {
        let options = RemoveImageOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_image(tag, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(EngineError::api(format!("removing image {tag}"))(e)),
        }
    }
}
