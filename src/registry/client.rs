//! The registry client's manifest and repository operations: get, resolve
//! (index -> platform -> manifest -> config), put, tags, blob HEAD.
//!
//! Blob transfer lives in `blob.rs`; one HTTP exchange (scheme, auth, error
//! statuses) in `transport.rs`. Every manifest is verified against the
//! digest computed from its bytes, never against the registry's
//! Docker-Content-Digest header.

use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, Url};

use super::auth::{scope, Auth};
use super::blob::VecSink;
use super::credentials::CredentialSource;
use super::retry::{Retrier, RetryPolicy};
use super::transport::{check, read_limited, Body, Endpoint, Request};
use super::{RegistryError, RegistrySettings};
use crate::oci::{Descriptor, Digest, ImageConfig, Manifest, ManifestDoc, Platform, Reference};

/// Manifests (and configs) larger than this are refused.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// A manifest as served: the bytes, the Content-Type, and the digest
/// computed from the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// A single-platform image, resolved and verified.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference pinned to the digest of the image manifest (not of
    /// the index it was picked from); the tag is kept for display.
    pub reference: Reference,
    pub manifest: RawManifest,
    pub parsed: Manifest,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
}

/// The OCI distribution client. Cheap to clone; share one per process so
/// that connections, credentials and tokens are shared.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) settings: RegistrySettings,
    pub(crate) auth: Auth,
    pub(crate) retry: RetryPolicy,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

impl Client {
    /// A client that finds credentials in the Docker and Podman config files.
    pub fn new(settings: RegistrySettings) -> Result<Self, RegistryError> {
        Self::with_credentials(settings, CredentialSource::Environment)
    }

    /// A client with an explicit credential source (tests, `--authfile`).
    pub fn with_credentials(
        settings: RegistrySettings,
        credentials: CredentialSource,
    ) -> Result<Self, RegistryError> {
        let env_ca = std::env::var_os("TPLBUILD_CA_FILE")
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from);
        let mut roots = vec![];
        for path in settings.ca_files.iter().cloned().chain(env_ca) {
            let pem = fs_err::read(&path).map_err(RegistryError::Io)?;
            let certs =
                crate::tls::pem_certificates(&pem).map_err(|reason| RegistryError::CaFile {
                    path: path.clone(),
                    reason,
                })?;
            roots.extend(certs);
        }
        // The system's CA certificates load on the first TLS handshake only.
        let http = crate::tls::client_builder(roots)
            .user_agent(concat!("tplbuild/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(RegistryError::ClientSetup)?;
        let retry = RetryPolicy::new(settings.max_retries);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                settings,
                auth: Auth::new(credentials),
                retry,
            }),
        })
    }

    pub fn settings(&self) -> &RegistrySettings {
        &self.inner.settings
    }

    pub(crate) fn url(ep: &Endpoint, repo: &str, tail: &str) -> Url {
        let mut u = ep.base.clone();
        u.set_path(&format!("/v2/{repo}/{tail}"));
        u
    }

    /// GET a manifest or index by tag or digest, verified as described on
    /// [`RawManifest`]. Mirrors are tried first.
    pub async fn get_manifest(&self, r: &Reference) -> Result<RawManifest, RegistryError> {
        let context = format!("pulling manifest {r}");
        let endpoints = self.pull_endpoints(&r.registry)?;
        let last = endpoints.len() - 1;
        for (i, ep) in endpoints.iter().enumerate() {
            match self.get_manifest_from(ep, r, &context, i == last).await {
                Ok(m) => return Ok(m),
                Err(e) if i < last => {
                    tracing::info!(mirror = %ep.registry, error = %e, "mirror failed; trying the next source");
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last endpoint returns")
    }

    async fn get_manifest_from(
        &self,
        ep: &Endpoint,
        r: &Reference,
        context: &str,
        retry: bool,
    ) -> Result<RawManifest, RegistryError> {
        let req = Request::new(
            Method::GET,
            Self::url(
                ep,
                &r.repository,
                &format!("manifests/{}", r.manifest_ref()),
            ),
        )
        .header(ACCEPT, MANIFEST_ACCEPT);
        let scopes = [scope(&r.repository, false)];
        let policy = if retry {
            self.inner.retry
        } else {
            RetryPolicy::new(0)
        };
        let mut retrier = Retrier::new(policy, context);
        let (bytes, media_type) = loop {
            let attempt = async {
                let resp = check(self.send(ep, &scopes, &req, context).await?, context).await?;
                let media_type = resp
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let bytes = read_limited(resp, MAX_MANIFEST_BYTES, context)
                    .await
                    .map_err(|e| match e {
                        RegistryError::TooLarge { context, limit, .. } => RegistryError::TooLarge {
                            context,
                            what: "manifest",
                            limit,
                        },
                        e => e,
                    })?;
                Ok::<_, RegistryError>((bytes, media_type))
            };
            match attempt.await {
                Ok(v) => break v,
                Err(e) => retrier.wait_or_fail(e).await?,
            }
        };
        let digest = Digest::of(&bytes);
        if let Some(want) = &r.digest {
            if *want != digest {
                return Err(RegistryError::DigestMismatch {
                    context: context.to_string(),
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        // Without a usable Content-Type, the document's own mediaType decides.
        let media_type = match media_type.split(';').next().unwrap_or("").trim() {
            "" | "application/json" | "application/octet-stream" | "text/plain" => {
                declared_media_type(&bytes).unwrap_or(media_type)
            }
            _ => media_type,
        };
        Ok(RawManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Resolve a reference to a single-platform image manifest and its
    /// verified config. An index is followed to the entry for `platform`.
    pub async fn resolve_image(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let context = format!("resolving {r} for {platform}");
        let top = self.get_manifest(r).await?;
        let parse = |m: &RawManifest, ctx: &str| {
            ManifestDoc::parse(&m.bytes, Some(&m.media_type)).map_err(|source| {
                RegistryError::Manifest {
                    context: ctx.to_string(),
                    source,
                }
            })
        };
        let (manifest, parsed) = match parse(&top, &context)? {
            ManifestDoc::Image(m) => (top, m),
            ManifestDoc::Index(index) => {
                let chosen = pick_platform(&index.manifests, platform).ok_or_else(|| {
                    RegistryError::NoMatchingPlatform {
                        context: context.clone(),
                        wanted: platform.to_string(),
                        available: index
                            .manifests
                            .iter()
                            .map(|d| match &d.platform {
                                Some(p) => p.to_string(),
                                None => format!("{} (no platform)", d.digest.short()),
                            })
                            .collect(),
                    }
                })?;
                let child_ref = r.with_digest(chosen.digest.clone());
                let child = self.get_manifest(&child_ref).await?;
                if child.bytes.len() as u64 != chosen.size {
                    return Err(RegistryError::Protocol {
                        context: context.clone(),
                        message: format!(
                            "manifest {} has {} bytes, the index says {}",
                            chosen.digest,
                            child.bytes.len(),
                            chosen.size
                        ),
                    });
                }
                match parse(&child, &context)? {
                    ManifestDoc::Image(m) => (child, m),
                    ManifestDoc::Index(_) => {
                        return Err(RegistryError::WrongKind {
                            context,
                            expected: "an image manifest",
                            actual: "nested index".into(),
                        })
                    }
                }
            }
        };
        if parsed.config.size > MAX_MANIFEST_BYTES {
            return Err(RegistryError::TooLarge {
                context,
                what: "image config",
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let repo = r.with_digest(manifest.digest.clone());
        let mut sink = VecSink::default();
        self.pull_blob(&repo, &parsed.config, &mut sink).await?;
        let config_bytes = sink.into_inner();
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| RegistryError::Config {
                context: context.clone(),
                source,
            })?;
        if !config.platform().matches(platform) {
            return Err(RegistryError::NoMatchingPlatform {
                context,
                wanted: platform.to_string(),
                available: vec![config.platform().to_string()],
            });
        }
        Ok(ResolvedImage {
            reference: repo,
            manifest,
            parsed,
            config_bytes,
            config,
        })
    }

    /// PUT a manifest under the reference's tag (or digest). Returns the
    /// digest of `bytes`; a pinned reference must match it.
    pub async fn put_manifest(
        &self,
        r: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let context = format!("pushing manifest {r}");
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(RegistryError::TooLarge {
                context,
                what: "manifest",
                limit: MAX_MANIFEST_BYTES,
            });
        }
        // Refuse to publish what we would refuse to pull.
        ManifestDoc::parse(bytes, Some(media_type)).map_err(|source| RegistryError::Manifest {
            context: context.clone(),
            source,
        })?;
        let digest = Digest::of(bytes);
        if let Some(want) = &r.digest {
            if *want != digest {
                return Err(RegistryError::DigestMismatch {
                    context,
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        let ep = self.endpoint(&r.registry)?;
        let target = match (&r.tag, &r.digest) {
            (Some(t), _) => t.clone(),
            (None, Some(d)) => d.to_string(),
            (None, None) => "latest".to_string(),
        };
        let mut req = Request::new(
            Method::PUT,
            Self::url(&ep, &r.repository, &format!("manifests/{target}")),
        )
        .header(CONTENT_TYPE, media_type);
        req.body = Body::Bytes(Bytes::copy_from_slice(bytes));
        let scopes = [scope(&r.repository, true)];
        let mut retrier = Retrier::new(self.inner.retry, &context);
        let resp = loop {
            let attempt =
                async { check(self.send(&ep, &scopes, &req, &context).await?, &context).await };
            match attempt.await {
                Ok(v) => break v,
                Err(e) => retrier.wait_or_fail(e).await?,
            }
        };
        if let Some(served) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if served != digest.to_string() {
                tracing::warn!(%served, computed = %digest, "registry reports a different manifest digest");
            }
        }
        Ok(digest)
    }

    /// HEAD a blob: its size if the registry has it.
    pub async fn blob_exists(
        &self,
        repo: &Reference,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        self.blob_exists_scoped(repo, digest, false).await
    }

    pub(crate) async fn blob_exists_scoped(
        &self,
        repo: &Reference,
        digest: &Digest,
        push: bool,
    ) -> Result<Option<u64>, RegistryError> {
        let context = format!("checking blob {} in {}", digest.short(), repo.repo_name());
        let ep = self.endpoint(&repo.registry)?;
        let req = Request::new(
            Method::HEAD,
            Self::url(&ep, &repo.repository, &format!("blobs/{digest}")),
        );
        let scopes = [scope(&repo.repository, push)];
        let mut retrier = Retrier::new(self.inner.retry, &context);
        loop {
            let attempt = async {
                let Some(resp) = self
                    .send_unless_absent(&ep, &scopes, &req, &context)
                    .await?
                else {
                    return Ok(None);
                };
                // Not `content_length()`: for a HEAD that is the (empty) body's.
                Ok(Some(
                    resp.headers()
                        .get(reqwest::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0),
                ))
            };
            match attempt.await {
                Ok(v) => return Ok(v),
                Err(e) => retrier.wait_or_fail(e).await?,
            }
        }
    }

    /// All tags of a repository, following `Link` pagination.
    pub async fn list_tags(&self, repo: &Reference) -> Result<Vec<String>, RegistryError> {
        let context = format!("listing tags of {}", repo.repo_name());
        let ep = self.endpoint(&repo.registry)?;
        let scopes = [scope(&repo.repository, false)];
        let mut url = Self::url(&ep, &repo.repository, "tags/list");
        let mut tags = Vec::new();
        for _page in 0..1000 {
            let req = Request::new(Method::GET, url.clone());
            let mut retrier = Retrier::new(self.inner.retry, &context);
            let (body, next) = loop {
                let attempt = async {
                    let resp =
                        check(self.send(&ep, &scopes, &req, &context).await?, &context).await?;
                    let next = resp
                        .headers()
                        .get(reqwest::header::LINK)
                        .and_then(|v| v.to_str().ok())
                        .and_then(next_link);
                    Ok::<_, RegistryError>((
                        read_limited(resp, MAX_MANIFEST_BYTES, &context).await?,
                        next,
                    ))
                };
                match attempt.await {
                    Ok(v) => break v,
                    Err(e) => retrier.wait_or_fail(e).await?,
                }
            };
            #[derive(serde::Deserialize)]
            struct TagList {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let list: TagList =
                serde_json::from_slice(&body).map_err(|e| RegistryError::Protocol {
                    context: context.clone(),
                    message: format!("bad tag list: {e}"),
                })?;
            tags.extend(list.tags.unwrap_or_default());
            match next {
                Some(n) => {
                    url = ep.base.join(&n).map_err(|e| RegistryError::Protocol {
                        context: context.clone(),
                        message: format!("bad Link {n:?}: {e}"),
                    })?
                }
                None => return Ok(tags),
            }
        }
        Err(RegistryError::Protocol {
            context,
            message: "more than 1000 pages of tags".into(),
        })
    }
}

/// The first index entry for `platform`, preferring an exact variant match.
fn pick_platform<'a>(entries: &'a [Descriptor], platform: &Platform) -> Option<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| d.media().is_manifest() || d.media_type.is_empty())
        .filter(|d| d.platform.as_ref().is_some_and(|p| p.matches(platform)))
        .collect();
    candidates
        .iter()
        .find(|d| d.platform.as_ref().map(|p| &p.variant) == Some(&platform.variant))
        .or(candidates.first())
        .copied()
}

fn declared_media_type(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("mediaType")?.as_str().map(str::to_string)
}

/// The target of `Link: <url>; rel="next"`.
fn next_link(v: &str) -> Option<String> {
    v.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::MediaType;

    fn desc(platform: &str) -> Descriptor {
        let mut d = Descriptor::new(MediaType::OCI_MANIFEST, Digest::of(platform.as_bytes()), 1);
        d.platform = Platform::parse(platform);
        d
    }

    #[test]
    fn platform_pick_prefers_the_exact_variant() {
        let entries = [
            desc("linux/amd64"),
            desc("linux/arm/v6"),
            desc("linux/arm/v7"),
        ];
        let got = pick_platform(&entries, &Platform::parse("linux/arm/v7").unwrap()).unwrap();
        assert_eq!(got.digest, Digest::of(b"linux/arm/v7"));
        assert!(pick_platform(&entries, &Platform::parse("linux/s390x").unwrap()).is_none());
    }

    #[test]
    fn link_header_next_page() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=x&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=x&n=2")
        );
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
    }
}
