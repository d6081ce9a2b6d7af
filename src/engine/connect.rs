//! Finding an engine: which sockets to try, in which order, and telling
//! Docker from Podman by what the `/version` endpoint says.

use std::path::Path;
use std::time::Duration;

use bollard::models::SystemVersion;
use bollard::Docker;

use super::{Engine, EngineChoice, EngineError, EngineInfo, EngineKind};

/// How long a candidate socket may take to answer `/version` before we move
/// on to the next one.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// bollard's timeout covers a request until the response headers arrive.
/// Loading a big image or waiting for a long step legitimately takes long,
/// and Ctrl-C is the user's way out, so the limit is only a backstop for a
/// wedged daemon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

const DOCKER_SOCKET: &str = "unix:///var/run/docker.sock";
const PODMAN_ROOT_SOCKET: &str = "unix:///run/podman/podman.sock";

/// Connect to the engine `choice` names.
///
/// `Auto` tries `$DOCKER_HOST`, `/var/run/docker.sock`,
/// `/run/podman/podman.sock`, `$XDG_RUNTIME_DIR/podman/podman.sock`, in that
/// order, and takes the first that answers. `Docker` honours `DOCKER_HOST`.
/// The kind in [`EngineInfo`] is what answered, not what was asked for.
pub async fn connect(choice: EngineChoice) -> Result<Engine, EngineError> {
    connect_first(candidates(
        choice,
        std::env::var("DOCKER_HOST").ok().as_deref(),
        std::env::var("XDG_RUNTIME_DIR").ok().as_deref(),
    ))
    .await
}

/// Connect to exactly `host` (`unix:///path`, `tcp://host:port`), whatever
/// the environment says.
pub async fn connect_host(host: &str) -> Result<Engine, EngineError> {
    connect_first(vec![host.to_string()]).await
}

/// The first of `hosts` that answers.
async fn connect_first(hosts: Vec<String>) -> Result<Engine, EngineError> {
    let mut tried = Vec::new();
    for host in hosts {
        if let Some(path) = host.strip_prefix("unix://") {
            if !Path::new(path).exists() {
                tried.push(format!("  {host}: no such socket"));
                continue;
            }
        }
        match probe(&host).await {
            Ok(engine) => {
                tracing::debug!(host, kind = %engine.info.kind, version = engine.info.version, "connected to engine");
                return Ok(engine);
            }
            Err(e) => tried.push(format!("  {host}: {}", error_chain(&e))),
        }
    }
    Err(EngineError::NoEngine {
        tried: tried.join("\n"),
    })
}

/// The hosts to try, in order, without duplicates.
fn candidates(
    choice: EngineChoice,
    docker_host: Option<&str>,
    xdg_runtime_dir: Option<&str>,
) -> Vec<String> {
    let docker_host = docker_host.filter(|h| !h.is_empty());
    let rootless = xdg_runtime_dir
        .filter(|d| !d.is_empty())
        .map(|d| format!("unix://{}/podman/podman.sock", d.trim_end_matches('/')));
    let mut out: Vec<String> = Vec::new();
    let docker = [Some(docker_host.unwrap_or(DOCKER_SOCKET).to_string())];
    let podman = [Some(PODMAN_ROOT_SOCKET.to_string()), rootless];
    let all: Vec<Option<String>> = match choice {
        EngineChoice::Docker => docker.to_vec(),
        EngineChoice::Podman => podman.to_vec(),
        EngineChoice::Auto => {
            let mut v = vec![docker_host.map(str::to_string), Some(DOCKER_SOCKET.into())];
            v.extend(podman);
            v
        }
    };
    for h in all.into_iter().flatten() {
        if !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

async fn probe(host: &str) -> Result<Engine, bollard::errors::Error> {
    let docker = Docker::connect_with_host(host)?
        .with_timeout(PROBE_TIMEOUT)
        .negotiate_version()
        .await?;
    let version = docker.version().await?;
    let api_version = docker.client_version().to_string();
    let info = EngineInfo {
        kind: kind_of(&version),
        version: version.version.clone().unwrap_or_default(),
        api_version,
        host: host.to_string(),
    };
    Ok(Engine {
        docker: docker.with_timeout(REQUEST_TIMEOUT),
        info,
        created: Default::default(),
    })
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tries_docker_host_first_then_docker_then_podman_root_then_rootless() {
        let c = candidates(
            EngineChoice::Auto,
            Some("tcp://10.0.0.1:2375"),
            Some("/run/user/1000"),
        );
        assert_eq!(
            c,
            [
                "tcp://10.0.0.1:2375",
                DOCKER_SOCKET,
                PODMAN_ROOT_SOCKET,
                "unix:///run/user/1000/podman/podman.sock"
            ]
        );
    }

    #[test]
    fn auto_without_env_does_not_repeat_the_docker_socket() {
        let c = candidates(EngineChoice::Auto, Some(DOCKER_SOCKET), Some(""));
        assert_eq!(c, [DOCKER_SOCKET, PODMAN_ROOT_SOCKET]);
    }

    #[test]
    fn docker_choice_honours_docker_host_and_never_tries_podman() {
        assert_eq!(
            candidates(
                EngineChoice::Docker,
                Some("unix:///tmp/d.sock"),
                Some("/run/user/0")
            ),
            ["unix:///tmp/d.sock"]
        );
        assert_eq!(
            candidates(EngineChoice::Docker, None, None),
            [DOCKER_SOCKET]
        );
    }

    #[test]
    fn podman_choice_ignores_docker_host() {
        assert_eq!(
            candidates(
                EngineChoice::Podman,
                Some("tcp://x:1"),
                Some("/run/user/7/")
            ),
            [PODMAN_ROOT_SOCKET, "unix:///run/user/7/podman/podman.sock"]
        );
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

    #[tokio::test]
    async fn no_engine_error_lists_every_socket_tried_and_how_to_start_one() {
        let dir = tempfile::tempdir().unwrap();
        let absent = format!("unix://{}/absent.sock", dir.path().display());
        // A socket file nobody listens on: connecting is refused.
        let dead = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        let dead = format!("unix://{}", dead.display());
        let err = connect_first(vec![absent.clone(), dead.clone()])
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("{absent}: no such socket")), "{msg}");
        assert!(msg.contains(&dead), "{msg}");
        assert!(msg.contains("systemctl start docker"), "{msg}");
        assert!(msg.contains("podman system service --time=0"), "{msg}");
    }
}
