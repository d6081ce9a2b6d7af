//! Images in the engine: checking for a tag, `docker load` of a
//! docker-archive streamed from store blobs, removing a tag.

use std::io;

use bollard::query_parameters::{
    CreateImageOptions, ImportImageOptions, ListImagesOptions, RemoveImageOptions, TagImageOptions,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::archive::{open_uncompressed, write_docker_archive, ChannelWriter, LoadLayer, LoadSpec};
use super::{is_not_found, Engine, EngineError};
use crate::oci::{Digest, Platform};

/// The repositories of the images tplbuild loads into an engine: parent
/// states of steps, and template layers imported on their own.
pub const LOADED_REPOS: [&str; 2] = ["tplbuild/state", "tplbuild/layer"];

/// One tag tplbuild loaded into the engine.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadedImage {
    pub tag: String,
    /// The image's size as the engine counts it (shared layers included).
    pub bytes: u64,
}

impl Engine {
    /// Every tag in [`LOADED_REPOS`], sorted.
    pub async fn loaded_images(&self) -> Result<Vec<LoadedImage>, EngineError> {
        let images = self
            .docker
            .list_images(Some(ListImagesOptions::default()))
            .await
            .map_err(EngineError::api("listing images".to_string()))?;
        let mut found: Vec<LoadedImage> = images
            .into_iter()
            .flat_map(|i| {
                let bytes = u64::try_from(i.size).unwrap_or(0);
                i.repo_tags
                    .into_iter()
                    .map(move |tag| LoadedImage { tag, bytes })
            })
            .filter_map(|i| {
                loaded_tag(&i.tag).map(|tag| LoadedImage {
                    tag: tag.to_string(),
                    bytes: i.bytes,
                })
            })
            .collect();
        found.sort_by(|a, b| a.tag.cmp(&b.tag));
        Ok(found)
    }

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
    ///
    /// If the engine already holds this exact image (both engines use the
    /// config's digest as the image id), it is only tagged: a load costs
    /// ~1 s even when every layer is present, because both engines read
    /// the whole archive before noticing (measured in tests/engine_measure.rs).
    pub async fn load_image(&self, tag: &str, spec: &LoadSpec) -> Result<(), EngineError> {
        let id = format!("sha256:{}", Digest::of(&spec.config_json).hex());
        if self.has_image(&id).await? {
            return self.tag_image(&id, tag).await;
        }
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

    /// Give the image `source` (a tag or an id) the tag `tag` too.
    pub async fn tag_image(&self, source: &str, tag: &str) -> Result<(), EngineError> {
        let (repo, version) = split_tag(tag);
        let options = TagImageOptions {
            repo: Some(repo.to_string()),
            tag: version.map(str::to_string),
        };
        self.docker
            .tag_image(source, Some(options))
            .await
            .map_err(EngineError::api(format!("tagging {source} as {tag}")))
    }

    /// Remove the tag `tag` unless a container uses its image: false then.
    pub async fn remove_unused_image(&self, tag: &str) -> Result<bool, EngineError> {
        match self
            .docker
            .remove_image(tag, None::<RemoveImageOptions>, None)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(false),
            Err(e) => Err(EngineError::api(format!("removing image {tag}"))(e)),
        }
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

/// `tag` without the registry an engine put in front of it, if it is in
/// [`LOADED_REPOS`]. Podman names a loaded image `localhost/tplbuild/…`,
/// and one tagged through its Docker API `docker.io/tplbuild/…`.
fn loaded_tag(tag: &str) -> Option<&str> {
    let short = ["localhost/", "docker.io/"]
        .iter()
        .find_map(|p| tag.strip_prefix(p))
        .unwrap_or(tag);
    LOADED_REPOS.contains(&split_tag(short).0).then_some(short)
}

/// `host:5000/repo:tag` → (`host:5000/repo`, `Some("tag")`): the tag is after
/// the last `:` that follows the last `/`.
fn split_tag(tag: &str) -> (&str, Option<&str>) {
    let name_start = tag.rfind('/').map_or(0, |i| i + 1);
    match tag[name_start..].rfind(':') {
        Some(i) => (&tag[..name_start + i], Some(&tag[name_start + i + 1..])),
        None => (tag, None),
    }
}

impl Engine {
    /// Import one layer as a single-layer image (`POST /images/create
    /// ?fromSrc=-`, what `docker import` does), streamed uncompressed.
    ///
    /// For a parent state's bottom layer this is the fast way in: both
    /// engines apply the stream straight to their layer store, where `load`
    /// first unpacks the whole archive to a temp folder (measured here:
    /// Docker 1.8 s against ~4 s, Podman 1.1 s against ~4–6 s for the 170 MB
    /// template). The layer's diff_id is the digest of the stream, so a
    /// later `load` that leaves this layer out finds it by chain id.
    /// Returns false when the engine's layer does not carry `diff_id`.
    ///
    /// The image is labelled as `platform`'s (without it both engines say
    /// the host's), so that `docker images` does not show an arm64
    /// template's layer as amd64.
    pub async fn import_layer(
        &self,
        tag: &str,
        layer: &LoadLayer,
        platform: &Platform,
    ) -> Result<bool, EngineError> {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
        let reader = {
            let layer = layer.clone();
            tokio::task::spawn_blocking(move || -> io::Result<()> {
                let mut r = open_uncompressed(&layer.blob_path, layer.compression)?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = io::Read::read(&mut r, &mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return Err(io::Error::from(io::ErrorKind::BrokenPipe));
                    }
                }
            })
        };
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        // The tag goes in `repo` ("the repo may include a tag"): Podman's
        // compat endpoint ignores the separate `tag` parameter.
        let options = CreateImageOptions {
            from_src: Some("-".to_string()),
            repo: Some(tag.to_string()),
            platform: platform.to_string(),
            ..Default::default()
        };
        let mut progress =
            self.docker
                .create_image(Some(options), Some(bollard::body_try_stream(body)), None);
        while let Some(item) = progress.next().await {
            item.map_err(EngineError::api(format!(
                "importing layer {}",
                layer.diff_id
            )))?;
        }
        drop(progress);
        reader
            .await
            .map_err(io::Error::other)
            .and_then(|r| r)
            .map_err(|source| EngineError::Io {
                action: format!("reading layer {}", layer.blob_path.display()),
                source,
            })?;
        let info = self
            .docker
            .inspect_image(tag)
            .await
            .map_err(EngineError::api(format!("inspecting {tag}")))?;
        let layers = info.root_fs.and_then(|r| r.layers).unwrap_or_default();
        Ok(layers == [layer.diff_id.to_string()])
    }
}

#[cfg(test)]
mod tests {
    use super::{loaded_tag, split_tag};

    #[test]
    fn loaded_tags_are_found_under_every_name_an_engine_gives_them() {
        for tag in [
            "tplbuild/state:abc",
            "localhost/tplbuild/state:abc",
            "docker.io/tplbuild/state:abc",
        ] {
            assert_eq!(loaded_tag(tag), Some("tplbuild/state:abc"), "{tag}");
        }
        assert_eq!(
            loaded_tag("docker.io/tplbuild/layer:d"),
            Some("tplbuild/layer:d")
        );
        for other in [
            "debian:12",
            "docker.io/library/debian:12",
            "registry.example/tplbuild/state:abc",
            "localhost/tplbuild-test/bookworm:1",
        ] {
            assert_eq!(loaded_tag(other), None, "{other}");
        }
    }

    #[test]
    fn split_tag_keeps_a_registry_port_in_the_repository() {
        assert_eq!(
            split_tag("tplbuild/state:abc"),
            ("tplbuild/state", Some("abc"))
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/base:1"),
            ("127.0.0.1:5000/base", Some("1"))
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/base"),
            ("127.0.0.1:5000/base", None)
        );
        assert_eq!(split_tag("base"), ("base", None));
    }
}
