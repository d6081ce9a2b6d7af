//! Docker contexts (`docker context use remote`), read the way the Docker
//! CLI reads them, so that a user whose `docker` talks to a build host gets
//! the same engine from tplbuild. The context in use is `DOCKER_CONTEXT`,
//! else `currentContext` in `config.json`; its endpoint is in
//!
//! ```text
//! $DOCKER_CONFIG (default ~/.docker)/
//!   config.json                          {"currentContext": "remote", …}
//!   contexts/meta/<sha256 of name>/meta.json
//!       {"Name":"remote","Endpoints":{"docker":{"Host":"ssh://…","SkipTLSVerify":false}}}
//!   contexts/tls/<sha256 of name>/docker/{ca,cert,key}.pem
//! ```
//!
//! The context named `default` is the absence of one: `DOCKER_HOST` or the
//! local socket.

use std::path::{Path, PathBuf};

use sha2::Digest as _;

/// A context's Docker endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub name: String,
    /// Where it was chosen: `DOCKER_CONTEXT`, or `currentContext in PATH`.
    pub chosen_by: String,
    pub host: String,
    pub skip_tls_verify: bool,
    /// Where its TLS files would be (they may be absent).
    pub tls_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("the Docker context \"{name}\" ({chosen_by}) does not exist: no {}", path.display())]
    NotFound {
        name: String,
        chosen_by: String,
        path: PathBuf,
    },
    #[error(transparent)]
    Read(std::io::Error),
    #[error("{}: not valid JSON", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the Docker context \"{name}\" ({}) has no docker endpoint", path.display())]
    NoDockerEndpoint { name: String, path: PathBuf },
}

#[derive(serde::Deserialize)]
struct Config {
    #[serde(rename = "currentContext", default)]
    current_context: Option<String>,
}

#[derive(serde::Deserialize)]
struct Meta {
    #[serde(rename = "Endpoints", default)]
    endpoints: std::collections::BTreeMap<String, EndpointMeta>,
}

#[derive(serde::Deserialize)]
struct EndpointMeta {
    #[serde(rename = "Host", default)]
    host: Option<String>,
    #[serde(rename = "SkipTLSVerify", default)]
    skip_tls_verify: bool,
}

/// The Docker config folder: `DOCKER_CONFIG`, else `~/.docker`.
pub fn config_dir(get: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    get("DOCKER_CONFIG")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            get("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| Path::new(&h).join(".docker"))
        })
}

/// The context in use, unless it is `default` (or none is set).
pub fn current(
    get: &dyn Fn(&str) -> Option<String>,
    config_dir: &Path,
) -> Result<Option<Context>, ContextError> {
    let (name, chosen_by) = match get("DOCKER_CONTEXT").filter(|n| !n.is_empty()) {
        Some(n) => (n, "DOCKER_CONTEXT".to_string()),
        None => {
            let path = config_dir.join("config.json");
            let bytes = match fs_err::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(ContextError::Read(e)),
            };
            let config: Config =
                serde_json::from_slice(&bytes).map_err(|source| ContextError::Parse {
                    path: path.clone(),
                    source,
                })?;
            match config.current_context.filter(|n| !n.is_empty()) {
                Some(n) => (n, format!("currentContext in {}", path.display())),
                None => return Ok(None),
            }
        }
    };
    if name == "default" {
        return Ok(None);
    }
    load(&name, chosen_by, config_dir).map(Some)
}

fn load(name: &str, chosen_by: String, config_dir: &Path) -> Result<Context, ContextError> {
    let id = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    let path = config_dir.join("contexts/meta").join(&id).join("meta.json");
    let bytes = match fs_err::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ContextError::NotFound {
                name: name.into(),
                chosen_by,
                path,
            })
        }
        Err(e) => return Err(ContextError::Read(e)),
    };
    let meta: Meta = serde_json::from_slice(&bytes).map_err(|source| ContextError::Parse {
        path: path.clone(),
        source,
    })?;
    let docker = meta.endpoints.get("docker");
    let host = docker
        .and_then(|d| d.host.clone())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ContextError::NoDockerEndpoint {
            name: name.into(),
            path: path.clone(),
        })?;
    Ok(Context {
        name: name.into(),
        chosen_by,
        host,
        skip_tls_verify: docker.is_some_and(|d| d.skip_tls_verify),
        tls_dir: config_dir.join("contexts/tls").join(&id).join("docker"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context store as `docker context create NAME --docker host=HOST` leaves it.
    fn store_with(name: &str, meta: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let id = hex::encode(sha2::Sha256::digest(name.as_bytes()));
        let dir = d.path().join("contexts/meta").join(id);
        fs_err::create_dir_all(&dir).unwrap();
        fs_err::write(dir.join("meta.json"), meta).unwrap();
        d
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    const REMOTE: &str = r#"{"Name":"remote","Metadata":{"Description":"build host"},"Endpoints":{"docker":{"Host":"ssh://builder@build-1:2222","SkipTLSVerify":false}}}"#;

    #[test]
    fn docker_context_names_the_context_and_its_hash_finds_the_meta() {
        let d = store_with("remote", REMOTE);
        let c = current(&vars(&[("DOCKER_CONTEXT", "remote")]), d.path())
            .unwrap()
            .unwrap();
        assert_eq!(c.name, "remote");
        assert_eq!(c.chosen_by, "DOCKER_CONTEXT");
        assert_eq!(c.host, "ssh://builder@build-1:2222");
        assert!(!c.skip_tls_verify);
        // sha256("remote"), as `docker context create remote` names the folder.
        assert!(
            c.tls_dir.ends_with("contexts/tls/b71199ebd070b36beab7317920c2c2f1d777df8d05e5527d8458fda57cb17a7a/docker"),
            "{}",
            c.tls_dir.display()
        );
    }

    #[test]
    fn current_context_in_config_json_is_used_when_docker_context_is_unset() {
        let d = store_with("remote", REMOTE);
        fs_err::write(
            d.path().join("config.json"),
            r#"{"auths":{},"currentContext":"remote"}"#,
        )
        .unwrap();
        let c = current(&vars(&[]), d.path()).unwrap().unwrap();
        assert_eq!(c.host, "ssh://builder@build-1:2222");
        assert!(
            c.chosen_by.starts_with("currentContext in "),
            "{}",
            c.chosen_by
        );
        // DOCKER_CONTEXT wins over the config file, and "default" means none.
        assert_eq!(
            current(&vars(&[("DOCKER_CONTEXT", "default")]), d.path()).unwrap(),
            None
        );
    }

    #[test]
    fn no_config_or_no_current_context_means_the_default() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(current(&vars(&[]), d.path()).unwrap(), None);
        fs_err::write(d.path().join("config.json"), r#"{"auths":{}}"#).unwrap();
        assert_eq!(current(&vars(&[]), d.path()).unwrap(), None);
    }

    #[test]
    fn skip_tls_verify_and_the_tls_folder() {
        let d = store_with(
            "tls",
            r#"{"Name":"tls","Endpoints":{"docker":{"Host":"tcp://10.0.0.1:2376","SkipTLSVerify":true}}}"#,
        );
        let c = current(&vars(&[("DOCKER_CONTEXT", "tls")]), d.path())
            .unwrap()
            .unwrap();
        assert!(c.skip_tls_verify);
        let id = hex::encode(sha2::Sha256::digest(b"tls"));
        assert_eq!(
            c.tls_dir,
            d.path().join("contexts/tls").join(id).join("docker")
        );
    }

    #[test]
    fn a_missing_context_is_an_error_naming_where_it_was_chosen() {
        let d = tempfile::tempdir().unwrap();
        let err = current(&vars(&[("DOCKER_CONTEXT", "gone")]), d.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"gone\"") && msg.contains("DOCKER_CONTEXT"),
            "{msg}"
        );
        assert!(msg.contains("meta.json"), "{msg}");
    }

    #[test]
    fn a_context_without_a_docker_endpoint_is_an_error() {
        let d = store_with("k8s", r#"{"Name":"k8s","Endpoints":{"kubernetes":{}}}"#);
        let err = current(&vars(&[("DOCKER_CONTEXT", "k8s")]), d.path()).unwrap_err();
        assert!(
            matches!(err, ContextError::NoDockerEndpoint { .. }),
            "{err}"
        );
    }

    #[test]
    fn config_dir_is_docker_config_else_home_dot_docker() {
        assert_eq!(
            config_dir(&vars(&[("DOCKER_CONFIG", "/etc/dc"), ("HOME", "/root")])),
            Some(PathBuf::from("/etc/dc"))
        );
        assert_eq!(
            config_dir(&vars(&[("HOME", "/home/u")])),
            Some(PathBuf::from("/home/u/.docker"))
        );
        assert_eq!(config_dir(&vars(&[])), None);
    }
}
