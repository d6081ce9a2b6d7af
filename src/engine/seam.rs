//! The seam between building and a container engine: [`StepEngine`] is
//! everything a build or a lock needs from Docker or Podman, implemented by
//! the bollard [`Engine`] and, in unit tests, by a fake that applies
//! scripted changes to a temp folder. [`run_container`] is the one place
//! where a step container is created, worked on and removed, on every path.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::Stream;

use super::{
    Container, ContainerSpec, DiffChoice, DiffSource, Engine, EngineError, EngineInfo, EngineKind,
    LoadLayer, LoadSpec,
};
use crate::layer::{ChangeSet, TreeIndex};
use crate::oci::Platform;
use crate::progress::Progress;

/// A tar stream sent into a container.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

/// Called with each line a container prints, and which stream it came on.
pub type LineSink<'a> = Box<dyn FnMut(OutputStream, &str) + Send + 'a>;

/// Which of a container's streams a line came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// What building needs from an engine. Object safe, so a build holds an
/// `Arc<dyn StepEngine>` whatever answers behind it.
pub trait StepEngine: Send + Sync {
    fn info(&self) -> &EngineInfo;
    /// Whether the image `tag` is in the engine.
    fn has_image<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<bool, EngineError>>;
    /// Load an image (config + layers) under `tag`.
    fn load_image<'a>(
        &'a self,
        tag: &'a str,
        spec: &'a LoadSpec,
    ) -> BoxFuture<'a, Result<(), EngineError>>;
    /// Import one layer as an image of its own, labelled as `platform`'s;
    /// true when the engine holds it under the expected diff_id.
    fn import_layer<'a>(
        &'a self,
        tag: &'a str,
        layer: &'a LoadLayer,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<bool, EngineError>>;
    fn remove_image<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<(), EngineError>>;
    /// Create a labelled step container (not started).
    fn create<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<Container, EngineError>>;
    /// Extract a tar stream into `dest_dir` in the container.
    fn upload<'a>(
        &'a self,
        c: &'a Container,
        dest_dir: &'a str,
        tar: ByteStream,
    ) -> BoxFuture<'a, Result<(), EngineError>>;
    /// Start the container, pass its output lines on, return its exit code.
    fn run<'a>(
        &'a self,
        c: &'a Container,
        on_line: LineSink<'a>,
    ) -> BoxFuture<'a, Result<i64, EngineError>>;
    /// What the container changed (see [`Engine::read_changes`]).
    fn read_changes<'a>(
        &'a self,
        c: &'a Container,
        choice: DiffChoice,
        spool_dir: &'a Path,
        parent: Arc<TreeIndex>,
        epoch: Option<i64>,
    ) -> BoxFuture<'a, anyhow::Result<(ChangeSet, DiffSource)>>;
    /// Remove the container (idempotent).
    fn remove<'a>(&'a self, c: &'a Container) -> BoxFuture<'a, Result<(), EngineError>>;
    /// Remove the step containers of tplbuild runs that were killed.
    fn cleanup_leftovers(&self) -> BoxFuture<'_, Result<usize, EngineError>>;
}

impl StepEngine for Engine {
    fn info(&self) -> &EngineInfo {
        Engine::info(self)
    }
    fn has_image<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(Engine::has_image(self, tag))
    }
    fn load_image<'a>(
        &'a self,
        tag: &'a str,
        spec: &'a LoadSpec,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(Engine::load_image(self, tag, spec))
    }
    fn import_layer<'a>(
        &'a self,
        tag: &'a str,
        layer: &'a LoadLayer,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(Engine::import_layer(self, tag, layer, platform))
    }
    fn remove_image<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(Engine::remove_image(self, tag))
    }
    fn create<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<Container, EngineError>> {
        Box::pin(Engine::create(self, spec))
    }
    fn upload<'a>(
        &'a self,
        c: &'a Container,
        dest_dir: &'a str,
        tar: ByteStream,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(Engine::upload(self, c, dest_dir, tar))
    }
    fn run<'a>(
        &'a self,
        c: &'a Container,
        on_line: LineSink<'a>,
    ) -> BoxFuture<'a, Result<i64, EngineError>> {
        Box::pin(Engine::run(self, c, on_line))
    }
    fn read_changes<'a>(
        &'a self,
        c: &'a Container,
        choice: DiffChoice,
        spool_dir: &'a Path,
        parent: Arc<TreeIndex>,
        epoch: Option<i64>,
    ) -> BoxFuture<'a, anyhow::Result<(ChangeSet, DiffSource)>> {
        Box::pin(Engine::read_changes(
            self, c, choice, spool_dir, parent, epoch,
        ))
    }
    fn remove<'a>(&'a self, c: &'a Container) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(Engine::remove(self, c))
    }
    fn cleanup_leftovers(&self) -> BoxFuture<'_, Result<usize, EngineError>> {
        Box::pin(Engine::cleanup_leftovers(self))
    }
}

/// Say which engine answered, and remove what killed tplbuild runs left
/// on it: the start of every build and lock.
pub async fn introduce(engine: &dyn StepEngine, progress: &Progress) {
    let info = engine.info();
    let mut msg = format!(
        "using {} {} (API {}) at {}",
        info.kind, info.version, info.api_version, info.host
    );
    // Say so when a variable the user set points elsewhere (`--engine
    // podman` with DOCKER_HOST set): they may have meant that engine.
    let other = match info.kind {
        EngineKind::Podman => "DOCKER_HOST",
        EngineKind::Docker => "CONTAINER_HOST",
    };
    if let Some(v) = std::env::var(other)
        .ok()
        .filter(|v| !v.is_empty() && *v != info.host)
    {
        msg.push_str(&format!(
            " ({other}={v} is for the other engine and not used)"
        ));
    }
    progress.fact(
        "engine",
        &msg,
        serde_json::json!({
            "kind": info.kind.to_string(), "version": info.version,
            "api_version": info.api_version, "host": info.host,
        }),
    );
    match engine.cleanup_leftovers().await {
        Ok(0) => {}
        Ok(n) => progress.note(
            "cleanup",
            &format!("removed {n} container(s) left by an interrupted tplbuild"),
        ),
        Err(e) => progress.warn(&format!("could not look for leftover containers: {e}")),
    }
}

/// How many fresh containers a step gets when its command could not be
/// started in the one before ([`EngineError::NotStarted`]).
pub const START_ATTEMPTS: u32 = 3;

/// What is done with a step container between its creation and its
/// removal (a trait rather than a closure: the future borrows both the
/// work's own references and the container).
pub trait ContainerWork {
    type Output;
    fn work<'x>(
        &'x mut self,
        container: &'x Container,
        progress: &'x mut Progress,
    ) -> BoxFuture<'x, anyhow::Result<Self::Output>>;
}

/// Create a container from `spec`, hand it to `work`, and remove it on
/// every path: success, error, and `interrupted` firing (its error is then
/// the result, after the removal). When the container's command never
/// started (Podman 4.3 now and then fails an attach), the work is tried
/// again in a fresh container, up to [`START_ATTEMPTS`], with a warning.
/// Returns the result and how many containers were created.
pub async fn run_container<W, I, IF>(
    engine: &Arc<dyn StepEngine>,
    spec: &ContainerSpec,
    progress: &mut Progress,
    interrupted: I,
    mut work: W,
) -> (anyhow::Result<W::Output>, usize)
where
    W: ContainerWork,
    I: Fn() -> IF,
    IF: Future<Output = anyhow::Error>,
{
    let mut created = 0;
    let mut attempt = 1;
    loop {
        let container = match engine.create(spec).await {
            Ok(c) => c,
            Err(e) => return (Err(e.into()), created),
        };
        created += 1;
        let guard = super::ContainerGuard::shared(engine.clone(), container);
        let result = {
            let stop = interrupted();
            tokio::pin!(stop);
            tokio::select! {
                r = work.work(guard.container(), progress) => r,
                e = &mut stop => Err(e),
            }
        };
        let id = guard.container().id.clone();
        if let Err(e) = guard.remove().await {
            progress.warn(&format!("could not remove container {id}: {e}"));
        }
        match result {
            Err(e) if attempt < START_ATTEMPTS && EngineError::never_ran(&e) => {
                progress.warn(&format!(
                    "{e:#}; the command never started, trying again in a new container"
                ));
                attempt += 1;
            }
            other => return (other, created),
        }
    }
}
