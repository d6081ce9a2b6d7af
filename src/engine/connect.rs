//! Finding an engine, the way the Docker CLI and Podman find theirs.
//!
//! An engine the user named is THE engine: `DOCKER_HOST`, else the Docker
//! context in use (`DOCKER_CONTEXT`, else `currentContext` in
//! `~/.docker/config.json`), for `--engine auto|docker`; `CONTAINER_HOST`
//! for `--engine podman`. When it does not answer, the error says which
//! setting named it and what was tried; tplbuild never falls back to
//! another engine (a build meant for a build host must not quietly run on a
//! laptop). With nothing named, the local sockets are tried in order and
//! the first that answers wins.
//!
//! Addresses: `unix://` and plain `tcp://` go to bollard as they are;
//! `tcp://` with TLS ([`tls`]) and `ssh://` ([`ssh`]) go through a
//! transport of ours ([`transport`]). Docker is told from Podman by what
//! `/version` says.

mod context;
mod endpoint;
mod resolve;
mod ssh;
mod tls;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use bollard::models::SystemVersion;
use bollard::Docker;

use super::{Engine, EngineChoice, EngineInfo, EngineKind};
use endpoint::{Endpoint, Flavor};
use resolve::{Origin, Resolved};

/// How long a candidate may take to answer `/version` before we give up
/// on it (and, for local sockets, move on to the next one).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// ssh may take `ConnectTimeout` (30 s) to reach a host, then log in.
const SSH_PROBE_TIMEOUT: Duration = Duration::from_secs(45);

/// bollard's timeout covers a request until the response headers arrive.
/// Loading a big image or waiting for a long step legitimately takes long,
/// and Ctrl-C is the user's way out, so the limit is only a backstop for a
/// wedged daemon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

const DOCKER_SOCKET: &str = "/var/run/docker.sock";
const PODMAN_ROOT_SOCKET: &str = "/run/podman/podman.sock";

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no container engine answered; tried:\n{tried}\nhint: start Docker (`systemctl start docker`, or `dockerd`) or Podman's API service (`podman system service --time=0 unix:///run/podman/podman.sock`), or point DOCKER_HOST at one")]
    NoEngine { tried: String },
    #[error("the engine {origin} names did not answer; tried {endpoint}: {cause}\nhint: {hint}")]
    Unreachable {
        origin: String,
        endpoint: String,
        cause: String,
        hint: String,
    },
    #[error("{origin}")]
    BadAddress {
        origin: String,
        #[source]
        source: endpoint::ParseError,
    },
    #[error("reading the Docker context in use")]
    Context(#[source] context::ContextError),
}

/// Connect to the engine `choice` names.
///
/// `Auto` and `Docker` use `DOCKER_HOST`, else the Docker context in use,
/// and no other engine when one is set; else `Auto` tries
/// `/var/run/docker.sock`, `/run/podman/podman.sock`,
/// `$XDG_RUNTIME_DIR/podman/podman.sock` in that order, and `Docker` only
/// the first. `Podman` uses `CONTAINER_HOST`, else Podman's two sockets.
/// The kind in [`EngineInfo`] is what answered, not what was asked for.
pub async fn connect(choice: EngineChoice) -> Result<Engine, ConnectError> {
    let get = |name: &str| std::env::var(name).ok();
    match resolve::resolve(choice, &get)? {
        Resolved::Named { endpoint, origin } => connect_named(endpoint, origin).await,
        Resolved::Probe(endpoints) => connect_first(endpoints).await,
    }
}

/// Connect to exactly `host` (`unix:///path`, `tcp://host:port`,
/// `ssh://[user@]host[:port][/remote.sock]`), whatever the environment
/// says (but `DOCKER_TLS_VERIFY` & co. apply to a `tcp://` host, as they do
/// for `docker -H`).
pub async fn connect_host(host: &str) -> Result<Engine, ConnectError> {
    let get = |name: &str| std::env::var(name).ok();
    let endpoint = resolve::parse(host, Flavor::Docker, &get, &Origin::Given)?;
    connect_named(endpoint, Origin::Given).await
}

/// The one engine the user named, or an error naming the setting, what was
/// tried and what to check.
async fn connect_named(endpoint: Endpoint, origin: Origin) -> Result<Engine, ConnectError> {
    match probe(&endpoint).await {
        Ok(engine) => {
            tracing::debug!(host = engine.info.host, kind = %engine.info.kind, version = engine.info.version, "connected to engine");
            Ok(engine)
        }
        Err(cause) => {
            let mut hint = check_hint(&endpoint);
            let out = origin.way_out();
            if !out.is_empty() {
                hint = format!("{hint}; {out}");
            }
            Err(ConnectError::Unreachable {
                origin: origin.name(),
                endpoint: endpoint.to_string(),
                cause,
                hint,
            })
        }
    }
}

/// What to check for an engine at `endpoint` that did not answer.
fn check_hint(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Unix(p) => format!(
            "start the engine on {} (`systemctl start docker`, or `dockerd`; for Podman `podman system service --time=0 unix://{}`)",
            p.display(),
            p.display()
        ),
        Endpoint::Tcp { tls: None, .. } => format!(
            "check that the engine listens on {endpoint} without TLS (`docker -H {endpoint} version`)"
        ),
        Endpoint::Tcp { tls: Some(tls), .. } if tls.cert.is_none() => format!(
            "no client certificate was sent (no cert.pem and key.pem found), and an engine that requires one closes the connection; point DOCKER_CERT_PATH at the folder with ca.pem, cert.pem, key.pem, and check with `docker -H {endpoint} --tlsverify version`"
        ),
        Endpoint::Tcp { tls: Some(_), .. } => format!(
            "check that the engine listens on {endpoint} with TLS and accepts the client certificate (`docker -H {endpoint} --tlsverify version`; DOCKER_CERT_PATH names the folder with ca.pem, cert.pem, key.pem)"
        ),
        Endpoint::Ssh { target, .. } => {
            let mut ssh = String::from("ssh");
            if let Some(p) = target.port {
                ssh.push_str(&format!(" -p {p}"));
            }
            ssh.push(' ');
            ssh.push_str(&target.destination());
            match &target.path {
                None => format!(
                    "check that `{ssh} docker version` works without a prompt (tplbuild runs ssh with BatchMode=yes: keys come from ssh-agent or ~/.ssh/config)"
                ),
                Some(path) => format!(
                    "check that `{ssh} true` works without a prompt (tplbuild runs ssh with BatchMode=yes: keys come from ssh-agent or ~/.ssh/config) and that the engine's API socket {path} exists there (`podman system service --time=0 unix://{path}`)"
                ),
            }
        }
    }
}

/// The first of `endpoints` (local sockets) that answers.
async fn connect_first(endpoints: Vec<Endpoint>) -> Result<Engine, ConnectError> {
    let mut tried = Vec::new();
    for endpoint in endpoints {
        if let Endpoint::Unix(path) = &endpoint {
            if !path.exists() {
                tried.push(format!("  {endpoint}: no such socket"));
                continue;
            }
        }
        match probe(&endpoint).await {
            Ok(engine) => {
                tracing::debug!(host = engine.info.host, kind = %engine.info.kind, version = engine.info.version, "connected to engine");
                return Ok(engine);
            }
            Err(e) => tried.push(format!("  {endpoint}: {e}")),
        }
    }
    Err(ConnectError::NoEngine {
        tried: tried.join("\n"),
    })
}

/// A client for `endpoint` that has answered `/version`; the error is the
/// whole chain of causes, as one line.
async fn probe(endpoint: &Endpoint) -> Result<Engine, String> {
    let (docker, timeout) = client(endpoint).await?;
    let docker = docker
        .with_timeout(timeout)
        .negotiate_version()
        .await
        .map_err(|e| error_chain(&e))?;
    let version = docker.version().await.map_err(|e| error_chain(&e))?;
    let api_version = docker.client_version().to_string();
    let info = EngineInfo {
        kind: kind_of(&version),
        version: version.version.clone().unwrap_or_default(),
        api_version,
        host: endpoint.to_string(),
    };
    Ok(Engine {
        docker: docker.with_timeout(REQUEST_TIMEOUT),
        info,
    })
}

/// A bollard client for `endpoint` and how long its probe may take.
async fn client(endpoint: &Endpoint) -> Result<(Docker, Duration), String> {
    let bollard = |r: Result<Docker, bollard::errors::Error>| r.map_err(|e| error_chain(&e));
    match endpoint {
        Endpoint::Unix(_) | Endpoint::Tcp { tls: None, .. } => Ok((
            bollard(Docker::connect_with_host(&endpoint.to_string()))?,
            PROBE_TIMEOUT,
        )),
        Endpoint::Tcp {
            host,
            port,
            tls: Some(tls),
        } => {
            let config = tls.client_config().map_err(|e| error_chain(&e))?;
            let connector =
                transport::Connector::tls(host, *port, config).map_err(|e| error_chain(&e))?;
            Ok((
                bollard(transport::docker(connector, None, REQUEST_TIMEOUT))?,
                PROBE_TIMEOUT,
            ))
        }
        Endpoint::Ssh { target, .. } => match &target.path {
            None => {
                let connector = transport::Connector::Ssh(ssh::DialStdio::new(target.clone()));
                Ok((
                    bollard(transport::docker(connector, None, REQUEST_TIMEOUT))?,
                    SSH_PROBE_TIMEOUT,
                ))
            }
            Some(_) => {
                let tunnel = ssh::Tunnel::open(target, SSH_PROBE_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                let connector = transport::Connector::Unix(tunnel.socket().to_path_buf());
                Ok((
                    bollard(transport::docker(
                        connector,
                        Some(Arc::new(tunnel)),
                        REQUEST_TIMEOUT,
                    ))?,
                    PROBE_TIMEOUT,
                ))
            }
        },
    }
}

/// Podman names itself in a component ("Podman Engine") and sometimes in the
/// platform name; Docker says "Engine" and "Docker Engine - Community".
fn kind_of(v: &SystemVersion) -> EngineKind {
    let platform = v.platform.as_ref().map(|p| p.name.as_str()).unwrap_or("");
    let components = v.components.iter().flatten().map(|c| c.name.as_str());
    if std::iter::once(platform)
        .chain(components)
        .any(|n| n.to_ascii_lowercase().contains("podman"))
    {
        EngineKind::Podman
    } else {
        EngineKind::Docker
    }
}

/// `e` and its causes on one line; a cause that only repeats the one
/// before it (hyper's "client error (Connect): client error (Connect)") is
/// said once.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut last = s.clone();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !last.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        last = text;
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn unix(p: &str) -> Endpoint {
        Endpoint::Unix(PathBuf::from(p))
    }

    #[tokio::test]
    async fn a_named_engine_that_does_not_answer_is_not_replaced_by_another() {
        let dir = tempfile::tempdir().unwrap();
        // A socket file nobody listens on: connecting is refused.
        let dead = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        let host = format!("unix://{}", dead.display());
        let err = connect_named(
            unix(dead.to_str().unwrap()),
            Origin::DockerHost(host.clone()),
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "the engine DOCKER_HOST names did not answer; tried {host}: "
            )),
            "{msg}"
        );
        assert!(msg.contains("hint: start the engine on"), "{msg}");
        assert!(msg.contains("unset it to use the local engine"), "{msg}");
    }

    #[tokio::test]
    async fn no_engine_error_lists_every_socket_tried_and_how_to_start_one() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent.sock");
        let dead = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        let err = connect_first(vec![
            unix(absent.to_str().unwrap()),
            unix(dead.to_str().unwrap()),
        ])
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("unix://{}: no such socket", absent.display())),
            "{msg}"
        );
        assert!(msg.contains(&format!("unix://{}", dead.display())), "{msg}");
        assert!(msg.contains("systemctl start docker"), "{msg}");
        assert!(msg.contains("podman system service --time=0"), "{msg}");
    }

    #[test]
    fn podman_is_recognised_by_its_component_name() {
        let podman: SystemVersion = serde_json::from_str(
            r#"{"Platform":{"Name":"linux/amd64/debian-12"},"Components":[{"Name":"Podman Engine","Version":"4.3.1"}],"Version":"4.3.1","ApiVersion":"1.41"}"#,
        )
        .unwrap();
        let docker: SystemVersion = serde_json::from_str(
            r#"{"Platform":{"Name":""},"Components":[{"Name":"Engine","Version":"20.10.24+dfsg1"},{"Name":"containerd","Version":"1.6.20"}],"Version":"20.10.24+dfsg1","ApiVersion":"1.41"}"#,
        )
        .unwrap();
        assert_eq!(kind_of(&podman), EngineKind::Podman);
        assert_eq!(kind_of(&docker), EngineKind::Docker);
    }
}
