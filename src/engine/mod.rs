//! Docker and Podman, reached through their Docker-compatible API (bollard).
//!
//! Building meets this module through the [`StepEngine`] trait (the seam;
//! a fake implements it for unit tests): a step's parent is loaded
//! ([`Engine::load_image`], a docker-archive streamed from store blobs), a
//! labelled step container is created, COPY sources go in through the
//! archive API ([`Engine::upload`], never a bind mount, so remote engines
//! work), the script runs ([`Engine::run`]), and the changes come back as a
//! `layer::ChangeSet` ([`Engine::read_changes`]): from the overlay upper
//! dir when this process can read it, else through `changes` + `export`.
//! [`run_container`] is the one place a step or lock container lives and
//! dies: it is removed on every path ([`ContainerGuard`]), and
//! [`Engine::cleanup_leftovers`] removes what runs killed with `-9` left.
//! [`connect`] finds the engine the way the Docker and Podman CLIs do.
//!
//! Both engines speak the same API here (Docker 20.10 and Podman 4.3 both
//! negotiate 1.41); where they differ (Podman's upper dir holds mount points
//! for `/etc/hosts` & co, Docker keeps those in a separate `-init` layer), the
//! difference is described on [`Engine::upper_dir`].

mod archive;
mod connect;
mod container;
mod diff;
#[cfg(test)]
pub(crate) mod fake;
mod guard;
mod image;
mod leftovers;
mod seam;

use std::path::PathBuf;

pub use archive::{LoadLayer, LoadSpec};
pub use connect::{connect, connect_host, ConnectError};
pub use diff::{DiffChoice, DiffSource};
pub use guard::ContainerGuard;
pub use seam::{
    introduce, run_container, ByteStream, ContainerWork, LineSink, OutputStream, StepEngine,
    START_ATTEMPTS,
};

/// Which engine `--engine` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// `$DOCKER_HOST` or a Docker context when one is set (and then only
    /// that), else Docker's socket, then Podman's root and rootless sockets.
    #[default]
    Auto,
    /// `$DOCKER_HOST` or a Docker context when set, else `/var/run/docker.sock`.
    Docker,
    /// `$CONTAINER_HOST` when set, else `/run/podman/podman.sock`, else
    /// `$XDG_RUNTIME_DIR/podman/podman.sock`.
    Podman,
}

/// What actually answered (a Docker socket may be served by Podman).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Docker,
    Podman,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Docker => "docker",
            EngineKind::Podman => "podman",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    pub kind: EngineKind,
    /// The engine's own version, e.g. `20.10.24+dfsg1` or `4.3.1`.
    pub version: String,
    /// The negotiated API version, e.g. `1.41`.
    pub api_version: String,
    /// Where we connected, e.g. `unix:///var/run/docker.sock`.
    pub host: String,
}

/// A connected engine. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct Engine {
    docker: bollard::Docker,
    info: EngineInfo,
}

impl Engine {
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// True when the engine's files are on this host, so that paths it
    /// reports (the overlay upper dir) may be read directly.
    pub fn is_local(&self) -> bool {
        self.info.host.starts_with("unix://")
    }
}

/// The step container's network. Host by default so that apt sees the
/// host's proxies and local mirrors; tplbuild never creates networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    #[default]
    Host,
    None,
    /// The engine's default bridge; only when the Buildfile asks for it.
    Bridge,
}

impl Network {
    fn mode(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::None => "none",
            Network::Bridge => "bridge",
        }
    }
}

/// What a step container runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerSpec {
    /// A tag [`Engine::load_image`] made, e.g. `tplbuild/state:<hex>`.
    pub image: String,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Run as `sh -c SCRIPT`; `None` for COPY steps, whose container is
    /// only written to through [`Engine::upload`] and never started.
    pub script: Option<String>,
    pub network: Network,
    /// The image's platform, passed on create so that the engine picks
    /// and runs it as that platform without a "does not match the host"
    /// warning; `None` leaves it to the engine.
    pub platform: Option<crate::oci::Platform>,
}

/// A created step container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
}

impl Container {
    /// The first 12 characters of the id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// One entry of `GET /containers/{id}/changes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Absolute path inside the container, e.g. `/etc/ssh/sshd_config`.
    pub path: String,
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Modified,
    Added,
    Deleted,
}

/// Labels that mark a container as a tplbuild step (see [`Engine::create`]).
pub const LABEL_STEP: &str = "dev.tplbuild.step";
pub const LABEL_PID: &str = "dev.tplbuild.pid";
pub const LABEL_STARTED: &str = "dev.tplbuild.started";
/// The host name of the machine whose pid `LABEL_PID` is, so that a build
/// host sharing a remote engine never removes another host's containers.
pub const LABEL_HOST: &str = "dev.tplbuild.host";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{action}")]
    Api {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("layer {path}: uncompressed it is {actual_size} bytes with digest {actual}, but the image config says {expected_size} bytes with {expected}")]
    LayerMismatch {
        path: PathBuf,
        expected: crate::oci::Digest,
        expected_size: u64,
        actual: crate::oci::Digest,
        actual_size: u64,
    },
    #[error("loading {tag}: the engine accepted the archive but has no image {tag} afterwards")]
    NotLoaded { tag: String },
    /// Attaching to or starting a container failed: its command never ran,
    /// so a fresh container may be tried. (Podman 4.3 now and then fails
    /// to prepare a created container for attach: "write child: broken
    /// pipe".)
    #[error("{action}")]
    NotStarted {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
}

impl EngineError {
    /// Whether `err` says a container's command never ran (see
    /// [`EngineError::NotStarted`]).
    pub fn never_ran(err: &anyhow::Error) -> bool {
        err.chain()
            .any(|c| matches!(c.downcast_ref(), Some(EngineError::NotStarted { .. })))
    }

    fn not_started(
        action: impl Into<String>,
    ) -> impl FnOnce(bollard::errors::Error) -> EngineError {
        let action = action.into();
        move |source| EngineError::NotStarted { action, source }
    }

    fn api(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> EngineError {
        let action = action.into();
        move |source| EngineError::Api { action, source }
    }
}

/// True for a 404 from the engine: the container or image does not exist.
fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
