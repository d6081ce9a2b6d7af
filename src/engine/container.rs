//! Step containers: create, feed files in, run, read the diff, remove.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::container::LogOutput;
use bollard::models::{ChangeType, ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, RemoveContainerOptions,
    UploadToContainerOptions, WaitContainerOptions,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};

use super::seam::OutputStream;
use super::{
    is_not_found, Change, ChangeKind, Container, ContainerSpec, Engine, EngineError, LABEL_HOST,
    LABEL_PID, LABEL_STARTED, LABEL_STEP,
};

/// After the container has exited, how long its output may still take to
/// arrive before we stop waiting for it (a hung attach must not hang a build).
const OUTPUT_GRACE: Duration = Duration::from_secs(5);

/// A line longer than this is passed on in pieces rather than buffered.
const MAX_LINE: usize = 64 * 1024;

impl Engine {
    /// Create a step container from `spec.image`.
    ///
    /// It is labelled as tplbuild's (`dev.tplbuild.step=1`, our pid, the
    /// start time and our host name, for [`Engine::cleanup_leftovers`]),
    /// runs `sh -c SCRIPT` as uid 0 in `/` with no tty, and uses the host
    /// network unless `spec.network` says otherwise. The image's own
    /// entrypoint is cleared so that a template cannot wrap our script.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<Container, EngineError> {
        let labels = HashMap::from([
            (LABEL_STEP.to_string(), "1".to_string()),
            (LABEL_PID.to_string(), std::process::id().to_string()),
            (LABEL_STARTED.to_string(), unix_now().to_string()),
            (LABEL_HOST.to_string(), super::leftovers::host_name()),
        ]);
        let cmd = match &spec.script {
            Some(script) => vec!["sh".to_string(), "-c".to_string(), script.clone()],
            // Never started; both engines refuse to create a container whose
            // image has no command, and a template need not have one.
            None => vec!["true".to_string()],
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.clone()),
            cmd: Some(cmd),
            // `[""]` is what `--entrypoint ""` sends; Podman 4.3 ignores `[]`
            // and keeps the image's entrypoint.
            entrypoint: Some(vec![String::new()]),
            working_dir: Some("/".to_string()),
            // Numeric, so it does not depend on the rootfs' /etc/passwd.
            user: Some("0:0".to_string()),
            tty: Some(false),
            open_stdin: Some(false),
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(spec.network.mode().to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: None,
            platform: spec
                .platform
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(EngineError::api(format!(
                "creating a container from {}",
                spec.image
            )))?;
        for w in created.warnings {
            tracing::warn!(container = created.id, "engine: {w}");
        }
        Ok(Container { id: created.id })
    }

    /// Extract the tar stream `tar` into `dest_dir` inside the container
    /// (`PUT /containers/{id}/archive`). COPY goes through here, never
    /// through a bind mount, so that it works with a remote engine. The
    /// directory must exist in the container.
    pub async fn upload<S>(&self, c: &Container, dest_dir: &str, tar: S) -> Result<(), EngineError>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        let options = UploadToContainerOptions {
            path: dest_dir.to_string(),
            ..Default::default()
        };
        self.docker
            .upload_to_container(&c.id, Some(options), bollard::body_try_stream(tar))
            .await
            .map_err(EngineError::api(format!(
                "copying files into {dest_dir} in container {}",
                c.short_id()
            )))
    }

    /// Start the container, pass each line it writes (stdout and stderr,
    /// without the newline) to `on_line`, wait for it, and return its exit
    /// code.
    pub async fn run(
        &self,
        c: &Container,
        mut on_line: impl FnMut(OutputStream, &str) + Send,
    ) -> Result<i64, EngineError> {
        // Attach before starting (with `logs` for anything written in
        // between), as `docker run` does, so no early line is lost.
        let attach = AttachContainerOptions {
            stream: true,
            logs: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut output = self
            .docker
            .attach_container(&c.id, Some(attach))
            .await
            .map_err(EngineError::not_started(format!(
                "attaching to container {}",
                c.short_id()
            )))?
            .output;
        self.docker
            .start_container(&c.id, None)
            .await
            .map_err(EngineError::not_started(format!(
                "starting container {}",
                c.short_id()
            )))?;

        let wait = self.wait(c);
        tokio::pin!(wait);
        let mut lines = LineSplitter::default();
        let mut exit = None;
        loop {
            tokio::select! {
                chunk = output.next(), if !lines.closed => match chunk {
                    Some(Ok(out)) => lines.push(&out, &mut on_line),
                    Some(Err(e)) => {
                        tracing::debug!(container = c.id, "output stream ended: {e}");
                        lines.close(&mut on_line);
                    }
                    None => lines.close(&mut on_line),
                },
                code = &mut wait, if exit.is_none() => exit = Some(code?),
            }
            match exit {
                Some(code) if lines.closed => return Ok(code),
                Some(code) => {
                    // Exited: drain what is buffered, but do not hang on an
                    // attach stream the engine forgets to close.
                    match tokio::time::timeout(OUTPUT_GRACE, output.next()).await {
                        Ok(Some(Ok(out))) => lines.push(&out, &mut on_line),
                        Ok(_) => lines.close(&mut on_line),
                        Err(_) => {
                            tracing::debug!(container = c.id, "output still open after exit");
                            lines.close(&mut on_line);
                        }
                    }
                    if lines.closed {
                        return Ok(code);
                    }
                }
                None => {}
            }
        }
    }

    async fn wait(&self, c: &Container) -> Result<i64, EngineError> {
        let mut waits = self
            .docker
            .wait_container(&c.id, None::<WaitContainerOptions>);
        match waits.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard turns a non-zero status into an error; it is an answer.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, error }))
                if error.is_empty() =>
            {
                Ok(code)
            }
            Some(Err(e)) => Err(EngineError::api(format!(
                "waiting for container {}",
                c.short_id()
            ))(e)),
            None => Err(EngineError::Io {
                action: format!("waiting for container {}", c.short_id()),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the engine closed the wait request without a status",
                ),
            }),
        }
    }

    /// The container's writable overlay layer (`GraphDriver.Data.UpperDir`),
    /// if the engine is local, its driver is overlay and the path exists on
    /// this host: the fast path for reading a step's diff (root only). It
    /// stays readable after the container exits, until [`Engine::remove`].
    ///
    /// What the engines put there that is not the step's work (measured by
    /// tests/engine_measure.rs; the layer code must leave it out):
    /// - Docker: nothing. Its mount points live in the `<id>-init` lower
    ///   layer; after `true` the upper dir is empty.
    /// - Podman, once the container has started (a never-started COPY
    ///   container's upper dir is empty): `run/.containerenv` (empty file),
    ///   `etc/mtab` (symlink to `/proc/mounts`), and each of `etc/hosts`,
    ///   `etc/hostname`, `etc/resolv.conf` that the image lacks (empty
    ///   files: the real ones are bind-mounted over them, so a step's writes
    ///   to them never land here), plus `etc/` and `run/` copied up for them.
    ///
    /// Whiteouts are character devices 0/0 and opaque directories carry
    /// `trusted.overlay.opaque=y` on both. Overlayfs also marks directories
    /// opaque that have nothing below them (dpkg creates `X.dpkg-new` and
    /// renames it): after `apt-get install openssh-server`, 44 new
    /// directories such as `etc/ssh` carry the flag. The API path cannot see
    /// the flag at all, so the layer code must decide opaqueness against the
    /// parent's content, not copy the xattr.
    pub async fn upper_dir(&self, c: &Container) -> Result<Option<PathBuf>, EngineError> {
        if !self.is_local() {
            return Ok(None);
        }
        let inspect = self.inspect(c).await?;
        let Some(driver) = inspect.graph_driver else {
            return Ok(None);
        };
        if !driver.name.starts_with("overlay") {
            return Ok(None);
        }
        Ok(driver
            .data
            .get("UpperDir")
            .map(PathBuf::from)
            .filter(|p| p.is_dir()))
    }

    /// `GET /containers/{id}/inspect`, for callers that need more than this
    /// module exposes (and for measuring).
    pub async fn inspect(
        &self,
        c: &Container,
    ) -> Result<bollard::models::ContainerInspectResponse, EngineError> {
        self.docker
            .inspect_container(&c.id, None)
            .await
            .map_err(EngineError::api(format!(
                "inspecting container {}",
                c.short_id()
            )))
    }

    /// What the container changed compared to its image
    /// (`GET /containers/{id}/changes`). Both engines list the parents of a
    /// changed path as modified. They disagree on a directory that was
    /// removed and re-created: Docker says the directory is modified and
    /// lists each old child as deleted; Podman says the directory is deleted
    /// and lists the new children as added. Podman also lists `/etc` as
    /// modified after any start (its mount points), but not the mount points.
    pub async fn changes(&self, c: &Container) -> Result<Vec<Change>, EngineError> {
        let changes = self
            .docker
            .container_changes(&c.id)
            .await
            .map_err(EngineError::api(format!(
                "listing the changes of container {}",
                c.short_id()
            )))?;
        Ok(changes
            .unwrap_or_default()
            .into_iter()
            .map(|ch| Change {
                path: ch.path,
                kind: match ch.kind {
                    ChangeType::_0 => ChangeKind::Modified,
                    ChangeType::_1 => ChangeKind::Added,
                    ChangeType::_2 => ChangeKind::Deleted,
                },
            })
            .collect())
    }

    /// The container's whole filesystem as an uncompressed tar stream
    /// (`GET /containers/{id}/export`); with [`Engine::changes`] it gives
    /// the diff on any engine, local or remote.
    pub async fn export(
        &self,
        c: &Container,
    ) -> Result<impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static, EngineError> {
        let docker = self.docker.clone();
        let id = c.id.clone();
        let short = c.short_id().to_string();
        // The request is sent when the stream is first polled; its errors
        // arrive as stream items and keep the container they concern.
        Ok(docker
            .export_container(&id)
            .map_err(move |e| io::Error::other(format!("exporting container {short}: {e}"))))
    }

    /// One path of the container's filesystem as an uncompressed tar
    /// (`GET /containers/{id}/archive?path=…`), for the few files the diff
    /// needs that [`Engine::export`] did not give it.
    pub fn archive(
        &self,
        c: &Container,
        path: &str,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static {
        let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::new()
            .path(path)
            .build();
        let what = format!("reading {path} from container {}", c.short_id());
        self.docker
            .download_from_container(&c.id, Some(options))
            .map_err(move |e| io::Error::other(format!("{what}: {e}")))
    }

    /// Remove the container, killing it if it runs, with its anonymous
    /// volumes. Idempotent: a container that is already gone is fine.
    pub async fn remove(&self, c: &Container) -> Result<(), EngineError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(&c.id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) || is_removal_in_progress(&e) => Ok(()),
            Err(e) => Err(EngineError::api(format!(
                "removing container {}",
                c.short_id()
            ))(e)),
        }
    }
}

/// Docker answers 409 when another request is already removing the
/// container (our Drop guard and an explicit `remove` may race).
fn is_removal_in_progress(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code: 409, message }
            if message.contains("already in progress")
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Turns the engine's output chunks (which split lines anywhere) into
/// lines, one buffer per stream so stdout and stderr never mix mid-line.
#[derive(Default)]
struct LineSplitter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    closed: bool,
}

impl LineSplitter {
    fn push(&mut self, out: &LogOutput, on_line: &mut impl FnMut(OutputStream, &str)) {
        let (stream, buf) = match out {
            LogOutput::StdErr { .. } => (OutputStream::Stderr, &mut self.stderr),
            _ => (OutputStream::Stdout, &mut self.stdout),
        };
        for &b in out.as_ref() {
            if b == b'\n' {
                emit(stream, buf, on_line);
            } else {
                buf.push(b);
                if buf.len() >= MAX_LINE {
                    emit(stream, buf, on_line);
                }
            }
        }
    }

    fn close(&mut self, on_line: &mut impl FnMut(OutputStream, &str)) {
        for (stream, buf) in [
            (OutputStream::Stdout, &mut self.stdout),
            (OutputStream::Stderr, &mut self.stderr),
        ] {
            if !buf.is_empty() {
                emit(stream, buf, on_line);
            }
        }
        self.closed = true;
    }
}

fn emit(stream: OutputStream, buf: &mut Vec<u8>, on_line: &mut impl FnMut(OutputStream, &str)) {
    let line = String::from_utf8_lossy(buf);
    on_line(stream, line.strip_suffix('\r').unwrap_or(&line));
    buf.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(s: &str) -> LogOutput {
        LogOutput::StdOut {
            message: Bytes::copy_from_slice(s.as_bytes()),
        }
    }
    fn err(s: &str) -> LogOutput {
        LogOutput::StdErr {
            message: Bytes::copy_from_slice(s.as_bytes()),
        }
    }

    #[test]
    fn lines_split_across_chunks_are_joined_and_streams_do_not_mix() {
        let mut got = Vec::new();
        let mut on_line = |stream: OutputStream, l: &str| got.push(format!("{stream:?}: {l}"));
        let mut s = LineSplitter::default();
        s.push(&out("Get:1 http://deb"), &mut on_line);
        s.push(&err("E: oops\r\nW: par"), &mut on_line);
        s.push(&out("ian.org bookworm\nReading"), &mut on_line);
        s.push(&err("tial"), &mut on_line);
        s.close(&mut on_line);
        assert_eq!(
            got,
            [
                "Stderr: E: oops",
                "Stdout: Get:1 http://debian.org bookworm",
                "Stdout: Reading",
                "Stderr: W: partial"
            ]
        );
    }

    #[test]
    fn an_endless_line_is_passed_on_in_pieces() {
        let mut got = Vec::new();
        let mut s = LineSplitter::default();
        s.push(&out(&"x".repeat(MAX_LINE + 10)), &mut |_, l: &str| {
            got.push(l.len())
        });
        s.close(&mut |_, l: &str| got.push(l.len()));
        assert_eq!(got, [MAX_LINE, 10]);
    }
}
