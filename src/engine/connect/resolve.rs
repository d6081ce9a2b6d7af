//! Which engine the settings name: `DOCKER_HOST`, the Docker context in
//! use, `CONTAINER_HOST`, or none (then the local sockets, in order). Pure:
//! it reads variables through a function and files under the Docker config
//! folder, so every rule of precedence is tested without an engine.

use std::path::Path;

use super::context;
use super::endpoint::{self, Endpoint, Flavor};
use super::tls::TlsSettings;
use super::{ConnectError, DOCKER_SOCKET, PODMAN_ROOT_SOCKET};
use crate::engine::EngineChoice;

/// Which setting named the engine, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    DockerHost(String),
    Context {
        name: String,
        chosen_by: String,
    },
    ContainerHost(String),
    /// `connect_host`'s argument.
    Given,
}

impl Origin {
    /// "DOCKER_HOST", "the Docker context \"ci\" (DOCKER_CONTEXT)", ...
    pub(super) fn name(&self) -> String {
        match self {
            Origin::DockerHost(_) => "DOCKER_HOST".into(),
            Origin::Context { name, chosen_by } => {
                format!("the Docker context \"{name}\" ({chosen_by})")
            }
            Origin::ContainerHost(_) => "CONTAINER_HOST".into(),
            Origin::Given => "the address given".into(),
        }
    }

    /// "DOCKER_HOST=tcp://…", for an address that does not parse.
    fn setting(&self) -> String {
        match self {
            Origin::DockerHost(h) => format!("DOCKER_HOST={}", endpoint::redact(h)),
            Origin::ContainerHost(h) => format!("CONTAINER_HOST={}", endpoint::redact(h)),
            other => other.name(),
        }
    }

    /// How to stop using this engine.
    pub(super) fn way_out(&self) -> &'static str {
        match self {
            Origin::DockerHost(_) => {
                "DOCKER_HOST is set, so tplbuild uses that engine and no other (as docker does); unset it to use the local engine"
            }
            Origin::Context { .. } => {
                "a Docker context is in use, so tplbuild uses its engine and no other (as docker does); `docker context use default` (or unsetting DOCKER_CONTEXT) switches back to the local engine"
            }
            Origin::ContainerHost(_) => {
                "CONTAINER_HOST is set, so `--engine podman` uses that engine and no other; unset it to use the local Podman socket"
            }
            Origin::Given => "",
        }
    }
}

/// What to connect to: one engine the user named, or local sockets to try.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resolved {
    Named { endpoint: Endpoint, origin: Origin },
    Probe(Vec<Endpoint>),
}

pub(super) fn parse(
    addr: &str,
    flavor: Flavor,
    get: &dyn Fn(&str) -> Option<String>,
    origin: &Origin,
) -> Result<Endpoint, ConnectError> {
    let tls = match (flavor, context::config_dir(get)) {
        (Flavor::Docker, Some(dir)) => TlsSettings::from_env(get, &dir),
        (Flavor::Docker, None) => TlsSettings::from_env(get, Path::new(".docker")),
        (Flavor::Podman, _) => None,
    };
    Endpoint::parse(addr, flavor, tls).map_err(|source| ConnectError::BadAddress {
        origin: origin.setting(),
        source,
    })
}

pub(super) fn resolve(
    choice: EngineChoice,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, ConnectError> {
    let set = |name: &str| get(name).filter(|v| !v.is_empty());
    match choice {
        EngineChoice::Auto | EngineChoice::Docker => {
            if let Some(host) = set("DOCKER_HOST") {
                let origin = Origin::DockerHost(host.clone());
                let endpoint = parse(&host, Flavor::Docker, get, &origin)?;
                return Ok(Resolved::Named { endpoint, origin });
            }
            if let Some(dir) = context::config_dir(get) {
                if let Some(ctx) = context::current(get, &dir).map_err(ConnectError::Context)? {
                    let origin = Origin::Context {
                        name: ctx.name.clone(),
                        chosen_by: ctx.chosen_by.clone(),
                    };
                    let tls = TlsSettings::from_context(&ctx.tls_dir, ctx.skip_tls_verify);
                    let endpoint =
                        Endpoint::parse(&ctx.host, Flavor::Docker, tls).map_err(|source| {
                            ConnectError::BadAddress {
                                origin: origin.name(),
                                source,
                            }
                        })?;
                    return Ok(Resolved::Named { endpoint, origin });
                }
            }
        }
        EngineChoice::Podman => {
            if let Some(host) = set("CONTAINER_HOST") {
                let origin = Origin::ContainerHost(host.clone());
                let endpoint = parse(&host, Flavor::Podman, get, &origin)?;
                return Ok(Resolved::Named { endpoint, origin });
            }
        }
    }
    Ok(Resolved::Probe(candidates(
        choice,
        set("XDG_RUNTIME_DIR").as_deref(),
    )))
}

/// The local sockets to try, in order, when no engine is named.
fn candidates(choice: EngineChoice, xdg_runtime_dir: Option<&str>) -> Vec<Endpoint> {
    let docker = Endpoint::Unix(DOCKER_SOCKET.into());
    let mut podman = vec![Endpoint::Unix(PODMAN_ROOT_SOCKET.into())];
    if let Some(d) = xdg_runtime_dir {
        podman.push(Endpoint::Unix(
            Path::new(d.trim_end_matches('/')).join("podman/podman.sock"),
        ));
    }
    match choice {
        EngineChoice::Docker => vec![docker],
        EngineChoice::Podman => podman,
        EngineChoice::Auto => std::iter::once(docker).chain(podman).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// An environment of `pairs` only, with HOME at an empty folder.
    struct Vars {
        pairs: Vec<(String, String)>,
        _home: tempfile::TempDir,
    }

    impl Vars {
        fn new(pairs: &[(&str, &str)]) -> Self {
            let home = tempfile::tempdir().unwrap();
            let mut pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if !pairs.iter().any(|(k, _)| k == "HOME") {
                pairs.push(("HOME".into(), home.path().to_str().unwrap().into()));
            }
            Vars { pairs, _home: home }
        }

        fn resolve(&self, choice: EngineChoice) -> Result<Resolved, ConnectError> {
            let get = |k: &str| {
                self.pairs
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
            };
            resolve(choice, &get)
        }
    }

    fn unix(p: &str) -> Endpoint {
        Endpoint::Unix(PathBuf::from(p))
    }

    fn probe_list(r: Resolved) -> Vec<Endpoint> {
        match r {
            Resolved::Probe(v) => v,
            other => panic!("expected sockets to probe, got {other:?}"),
        }
    }

    fn named(r: Resolved) -> (Endpoint, Origin) {
        match r {
            Resolved::Named { endpoint, origin } => (endpoint, origin),
            other => panic!("expected a named engine, got {other:?}"),
        }
    }

    #[test]
    fn auto_without_settings_tries_docker_then_podman_root_then_rootless() {
        let v = Vars::new(&[("XDG_RUNTIME_DIR", "/run/user/1000/")]);
        assert_eq!(
            probe_list(v.resolve(EngineChoice::Auto).unwrap()),
            [
                unix(DOCKER_SOCKET),
                unix(PODMAN_ROOT_SOCKET),
                unix("/run/user/1000/podman/podman.sock")
            ]
        );
        let v = Vars::new(&[("XDG_RUNTIME_DIR", "")]);
        assert_eq!(
            probe_list(v.resolve(EngineChoice::Auto).unwrap()),
            [unix(DOCKER_SOCKET), unix(PODMAN_ROOT_SOCKET)]
        );
    }

    #[test]
    fn docker_choice_without_settings_tries_only_the_docker_socket() {
        let v = Vars::new(&[("XDG_RUNTIME_DIR", "/run/user/0")]);
        assert_eq!(
            probe_list(v.resolve(EngineChoice::Docker).unwrap()),
            [unix(DOCKER_SOCKET)]
        );
    }

    #[test]
    fn docker_host_is_the_only_engine_for_auto_and_docker() {
        for choice in [EngineChoice::Auto, EngineChoice::Docker] {
            let v = Vars::new(&[("DOCKER_HOST", "tcp://10.0.0.1:2375")]);
            let (e, o) = named(v.resolve(choice).unwrap());
            assert_eq!(e.to_string(), "tcp://10.0.0.1:2375");
            assert_eq!(o, Origin::DockerHost("tcp://10.0.0.1:2375".into()));
        }
    }

    #[test]
    fn podman_choice_ignores_docker_host_and_honours_container_host() {
        let v = Vars::new(&[
            ("DOCKER_HOST", "tcp://x:1"),
            ("XDG_RUNTIME_DIR", "/run/user/7/"),
        ]);
        assert_eq!(
            probe_list(v.resolve(EngineChoice::Podman).unwrap()),
            [
                unix(PODMAN_ROOT_SOCKET),
                unix("/run/user/7/podman/podman.sock")
            ]
        );
        let v = Vars::new(&[(
            "CONTAINER_HOST",
            "ssh://core@build-1:2222/run/user/1000/podman/podman.sock",
        )]);
        let (e, o) = named(v.resolve(EngineChoice::Podman).unwrap());
        assert_eq!(
            e.to_string(),
            "ssh://core@build-1:2222/run/user/1000/podman/podman.sock"
        );
        assert!(matches!(o, Origin::ContainerHost(_)));
        // CONTAINER_HOST is Podman's: auto does not read it.
        assert!(matches!(
            v.resolve(EngineChoice::Auto).unwrap(),
            Resolved::Probe(_)
        ));
    }

    #[test]
    fn docker_tls_verify_applies_to_a_tcp_docker_host() {
        let certs = tempfile::tempdir().unwrap();
        fs_err::write(certs.path().join("ca.pem"), "x").unwrap();
        let v = Vars::new(&[
            ("DOCKER_HOST", "tcp://build-1"),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", certs.path().to_str().unwrap()),
        ]);
        let (e, _) = named(v.resolve(EngineChoice::Auto).unwrap());
        match e {
            Endpoint::Tcp {
                port,
                tls: Some(tls),
                ..
            } => {
                assert_eq!(port, 2376);
                assert!(tls.verify);
                assert_eq!(tls.ca, Some(certs.path().join("ca.pem")));
                assert_eq!(tls.cert, None);
            }
            other => panic!("{other:?}"),
        }
    }

    /// `$DOCKER_CONFIG` with a context `name` whose endpoint is `host`.
    fn config_with_context(name: &str, host: &str) -> tempfile::TempDir {
        use sha2::Digest as _;
        let d = tempfile::tempdir().unwrap();
        let id = hex::encode(sha2::Sha256::digest(name.as_bytes()));
        let meta = d.path().join("contexts/meta").join(id);
        fs_err::create_dir_all(&meta).unwrap();
        fs_err::write(
            meta.join("meta.json"),
            format!(
                r#"{{"Name":"{name}","Metadata":{{}},"Endpoints":{{"docker":{{"Host":"{host}","SkipTLSVerify":false}}}}}}"#
            ),
        )
        .unwrap();
        d
    }

    #[test]
    fn a_docker_context_names_the_engine_and_docker_host_beats_it() {
        let cfg = config_with_context("remote", "ssh://builder@build-1");
        let dir = cfg.path().to_str().unwrap();
        let v = Vars::new(&[("DOCKER_CONFIG", dir), ("DOCKER_CONTEXT", "remote")]);
        let (e, o) = named(v.resolve(EngineChoice::Docker).unwrap());
        assert_eq!(e.to_string(), "ssh://builder@build-1");
        assert_eq!(o.name(), "the Docker context \"remote\" (DOCKER_CONTEXT)");
        let v = Vars::new(&[
            ("DOCKER_CONFIG", dir),
            ("DOCKER_CONTEXT", "remote"),
            ("DOCKER_HOST", "unix:///tmp/d.sock"),
        ]);
        let (e, o) = named(v.resolve(EngineChoice::Auto).unwrap());
        assert_eq!(e, unix("/tmp/d.sock"));
        assert!(matches!(o, Origin::DockerHost(_)));
    }

    #[test]
    fn the_default_context_is_the_local_engine() {
        let cfg = tempfile::tempdir().unwrap();
        fs_err::write(
            cfg.path().join("config.json"),
            r#"{"currentContext":"default"}"#,
        )
        .unwrap();
        let v = Vars::new(&[("DOCKER_CONFIG", cfg.path().to_str().unwrap())]);
        assert_eq!(
            probe_list(v.resolve(EngineChoice::Docker).unwrap()),
            [unix(DOCKER_SOCKET)]
        );
    }

    #[test]
    fn a_bad_docker_host_is_an_error_naming_the_variable() {
        let v = Vars::new(&[("DOCKER_HOST", "http//oops")]);
        let err = v.resolve(EngineChoice::Auto).unwrap_err();
        let all = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(all.starts_with("DOCKER_HOST=http//oops: "), "{all}");
        assert!(all.contains("unix:///path"), "{all}");
    }
}
