//! Where an engine is: the `unix://`, `tcp://` and `ssh://` addresses that
//! `DOCKER_HOST`, `CONTAINER_HOST` and Docker contexts hold, parsed once
//! into a value the connectors use, and shown back to the user (in errors
//! and `EngineInfo::host`) without anything secret in it.

use std::fmt;
use std::path::PathBuf;

use super::tls::TlsSettings;

/// How a host string is read: Docker's rules or Podman's (an `ssh://` URL's
/// path is the remote socket tplbuild forwards for Podman, and the socket
/// the remote `docker` CLI dials for Docker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Docker,
    Podman,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp {
        host: String,
        port: u16,
        tls: Option<TlsSettings>,
    },
    Ssh {
        target: SshTarget,
        flavor: Flavor,
    },
}

/// `ssh://[user@]host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// The engine's socket on the remote machine, e.g. `/run/podman/podman.sock`.
    pub path: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("`{0}` is not an engine address: expected unix:///path, tcp://host:port or ssh://[user@]host[:port]")]
    Scheme(String),
    #[error("`{0}` is not a valid URL: {1}")]
    Url(String, String),
    #[error("`{0}` names no host")]
    NoHost(String),
    #[error("`{0}`: a password in an ssh:// address is not supported (and would show in process lists); use ssh-agent or a key in ~/.ssh/config")]
    Password(String),
    #[error("`{0}`: ssh:// addresses take no query or fragment")]
    Extra(String),
    #[error("`{0}`: a Podman ssh:// address needs the remote socket's path, e.g. ssh://root@host/run/podman/podman.sock")]
    NoPodmanSocket(String),
}

impl Endpoint {
    /// Parse `addr` as Docker (`flavor`) reads it; `tls` applies to `tcp://`.
    pub fn parse(addr: &str, flavor: Flavor, tls: Option<TlsSettings>) -> Result<Self, ParseError> {
        if let Some(path) = addr.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(ParseError::NoHost(addr.into()));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let scheme = addr.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("tcp") => {
                let url = url::Url::parse(addr)
                    .map_err(|e| ParseError::Url(redact(addr), e.to_string()))?;
                let host = url
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| ParseError::NoHost(redact(addr)))?;
                // Docker's default ports: 2376 with TLS, 2375 without.
                let port = url
                    .port()
                    .unwrap_or(if tls.is_some() { 2376 } else { 2375 });
                Ok(Endpoint::Tcp {
                    host: host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                    port,
                    tls,
                })
            }
            Some("ssh") => Ok(Endpoint::Ssh {
                target: SshTarget::parse(addr, flavor)?,
                flavor,
            }),
            _ => Err(ParseError::Scheme(redact(addr))),
        }
    }
}

impl SshTarget {
    fn parse(addr: &str, flavor: Flavor) -> Result<Self, ParseError> {
        let url =
            url::Url::parse(addr).map_err(|e| ParseError::Url(redact(addr), e.to_string()))?;
        if url.password().is_some() {
            return Err(ParseError::Password(redact(addr)));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ParseError::Extra(redact(addr)));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ParseError::NoHost(redact(addr)))?;
        // `ssh -- -oProxyCommand=…` is refused by `--`, but a host that
        // looks like an option is a mistake either way.
        if host.starts_with('-') {
            return Err(ParseError::NoHost(redact(addr)));
        }
        let user = match url.username() {
            "" => None,
            u => Some(
                percent_decode(u)
                    .ok_or_else(|| ParseError::Url(redact(addr), "bad user".into()))?,
            ),
        };
        let path = match url.path() {
            "" | "/" => None,
            p => Some(
                percent_decode(p)
                    .ok_or_else(|| ParseError::Url(redact(addr), "bad path".into()))?,
            ),
        };
        if flavor == Flavor::Podman && path.is_none() {
            return Err(ParseError::NoPodmanSocket(redact(addr)));
        }
        Ok(SshTarget {
            user,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: url.port(),
            path,
        })
    }

    /// `[user@]host`, the way ssh is told whom to reach.
    pub fn destination(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

/// `host` as it appears in a URL: an IPv6 address in brackets.
fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

impl fmt::Display for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ssh://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        write!(f, "{}", url_host(&self.host))?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if let Some(path) = &self.path {
            write!(f, "{path}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Endpoint {
    /// The address as the user would write it; never a password (ssh
    /// addresses with one are refused, tcp ones carry none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp { host, port, .. } => write!(f, "tcp://{}:{port}", url_host(host)),
            Endpoint::Ssh { target, .. } => target.fmt(f),
        }
    }
}

/// `addr` with any `user:password@` reduced to `user:***@`, for messages.
pub fn redact(addr: &str) -> String {
    let Some((scheme, rest)) = addr.split_once("://") else {
        return addr.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => addr.to_string(),
        },
        None => addr.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(addr: &str, flavor: Flavor) -> Result<SshTarget, ParseError> {
        match Endpoint::parse(addr, flavor, None)? {
            Endpoint::Ssh { target, .. } => Ok(target),
            other => panic!("{addr} parsed as {other:?}"),
        }
    }

    #[test]
    fn ssh_url_with_user_port_and_path() {
        let t = ssh(
            "ssh://builder@build-1.example.com:2222/run/podman/podman.sock",
            Flavor::Podman,
        )
        .unwrap();
        assert_eq!(t.user.as_deref(), Some("builder"));
        assert_eq!(t.host, "build-1.example.com");
        assert_eq!(t.port, Some(2222));
        assert_eq!(t.path.as_deref(), Some("/run/podman/podman.sock"));
        assert_eq!(t.destination(), "builder@build-1.example.com");
        assert_eq!(
            t.to_string(),
            "ssh://builder@build-1.example.com:2222/run/podman/podman.sock"
        );
    }

    #[test]
    fn ssh_url_with_host_only_leaves_user_and_port_to_ssh_config() {
        let t = ssh("ssh://buildhost", Flavor::Docker).unwrap();
        assert_eq!(t.user, None);
        assert_eq!(t.port, None);
        assert_eq!(t.path, None);
        assert_eq!(t.destination(), "buildhost");
        assert_eq!(ssh("ssh://buildhost/", Flavor::Docker).unwrap().path, None);
    }

    #[test]
    fn ssh_url_with_an_ipv6_host() {
        let t = ssh("ssh://root@[::1]:22", Flavor::Docker).unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.port, Some(22));
        assert_eq!(t.destination(), "root@::1");
        assert_eq!(t.to_string(), "ssh://root@[::1]:22");
    }

    #[test]
    fn ssh_url_password_is_refused_and_never_repeated() {
        let err = ssh("ssh://root:hunter2@host", Flavor::Docker).unwrap_err();
        assert!(matches!(err, ParseError::Password(_)));
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn ssh_url_odd_parts_are_refused() {
        assert!(matches!(
            ssh("ssh://host?x=1", Flavor::Docker),
            Err(ParseError::Extra(_))
        ));
        assert!(matches!(
            ssh("ssh://-oProxyCommand=x", Flavor::Docker),
            Err(ParseError::NoHost(_))
        ));
        assert!(matches!(
            ssh("ssh://root@host:22", Flavor::Podman),
            Err(ParseError::NoPodmanSocket(_))
        ));
    }

    #[test]
    fn tcp_default_port_depends_on_tls() {
        let plain = Endpoint::parse("tcp://docker", Flavor::Docker, None).unwrap();
        assert_eq!(plain.to_string(), "tcp://docker:2375");
        let tls = Endpoint::parse(
            "tcp://docker",
            Flavor::Docker,
            Some(TlsSettings::insecure()),
        )
        .unwrap();
        assert_eq!(tls.to_string(), "tcp://docker:2376");
        let v6 = Endpoint::parse("tcp://[::1]:1234", Flavor::Docker, None).unwrap();
        assert_eq!(v6.to_string(), "tcp://[::1]:1234");
    }

    #[test]
    fn unix_and_unknown_schemes() {
        assert_eq!(
            Endpoint::parse("unix:///var/run/docker.sock", Flavor::Docker, None).unwrap(),
            Endpoint::Unix("/var/run/docker.sock".into())
        );
        assert!(matches!(
            Endpoint::parse("npipe:////./pipe/docker_engine", Flavor::Docker, None),
            Err(ParseError::Scheme(_))
        ));
        assert!(matches!(
            Endpoint::parse("/var/run/docker.sock", Flavor::Docker, None),
            Err(ParseError::Scheme(_))
        ));
    }

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("tcp://u:pw@h:1/x"), "tcp://u:***@h:1/x");
        assert_eq!(redact("ssh://root@h"), "ssh://root@h");
        assert_eq!(redact("unix:///a@b:c"), "unix:///a@b:c");
    }
}
