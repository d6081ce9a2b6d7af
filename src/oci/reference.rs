//! Image references: `host[:port]/repo[:tag][@sha256:…]` for registries and
//! `oci:DIR[:TAG]` for an OCI image layout on disk.

use std::fmt;
use std::path::PathBuf;

use super::{Digest, DigestError};

/// A registry image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Where an image lives: a registry or an OCI layout directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Registry(Reference),
    Layout {
        dir: PathBuf,
        tag: String,
        digest: Option<Digest>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("image reference {0:?} is empty")]
    Empty(String),
    #[error("image reference {0:?} has an invalid repository name (lower-case letters, digits and . _ - / only)")]
    Repository(String),
    #[error("image reference {0:?} has an invalid tag (at most 128 of A-Z a-z 0-9 _ . -, not starting with . or -)")]
    Tag(String),
    #[error("image reference {reference:?} has an invalid digest: {source}")]
    Digest {
        reference: String,
        #[source]
        source: DigestError,
    },
}

pub const DEFAULT_REGISTRY: &str = "docker.io";

impl Reference {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let err_ref = || s.to_string();
        if s.is_empty() {
            return Err(ReferenceError::Empty(err_ref()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(Digest::parse(d).map_err(|source| ReferenceError::Digest {
                    reference: err_ref(),
                    source,
                })?),
            ),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => {
                let repo = if name.contains('/') {
                    name.to_string()
                } else {
                    format!("library/{name}")
                };
                (DEFAULT_REGISTRY.to_string(), repo)
            }
        };
        if repository.is_empty()
            || !repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
                    && c.as_bytes()[0].is_ascii_alphanumeric()
            })
        {
            return Err(ReferenceError::Repository(err_ref()));
        }
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(ReferenceError::Tag(err_ref()));
            }
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest when pinned, else the tag
    /// (default `latest`).
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The same repository, pinned to a digest (tag kept for display).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    pub fn with_tag(&self, tag: impl Into<String>) -> Self {
        Reference {
            tag: Some(tag.into()),
            digest: None,
            ..self.clone()
        }
    }

    /// `host/repo` without tag or digest.
    pub fn repo_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// True for 127.0.0.0/8, ::1 and localhost.
    pub fn is_loopback(&self) -> bool {
        let host = host_of(&self.registry);
        host == "localhost"
            || host == "::1"
            || host
                .parse::<std::net::Ipv4Addr>()
                .map(|a| a.is_loopback())
                .unwrap_or(false)
    }
}

fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl Target {
    /// Parse a registry reference or `oci:DIR[:TAG][@DIGEST]`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (rest, digest) = match rest.rsplit_once('@') {
                Some((r, d)) if d.starts_with("sha256:") => (
                    r,
                    Some(Digest::parse(d).map_err(|source| ReferenceError::Digest {
                        reference: s.to_string(),
                        source,
                    })?),
                ),
                _ => (rest, None),
            };
            // A tag follows the last ':' if no '/' comes after it.
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !t.is_empty() && !d.is_empty() => (d, t),
                _ => (rest, "latest"),
            };
            if dir.is_empty() {
                return Err(ReferenceError::Empty(s.to_string()));
            }
            return Ok(Target::Layout {
                dir: PathBuf::from(dir),
                tag: tag.to_string(),
                digest,
            });
        }
        Reference::parse(s).map(Target::Registry)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Registry(r) => r.fmt(f),
            Target::Layout { dir, tag, digest } => {
                write!(f, "oci:{}:{tag}", dir.display())?;
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_reference_with_port_tag_and_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("127.0.0.1:5000/platform/base:1@{d}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "platform/base");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.digest.as_ref().unwrap().to_string(), d);
        assert_eq!(r.manifest_ref(), d);
        assert!(r.is_loopback());
    }

    #[test]
    fn short_names_go_to_the_default_registry() {
        let r = Reference::parse("debian:bookworm").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/debian");
        assert!(!r.is_loopback());
    }

    #[test]
    fn bad_references_are_rejected() {
        for bad in [
            "",
            "Host.example/UPPER:1",
            "h.example/repo:bad tag",
            "h.example/repo@sha256:../../x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn layout_targets() {
        assert_eq!(
            Target::parse("oci:out/base:1").unwrap(),
            Target::Layout {
                dir: "out/base".into(),
                tag: "1".into(),
                digest: None
            }
        );
        assert_eq!(
            Target::parse("oci:/tmp/x").unwrap(),
            Target::Layout {
                dir: "/tmp/x".into(),
                tag: "latest".into(),
                digest: None
            }
        );
    }
}
